/**
 * Egress control for runner containers (RUNNER_EGRESS=allowlist): an internal Docker network that the
 * service creates and labels (no route out), which the runners join, and an HTTP forward proxy run by
 * the service (CONNECT for TLS, absolute-URI requests for plain HTTP), listening on that network's
 * gateway address (in the Compose stack: the service container's address on it): the only way out.
 * The proxy resolves names itself and lets through only hosts on RUNNER_EGRESS_ALLOW (exact names or
 * `*.example.com`, optional `:port`, else 443 and 80); a raw IP address as the target is refused.
 * Each attempt is attributed to its task (`taskOf`: the container's address on the network → its
 * labels); refusals and closed connections are told to listeners and counted per task.
 */
import { createHash } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { readFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { connect, isIP, type Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import { ConfigError, splitList } from '../config.js'
import type { DockerEngine } from '../docker/engine.js'
import { LABEL, SERVICE_LABEL } from './container-spec.js'

export interface EgressRule { pattern: string, port: number | null }

const HOST_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/

/** RUNNER_EGRESS_ALLOW (or a task's egress_allow) as rules; a malformed entry is named in the error. */
export function parseAllowList (value: string, field = 'RUNNER_EGRESS_ALLOW'): EgressRule[] {
  return splitList(value).map((entry) => {
    const m = /^([^:]+)(?::(\d{1,5}))?$/.exec(entry.toLowerCase())
    const host = m?.[1] ?? ''
    const port = m?.[2] ? Number(m[2]) : null
    if (!m || !HOST_NAME.test(host) || isIP(host) || (port !== null && (port < 1 || port > 65535))) {
      throw new ConfigError(`${field} entry "${entry}" is not a host name: expected a name such as api.anthropic.com or *.example.com, optionally with :port (1 to 65535); IP addresses are not accepted`)
    }
    return { pattern: host, port }
  })
}

/** The rule that lets `host:port` through, or undefined. Without a port a rule allows 443 and 80. */
export function matchRule (rules: EgressRule[], host: string, port: number): EgressRule | undefined {
  const name = host.toLowerCase().replace(/\.$/, '')
  return rules.find((r) => {
    const portOk = r.port === null ? port === 443 || port === 80 : r.port === port
    if (!portOk) return false
    if (r.pattern.startsWith('*.')) return name.endsWith(r.pattern.slice(1)) && name.length > r.pattern.length - 1
    return name === r.pattern
  })
}

export const ruleText = (r: EgressRule) => r.port === null ? r.pattern : `${r.pattern}:${r.port}`

/** The rules of `narrow` that `wide` does not cover (a task may narrow the list, never widen it). */
export function widening (narrow: EgressRule[], wide: EgressRule[]): EgressRule[] {
  return narrow.filter((n) => !wide.some((w) => {
    const portOk = w.port === null ? (n.port === null || n.port === 443 || n.port === 80) : w.port === n.port
    return portOk && (w.pattern === n.pattern || (w.pattern.startsWith('*.') && n.pattern.endsWith(w.pattern.slice(1))))
  }))
}

/** `task`: the task whose container made the attempt, when the proxy's lookup found it. */
export interface EgressDenial { address: string, task?: string, host: string, port: number, reason: 'not_allowed' | 'not_allowed_for_task' | 'ip_address' | 'bad_request' }
export interface EgressAllowed { address: string, task?: string, host: string, port: number, rule: string }
/** An allowed connection once closed: the bytes exchanged with the outside host (headers and TLS included). */
export interface EgressClosed { address: string, task?: string, host: string, port: number, bytes_out: number, bytes_in: number }

/** What a task sent and received through the proxy: allowed connections (by `host:port`) and refusals. */
export interface EgressUsage { bytes_out: number, bytes_in: number, connections: number, denied: number, hosts: Record<string, number> }

/** `a` plus `b` (either may be empty). */
export function addUsage (a: Partial<EgressUsage> | null | undefined, b: Partial<EgressUsage>): EgressUsage {
  const hosts = { ...a?.hosts }
  for (const [h, n] of Object.entries(b.hosts ?? {})) hosts[h] = (hosts[h] ?? 0) + n
  const sum = (k: 'bytes_out' | 'bytes_in' | 'connections' | 'denied') => (a?.[k] ?? 0) + (b[k] ?? 0)
  return { bytes_out: sum('bytes_out'), bytes_in: sum('bytes_in'), connections: sum('connections'), denied: sum('denied'), hosts }
}

/** Who connects from an address: its task, and the task's own (narrower) list if it has one. */
export type EgressLookup = (address: string) => Promise<{ task?: string, rules?: EgressRule[] }>

/** What a runner container is given: its network and the proxy variables. */
export interface EgressRuntime { network: string, env: string[] }

export class EgressProxy extends EventEmitter<{ denied: [EgressDenial], allowed: [EgressAllowed], closed: [EgressClosed] }> {
  private server: Server | undefined
  private readonly sockets = new Set<Duplex>()

  /**
   * `hostMap`: names the proxy resolves to given addresses instead of asking DNS (`name` → `ip:port`
   * or `ip`): for tests, whose stand-in hosts listen on this machine.
   */
  constructor (
    private readonly rules: EgressRule[],
    private readonly hostMap: Record<string, string> = {},
    /** The task whose container connects from `address` and its narrower list, if it has one (a task's `egress_allow`). */
    private readonly lookup?: EgressLookup
  ) {
    super()
  }

  async listen (host: string): Promise<number> {
    const server = createServer((req, res) => { this.forward(req, res) })
    server.on('connect', (req: IncomingMessage, socket: Duplex, head: Buffer) => { this.tunnel(req, socket, head) })
    server.on('connection', (s: Socket) => { this.sockets.add(s); s.on('close', () => this.sockets.delete(s)) })
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, host, () => resolve()) })
    this.server = server
    return (server.address() as { port: number }).port
  }

  async close (): Promise<void> {
    for (const s of this.sockets) s.destroy()
    await new Promise<void>((resolve) => this.server ? this.server.close(() => resolve()) : resolve())
  }

  /**
   * The allowed connection (its task, for the accounting), or null when the target is refused (told
   * to listeners). A task with its own list must match it as well; a lookup that fails refuses what
   * the server's list allows.
   */
  private async check (address: string, host: string, port: number): Promise<EgressAllowed | null> {
    const bare = host.replace(/^\[|\]$/g, '')
    let reason: EgressDenial['reason'] | null = !host || !Number.isInteger(port) || port < 1 || port > 65535 ? 'bad_request' : isIP(bare) ? 'ip_address' : null
    const rule = reason ? undefined : matchRule(this.rules, bare, port)
    const who = this.lookup ? await this.lookup(address).catch(() => ({ task: undefined, rules: [] })) : {}
    if (rule && who.rules && !matchRule(who.rules, bare, port)) reason = 'not_allowed_for_task'
    if (!rule || reason) {
      this.emit('denied', { address, task: who.task, host: bare, port, reason: reason ?? 'not_allowed' })
      return null
    }
    const allowed = { address, task: who.task, host: bare, port, rule: ruleText(rule) }
    this.emit('allowed', allowed)
    return allowed
  }

  /** Tells listeners that an allowed connection closed, with the bytes its upstream socket carried. */
  private closed (c: EgressAllowed, upstream: Socket | undefined): void {
    this.emit('closed', { address: c.address, task: c.task, host: c.host, port: c.port, bytes_out: upstream?.bytesWritten ?? 0, bytes_in: upstream?.bytesRead ?? 0 })
  }

  /** Where to connect for an allowed name: the host map's address, or the name (resolved by the proxy's own DNS). */
  private target (host: string, port: number): { host: string, port: number } {
    const mapped = this.hostMap[host.toLowerCase()] ?? this.hostMap[`${host.toLowerCase()}:${port}`]
    if (!mapped) return { host, port }
    const m = /^(.+?)(?::(\d+))?$/.exec(mapped) as RegExpExecArray
    return { host: m[1], port: m[2] ? Number(m[2]) : port }
  }

  private tunnel (req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const address = req.socket.remoteAddress ?? ''
    const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(req.url ?? '')
    const host = m?.[1] ?? ''
    const port = Number(m?.[2] ?? 0)
    socket.on('error', () => {})
    this.check(address, host, port).then((allowed) => {
      if (!allowed) socket.end(`HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\negress to ${host}:${port} is not allowed (RUNNER_EGRESS_ALLOW or the task's egress_allow)\n`)
      else this.open(socket, allowed, head)
    }, () => socket.destroy())
  }

  private open (socket: Duplex, allowed: EgressAllowed, head: Buffer): void {
    const { host, port } = allowed
    const to = this.target(host, port)
    const upstream = connect(to.port, to.host, () => {
      socket.write('HTTP/1.1 200 Connection Established\r\n\r\n')
      if (head.length) upstream.write(head)
      upstream.pipe(socket)
      socket.pipe(upstream)
    })
    this.sockets.add(upstream)
    upstream.on('close', () => { this.sockets.delete(upstream); socket.destroy(); this.closed(allowed, upstream) })
    upstream.on('error', () => {
      if (!socket.destroyed) socket.end(`HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n${host}:${port} cannot be reached\n`)
    })
    socket.on('close', () => upstream.destroy())
  }

  private forward (req: IncomingMessage, res: ServerResponse): void {
    const address = req.socket.remoteAddress ?? ''
    let url: URL
    try {
      url = new URL(req.url ?? '')
      if (url.protocol !== 'http:') throw new Error('not http')
    } catch {
      res.writeHead(400, { 'content-type': 'text/plain' }).end('this is an egress proxy: send absolute http:// URLs, or CONNECT for https\n')
      return
    }
    const port = Number(url.port || 80)
    this.check(address, url.hostname, port).then((allowed) => {
      if (!allowed) res.writeHead(403, { 'content-type': 'text/plain', connection: 'close' }).end(`egress to ${url.hostname}:${port} is not allowed (RUNNER_EGRESS_ALLOW or the task's egress_allow)\n`)
      else this.send(req, res, url, allowed)
    }, () => res.destroy())
  }

  private send (req: IncomingMessage, res: ServerResponse, url: URL, allowed: EgressAllowed): void {
    const to = this.target(url.hostname, allowed.port)
    const headers: Record<string, string | string[] | undefined> = { ...req.headers, host: url.host }
    for (const h of Object.keys(headers)) if (h.startsWith('proxy-')) delete headers[h]
    for (const h of ['connection', 'keep-alive']) delete headers[h]
    const upstream = httpRequest({ host: to.host, port: to.port, method: req.method, path: url.pathname + url.search, headers, agent: false }, (up) => {
      // hop-by-hop headers stay on their hop: the client's connection is the proxy's own
      const { connection, 'keep-alive': keepAlive, ...rest } = up.headers
      res.writeHead(up.statusCode ?? 502, rest)
      up.pipe(res)
    })
    // one socket per request (no agent): counted when it closes
    let counted = false
    const count = (s?: Socket) => { if (!counted) { counted = true; this.closed(allowed, s) } }
    upstream.on('socket', (s) => s.on('close', () => count(s)))
    upstream.on('error', () => {
      if (!upstream.socket) count()
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end(`${url.host} cannot be reached\n`); else res.destroy()
    })
    req.pipe(upstream)
  }
}

/** The name of the owner's internal network (one per data directory, like its containers' labels). */
export const egressNetworkName = (owner: string) => `lop-egress-${createHash('sha256').update(owner).digest('hex').slice(0, 12)}`

/** Reads RUNNER_EGRESS_HOST_MAP (a JSON file of name → address, for tests), or nothing. */
export function readHostMap (file: string): Record<string, string> {
  if (!file) return {}
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as Record<string, string>
  } catch (err) {
    throw new ConfigError(`Invalid configuration: RUNNER_EGRESS_HOST_MAP="${file}" cannot be read as JSON (${(err as Error).message}); expected a file such as {"api.example.com": "127.0.0.1:8443"}`)
  }
}

/**
 * The service's own container on this engine, when it runs in one (the Compose stack): `configured`
 * (RUNNER_EGRESS_SERVICE_CONTAINER: an id or name, or `host` for none) or else found from the
 * container id in /proc/self/mountinfo (Docker mounts /etc/hostname and /etc/resolv.conf from
 * /var/lib/docker/containers/<id>/) or the host name (Docker's default is the short id), and only
 * if the engine knows it as a running container. undefined: the service runs on the host.
 */
export async function serviceContainer (docker: DockerEngine, configured = ''): Promise<string | undefined> {
  if (configured === 'host') return undefined
  if (configured) {
    const info = await docker.inspectContainer(configured).catch(() => undefined)
    if (!info?.State.Running) throw new ConfigError(`Invalid configuration: RUNNER_EGRESS_SERVICE_CONTAINER="${configured}" is not a running container on this Docker engine; expected the service's own container (id or name), or host`)
    return info.Id
  }
  let mountinfo = ''
  try { mountinfo = readFileSync('/proc/self/mountinfo', 'utf8') } catch {}
  const candidates = [...new Set([...mountinfo.matchAll(/\/containers\/([0-9a-f]{64})\//g)].map((m) => m[1]))]
  if (/^[0-9a-f]{12,64}$/.test(hostname())) candidates.push(hostname())
  for (const id of candidates) {
    const info = await docker.inspectContainer(id).catch(() => undefined)
    if (info?.State.Running) return info.Id
  }
  return undefined
}

/**
 * The network and the proxy, started together: the network is made (or reused) with Internal set and
 * the service's labels, and runners get HTTP(S)_PROXY pointing at the proxy. On the host the proxy
 * listens on the network's gateway address (the host's side of its bridge); in a container (the
 * Compose stack) the service connects its own container to the network and the proxy listens on
 * its address there. Connections through the proxy are counted per task (`takeUsage`).
 */
export class Egress {
  readonly proxy: EgressProxy
  runtime: EgressRuntime | undefined
  /** The address the proxy listens on: the runners' only way out, and nothing else of the service is reached there. */
  address: string | undefined
  /** The service's own container, when it joined the network (the Compose stack). */
  container: string | undefined
  private readonly tasks = new Map<string, string>()
  private usage = new Map<string, EgressUsage>()

  /** `taskRules`: a task's own (narrower) list, or undefined when it has none. */
  constructor (private readonly docker: DockerEngine, private readonly owner: string, rules: EgressRule[], hostMap: Record<string, string>,
    taskRules?: (taskId: string) => Promise<EgressRule[] | undefined>, private readonly options: { serviceContainer?: string } = {}) {
    this.proxy = new EgressProxy(rules, hostMap, async (address) => {
      const task = await this.taskOf(address)
      return { task, rules: task && taskRules ? await taskRules(task) : undefined }
    })
    this.proxy.on('closed', (c) => { if (c.task) this.count(c.task, { bytes_out: c.bytes_out, bytes_in: c.bytes_in, connections: 1, hosts: { [`${c.host}:${c.port}`]: 1 } }) })
    this.proxy.on('denied', (d) => { if (d.task) this.count(d.task, { denied: 1 }) })
  }

  get network (): string { return egressNetworkName(this.owner) }

  async start (): Promise<EgressRuntime> {
    this.container = await serviceContainer(this.docker, this.options.serviceContainer)
    let net = await this.docker.inspectNetwork(this.network)
    if (net && !net.Internal) throw new Error(`Docker network ${this.network} exists but is not internal; remove it (docker network rm ${this.network}) and start again`)
    if (!net) {
      await this.docker.createNetwork({ Name: this.network, Internal: true, Labels: { [LABEL.service]: SERVICE_LABEL, [LABEL.owner]: this.owner, [LABEL.role]: 'egress' } })
      net = await this.docker.inspectNetwork(this.network)
    }
    let address: string | undefined
    if (this.container) {
      // the Compose stack: the gateway is the host's, which the service container does not listen on
      if (!net?.Containers?.[this.container]) await this.docker.connectNetwork(this.network, this.container)
      net = await this.docker.inspectNetwork(this.network)
      address = net?.Containers?.[this.container]?.IPv4Address.split('/')[0]
      if (!address) throw new Error(`the service's container ${this.container.slice(0, 12)} has no IPv4 address on Docker network ${this.network} for the egress proxy to listen on`)
    } else {
      address = net?.IPAM.Config?.find((c) => c.Gateway && isIP(c.Gateway) === 4)?.Gateway
      if (!address) throw new Error(`Docker network ${this.network} has no IPv4 gateway address for the egress proxy to listen on`)
    }
    const port = await this.proxy.listen(address)
    this.address = address
    const url = `http://${address}:${port}`
    const noProxy = 'localhost,127.0.0.1,::1'
    this.runtime = {
      network: this.network,
      env: [`HTTPS_PROXY=${url}`, `HTTP_PROXY=${url}`, `https_proxy=${url}`, `http_proxy=${url}`, `NO_PROXY=${noProxy}`, `no_proxy=${noProxy}`]
    }
    return this.runtime
  }

  /** Adds to a task's usage since the last `takeUsage`. */
  count (taskId: string, delta: Partial<EgressUsage>): void {
    this.usage.set(taskId, addUsage(this.usage.get(taskId), delta))
  }

  /** The usage counted since the last call, by task (the caller adds it to what is stored). */
  takeUsage (): Map<string, EgressUsage> {
    const taken = this.usage
    this.usage = new Map()
    return taken
  }

  /** The task whose container has `address` on the network, or undefined (asked of the engine, cached by container). */
  async taskOf (address: string): Promise<string | undefined> {
    const net = await this.docker.inspectNetwork(this.network)
    const entry = Object.entries(net?.Containers ?? {}).find(([, c]) => c.IPv4Address.split('/')[0] === address)
    if (!entry) return undefined
    const [id] = entry
    let task = this.tasks.get(id)
    if (task === undefined) {
      const info = await this.docker.inspectContainer(id).catch(() => undefined)
      task = info?.Config.Labels?.[LABEL.task] ?? ''
      if (this.tasks.size > 10_000) this.tasks.clear()
      this.tasks.set(id, task)
    }
    return task || undefined
  }

  async close (): Promise<void> {
    await this.proxy.close()
    if (this.container) await this.docker.disconnectNetwork(this.network, this.container).catch(() => {})
    // containers of tasks left running for recovery keep the network: it is reused at the next start
    await this.docker.removeNetwork(this.network).catch(() => {})
  }
}

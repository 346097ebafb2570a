/**
 * Egress control for runner containers (RUNNER_EGRESS=allowlist): an internal Docker network that the
 * service creates and labels (no route out), which the runners join, and an HTTP forward proxy run by
 * the service (CONNECT for TLS, absolute-URI requests for plain HTTP), listening on that network's
 * gateway address: the only way out. The proxy resolves names itself and lets through only hosts on
 * RUNNER_EGRESS_ALLOW (exact names or `*.example.com`, optional `:port`, else 443 and 80); a raw IP
 * address as the target is refused. Each refusal is told to `onDenied` with the container's address,
 * which `taskOf` maps to the task through the network's attached containers.
 */
import { createHash } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { readFileSync } from 'node:fs'
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

export interface EgressDenial { address: string, host: string, port: number, reason: 'not_allowed' | 'not_allowed_for_task' | 'ip_address' | 'bad_request' }

/** What a runner container is given: its network and the proxy variables. */
export interface EgressRuntime { network: string, env: string[] }

export class EgressProxy extends EventEmitter<{ denied: [EgressDenial], allowed: [{ address: string, host: string, port: number, rule: string }] }> {
  private server: Server | undefined
  private readonly sockets = new Set<Duplex>()

  /**
   * `hostMap`: names the proxy resolves to given addresses instead of asking DNS (`name` → `ip:port`
   * or `ip`): for tests, whose stand-in hosts listen on this machine.
   */
  constructor (
    private readonly rules: EgressRule[],
    private readonly hostMap: Record<string, string> = {},
    /** The narrower list of the task whose container connects from `address`, if it has one (a task's `egress_allow`). */
    private readonly narrowedFor?: (address: string) => Promise<EgressRule[] | undefined>
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
   * The rule that allows the target, or the reason it is refused (told to listeners). A task with
   * its own list must match it as well (looked up only for what the server's list allows; a lookup
   * that fails refuses).
   */
  private async check (address: string, host: string, port: number): Promise<string | null> {
    const bare = host.replace(/^\[|\]$/g, '')
    let reason: EgressDenial['reason'] | null = !host || !Number.isInteger(port) || port < 1 || port > 65535 ? 'bad_request' : isIP(bare) ? 'ip_address' : null
    const rule = reason ? undefined : matchRule(this.rules, bare, port)
    if (rule && this.narrowedFor) {
      const narrowed = await this.narrowedFor(address).catch(() => [])
      if (narrowed && !matchRule(narrowed, bare, port)) reason = 'not_allowed_for_task'
    }
    if (!rule || reason) {
      this.emit('denied', { address, host: bare, port, reason: reason ?? 'not_allowed' })
      return null
    }
    this.emit('allowed', { address, host: bare, port, rule: ruleText(rule) })
    return ruleText(rule)
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
      else this.open(socket, host, port, head)
    }, () => socket.destroy())
  }

  private open (socket: Duplex, host: string, port: number, head: Buffer): void {
    const to = this.target(host, port)
    const upstream = connect(to.port, to.host, () => {
      socket.write('HTTP/1.1 200 Connection Established\r\n\r\n')
      if (head.length) upstream.write(head)
      upstream.pipe(socket)
      socket.pipe(upstream)
    })
    this.sockets.add(upstream)
    upstream.on('close', () => { this.sockets.delete(upstream); socket.destroy() })
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
      else this.send(req, res, url, port)
    }, () => res.destroy())
  }

  private send (req: IncomingMessage, res: ServerResponse, url: URL, port: number): void {
    const to = this.target(url.hostname, port)
    const headers: Record<string, string | string[] | undefined> = { ...req.headers, host: url.host }
    for (const h of Object.keys(headers)) if (h.startsWith('proxy-')) delete headers[h]
    for (const h of ['connection', 'keep-alive']) delete headers[h]
    const upstream = httpRequest({ host: to.host, port: to.port, method: req.method, path: url.pathname + url.search, headers, agent: false }, (up) => {
      // hop-by-hop headers stay on their hop: the client's connection is the proxy's own
      const { connection, 'keep-alive': keepAlive, ...rest } = up.headers
      res.writeHead(up.statusCode ?? 502, rest)
      up.pipe(res)
    })
    upstream.on('error', () => { if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' }).end(`${url.host} cannot be reached\n`); else res.destroy() })
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
 * The network and the proxy, started together: the network is made (or reused) with Internal set and
 * the service's labels, the proxy listens on its gateway address (reachable from the containers on
 * it when the service runs on the host), and runners get HTTP(S)_PROXY pointing there.
 */
export class Egress {
  readonly proxy: EgressProxy
  runtime: EgressRuntime | undefined
  private readonly tasks = new Map<string, string>()

  /** `taskRules`: a task's own (narrower) list, or undefined when it has none. */
  constructor (private readonly docker: DockerEngine, private readonly owner: string, rules: EgressRule[], hostMap: Record<string, string>,
    taskRules?: (taskId: string) => Promise<EgressRule[] | undefined>) {
    this.proxy = new EgressProxy(rules, hostMap, taskRules && (async (address) => {
      const taskId = await this.taskOf(address)
      return taskId ? await taskRules(taskId) : undefined
    }))
  }

  get network (): string { return egressNetworkName(this.owner) }

  async start (): Promise<EgressRuntime> {
    let net = await this.docker.inspectNetwork(this.network)
    if (net && !net.Internal) throw new Error(`Docker network ${this.network} exists but is not internal; remove it (docker network rm ${this.network}) and start again`)
    if (!net) {
      await this.docker.createNetwork({ Name: this.network, Internal: true, Labels: { [LABEL.service]: SERVICE_LABEL, [LABEL.owner]: this.owner, [LABEL.role]: 'egress' } })
      net = await this.docker.inspectNetwork(this.network)
    }
    const gateway = net?.IPAM.Config?.find((c) => c.Gateway && isIP(c.Gateway) === 4)?.Gateway
    if (!gateway) throw new Error(`Docker network ${this.network} has no IPv4 gateway address for the egress proxy to listen on`)
    const port = await this.proxy.listen(gateway)
    const url = `http://${gateway}:${port}`
    const noProxy = 'localhost,127.0.0.1,::1'
    this.runtime = {
      network: this.network,
      env: [`HTTPS_PROXY=${url}`, `HTTP_PROXY=${url}`, `https_proxy=${url}`, `http_proxy=${url}`, `NO_PROXY=${noProxy}`, `no_proxy=${noProxy}`]
    }
    return this.runtime
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
    // containers of tasks left running for recovery keep the network: it is reused at the next start
    await this.docker.removeNetwork(this.network).catch(() => {})
  }
}

/**
 * A Unix socket that forwards to the real Docker engine, request by request, and can be switched
 * off and on (the service sees its engine disappear and come back while other tests keep using the
 * engine) or made to hold requests that match a pattern without ever answering them (a hung engine
 * call), or to rewrite an answer's headers. Upgraded connections (attach) are piped through as bytes.
 */
import { createServer, request, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import { createConnection, type Socket } from 'node:net'
import { join } from 'node:path'

export const ENGINE_SOCKET = (process.env.DOCKER_HOST ?? '').startsWith('unix://')
  ? (process.env.DOCKER_HOST as string).slice('unix://'.length)
  : '/var/run/docker.sock'

/** Requests to hold: `method` exactly, `path` a pattern on the URL path (API version prefix included). */
export interface HoldRule { method: string, path: RegExp, times?: number }

export class EngineProxy {
  readonly socketPath: string
  private server: Server | undefined
  private readonly sockets = new Set<Socket>()
  private rules: HoldRule[] = []
  /** Connections accepted so far: how many times the service went to the engine. */
  connections = 0
  /** Requests forwarded or held so far, as `METHOD /path` (no API version, no query). */
  readonly requests: string[] = []
  /** Requests held so far (never answered), as `METHOD /path`. */
  readonly held: string[] = []
  /** Rewrites the headers of the engine's answer to a request, when set. */
  rewriteHeaders?: (method: string, path: string, headers: IncomingHttpHeaders) => IncomingHttpHeaders

  constructor (dir: string) {
    this.socketPath = join(dir, 'engine.sock')
  }

  /** Holds requests matching the rule (its first `times` matches, default all) without answering. */
  hold (rule: HoldRule): void {
    this.rules.push({ ...rule })
  }

  /** Stops holding new requests (those already held stay held until stop()). */
  unhold (): void {
    this.rules = []
  }

  private track (s: Socket): void {
    this.sockets.add(s)
    s.on('close', () => this.sockets.delete(s))
  }

  private matches (method: string, path: string): boolean {
    const rule = this.rules.find((r) => r.method === method && r.path.test(path) && (r.times === undefined || r.times > 0))
    if (!rule) return false
    if (rule.times !== undefined) rule.times--
    return true
  }

  private forward (req: IncomingMessage, res: ServerResponse): void {
    const path = (req.url ?? '/').split('?')[0].replace(/^\/v[0-9.]+\//, '/')
    const name = `${req.method} ${path}`
    this.requests.push(name)
    if (this.matches(req.method ?? '', path)) {
      this.held.push(name)
      return
    }
    const upstream = request({ socketPath: ENGINE_SOCKET, method: req.method, path: req.url, headers: req.headers }, (answer) => {
      const headers = this.rewriteHeaders ? this.rewriteHeaders(req.method ?? '', path, answer.headers) : answer.headers
      res.writeHead(answer.statusCode ?? 502, headers)
      // a stream's headers go out now: an attach sends no byte before its container starts
      res.flushHeaders()
      answer.pipe(res)
      answer.on('error', () => res.destroy())
    })
    upstream.on('error', () => res.destroy())
    res.on('close', () => upstream.destroy())
    req.pipe(upstream)
  }

  async start (): Promise<void> {
    const server = createServer((req, res) => this.forward(req, res))
    server.on('connection', (s: Socket) => { this.connections++; this.track(s) })
    // attach: the engine switches the connection to a raw stream; pipe the bytes both ways
    server.on('upgrade', (req: IncomingMessage, client: Socket, head: Buffer) => {
      this.requests.push(`${req.method} ${(req.url ?? '/').split('?')[0].replace(/^\/v[0-9.]+\//, '/')}`)
      const upstream = createConnection(ENGINE_SOCKET)
      this.track(upstream)
      const lines = [`${req.method} ${req.url} HTTP/1.1`]
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}`)
      upstream.write(lines.join('\r\n') + '\r\n\r\n')
      if (head.length) upstream.write(head)
      for (const s of [client, upstream]) s.on('error', () => { client.destroy(); upstream.destroy() })
      client.pipe(upstream).pipe(client)
    })
    server.keepAliveTimeout = 60_000
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(this.socketPath, resolve))
    this.server = server
  }

  async stop (): Promise<void> {
    const server = this.server
    this.server = undefined
    for (const s of this.sockets) s.destroy()
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

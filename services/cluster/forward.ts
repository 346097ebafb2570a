/**
 * Forwarding between replicas (cluster mode): node-local engine calls on a task another replica runs
 * (files, a workspace file, logs, controls, follow-up messages) and legacy MCP sessions opened on
 * another replica go to that replica over HTTP, authenticated with CLUSTER_TOKEN. The caller is
 * authenticated on the entry replica; its principal is carried over, so the owner scopes the call
 * the same way. Errors come back as they were thrown: a TaskError keeps its code, a DockerError its
 * code; a replica that does not answer, or was lost, is a TaskError `unavailable` naming it.
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { Readable } from 'node:stream'
import type pg from 'pg'
import { DockerError, type DockerErrorCode } from '../docker/errors.js'
import { TaskError } from '../errors.js'
import type { RemoteMethod, RemoteNodes } from '../tasks/remote.js'

/** The replicas' secret and the principal it speaks for, on every forwarded request. */
export const TOKEN_HEADER = 'x-cluster-token'
export const PRINCIPAL_HEADER = 'x-cluster-principal'
/** The internal API (registered only in cluster mode with CLUSTER_TOKEN). */
export const CALL_PATH = '/cluster/call'
export const LOGS_PATH = '/cluster/logs'
/** The longest an engine call may take on the owner (a cancel waits for the container to stop). */
const CALL_TIMEOUT_MS = 120_000

export interface NodeAddress { url: string, lost: boolean }
/** Where a replica is reached (the nodes table). */
export interface NodeDirectory { address: (nodeId: string) => Promise<NodeAddress | undefined> }

/** The nodes table of the shared PostgreSQL database. */
export function pgNodes (pool: pg.Pool): NodeDirectory {
  return {
    async address (nodeId) {
      const { rows } = await pool.query<NodeAddress>('SELECT url, lost FROM nodes WHERE node_id = $1', [nodeId])
      return rows[0]
    }
  }
}

const sha256 = (s: string) => createHash('sha256').update(s).digest()

/** Whether `given` is the cluster token (constant time). */
export function tokenMatches (given: string | string[] | undefined, token: string): boolean {
  return typeof given === 'string' && token !== '' && timingSafeEqual(sha256(given), sha256(token))
}

// --- the wire: JSON with Buffers as base64, errors with their kind and code ----------------------

export function encode (value: unknown): string {
  return JSON.stringify(value, function (this: Record<string, unknown>, key, v: unknown) {
    const raw = this[key]
    return Buffer.isBuffer(raw) ? { $base64: raw.toString('base64') } : v
  })
}

export function decode (text: string): unknown {
  return JSON.parse(text, (_key, v: unknown) =>
    v && typeof v === 'object' && typeof (v as { $base64?: unknown }).$base64 === 'string' ? Buffer.from((v as { $base64: string }).$base64, 'base64') : v)
}

export interface WireError { kind: 'task' | 'docker' | 'error', code?: string, message: string, details?: Record<string, unknown>, status?: number }

/** An error of the owner's engine as it travels back. */
export function errorToWire (err: unknown): WireError {
  if (err instanceof TaskError) return { kind: 'task', code: err.code, message: err.message, details: err.details }
  if (err instanceof DockerError) return { kind: 'docker', code: err.code, message: err.message, status: err.statusCode }
  return { kind: 'error', message: 'the replica that runs the task failed to answer; see its log' }
}

function errorFromWire (e: WireError): Error {
  if (e.kind === 'task') return new TaskError(e.code as TaskError['code'], e.message, e.details)
  if (e.kind === 'docker') return new DockerError(e.code as DockerErrorCode, e.message, e.status)
  return new Error(e.message)
}

/** The node part of a session id (`<node id>.<uuid>`), or undefined for an id without one. */
export function sessionNode (sessionId: string): string | undefined {
  const at = sessionId.lastIndexOf('.')
  return at > 0 ? sessionId.slice(0, at) : undefined
}

const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection', 'te', 'trailer', 'content-length', 'host', 'authorization', TOKEN_HEADER, PRINCIPAL_HEADER])

export class ClusterForward implements RemoteNodes {
  constructor (private readonly nodes: NodeDirectory, private readonly token: string) {}

  /** The base URL of a live replica, or `unavailable` naming it. */
  async url (nodeId: string): Promise<string> {
    const node = await this.nodes.address(nodeId)
    if (!node) throw new TaskError('unavailable', `replica ${nodeId} is not registered in the cluster: what is on it cannot be reached`, { node_id: nodeId })
    if (node.lost) throw new TaskError('unavailable', `replica ${nodeId} was lost (no heartbeat within NODE_LEASE_MS): its workspaces, logs and containers cannot be reached until it returns`, { node_id: nodeId })
    return node.url.replace(/\/+$/, '')
  }

  /** Whether the replica is registered and not lost (a session of any other one is unknown). */
  async live (nodeId: string): Promise<boolean> {
    const node = await this.nodes.address(nodeId)
    return node !== undefined && !node.lost
  }

  private headers (principal: string): Record<string, string> {
    return { [TOKEN_HEADER]: this.token, [PRINCIPAL_HEADER]: principal }
  }

  private down (nodeId: string, url: string, err: unknown): TaskError {
    const cause = (err as { cause?: { code?: string } }).cause?.code ?? (err as Error).message
    return new TaskError('unavailable', `replica ${nodeId} (${url}) does not answer (${cause}): it runs this task; retry when it is back`, { node_id: nodeId })
  }

  async call (nodeId: string, method: RemoteMethod, principal: string, args: unknown[]): Promise<unknown> {
    const url = await this.url(nodeId)
    let res: Response
    try {
      res = await fetch(url + CALL_PATH, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...this.headers(principal) },
        body: encode({ method, args }),
        signal: AbortSignal.timeout(CALL_TIMEOUT_MS)
      })
    } catch (err) {
      throw this.down(nodeId, url, err)
    }
    const text = await res.text().catch((err: unknown) => { throw this.down(nodeId, url, err) })
    const body = (() => { try { return decode(text) as { result?: unknown, error?: WireError } } catch { return {} } })()
    if (res.ok && 'result' in body) return body.result
    if (body.error) throw errorFromWire(body.error)
    throw new TaskError('unavailable', `replica ${nodeId} (${url}) refused the forwarded call with HTTP ${res.status}: check that every replica has the same CLUSTER_TOKEN`, { node_id: nodeId })
  }

  /** Opens the owner's log stream (its refusals and a replica down are thrown here, before any byte). */
  async streamLogs (nodeId: string, principal: string, id: string, opts: { follow: boolean, offset?: number, signal: AbortSignal }): Promise<AsyncGenerator<Buffer>> {
    const url = await this.url(nodeId)
    const query = new URLSearchParams({ id, follow: String(opts.follow), offset: String(opts.offset ?? 0) })
    let res: Response
    try {
      res = await fetch(`${url}${LOGS_PATH}?${query}`, { headers: this.headers(principal), signal: opts.signal })
    } catch (err) {
      throw this.down(nodeId, url, err)
    }
    if (!res.ok || !res.body) {
      const text = await res.text().catch(() => '')
      const error = (() => { try { return (decode(text) as { error?: WireError }).error } catch { return undefined } })()
      if (error) throw errorFromWire(error)
      throw new TaskError('unavailable', `replica ${nodeId} (${url}) refused the log stream with HTTP ${res.status}: check that every replica has the same CLUSTER_TOKEN`, { node_id: nodeId })
    }
    const stream = Readable.fromWeb(res.body as import('node:stream/web').ReadableStream<Uint8Array>)
    return (async function * () {
      try {
        for await (const chunk of stream) yield chunk as Buffer
      } catch (err) {
        if (!opts.signal.aborted) throw err
      }
    })()
  }

  /**
   * A legacy MCP request to the replica that holds its session: the client's request (authenticated
   * here) with its body, the principal carried over; the answer (an SSE stream too) streamed back.
   */
  async proxySession (nodeId: string, principal: string, req: IncomingMessage, res: ServerResponse, body: unknown): Promise<void> {
    const target = new URL('/mcp', await this.url(nodeId))
    const headers: Record<string, string | string[]> = {}
    for (const [name, value] of Object.entries(req.headers as IncomingHttpHeaders)) {
      if (value !== undefined && !HOP_BY_HOP.has(name) && name !== 'origin') headers[name] = value
    }
    const payload = req.method === 'POST' && body !== undefined ? Buffer.from(JSON.stringify(body)) : undefined
    if (payload) headers['content-length'] = String(payload.length)
    Object.assign(headers, this.headers(principal))
    await new Promise<void>((resolve, reject) => {
      const send = target.protocol === 'https:' ? httpsRequest : httpRequest
      const upstream = send(target, { method: req.method, headers }, (answer) => {
        const out: Record<string, string | string[]> = {}
        for (const [name, value] of Object.entries(answer.headers)) if (value !== undefined && !HOP_BY_HOP.has(name)) out[name] = value
        res.writeHead(answer.statusCode ?? 502, out)
        // SSE: each event as it comes
        res.flushHeaders()
        answer.pipe(res)
        answer.once('end', resolve)
        answer.once('error', () => { res.destroy(); resolve() })
      })
      // the client going away ends the forwarded request (and its stream on the owner)
      res.once('close', () => { upstream.destroy(); resolve() })
      upstream.once('error', (err) => {
        if (res.headersSent) { res.destroy(); resolve() } else reject(this.down(nodeId, target.origin, err))
      })
      upstream.end(payload)
    })
  }
}

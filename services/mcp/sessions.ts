/**
 * MCP session registry: one McpServer and one streamable HTTP transport per session, an idle TTL,
 * a cap with least-recently-used eviction of idle sessions, and eviction that closes the transport
 * (clients rarely send DELETE, so nothing else would ever free them).
 *
 * The cap is exact: an initialize reserves its slot before anything is awaited, and the slot counts
 * until the session registers or the initialize fails. At the cap, room is taken from the principal
 * holding the most (sessions and initializes in flight): the caller's own least recently used idle
 * session, unless another principal holds more than one more than the caller, whose least recently
 * used idle session goes instead. So a burst cannot push another principal below an even share.
 */
import { randomUUID } from 'node:crypto'
import type { McpServer } from '@modelcontextprotocol/server'
import { NodeStreamableHTTPServerTransport as StreamableHTTPServerTransport } from '@modelcontextprotocol/node'

export interface Session {
  readonly id: string
  readonly principal: string
  readonly transport: StreamableHTTPServerTransport
  readonly server: McpServer
  readonly createdAt: number
  lastSeen: number
  /** JSON-RPC POSTs currently being served; a session with a call in flight is never evicted. */
  active: number
}

export type EvictionReason = 'ttl' | 'capacity' | 'deleted' | 'closed' | 'shutdown'

export interface SessionRegistryOptions {
  ttlMs: number
  maxSessions: number
  /** Builds the McpServer of one session (a server is never shared between sessions). */
  createServer: (principal: string) => McpServer
  onEvict?: (session: Session, reason: EvictionReason) => void
  /** Cluster mode: this replica's node id, which session ids carry (`<node id>.<uuid>`) so any replica can forward to it. */
  node?: string
  now?: () => number
}

export class SessionCapacityError extends Error {
  override name = 'SessionCapacityError'
}

export class SessionRegistry {
  /** Insertion order is recency order: a touched session is moved to the end. */
  private readonly sessions = new Map<string, Session>()
  /** Sessions plus initializes in flight, per principal. */
  private readonly held = new Map<string, number>()
  /** Initializes in flight: their slots are reserved. */
  private pending = 0
  private readonly now: () => number
  private sweeper: NodeJS.Timeout | undefined

  constructor (private readonly opts: SessionRegistryOptions) {
    this.now = opts.now ?? Date.now
  }

  get size (): number {
    return this.sessions.size
  }

  /** Starts the periodic TTL sweep (a fraction of the TTL, unref'ed). */
  start (): void {
    const every = Math.max(250, Math.min(60_000, Math.floor(this.opts.ttlMs / 4)))
    this.sweeper ??= setInterval(() => { this.sweep() }, every).unref()
  }

  /** The live session with this id, marked as just used; undefined when unknown or expired. */
  get (id: string): Session | undefined {
    const s = this.sessions.get(id)
    if (!s) return undefined
    if (s.active === 0 && this.now() - s.lastSeen > this.opts.ttlMs) {
      this.evict(s, 'ttl').catch(() => {})
      return undefined
    }
    this.sessions.delete(id)
    this.sessions.set(id, s)
    s.lastSeen = this.now()
    return s
  }

  /**
   * A transport and server for a new session, in a slot reserved at once (or SessionCapacityError).
   * The session is registered when the transport assigns its id (on a successful initialize);
   * `discard` it if that never happens, which frees the slot.
   */
  async open (principal: string): Promise<{ transport: StreamableHTTPServerTransport, server: McpServer, discard: () => Promise<void> }> {
    // synchronous up to the reservation: concurrent initializes see each other's slots
    if (this.sessions.size + this.pending >= this.opts.maxSessions) this.makeRoom(principal)
    this.pending++
    this.count(principal, 1)
    let reserved = true
    const unreserve = (keepCount: boolean) => {
      if (!reserved) return
      reserved = false
      this.pending--
      if (!keepCount) this.count(principal, -1)
    }
    const server = this.opts.createServer(principal)
    const transport: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
      sessionIdGenerator: this.opts.node ? () => `${this.opts.node}.${randomUUID()}` : randomUUID,
      onsessioninitialized: (id) => {
        unreserve(true) // the slot is now the session's
        const at = this.now()
        this.sessions.set(id, { id, principal, transport, server, createdAt: at, lastSeen: at, active: 0 })
      }
    })
    transport.onclose = () => {
      const id = transport.sessionId
      const s = id ? this.sessions.get(id) : undefined
      if (s) this.remove(s, 'closed')
    }
    const discard = async () => {
      unreserve(false)
      await server.close()
    }
    try {
      await server.connect(transport)
    } catch (err) {
      await discard()
      throw err
    }
    return { transport, server, discard }
  }

  /** Marks a request of the session as started; the returned function marks it finished. */
  hold (session: Session): () => void {
    session.active++
    let released = false
    return () => {
      if (released) return
      released = true
      session.active--
      session.lastSeen = this.now()
    }
  }

  /** Evicts idle sessions past the TTL. Returns how many were evicted. */
  sweep (): number {
    const cutoff = this.now() - this.opts.ttlMs
    let n = 0
    for (const s of this.sessions.values()) {
      if (s.active === 0 && s.lastSeen < cutoff) {
        this.evict(s, 'ttl').catch(() => {})
        n++
      }
    }
    return n
  }

  async evict (session: Session, reason: EvictionReason): Promise<void> {
    if (this.sessions.get(session.id) !== session) return
    this.remove(session, reason)
    // closing the server closes its transport too: open SSE streams end, pending requests are cancelled
    await session.server.close().catch(() => {})
  }

  async closeAll (reason: EvictionReason = 'shutdown'): Promise<void> {
    clearInterval(this.sweeper)
    this.sweeper = undefined
    await Promise.all([...this.sessions.values()].map((s) => this.evict(s, reason)))
  }

  private remove (session: Session, reason: EvictionReason): void {
    if (this.sessions.get(session.id) !== session) return
    this.sessions.delete(session.id)
    this.count(session.principal, -1)
    this.opts.onEvict?.(session, reason)
  }

  private count (principal: string, delta: number): void {
    const n = (this.held.get(principal) ?? 0) + delta
    if (n > 0) this.held.set(principal, n)
    else this.held.delete(principal)
  }

  /**
   * Frees one slot for `principal`: the least recently used idle session of the largest holder
   * among those holding more than one more than `principal`, else its own least recently used idle
   * session; or refuses.
   */
  private makeRoom (principal: string): void {
    const mine = this.held.get(principal) ?? 0
    let own: Session | undefined
    let other: Session | undefined
    let otherHeld = mine + 1
    // in recency order: the first idle session seen of a principal is its least recently used
    for (const s of this.sessions.values()) {
      if (s.active !== 0) continue
      if (s.principal === principal) {
        own ??= s
        continue
      }
      const held = this.held.get(s.principal) ?? 0
      if (held > otherHeld) {
        other = s
        otherHeld = held
      }
    }
    const victim = other ?? own
    if (victim) {
      this.evict(victim, 'capacity').catch(() => {})
      return
    }
    throw new SessionCapacityError(`Too many MCP sessions: all ${this.opts.maxSessions} are busy (MCP_MAX_SESSIONS); retry shortly or close unused sessions with DELETE /mcp`)
  }
}

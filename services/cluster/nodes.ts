/**
 * Cluster mode (DATABASE_URL, issue #15): this replica as a node of the cluster. It registers its
 * row in `nodes` (url, engine, capacity; a returning node clears `lost`), renews it every
 * NODE_HEARTBEAT_MS on the database's clock and sweeps for nodes whose heartbeat is older than
 * NODE_LEASE_MS: one replica wins each lost node (a conditional UPDATE … RETURNING), puts its
 * claimed-not-started tasks back in the queue and ends its running, paused and pinned tasks
 * `failed` (`node_lost`), telling waiters (the end notification) and Letta (the outbox rows become
 * pending). A replica sweeps only once its own heartbeats have succeeded for a whole lease: after a
 * database outage every heartbeat is old, and each live replica gets a lease to renew its own. A
 * heartbeat that finds its own row lost lets go of the tasks taken from it (fencing keeps its stale
 * writes out meanwhile) and registers again. A broken LISTEN connection is opened again by the next
 * heartbeat.
 *
 * It is also the engine's queue (ClusterQueue): claims in one short transaction under a cluster-wide
 * advisory lock (the cluster's running count below CLUSTER_MAX_CONCURRENT_TASKS, the oldest queued
 * task with FOR UPDATE SKIP LOCKED, node_id = this node, lease = nextval). LISTEN lop_queue /
 * lop_ended (the tasks table's trigger) wakes the claim loop and the waiters at once; the heartbeat
 * doubles as the poll that catches a missed notification.
 */
import type pg from 'pg'
import type { ClusterQueue } from '../tasks/cluster.js'
import type { TaskEngine } from '../tasks/engine.js'
import { appendEvents, transaction, unavailable, type PgTaskStore } from '../tasks/pg-store.js'

/** The advisory lock every claim takes (any constant; 'lopc' in ASCII). */
const CLAIM_LOCK = 0x6c6f7063
/** The advisory lock of a submission's queue check and insert ('lopa'). */
const ADMIT_LOCK = 0x6c6f7061
/** The database's clock in milliseconds: every node's heartbeat is compared on one clock. */
const DB_NOW = '(extract(epoch from clock_timestamp()) * 1000)::bigint'
/** A task that holds a slot: running, paused (it keeps its container, as with the semaphore), or claimed and not started yet. */
const HOLDS_SLOT = "(status IN ('running', 'paused') OR (status = 'queued' AND lease IS NOT NULL))"

export interface NodeOptions {
  /** Where the other replicas reach this one (NODE_URL, or this replica's own address). */
  url: () => string
  /** MAX_CONCURRENT_TASKS. */
  capacity: number
  /** CLUSTER_MAX_CONCURRENT_TASKS (0: none). */
  clusterMax: number
  leaseMs: number
  heartbeatMs: number
  /** The Docker engine's name and versions, for operators (best effort). */
  engineInfo: () => Promise<Record<string, unknown> | null>
  log: { info: (obj: object, msg: string) => void, warn: (obj: object, msg: string) => void }
}

/** What a node asks of its replica's engine. */
type NodeEngine = Pick<TaskEngine, 'kick' | 'taskChanged' | 'letGoOf' | 'liveTasks' | 'lostElsewhere'>

export interface LostNode { node_id: string, requeued: string[], failed: string[] }

export class ClusterNode implements ClusterQueue {
  private engine?: NodeEngine
  private listener?: pg.PoolClient
  private timer?: NodeJS.Timeout
  private beating?: Promise<void>
  /** Since when this replica's heartbeats have succeeded without a failure (local clock; only a duration is read). */
  private beatingSince?: number
  private stopped = false

  constructor (private readonly store: PgTaskStore, private readonly opts: NodeOptions) {}

  get id (): string { return this.store.owner }
  private get pool (): pg.Pool { return this.store.pool }

  // --- the queue (ClusterQueue) ---------------------------------------------------------------

  /**
   * The cluster's backlog: unclaimed queued tasks beyond the free slots of the live nodes (and of the
   * cluster limit), as the semaphore counts waiters only when no slot is free. One query.
   */
  async backlog (): Promise<{ waiting: number, room: number }> {
    const { rows: [r] } = await this.pool.query<{ waiting: number, free: number, holding: number }>(`WITH h AS (
        SELECT node_id, COUNT(*) AS n FROM tasks WHERE ${HOLDS_SLOT} GROUP BY node_id)
      SELECT (SELECT COUNT(*) FROM tasks WHERE status = 'queued' AND lease IS NULL) AS waiting,
        (SELECT COALESCE(SUM(GREATEST(nd.capacity - COALESCE(h.n, 0), 0)), 0) FROM nodes nd LEFT JOIN h ON h.node_id = nd.node_id WHERE NOT nd.lost)::bigint AS free,
        (SELECT COALESCE(SUM(n), 0) FROM h)::bigint AS holding`).catch((err: unknown) => { throw unavailable(err) })
    const free = this.opts.clusterMax > 0 ? Math.min(r.free, Math.max(0, this.opts.clusterMax - r.holding)) : r.free
    return { waiting: Math.max(0, r.waiting - free), room: Math.max(0, free - r.waiting) }
  }

  /**
   * A session lock on a connection of its own, held while the engine checks the backlog and inserts
   * on others; a replica that dies holding it loses its session, and the lock with it.
   */
  async admit (): Promise<() => Promise<void>> {
    const c = await this.pool.connect().catch((err: unknown) => { throw unavailable(err) })
    try {
      await c.query('SELECT pg_advisory_lock($1)', [ADMIT_LOCK])
    } catch (err) {
      c.release(err as Error)
      throw unavailable(err)
    }
    return async () => {
      // a failed unlock discards the connection: its session (and the lock) ends with it
      await c.query('SELECT pg_advisory_unlock($1)', [ADMIT_LOCK]).then(() => c.release(), (err: Error) => c.release(err))
    }
  }

  async claim (): Promise<string | undefined> {
    const claimed = await transaction(this.pool, async (c) => {
      await c.query('SELECT pg_advisory_xact_lock($1)', [CLAIM_LOCK])
      if (this.opts.clusterMax > 0) {
        const { rows: [{ n }] } = await c.query<{ n: number }>(`SELECT COUNT(*) AS n FROM tasks WHERE ${HOLDS_SLOT}`)
        if (n >= this.opts.clusterMax) return undefined
      }
      const { rows: [row] } = await c.query<{ id: string, lease: number }>(`UPDATE tasks SET node_id = $1, lease = nextval('lease_seq')
        WHERE id = (SELECT id FROM tasks WHERE status = 'queued' AND lease IS NULL AND (node_id IS NULL OR node_id = $1)
          ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
        RETURNING id, lease`, [this.id])
      return row
    })
    if (!claimed) return undefined
    this.store.fence(claimed.id, claimed.lease)
    return claimed.id
  }

  async unclaim (id: string): Promise<void> {
    const lease = this.store.leaseOf(id)
    this.store.unfence(id)
    if (lease === undefined) return
    // a first turn goes back to the whole cluster; a follow-up turn stays on its node (its workspace)
    await this.pool.query(`UPDATE tasks SET lease = NULL, node_id = CASE WHEN turns = 0 THEN NULL ELSE node_id END
      WHERE id = $1 AND status = 'queued' AND lease = $2`, [id, lease])
  }

  release (id: string): void {
    this.store.unfence(id)
  }

  // --- the node -------------------------------------------------------------------------------

  /**
   * Registers this node, takes its running tasks' leases back (a restart within NODE_LEASE_MS;
   * their containers are re-attached by recover()), gives back what it had claimed and not
   * started, and starts listening and beating. Before the engine's recover().
   */
  async start (engine: NodeEngine): Promise<void> {
    this.engine = engine
    await this.register()
    const { rows } = await this.pool.query<{ id: string, lease: number }>(`SELECT id, lease FROM tasks
      WHERE node_id = $1 AND status IN ('running', 'paused') AND lease IS NOT NULL`, [this.id])
    for (const r of rows) this.store.fence(r.id, r.lease)
    await this.giveBackClaims()
    await this.listen()
    this.timer = setInterval(() => { this.beat().catch(() => {}) }, this.opts.heartbeatMs)
    this.timer.unref()
  }

  /**
   * LISTEN lop_queue / lop_ended on a connection of its own. A broken connection (a database restart)
   * is dropped; the heartbeat's poll carries on meanwhile and the next heartbeat listens again.
   */
  private async listen (): Promise<void> {
    const listener = await this.pool.connect()
    listener.on('notification', (n) => {
      if (n.channel === 'lop_queue') this.engine?.kick()
      else if (n.channel === 'lop_ended' && n.payload) this.engine?.taskChanged(n.payload).catch(() => {})
    })
    let broken = false
    listener.on('error', (err) => {
      if (broken) return
      broken = true
      this.opts.log.warn({ err }, 'cluster notifications lost; polling every heartbeat until listening again')
      if (this.listener === listener) this.listener = undefined
      listener.release(err)
    })
    try {
      await listener.query('LISTEN lop_queue')
      await listener.query('LISTEN lop_ended')
    } catch (err) {
      if (!broken) listener.release(err as Error)
      broken = true
      throw err
    }
    this.listener = listener
  }

  /** Stops beating and listening; gives back the tasks claimed and not started (graceful stop). */
  async stop (): Promise<void> {
    this.stopped = true
    clearInterval(this.timer)
    await this.beating
    if (this.listener) {
      this.listener.release(true)
      this.listener = undefined
    }
    await this.giveBackClaims().catch(() => {})
  }

  private async giveBackClaims (): Promise<void> {
    const { rows } = await this.pool.query<{ id: string }>(`UPDATE tasks SET lease = NULL, node_id = CASE WHEN turns = 0 THEN NULL ELSE node_id END
      WHERE node_id = $1 AND status = 'queued' AND lease IS NOT NULL RETURNING id`, [this.id])
    for (const r of rows) this.store.unfence(r.id)
  }

  async register (): Promise<void> {
    const engine = await this.opts.engineInfo().catch(() => null)
    await this.pool.query(`INSERT INTO nodes (node_id, url, engine, capacity, started_at, heartbeat_at, lost)
      VALUES ($1, $2, $3, $4, ${DB_NOW}, ${DB_NOW}, false)
      ON CONFLICT (node_id) DO UPDATE SET url = EXCLUDED.url, engine = EXCLUDED.engine, capacity = EXCLUDED.capacity,
        started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at, lost = false`,
    [this.id, this.opts.url(), engine === null ? null : JSON.stringify(engine), this.opts.capacity])
  }

  /** One heartbeat (never two at once): renew, sweep, poll the queue. */
  beat (): Promise<void> {
    this.beating ??= this.beatOnce()
      .catch((err: Error) => this.opts.log.warn({ err }, 'cluster heartbeat failed; the next one tries again'))
      .finally(() => { this.beating = undefined })
    return this.beating
  }

  private async beatOnce (): Promise<void> {
    if (this.stopped) return
    let row: { lost: boolean } | undefined
    try {
      ({ rows: [row] } = await this.pool.query<{ lost: boolean }>(`UPDATE nodes SET heartbeat_at = ${DB_NOW}, url = $2 WHERE node_id = $1 RETURNING lost`,
        [this.id, this.opts.url()]))
    } catch (err) {
      this.beatingSince = undefined
      throw err
    }
    this.beatingSince ??= Date.now()
    if (!row || row.lost) {
      // declared lost (a pause longer than NODE_LEASE_MS): the tasks taken from it are let go
      this.opts.log.warn({ node: this.id }, 'this replica was declared lost: letting go of the tasks taken over, registering again')
      await this.letGoOfTakenTasks()
      await this.register()
    }
    if (!this.listener && !this.stopped) {
      await this.listen()
      this.opts.log.info({ node: this.id }, 'cluster notifications: listening again')
    }
    // the others are judged only by a replica that has itself beaten for a whole lease: after a
    // database outage every heartbeat is old, and each live replica gets a lease to renew its own
    if (Date.now() - this.beatingSince >= this.opts.leaseMs) {
      for (const lost of await this.sweep()) {
        this.opts.log.warn({ node: lost.node_id, requeued: lost.requeued.length, failed: lost.failed.length }, 'node lost: its queued tasks went back to the queue, its running tasks failed')
        await this.engine?.lostElsewhere(lost.failed)
      }
    }
    // the safety net of the notifications
    this.engine?.kick()
  }

  /** The tasks running here whose lease this replica no longer has. */
  private async letGoOfTakenTasks (): Promise<void> {
    const live = this.engine?.liveTasks() ?? []
    if (live.length === 0) return
    const { rows } = await this.pool.query<{ id: string, node_id: string | null, lease: number | null, status: string }>(
      'SELECT id, node_id, lease, status FROM tasks WHERE id = ANY($1::text[])', [live])
    const byId = new Map(rows.map((r) => [r.id, r]))
    const gone = live.filter((id) => {
      const r = byId.get(id)
      return !r || r.node_id !== this.id || r.lease === null || r.lease !== this.store.leaseOf(id)
    })
    await this.engine?.letGoOf(gone, 'this replica was declared lost and its task was taken over')
  }

  /**
   * Marks the nodes whose heartbeat is older than NODE_LEASE_MS lost (each won by one replica) and
   * handles their tasks: claimed-not-started first turns back to the queue; running, paused and
   * pinned follow-up tasks end `failed`, reason `node_lost` (their workspace is on that node).
   */
  async sweep (): Promise<LostNode[]> {
    const { rows } = await this.pool.query<{ node_id: string }>(`UPDATE nodes SET lost = true
      WHERE NOT lost AND node_id <> $1 AND heartbeat_at < ${DB_NOW} - $2 RETURNING node_id`, [this.id, this.opts.leaseMs])
    const lost: LostNode[] = []
    for (const { node_id: node } of rows) lost.push(await this.takeOver(node))
    return lost
  }

  private async takeOver (node: string): Promise<LostNode> {
    const error = `node_lost: replica ${node} stopped answering (no heartbeat for NODE_LEASE_MS=${this.opts.leaseMs} ms) while the task ran there; its workspace is on that node. Submit the task again`
    const out = await transaction(this.pool, async (c) => {
      const { rows: requeued } = await c.query<{ id: string }>(`UPDATE tasks SET node_id = NULL, lease = NULL
        WHERE node_id = $1 AND status = 'queued' AND lease IS NOT NULL AND turns = 0 RETURNING id`, [node])
      const { rows: failed } = await c.query<{ id: string }>(`UPDATE tasks SET status = 'failed', reason = 'node_lost', error = $2,
          finished_at = ${DB_NOW}, lease = NULL, pending = '[]'
        WHERE node_id = $1 AND (status IN ('running', 'paused') OR (status = 'queued' AND turns > 0)) RETURNING id`, [node, error])
      for (const { id } of requeued) await appendEvents(c, id, [{ type: 'requeued', data: { node_lost: node } }])
      for (const { id } of failed) await appendEvents(c, id, [{ type: 'failed', data: { reason: 'node_lost', exit_code: null, error, node_id: node } }])
      // Letta: the agent is told of the end (the outbox worker of any replica sends it)
      if (failed.length) {
        await c.query('UPDATE letta_sync SET notify = \'pending\', dirty = 1, next_attempt_at = 0 WHERE task_id = ANY($1::text[]) AND deleted = 0',
          [failed.map((r) => r.id)])
      }
      return { node_id: node, requeued: requeued.map((r) => r.id), failed: failed.map((r) => r.id) }
    })
    return out
  }
}

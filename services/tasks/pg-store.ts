/**
 * Task store on PostgreSQL (cluster mode, DATABASE_URL): the same semantics as SqliteTaskStore,
 * method by method, on a `pg` pool shared by every replica. Times are BIGINT milliseconds, read back
 * as numbers by this pool's own type parser (not pg's global one). Migrations are numbered, recorded
 * in schema_migrations and run at start-up in one transaction under an advisory lock, so replicas
 * that start together migrate once. The Letta outbox table (letta_sync) is made here too, as in
 * SQLite; services/letta/pg-outbox-store.ts writes it on this store's pool.
 */
import { randomUUID } from 'node:crypto'
import { existsSync, linkSync, mkdirSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import pg from 'pg'
import { setTimeout as sleep } from 'node:timers/promises'
import { CONTENT_COLUMNS, isPatient, JSON_COLUMNS, LeaseLostError, RETENTION_BATCH, WriteRefusedError, type ListFilter, type Spending, type SpendRow, type TaskFields, type TaskStore } from './store.js'
import { TaskError, TERMINAL, type TaskEvent, type TaskRecord, type TaskStatus } from './types.js'

const ENDED_SQL = "('completed', 'failed', 'timeout', 'cancelled')"

const MIGRATIONS: string[] = [
  // today's SQLite schema (migrations 1 to 10 there), in PostgreSQL's types; event_seq is the last
  // event number of a task (addEvent takes the next one with the task row's lock)
  `CREATE TABLE tasks (
     id TEXT PRIMARY KEY,
     principal TEXT NOT NULL,
     agent_id TEXT,
     description TEXT NOT NULL,
     status TEXT NOT NULL,
     timeout_ms BIGINT NOT NULL,
     created_at BIGINT NOT NULL,
     started_at BIGINT,
     finished_at BIGINT,
     exit_code INTEGER,
     reason TEXT,
     error TEXT,
     output_truncated BOOLEAN NOT NULL DEFAULT false,
     output_bytes BIGINT NOT NULL DEFAULT 0,
     container_id TEXT,
     idempotency_key TEXT,
     model TEXT,
     result JSON,
     turns INTEGER NOT NULL DEFAULT 0,
     pending JSON NOT NULL DEFAULT '[]',
     repository JSON,
     diff_truncated BOOLEAN NOT NULL DEFAULT false,
     workspace_removed_at BIGINT,
     remaining_ms BIGINT,
     resumed_at BIGINT,
     has_diff BOOLEAN NOT NULL DEFAULT false,
     observers JSON NOT NULL DEFAULT '[]',
     limits JSON,
     spent JSON,
     egress_allow JSON,
     event_seq BIGINT NOT NULL DEFAULT 0
   );
   CREATE INDEX tasks_status ON tasks (status);
   CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
   CREATE INDEX tasks_page ON tasks (principal, created_at DESC, id);
   CREATE INDEX tasks_page_status ON tasks (principal, status, created_at DESC, id);
   CREATE INDEX tasks_page_agent ON tasks (principal, agent_id, created_at DESC, id);
   CREATE TABLE task_content (
     task_id TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
     output TEXT,
     seed JSON,
     diff TEXT
   );
   CREATE TABLE task_events (
     task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
     seq BIGINT NOT NULL,
     at BIGINT NOT NULL,
     type TEXT NOT NULL,
     data JSON NOT NULL,
     PRIMARY KEY (task_id, seq)
   );
   CREATE TABLE idempotency_keys (
     principal TEXT NOT NULL,
     agent_id TEXT NOT NULL,
     key TEXT NOT NULL,
     args_hash TEXT NOT NULL,
     task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
     created_at BIGINT NOT NULL,
     PRIMARY KEY (principal, agent_id, key)
   );
   CREATE INDEX idempotency_keys_task ON idempotency_keys (task_id);
   CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
   CREATE TABLE letta_sync (
     task_id TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
     agent_id TEXT NOT NULL,
     block_id TEXT,
     attached INTEGER NOT NULL DEFAULT 0,
     dirty INTEGER NOT NULL DEFAULT 1,
     notify TEXT NOT NULL DEFAULT 'none',
     notified_turn INTEGER NOT NULL DEFAULT 0,
     detached INTEGER NOT NULL DEFAULT 0,
     deleted INTEGER NOT NULL DEFAULT 0,
     error TEXT,
     attempts INTEGER NOT NULL DEFAULT 0,
     next_attempt_at BIGINT NOT NULL DEFAULT 0
   );
   CREATE INDEX letta_sync_due ON letta_sync (next_attempt_at);
   CREATE TABLE spend (
     task_id TEXT NOT NULL,
     step INTEGER NOT NULL,
     principal TEXT NOT NULL,
     agent_id TEXT,
     at BIGINT NOT NULL,
     cost DOUBLE PRECISION NOT NULL,
     tokens BIGINT NOT NULL,
     PRIMARY KEY (task_id, step)
   );
   CREATE INDEX spend_principal ON spend (principal, at);
   CREATE INDEX spend_agent ON spend (principal, agent_id, at);`,
  // repository.push: the outcome of a task's last push (SQLite migration 11)
  'ALTER TABLE tasks ADD COLUMN push JSON;',
  // egress: what a task sent and received through the proxy (SQLite migration 12)
  'ALTER TABLE tasks ADD COLUMN egress JSON;',
  // cluster mode (issue #15): the replicas (nodes) with their heartbeat; a task's node (the replica
  // that runs or ran it: its workspace, logs and container) and the fencing token of its claim
  `CREATE TABLE nodes (
     node_id TEXT PRIMARY KEY,
     url TEXT NOT NULL,
     engine JSON,
     capacity INTEGER NOT NULL,
     started_at BIGINT NOT NULL,
     heartbeat_at BIGINT NOT NULL,
     lost BOOLEAN NOT NULL DEFAULT false
   );
   ALTER TABLE tasks ADD COLUMN node_id TEXT;
   ALTER TABLE tasks ADD COLUMN lease BIGINT;
   CREATE SEQUENCE lease_seq;
   CREATE INDEX tasks_queue ON tasks (created_at, id) WHERE status = 'queued';`,
  // cluster mode: a claimable task (queued, unclaimed) and a task's end are told to every replica
  // (LISTEN lop_queue / lop_ended) the moment they commit; the Letta outbox rows a replica is
  // working on are claimed (owner and expiry), so two replicas never send the same notification
  `CREATE FUNCTION lop_task_notify() RETURNS trigger LANGUAGE plpgsql AS $$
   BEGIN
     IF NEW.status = 'queued' AND NEW.lease IS NULL THEN PERFORM pg_notify('lop_queue', ''); END IF;
     IF NEW.status IN ${ENDED_SQL} AND (TG_OP = 'INSERT' OR OLD.status IS DISTINCT FROM NEW.status) THEN
       PERFORM pg_notify('lop_ended', NEW.id);
       PERFORM pg_notify('lop_queue', '');
     END IF;
     RETURN NULL;
   END $$;
   CREATE TRIGGER tasks_notify AFTER INSERT OR UPDATE OF status, lease ON tasks FOR EACH ROW EXECUTE FUNCTION lop_task_notify();
   ALTER TABLE letta_sync ADD COLUMN claimed_by TEXT;
   ALTER TABLE letta_sync ADD COLUMN claimed_until BIGINT NOT NULL DEFAULT 0;`
]

/** The schema version once every migration ran (one row per migration in schema_migrations). */
export const SCHEMA_VERSION = MIGRATIONS.length

/** How long a new connection may take before the start or the query fails. */
const CONNECT_TIMEOUT_MS = 20_000

/** The advisory lock key the migrations run under (any constant; 'lop-migrate' in ASCII). */
const MIGRATION_LOCK = 0x6c6f706d

const ENDED = ENDED_SQL

const LETTA_COLUMNS = `l.block_id AS letta_block_id, l.attached AS letta_attached, l.notify AS letta_notify, l.error AS letta_error,
  l.agent_id AS letta_agent_id`
const SELECT_TASK = `SELECT t.*, c.output, c.seed, c.diff, ${LETTA_COLUMNS} FROM tasks t LEFT JOIN task_content c ON c.task_id = t.id
  LEFT JOIN letta_sync l ON l.task_id = t.id`
const SELECT_LISTED = `SELECT t.*, NULL AS output, NULL AS seed, CASE WHEN t.has_diff THEN '' END AS diff, ${LETTA_COLUMNS}
  FROM tasks t LEFT JOIN letta_sync l ON l.task_id = t.id`

type Row = Record<string, unknown>
type Queryable = Pick<pg.Pool | pg.PoolClient, 'query'>

function toRecord (r: Row | undefined): TaskRecord | undefined {
  if (!r) return undefined
  const { letta_block_id: blockId, letta_attached: attached, letta_notify: notify, letta_error: error, letta_agent_id: agent, has_diff: _hasDiff, event_seq: _seq, lease: _lease, ...rest } = r
  return { ...rest, letta: agent ? { block_id: blockId ?? null, attached: attached === 1, notified: notify === 'sent', error: error ?? null } : null } as unknown as TaskRecord
}

/** Column names come from the code (TaskFields, LettaSyncRow); checked anyway, as they are spliced into SQL. */
export function columns (fields: Row): string[] {
  const keys = Object.keys(fields)
  for (const k of keys) if (!/^[a-z_]+$/.test(k)) throw new Error(`not a column name: ${JSON.stringify(k)}`)
  return keys
}

/** A write's values: JSON columns as JSON text (pg would make an array a PostgreSQL array), undefined as null. */
function toRow (fields: Row): Row {
  return Object.fromEntries(Object.entries(fields).map(([k, v]) => [k,
    (JSON_COLUMNS as readonly string[]).includes(k) && v !== null && v !== undefined ? JSON.stringify(v) : v ?? null]))
}

/** A row's small columns (table tasks, with has_diff) apart from its large ones (task_content). */
function split (fields: Row): { row: Row, content: Row } {
  const row: Row = {}
  const content: Row = {}
  for (const [k, v] of Object.entries(fields)) {
    if ((CONTENT_COLUMNS as readonly string[]).includes(k)) content[k] = v ?? null
    else row[k] = v
  }
  if ('diff' in content) row.has_diff = content.diff !== null
  return { row, content }
}

/** `a = $n, b = $n+1, …` for an UPDATE, from parameter number `from`. */
export function assignments (keys: string[], from: number): string {
  return keys.map((k, i) => `${k} = $${i + from}`).join(', ')
}

/** int8 (BIGINT, COUNT) as a JS number on this pool only: times in ms and counts stay far below 2^53. */
const types = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === pg.types.builtins.INT8 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser
}

/** This replica's identity (the owner label of its runner containers): made once, kept in DATA_DIR. */
export function replicaId (dataDir: string): string {
  mkdirSync(dataDir, { recursive: true })
  const file = join(dataDir, 'replica-id')
  if (!existsSync(file)) {
    // written whole, then linked into place: a process starting at the same time reads one id or the other, never half
    const tmp = `${file}.${randomUUID()}`
    writeFileSync(tmp, `${randomUUID()}\n`)
    try {
      linkSync(tmp, file)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    } finally {
      unlinkSync(tmp)
    }
  }
  return readFileSync(file, 'utf8').trim()
}

export interface PgStoreOptions {
  /** postgres:// or postgresql:// URL (DATABASE_URL). */
  url: string
  /** Connections in the pool (DATABASE_POOL_SIZE). */
  poolSize: number
  /** Where this replica's identity is kept (DATA_DIR). */
  dataDir: string
}

export class PgTaskStore implements TaskStore {
  /**
   * Fencing (cluster mode): the lease of each task this replica claimed and has not ended; every
   * write of such a task holds only while the task still has that lease (else LeaseLostError).
   */
  private readonly leases = new Map<string, number>()

  private closed = false
  /** The pool's query, waiting out an unreachable database in a task's run (see patient()). */
  private readonly db: Queryable = { query: ((text: string, params?: unknown[]) => this.patient(() => this.pool.query(text, params))) as Queryable['query'] }

  private constructor (readonly pool: pg.Pool, readonly owner: string) {}

  /**
   * `fn`, again while the database does not answer (a dropped or refused connection) when the call
   * is made within patiently() (a task's run: its container runs on, its writes wait), until the
   * store closes; else, or then, the outage is a 503 naming it. Other errors are `fn`'s own.
   */
  private async patient<T> (fn: () => Promise<T>): Promise<T> {
    for (let delay = 100; ; delay = Math.min(delay * 2, 2_000)) {
      try {
        return await fn()
      } catch (err) {
        if (!unreachable(err)) throw err
        if (this.closed || !isPatient()) throw unavailable(err)
        await sleep(delay)
      }
    }
  }

  /** This replica holds the task under `lease` (a claim, or its running task at start-up): its writes are fenced by it. */
  fence (id: string, lease: number): void {
    this.leases.set(id, lease)
  }

  /** This replica no longer holds the task (it ended here, or was taken over): its writes are no longer fenced. */
  unfence (id: string): void {
    this.leases.delete(id)
  }

  leaseOf (id: string): number | undefined {
    return this.leases.get(id)
  }

  /** The tasks this replica holds a lease of. */
  fenced (): string[] {
    return [...this.leases.keys()]
  }

  /** Connects, runs the migrations that are due, and reads this replica's identity. */
  static async open (opts: PgStoreOptions): Promise<PgTaskStore> {
    // a database that does not answer fails the start (or the query) with an error, never a hang
    const pool = new pg.Pool({ connectionString: opts.url, max: opts.poolSize, types, connectionTimeoutMillis: CONNECT_TIMEOUT_MS })
    // an idle connection that breaks (a database restart) is replaced; the next query reports the error
    pool.on('error', () => {})
    try {
      await migrate(pool)
    } catch (err) {
      await pool.end()
      throw err
    }
    return new PgTaskStore(pool, replicaId(opts.dataDir))
  }

  async close (): Promise<void> {
    this.closed = true
    await this.pool.end()
  }

  /** `fn` in one transaction on one connection of the pool. */
  private async tx<T> (fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    // a transaction cut by a lost connection was rolled back: it is run again whole
    return this.patient(() => transaction(this.pool, fn))
  }

  async insert (task: TaskRecord): Promise<void> {
    await this.tx((c) => this.insertOn(c, task))
  }

  private async insertOn (c: Queryable, task: TaskRecord): Promise<void> {
    const { row, content } = split(toRow(task as unknown as Row))
    delete row.letta
    const keys = columns(row)
    await c.query(`INSERT INTO tasks (${keys.join(', ')}) VALUES (${keys.map((_, i) => `$${i + 1}`).join(', ')})`, keys.map((k) => row[k]))
    await writeContent(c, task.id, content)
  }

  async get (id: string): Promise<TaskRecord | undefined> {
    return getOn(this.db, id)
  }

  async status (id: string): Promise<TaskStatus | undefined> {
    return (await this.db.query<{ status: TaskStatus }>('SELECT status FROM tasks WHERE id = $1', [id])).rows[0]?.status
  }

  async update (id: string, fields: TaskFields): Promise<void> {
    await this.write(id, fields)
  }

  async setStatus (id: string, from: TaskStatus, to: TaskStatus, fields: TaskFields): Promise<void> {
    await this.write(id, { ...fields, status: to }, from)
  }

  /**
   * One task's write; with `from`, only if its status is still that (else it rejects). A task this
   * replica holds a lease of is written only while it still has that lease (fencing). A follow-up
   * turn (an ended task queued again) is unclaimed: its node (node_id, its workspace) claims it anew.
   */
  private async write (id: string, fields: Partial<Omit<TaskRecord, 'id'>>, from?: TaskStatus): Promise<void> {
    const { row, content } = split(toRow(fields))
    delete row.letta
    const lease = this.leases.get(id)
    const followUp = from !== undefined && TERMINAL.has(from) && row.status === 'queued'
    const keys = columns(row)
    const write = async (c: Queryable) => {
      if (keys.length || lease !== undefined) {
        const params: unknown[] = [...keys.map((k) => row[k]), id]
        const where = [`id = $${params.length}`]
        if (from) where.push(`status = $${params.push(from)}`)
        if (lease !== undefined) where.push(`lease = $${params.push(lease)}`)
        const set = [...(keys.length ? [assignments(keys, 1)] : []), ...(followUp ? ['lease = NULL'] : []), ...(keys.length || followUp ? [] : ['id = id'])]
        const { rowCount } = await c.query(`UPDATE tasks SET ${set.join(', ')} WHERE ${where.join(' AND ')}`, params)
        if (rowCount === 0) await this.refused(c, id, from, row.status, lease)
      }
      await writeContent(c, id, content)
    }
    if (Object.keys(content).length) await this.tx(write)
    else await write(this.db)
    if (lease !== undefined && (followUp || (row.status !== undefined && TERMINAL.has(row.status as TaskStatus)))) this.leases.delete(id)
  }

  /** Why a conditional write matched no row: the lease was taken over, or the status moved on (a missing task is no error, as in SQLite). */
  private async refused (c: Queryable, id: string, from: TaskStatus | undefined, to: unknown, lease: number | undefined): Promise<void> {
    const now = (await c.query<{ status: TaskStatus, lease: number | null }>('SELECT status, lease FROM tasks WHERE id = $1', [id])).rows[0]
    if (!now) {
      if (from) throw new WriteRefusedError(`task ${id} does not exist; the write of ${String(to)} was refused`)
      return
    }
    // the lease stays: every later write of the stale run is refused too, until the run lets go (unfence)
    if (lease !== undefined && now.lease !== lease) throw new LeaseLostError(id, lease)
    if (from && now.status !== from) throw new WriteRefusedError(`task ${id}: status is no longer ${from}; the write of ${String(to)} was refused`)
  }

  async addSpend (row: SpendRow): Promise<void> {
    await this.db.query(`INSERT INTO spend (task_id, step, principal, agent_id, at, cost, tokens) VALUES ($1, $2, $3, $4, $5, $6, $7)
      ON CONFLICT DO NOTHING`, [row.task_id, row.step, row.principal, row.agent_id, row.at, row.cost, row.tokens])
  }

  async spending (principal: string, since: number, agentId?: string): Promise<Spending> {
    const agent = agentId === undefined ? '' : ' AND agent_id = $3'
    const params = agentId === undefined ? [principal, since] : [principal, since, agentId]
    const { rows: steps } = await this.db.query<{ at: number, cost: number }>(`SELECT at, cost FROM spend WHERE principal = $1${agent} AND at > $2 AND cost > 0 ORDER BY at`, params)
    const { rows: [{ tokens }] } = await this.db.query<{ tokens: number }>(`SELECT COALESCE(SUM(tokens), 0)::bigint AS tokens FROM spend WHERE principal = $1${agent} AND at > $2`, params)
    return { cost: steps.reduce((n, s) => n + s.cost, 0), tokens, steps }
  }

  async deleteSpendBefore (before: number): Promise<number> {
    return (await this.db.query('DELETE FROM spend WHERE at <= $1', [before])).rowCount ?? 0
  }

  async costTotal (f: Omit<ListFilter, 'limit' | 'offset'>): Promise<number> {
    const { clause, params } = filter(f)
    const { rows: [{ n }] } = await this.db.query<{ n: number }>(`SELECT COALESCE(SUM(COALESCE((t.spent->>'cost')::float8, (t.result->>'cost')::float8, 0)), 0)::float8 AS n
      FROM tasks t WHERE ${clause}`, params)
    return n
  }

  async list (f: ListFilter): Promise<{ tasks: TaskRecord[], total: number }> {
    const { clause, params } = filter(f)
    const page = params.length
    const { rows } = await this.db.query<Row>(`${SELECT_LISTED} WHERE t.id IN (SELECT t.id FROM tasks t WHERE ${clause}
      ORDER BY t.created_at DESC, t.id LIMIT $${page + 1} OFFSET $${page + 2}) ORDER BY t.created_at DESC, t.id`, [...params, f.limit, f.offset])
    const { rows: [{ n }] } = await this.db.query<{ n: number }>(`SELECT COUNT(*) AS n FROM tasks t WHERE ${clause}`, params)
    return { tasks: rows.map((r) => toRecord(r) as TaskRecord), total: n }
  }

  async deleteEnded (before: number, limit = RETENTION_BATCH): Promise<string[]> {
    // a task whose Letta block still exists is kept until the block is deleted (Letta may be down);
    // SKIP LOCKED: two replicas running retention at once delete disjoint batches
    const { rows } = await this.db.query<{ id: string }>(`WITH d AS (DELETE FROM tasks WHERE id IN (
        SELECT id FROM tasks WHERE finished_at IS NOT NULL AND finished_at <= $1 AND status IN ${ENDED}
        AND NOT EXISTS (SELECT 1 FROM letta_sync l WHERE l.task_id = tasks.id AND l.block_id IS NOT NULL AND l.deleted = 0)
        ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id, finished_at)
      SELECT id FROM d ORDER BY finished_at, id`, [before, limit])
    return rows.map((r) => r.id)
  }

  async deleteExpiredKeys (before: number): Promise<number> {
    return (await this.db.query('DELETE FROM idempotency_keys WHERE created_at <= $1', [before])).rowCount ?? 0
  }

  async countByStatus (): Promise<Partial<Record<TaskStatus, number>>> {
    const { rows } = await this.db.query<{ status: TaskStatus, n: number }>('SELECT status, COUNT(*) AS n FROM tasks GROUP BY status')
    return Object.fromEntries(rows.map((r) => [r.status, r.n]))
  }

  async withStatus (...statuses: TaskStatus[]): Promise<TaskRecord[]> {
    const { rows } = await this.db.query<Row>(`${SELECT_TASK} WHERE t.status = ANY($1::text[]) ORDER BY t.created_at, t.id`, [statuses])
    return rows.map((r) => toRecord(r) as TaskRecord)
  }

  async addEvents (taskId: string, events: Array<{ type: string, data: Record<string, unknown> }>): Promise<void> {
    if (events.length) await this.fencedEvents(taskId, events)
  }

  async addEvent (taskId: string, type: string, data: Record<string, unknown> = {}): Promise<TaskEvent> {
    return (await this.fencedEvents(taskId, [{ type, data }]))[0]
  }

  /** Events of a task; of a task this replica holds a lease of, only while it still has that lease. */
  private async fencedEvents (taskId: string, events: Array<{ type: string, data: Record<string, unknown> }>): Promise<TaskEvent[]> {
    const lease = this.leases.get(taskId)
    try {
      return await appendEvents(this.db, taskId, events, lease)
    } catch (err) {
      if (lease !== undefined) await this.refused(this.db, taskId, undefined, undefined, lease)
      throw err
    }
  }

  async events (taskId: string, afterSeq: number, limit: number, order: 'asc' | 'desc' = 'asc', offset = 0): Promise<TaskEvent[]> {
    const { rows } = await this.db.query<TaskEvent>(`SELECT seq, at, type, data FROM task_events WHERE task_id = $1 AND seq > $2
      ORDER BY seq ${order === 'desc' ? 'DESC' : 'ASC'} LIMIT $3 OFFSET $4`, [taskId, afterSeq, limit, offset])
    return rows
  }

  async eventCount (taskId: string, afterSeq = 0): Promise<number> {
    return (await this.db.query<{ n: number }>('SELECT COUNT(*) AS n FROM task_events WHERE task_id = $1 AND seq > $2', [taskId, afterSeq])).rows[0].n
  }

  /**
   * The task an idempotency key already names (within the TTL), or a new task inserted under it.
   * Safe across replicas: the key's primary key decides. A key that exists is locked (FOR UPDATE)
   * before it is replaced; a key that did not exist is inserted with ON CONFLICT DO NOTHING, and
   * when another replica inserted it first, this transaction (with its task) is rolled back and
   * the claim is read again: that replica's task is the answer.
   */
  async claimIdempotent (scope: { principal: string, agent_id: string, key: string, args_hash: string, ttlMs: number }, create: () => TaskRecord): Promise<{ task: TaskRecord, existing: boolean, args_hash: string }> {
    const key = [scope.principal, scope.agent_id, scope.key]
    for (let attempt = 0; ; attempt++) {
      const claim = await this.tx(async (c) => {
        const now = Date.now()
        const { rows: [row] } = await c.query<{ task_id: string, args_hash: string, created_at: number }>(
          'SELECT task_id, args_hash, created_at FROM idempotency_keys WHERE principal = $1 AND agent_id = $2 AND key = $3 FOR UPDATE', key)
        if (row && now - row.created_at < scope.ttlMs) {
          const task = await getOn(c, row.task_id)
          if (task) return { task, existing: true, args_hash: row.args_hash }
        }
        const task = create()
        await this.insertOn(c, task)
        const { rowCount } = await c.query(`INSERT INTO idempotency_keys (principal, agent_id, key, args_hash, task_id, created_at) VALUES ($1, $2, $3, $4, $5, $6)
          ON CONFLICT (principal, agent_id, key) DO ${row ? 'UPDATE SET args_hash = EXCLUDED.args_hash, task_id = EXCLUDED.task_id, created_at = EXCLUDED.created_at' : 'NOTHING'}`,
        [...key, scope.args_hash, task.id, now])
        if (rowCount === 0) throw new LostClaim()
        return { task, existing: false, args_hash: scope.args_hash }
      }).catch((err: unknown) => {
        if (err instanceof LostClaim && attempt < 5) return undefined
        throw err
      })
      if (claim) return claim
    }
  }
}

/** Errors of a database that does not answer (connection refused, dropped, timed out; shutting down or starting up): worth waiting out. */
const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', '57P01', '57P02', '57P03'])
function unreachable (err: unknown): boolean {
  const { code, message } = err as { code?: unknown, message?: unknown }
  if (typeof code === 'string' && (UNREACHABLE_CODES.has(code) || code.startsWith('08'))) return true
  return typeof message === 'string' && /^(Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error)/.test(message)
}

/** A database that does not answer, as the caller's error: a 503 (`unavailable`) naming it. Other errors unchanged. */
export function unavailable (err: unknown): unknown {
  if (!unreachable(err)) return err
  const { code, message } = err as { code?: unknown, message?: unknown }
  const what = typeof code === 'string' ? code : String(message).split('\n')[0].slice(0, 120)
  return new TaskError('unavailable', `The task database does not answer (${what}); retry in a moment`)
}

/** Another replica inserted the same idempotency key first (claimIdempotent reads it again). */
class LostClaim extends Error {}

export async function transaction<T> (pool: pg.Pool, fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const c = await pool.connect()
  try {
    await c.query('BEGIN')
    const out = await fn(c)
    await c.query('COMMIT')
    return out
  } catch (err) {
    await c.query('ROLLBACK').catch(() => {})
    throw err
  } finally {
    c.release()
  }
}

/** The numbered migrations not applied yet, in one transaction under the advisory lock. */
async function migrate (pool: pg.Pool): Promise<void> {
  await transaction(pool, async (c) => {
    await c.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK])
    await c.query('CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)')
    const { rows: [{ applied }] } = await c.query<{ applied: number }>('SELECT COALESCE(MAX(version), 0) AS applied FROM schema_migrations')
    for (let v = applied; v < MIGRATIONS.length; v++) {
      await c.query(MIGRATIONS[v])
      await c.query('INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)', [v + 1, Date.now()])
    }
  })
}

async function getOn (c: Queryable, id: string): Promise<TaskRecord | undefined> {
  return toRecord((await c.query<Row>(`${SELECT_TASK} WHERE t.id = $1`, [id])).rows[0])
}

/** Upserts the given large columns of a task (nothing is stored for a task with no content yet). */
async function writeContent (c: Queryable, id: string, content: Row): Promise<void> {
  const keys = columns(content)
  if (keys.length === 0) return
  const values = keys.map((k) => content[k])
  if (values.every((v) => v === null)) {
    await c.query(`UPDATE task_content SET ${assignments(keys, 2)} WHERE task_id = $1`, [id, ...values])
    return
  }
  await c.query(`INSERT INTO task_content (task_id, ${keys.join(', ')}) VALUES ($1, ${keys.map((_, i) => `$${i + 2}`).join(', ')})
    ON CONFLICT (task_id) DO UPDATE SET ${keys.map((k) => `${k} = EXCLUDED.${k}`).join(', ')}`, [id, ...values])
}

/**
 * Events with the next numbers of their task, in one statement: the task row's event_seq is moved
 * on by the count (its row lock orders concurrent writers, each gets its own numbers).
 */
export async function appendEvents (c: Queryable, taskId: string, events: Array<{ type: string, data: Record<string, unknown> }>, lease?: number): Promise<TaskEvent[]> {
  const at = Date.now()
  const { rows } = await c.query<TaskEvent>(`WITH s AS (UPDATE tasks SET event_seq = event_seq + $2 WHERE id = $1${lease === undefined ? '' : ' AND lease = $5'} RETURNING event_seq - $2 AS base)
    INSERT INTO task_events (task_id, seq, at, type, data)
    SELECT $1, s.base + e.n, $3, e.v->>'type', e.v->'data' FROM s, json_array_elements($4::json) WITH ORDINALITY AS e(v, n)
    RETURNING seq, at, type, data`, [taskId, events.length, at, JSON.stringify(events.map((e) => ({ type: e.type, data: e.data }))), ...(lease === undefined ? [] : [lease])])
  if (rows.length !== events.length) throw new Error(`task ${taskId} does not exist; its events were not written`)
  return rows.sort((a, b) => a.seq - b.seq)
}

/** A list filter's WHERE clause on tasks t, with its parameters. */
function filter (f: Omit<ListFilter, 'limit' | 'offset'>): { clause: string, params: unknown[] } {
  const params: unknown[] = [f.principal]
  const where = ['t.principal = $1']
  if (f.status) where.push(`t.status = $${params.push(f.status)}`)
  if (f.agent_id) where.push(`t.agent_id = $${params.push(f.agent_id)}`)
  return { clause: where.join(' AND '), params }
}

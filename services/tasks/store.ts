/**
 * Task store: SQLite (better-sqlite3) in DATA_DIR, with numbered migrations. Tasks, their events and
 * idempotency keys. The interface is asynchronous (another database is); here each method runs its
 * synchronous better-sqlite3 code, so a write is on disk when its promise resolves, before the side
 * effect that the caller awaits it for.
 */
import { AsyncLocalStorage } from 'node:async_hooks'
import { randomUUID } from 'node:crypto'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import type { TaskEvent, TaskRecord, TaskStatus } from './types.js'

const MIGRATIONS: string[] = [
  `CREATE TABLE tasks (
     id TEXT PRIMARY KEY,
     principal TEXT NOT NULL,
     agent_id TEXT,
     description TEXT NOT NULL,
     status TEXT NOT NULL,
     timeout_ms INTEGER NOT NULL,
     created_at INTEGER NOT NULL,
     started_at INTEGER,
     finished_at INTEGER,
     exit_code INTEGER,
     reason TEXT,
     error TEXT,
     output TEXT,
     output_truncated INTEGER NOT NULL DEFAULT 0,
     output_bytes INTEGER NOT NULL DEFAULT 0,
     container_id TEXT,
     idempotency_key TEXT
   );
   CREATE INDEX tasks_principal_created ON tasks (principal, created_at DESC);
   CREATE INDEX tasks_status ON tasks (status);
   CREATE TABLE task_events (
     task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
     seq INTEGER NOT NULL,
     at INTEGER NOT NULL,
     type TEXT NOT NULL,
     data TEXT NOT NULL,
     PRIMARY KEY (task_id, seq)
   );
   CREATE TABLE idempotency_keys (
     principal TEXT NOT NULL,
     agent_id TEXT NOT NULL,
     key TEXT NOT NULL,
     args_hash TEXT NOT NULL,
     task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
     created_at INTEGER NOT NULL,
     PRIMARY KEY (principal, agent_id, key)
   );`,
  // the identity of this data directory: the runner containers it owns carry it as a label
  'CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);',
  // OpenCode runs: model, result, turns and their pending messages, workspace inputs and diff
  `ALTER TABLE tasks ADD COLUMN model TEXT;
   ALTER TABLE tasks ADD COLUMN result TEXT;
   ALTER TABLE tasks ADD COLUMN turns INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE tasks ADD COLUMN pending TEXT NOT NULL DEFAULT '[]';
   ALTER TABLE tasks ADD COLUMN repository TEXT;
   ALTER TABLE tasks ADD COLUMN seed TEXT;
   ALTER TABLE tasks ADD COLUMN diff TEXT;
   ALTER TABLE tasks ADD COLUMN diff_truncated INTEGER NOT NULL DEFAULT 0;
   ALTER TABLE tasks ADD COLUMN workspace_removed_at INTEGER;`,
  // Letta: the workspace block and the completion notification of each task (the outbox)
  `CREATE TABLE letta_sync (
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
     next_attempt_at INTEGER NOT NULL DEFAULT 0
   );
   CREATE INDEX letta_sync_due ON letta_sync (next_attempt_at);`,
  // the timeout clock across pauses and restarts: run time left, and when the current running stretch began (null: paused)
  `ALTER TABLE tasks ADD COLUMN remaining_ms INTEGER;
   ALTER TABLE tasks ADD COLUMN resumed_at INTEGER;`,
  // retention: ended tasks by end time, and the keys that cascade with a task or expire; the large
  // columns (output, seed, diff) move to a table of their own, read by one task's view only (a row
  // of tasks stays small, so a list or a count never reads through their overflow pages)
  `CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
   CREATE INDEX idempotency_keys_task ON idempotency_keys (task_id);
   CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
   CREATE TABLE task_content (
     task_id TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
     output TEXT,
     seed TEXT,
     diff TEXT
   );
   INSERT INTO task_content (task_id, output, seed, diff) SELECT id, output, seed, diff FROM tasks
     WHERE output IS NOT NULL OR seed IS NOT NULL OR diff IS NOT NULL;
   ALTER TABLE tasks ADD COLUMN has_diff INTEGER NOT NULL DEFAULT 0;
   UPDATE tasks SET has_diff = 1 WHERE diff IS NOT NULL;
   ALTER TABLE tasks DROP COLUMN output;
   ALTER TABLE tasks DROP COLUMN seed;
   ALTER TABLE tasks DROP COLUMN diff;`,
  // the original tool contract: observers of a task
  "ALTER TABLE tasks ADD COLUMN observers TEXT NOT NULL DEFAULT '[]';",
  // list pages: a principal's tasks in list order (newest first, then id), with or without a status
  // or agent filter, straight from an index that covers the page's ids (a deep offset skips index
  // entries, not rows)
  `CREATE INDEX tasks_page ON tasks (principal, created_at DESC, id);
   CREATE INDEX tasks_page_status ON tasks (principal, status, created_at DESC, id);
   CREATE INDEX tasks_page_agent ON tasks (principal, agent_id, created_at DESC, id);
   DROP INDEX tasks_principal_created;`,
  // budgets: a task's limits and what it spent so far; every step's spending with when it was spent
  // (rolling daily budgets; no foreign key: it outlives a task deleted by retention, for 24 h)
  `ALTER TABLE tasks ADD COLUMN limits TEXT;
   ALTER TABLE tasks ADD COLUMN spent TEXT;
   CREATE TABLE spend (
     task_id TEXT NOT NULL,
     step INTEGER NOT NULL,
     principal TEXT NOT NULL,
     agent_id TEXT,
     at INTEGER NOT NULL,
     cost REAL NOT NULL,
     tokens INTEGER NOT NULL,
     PRIMARY KEY (task_id, step)
   );
   CREATE INDEX spend_principal ON spend (principal, at);
   CREATE INDEX spend_agent ON spend (principal, agent_id, at);`,
  // egress: a task's own allow-list (narrower than RUNNER_EGRESS_ALLOW; null: the server's)
  'ALTER TABLE tasks ADD COLUMN egress_allow TEXT;',
  // repository.push: the last push of a task's changes (branch, commit, url, error), as JSON
  'ALTER TABLE tasks ADD COLUMN push TEXT;',
  // egress: what a task sent and received through the proxy (JSON: bytes_out, bytes_in, connections, denied, hosts)
  'ALTER TABLE tasks ADD COLUMN egress TEXT;',
  // cluster mode's record shape: the replica that runs a task (always null here, one replica)
  'ALTER TABLE tasks ADD COLUMN node_id TEXT;'
]

/** The large columns of a task, kept in task_content. */
export const CONTENT_COLUMNS = ['output', 'seed', 'diff'] as const

/** Columns that hold JSON, and the ones that hold booleans. */
export const JSON_COLUMNS = ['result', 'pending', 'repository', 'seed', 'observers', 'limits', 'spent', 'egress_allow', 'push', 'egress'] as const
const BOOL_COLUMNS = ['output_truncated', 'diff_truncated'] as const

/** A task with its Letta sync state (block, attachment, notification), when it has one. */
const LETTA_COLUMNS = `l.block_id AS letta_block_id, l.attached AS letta_attached, l.notify AS letta_notify, l.error AS letta_error,
  l.agent_id AS letta_agent_id`
const SELECT_TASK = `SELECT t.*, c.output, c.seed, c.diff, ${LETTA_COLUMNS} FROM tasks t LEFT JOIN task_content c ON c.task_id = t.id
  LEFT JOIN letta_sync l ON l.task_id = t.id`
/**
 * What a list shows: the large columns are left out; `output` and `seed` are null and `diff` is ''
 * when there is one (has_diff stays true). One task's view (get) reads them.
 */
const SELECT_LISTED = `SELECT t.*, NULL AS output, NULL AS seed, CASE WHEN t.has_diff = 1 THEN '' END AS diff, ${LETTA_COLUMNS}
  FROM tasks t LEFT JOIN letta_sync l ON l.task_id = t.id`

/** Rows deleted per transaction by retention (a long backlog is worked off over several runs). */
export const RETENTION_BATCH = 1_000

type Row = Record<string, unknown>
function toRecord (r: Row | undefined): TaskRecord | undefined {
  if (!r) return undefined
  const { letta_block_id: blockId, letta_attached: attached, letta_notify: notify, letta_error: error, letta_agent_id: agent, has_diff: _hasDiff, ...rest } = r
  const out: Row = { ...rest, letta: agent ? { block_id: blockId ?? null, attached: attached === 1, notified: notify === 'sent', error: error ?? null } : null }
  for (const k of JSON_COLUMNS) out[k] = typeof r[k] === 'string' ? JSON.parse(r[k]) : r[k] ?? null
  for (const k of BOOL_COLUMNS) out[k] = r[k] === 1
  return out as unknown as TaskRecord
}
function toRow (fields: Record<string, unknown>): Row {
  return Object.fromEntries(Object.entries(fields).map(([k, v]) => [k,
    typeof v === 'boolean' ? (v ? 1 : 0) : (JSON_COLUMNS as readonly string[]).includes(k) && v !== null && v !== undefined ? JSON.stringify(v) : v]))
}

/** A row's small columns (table tasks, with has_diff) apart from its large ones (task_content). */
function split (fields: Row): { row: Row, content: Row } {
  const row: Row = {}
  const content: Row = {}
  for (const [k, v] of Object.entries(fields)) {
    if ((CONTENT_COLUMNS as readonly string[]).includes(k)) content[k] = v ?? null
    else row[k] = v
  }
  if ('diff' in content) row.has_diff = content.diff === null ? 0 : 1
  return { row, content }
}

export interface ListFilter { principal: string, status?: TaskStatus, agent_id?: string, limit: number, offset: number }

/** One step's spending, for the rolling daily budgets. */
export interface SpendRow { task_id: string, step: number, principal: string, agent_id: string | null, at: number, cost: number, tokens: number }
/** What a principal (or one of its agents) spent in a window: the total and each step's cost and time, oldest first. */
export interface Spending { cost: number, tokens: number, steps: Array<{ at: number, cost: number }> }

const patience = new AsyncLocalStorage<true>()

/**
 * Runs `fn` (a task's run) so that the store calls it makes wait out a database that does not answer
 * (PostgreSQL going away: a restart, a partition) until it answers again or the store closes; the
 * container runs on meanwhile. Calls made outside (requests) fail at once with a clear 503 instead.
 * SQLite, a local file, never waits.
 */
export function patiently<T> (fn: () => Promise<T>): Promise<T> {
  return patience.run(true, fn)
}

/** Whether the call in progress was made within patiently(). */
export function isPatient (): boolean {
  return patience.getStore() === true
}

/** A conditional write of a task found the task no longer as it expected (its status, or its claim): nothing was written. */
export class WriteRefusedError extends Error {
  override name = 'WriteRefusedError'
}

/**
 * Cluster mode: this replica's claim of the task (its lease) is no longer the task's: another
 * replica declared this one lost and took the task over. The write was refused (fencing); the run
 * stops its container and lets the task go.
 */
export class LeaseLostError extends WriteRefusedError {
  override name = 'LeaseLostError'
  constructor (readonly taskId: string, lease: number) {
    super(`task ${taskId}: this replica's claim (lease ${lease}) was taken over after it was declared lost; its write was refused`)
  }
}

/** The fields of a task a write may set; its status only through `setStatus` (lifecycle.ts). */
export type TaskFields = Partial<Omit<TaskRecord, 'id' | 'status'>>

/**
 * What the task service needs of its store: SQLite here (SqliteTaskStore); another database can
 * implement it. Every method is asynchronous; a write is durable when its promise resolves (the
 * side effect that follows may rely on it).
 */
export interface TaskStore {
  /** The owner label of this store's runner containers (see SqliteTaskStore.owner). */
  readonly owner: string
  close: () => Promise<void>
  insert: (task: TaskRecord) => Promise<void>
  get: (id: string) => Promise<TaskRecord | undefined>
  /** A task's status alone (no large column read): for checks made often. */
  status: (id: string) => Promise<TaskStatus | undefined>
  update: (id: string, fields: TaskFields) => Promise<void>
  /**
   * The status write, with `fields`, only if the status is still `from` (compare and set; rejects
   * if it is not). Called by lifecycle.transition() alone, which checks the transition.
   */
  setStatus: (id: string, from: TaskStatus, to: TaskStatus, fields: TaskFields) => Promise<void>
  list: (f: ListFilter) => Promise<{ tasks: TaskRecord[], total: number }>
  deleteEnded: (before: number, limit?: number) => Promise<string[]>
  deleteExpiredKeys: (before: number) => Promise<number>
  countByStatus: () => Promise<Partial<Record<TaskStatus, number>>>
  withStatus: (...statuses: TaskStatus[]) => Promise<TaskRecord[]>
  addEvents: (taskId: string, events: Array<{ type: string, data: Record<string, unknown> }>) => Promise<void>
  addEvent: (taskId: string, type: string, data?: Record<string, unknown>) => Promise<TaskEvent>
  events: (taskId: string, afterSeq: number, limit: number, order?: 'asc' | 'desc', offset?: number) => Promise<TaskEvent[]>
  eventCount: (taskId: string, afterSeq?: number) => Promise<number>
  claimIdempotent: (scope: { principal: string, agent_id: string, key: string, args_hash: string, ttlMs: number }, create: () => TaskRecord) => Promise<{ task: TaskRecord, existing: boolean, args_hash: string }>
  /** Budgets: each step's spending (a step recorded twice counts once), the spending since a time, and its pruning. */
  addSpend: (row: SpendRow) => Promise<void>
  spending: (principal: string, since: number, agentId?: string) => Promise<Spending>
  deleteSpendBefore: (before: number) => Promise<number>
  /** What the tasks a list filter selects spent. */
  costTotal: (f: Omit<ListFilter, 'limit' | 'offset'>) => Promise<number>
}

/**
 * The SQLite task store. The database also holds the Letta outbox table (letta_sync, written by
 * services/letta/outbox-store.ts on this handle, `db`): its migrations are numbered with the tasks',
 * a task's view joins its Letta state, and retention keeps a task whose Letta block still exists.
 */
export class SqliteTaskStore implements TaskStore {
  readonly db: Database.Database
  /**
   * Made once per data directory and kept: the owner label of the runner containers. Reconciliation
   * only touches containers with this owner, so several services can share one engine, and a
   * restarted service recognises its own containers.
   */
  readonly owner: string

  constructor (dataDir: string) {
    mkdirSync(dataDir, { recursive: true })
    this.db = new Database(join(dataDir, 'tasks.db'))
    this.db.pragma('journal_mode = WAL')
    this.db.pragma('synchronous = NORMAL')
    this.db.pragma('foreign_keys = ON')
    this.migrate()
    this.db.prepare("INSERT OR IGNORE INTO meta (key, value) VALUES ('owner', ?)").run(randomUUID())
    this.owner = (this.db.prepare("SELECT value FROM meta WHERE key = 'owner'").get() as { value: string }).value
  }

  private migrate (): void {
    const version = this.db.pragma('user_version', { simple: true }) as number
    for (let v = version; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v])
        this.db.pragma(`user_version = ${v + 1}`)
      })()
    }
  }

  async close (): Promise<void> {
    this.db.close()
  }

  async insert (task: TaskRecord): Promise<void> {
    this.insertSync(task)
  }

  private insertSync (task: TaskRecord): void {
    const { row, content } = split(toRow(task as unknown as Record<string, unknown>))
    const keys = Object.keys(row)
    this.db.transaction(() => {
      this.db.prepare(`INSERT INTO tasks (${keys.join(', ')}) VALUES (${keys.map((k) => `@${k}`).join(', ')})`).run(row)
      this.writeContent(task.id, content)
    })()
  }

  /** Upserts the given large columns of a task. */
  private writeContent (id: string, content: Row): void {
    const all = Object.keys(content)
    if (all.length === 0) return
    // nothing to store for a task that has no content yet
    if (all.every((k) => content[k] === null) && !this.db.prepare('SELECT 1 FROM task_content WHERE task_id = ?').get(id)) return
    this.db.prepare(`INSERT INTO task_content (task_id, ${all.join(', ')}) VALUES (@task_id, ${all.map((k) => `@${k}`).join(', ')})
      ON CONFLICT (task_id) DO UPDATE SET ${all.map((k) => `${k} = excluded.${k}`).join(', ')}`).run({ ...content, task_id: id })
  }

  async get (id: string): Promise<TaskRecord | undefined> {
    return this.getSync(id)
  }

  private getSync (id: string): TaskRecord | undefined {
    return toRecord(this.db.prepare(`${SELECT_TASK} WHERE t.id = ?`).get(id) as Row | undefined)
  }

  /** A task's status alone (no large column read): for checks made often. */
  async status (id: string): Promise<TaskStatus | undefined> {
    return (this.db.prepare('SELECT status FROM tasks WHERE id = ?').get(id) as { status: TaskStatus } | undefined)?.status
  }

  async update (id: string, fields: TaskFields): Promise<void> {
    this.write(id, fields)
  }

  async setStatus (id: string, from: TaskStatus, to: TaskStatus, fields: TaskFields): Promise<void> {
    this.write(id, { ...fields, status: to }, from)
  }

  /** One task's write; with `from`, only if its status is still that (else it throws). */
  private write (id: string, fields: Partial<Omit<TaskRecord, 'id'>>, from?: TaskStatus): void {
    const { row, content } = split(toRow(fields))
    const keys = Object.keys(row)
    const write = () => {
      if (keys.length) {
        const changes = this.db.prepare(`UPDATE tasks SET ${keys.map((k) => `${k} = @${k}`).join(', ')} WHERE id = @id${from ? ' AND status = @from' : ''}`)
          .run({ ...row, id, ...(from ? { from } : {}) }).changes
        if (from && changes === 0) throw new Error(`task ${id}: status is no longer ${from}; the write of ${String(row.status)} was refused`)
      }
      this.writeContent(id, content)
    }
    if (Object.keys(content).length) this.db.transaction(write)()
    else write()
  }

  /** A step's spending; a step already recorded (a re-attached container's log read again) is not counted twice. */
  async addSpend (row: SpendRow): Promise<void> {
    this.db.prepare('INSERT OR IGNORE INTO spend (task_id, step, principal, agent_id, at, cost, tokens) VALUES (@task_id, @step, @principal, @agent_id, @at, @cost, @tokens)').run(row)
  }

  /** The principal's (or, with `agentId`, that agent's) spending since `since`. */
  async spending (principal: string, since: number, agentId?: string): Promise<Spending> {
    const agent = agentId === undefined ? '' : ' AND agent_id = @agentId'
    const steps = this.db.prepare(`SELECT at, cost FROM spend WHERE principal = @principal${agent} AND at > @since AND cost > 0 ORDER BY at`)
      .all({ principal, since, agentId }) as Array<{ at: number, cost: number }>
    const { tokens } = this.db.prepare(`SELECT COALESCE(SUM(tokens), 0) AS tokens FROM spend WHERE principal = @principal${agent} AND at > @since`)
      .get({ principal, since, agentId }) as { tokens: number }
    return { cost: steps.reduce((n, s) => n + s.cost, 0), tokens, steps }
  }

  /** Spending older than `before` (past every rolling window). */
  async deleteSpendBefore (before: number): Promise<number> {
    return this.db.prepare('DELETE FROM spend WHERE at <= ?').run(before).changes
  }

  /** The cost of the tasks a list filter selects (all pages): what they spent so far. */
  async costTotal (f: Omit<ListFilter, 'limit' | 'offset'>): Promise<number> {
    const where = ['principal = @principal']
    if (f.status) where.push('status = @status')
    if (f.agent_id) where.push('agent_id = @agent_id')
    const { n } = this.db.prepare(`SELECT COALESCE(SUM(COALESCE(json_extract(spent, '$.cost'), json_extract(result, '$.cost'), 0)), 0) AS n
      FROM tasks WHERE ${where.join(' AND ')}`).get({ principal: f.principal, status: f.status, agent_id: f.agent_id }) as { n: number }
    return n
  }

  async list (f: ListFilter): Promise<{ tasks: TaskRecord[], total: number }> {
    const where = ['t.principal = @principal']
    if (f.status) where.push('t.status = @status')
    if (f.agent_id) where.push('t.agent_id = @agent_id')
    const clause = where.join(' AND ')
    // the page's ids first, from a covering index; then only those rows are read
    const rows = this.db.prepare(`${SELECT_LISTED} WHERE t.id IN (SELECT t.id FROM tasks t WHERE ${clause}
      ORDER BY t.created_at DESC, t.id LIMIT @limit OFFSET @offset) ORDER BY t.created_at DESC, t.id`).all(f) as Row[]
    const { n } = this.db.prepare(`SELECT COUNT(*) AS n FROM tasks t WHERE ${clause}`).get(f) as { n: number }
    return { tasks: rows.map((r) => toRecord(r) as TaskRecord), total: n }
  }

  /**
   * Retention: ended tasks that finished at or before `before` are deleted, with their events,
   * idempotency keys and Letta outbox rows (ON DELETE CASCADE); at most `limit` per call. Returns
   * the deleted ids (their log files are the caller's).
   */
  async deleteEnded (before: number, limit = RETENTION_BATCH): Promise<string[]> {
    return this.db.transaction(() => {
      // a task whose Letta block still exists is kept until the block is deleted (Letta may be down)
      const ids = (this.db.prepare(`SELECT id FROM tasks WHERE finished_at IS NOT NULL AND finished_at <= ?
        AND status IN ('completed', 'failed', 'timeout', 'cancelled')
        AND NOT EXISTS (SELECT 1 FROM letta_sync l WHERE l.task_id = tasks.id AND l.block_id IS NOT NULL AND l.deleted = 0)
        ORDER BY finished_at LIMIT ?`).all(before, limit) as Array<{ id: string }>).map((r) => r.id)
      const del = this.db.prepare('DELETE FROM tasks WHERE id = ?')
      for (const id of ids) del.run(id)
      return ids
    })()
  }

  /** Idempotency keys created at or before `before` (past IDEMPOTENCY_TTL_MS): they name no task any more. */
  async deleteExpiredKeys (before: number): Promise<number> {
    return this.db.prepare('DELETE FROM idempotency_keys WHERE created_at <= ?').run(before).changes
  }

  /** How many tasks are in each state (metrics). */
  async countByStatus (): Promise<Partial<Record<TaskStatus, number>>> {
    const rows = this.db.prepare('SELECT status, COUNT(*) AS n FROM tasks GROUP BY status').all() as Array<{ status: TaskStatus, n: number }>
    return Object.fromEntries(rows.map((r) => [r.status, r.n]))
  }

  /** Tasks in any of these states (start-up recovery). */
  async withStatus (...statuses: TaskStatus[]): Promise<TaskRecord[]> {
    const rows = this.db.prepare(`${SELECT_TASK} WHERE t.status IN (${statuses.map(() => '?').join(',')}) ORDER BY t.created_at, t.id`).all(...statuses) as Row[]
    return rows.map((r) => toRecord(r) as TaskRecord)
  }

  /** Several events in one transaction (an agent's burst of output costs one commit). */
  async addEvents (taskId: string, events: Array<{ type: string, data: Record<string, unknown> }>): Promise<void> {
    if (events.length === 0) return
    this.db.transaction(() => { for (const e of events) this.appendEvent(taskId, e.type, e.data) })()
  }

  async addEvent (taskId: string, type: string, data: Record<string, unknown> = {}): Promise<TaskEvent> {
    return this.appendEvent(taskId, type, data)
  }

  private appendEvent (taskId: string, type: string, data: Record<string, unknown>): TaskEvent {
    const at = Date.now()
    const { seq } = this.db.prepare('SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM task_events WHERE task_id = ?').get(taskId) as { seq: number }
    this.db.prepare('INSERT INTO task_events (task_id, seq, at, type, data) VALUES (?, ?, ?, ?, ?)').run(taskId, seq, at, type, JSON.stringify(data))
    return { seq, at, type, data }
  }

  /** Events after `afterSeq`, oldest first (skipping `offset` of them); with `desc`, the newest first. */
  async events (taskId: string, afterSeq: number, limit: number, order: 'asc' | 'desc' = 'asc', offset = 0): Promise<TaskEvent[]> {
    const rows = this.db.prepare(`SELECT seq, at, type, data FROM task_events WHERE task_id = ? AND seq > ? ORDER BY seq ${order === 'desc' ? 'DESC' : 'ASC'} LIMIT ? OFFSET ?`).all(taskId, afterSeq, limit, offset) as Array<{ seq: number, at: number, type: string, data: string }>
    return rows.map((r) => ({ ...r, data: JSON.parse(r.data) as Record<string, unknown> }))
  }

  /** How many events a task has after `afterSeq`. */
  async eventCount (taskId: string, afterSeq = 0): Promise<number> {
    return (this.db.prepare('SELECT COUNT(*) AS n FROM task_events WHERE task_id = ? AND seq > ?').get(taskId, afterSeq) as { n: number }).n
  }

  /**
   * The task an idempotency key already names (within the TTL), or a new task inserted under it,
   * in one transaction: concurrent duplicates get one task.
   */
  async claimIdempotent (scope: { principal: string, agent_id: string, key: string, args_hash: string, ttlMs: number }, create: () => TaskRecord): Promise<{ task: TaskRecord, existing: boolean, args_hash: string }> {
    return this.db.transaction(() => {
      const now = Date.now()
      const row = this.db.prepare('SELECT task_id, args_hash, created_at FROM idempotency_keys WHERE principal = ? AND agent_id = ? AND key = ?')
        .get(scope.principal, scope.agent_id, scope.key) as { task_id: string, args_hash: string, created_at: number } | undefined
      if (row && now - row.created_at < scope.ttlMs) {
        const task = this.getSync(row.task_id)
        if (task) return { task, existing: true, args_hash: row.args_hash }
      }
      const task = create()
      this.insertSync(task)
      this.db.prepare('INSERT OR REPLACE INTO idempotency_keys (principal, agent_id, key, args_hash, task_id, created_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(scope.principal, scope.agent_id, scope.key, scope.args_hash, task.id, now)
      return { task, existing: false, args_hash: scope.args_hash }
    }).immediate()
  }
}

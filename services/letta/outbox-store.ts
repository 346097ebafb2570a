/**
 * The Letta outbox: per task of an agent, its workspace block (made, attached, dirty, detached,
 * deleted) and its completion notification, with the backoff of failed attempts. Kept in the task
 * database (table letta_sync, made by the task store's migrations, rows deleted with their task),
 * on the task store's handle: a task's end and the outbox row it makes due are in one database.
 */
import type Database from 'better-sqlite3'

export interface LettaSyncRow {
  task_id: string
  agent_id: string
  block_id: string | null
  attached: number
  dirty: number
  notify: 'none' | 'pending' | 'sending' | 'sent'
  /** The last turn whose end the agent was told of. */
  notified_turn: number
  detached: number
  deleted: number
  error: string | null
  attempts: number
  next_attempt_at: number
}

/** What the Letta worker needs of its outbox (SQLite here; another database can implement it): every method asynchronous. */
export interface LettaOutboxStore {
  track: (taskId: string, agentId: string) => Promise<void>
  get: (taskId: string) => Promise<LettaSyncRow | undefined>
  update: (taskId: string, fields: Partial<Omit<LettaSyncRow, 'task_id'>>) => Promise<void>
  /** Rows with work to do now: a block to write, a notification to send, a detach or delete that is due. */
  due: (now: number, limit: number, detachDelayMs: number) => Promise<LettaSyncRow[]>
  /** Ended tasks whose end the agent was not told of: their notification becomes pending. */
  catchUp: () => Promise<void>
  markDirty: (taskId: string) => Promise<void>
  /** Everything waiting in backoff is due now. */
  retryNow: () => Promise<void>
  /** Outbox rows not done yet (health: pending Letta work). */
  pending: () => Promise<number>
}

export class SqliteLettaOutboxStore implements LettaOutboxStore {
  constructor (private readonly db: Database.Database) {}

  async track (taskId: string, agentId: string): Promise<void> {
    this.db.prepare('INSERT OR IGNORE INTO letta_sync (task_id, agent_id) VALUES (?, ?)').run(taskId, agentId)
  }

  async get (taskId: string): Promise<LettaSyncRow | undefined> {
    return this.db.prepare('SELECT * FROM letta_sync WHERE task_id = ?').get(taskId) as LettaSyncRow | undefined
  }

  async update (taskId: string, fields: Partial<Omit<LettaSyncRow, 'task_id'>>): Promise<void> {
    const keys = Object.keys(fields)
    if (keys.length) this.db.prepare(`UPDATE letta_sync SET ${keys.map((k) => `${k} = @${k}`).join(', ')} WHERE task_id = @task_id`).run({ ...fields, task_id: taskId })
  }

  /** Rows with work to do now: a block to write, a notification to send, a detach or delete that is due. */
  async due (now: number, limit: number, detachDelayMs: number): Promise<LettaSyncRow[]> {
    return this.db.prepare(`SELECT l.* FROM letta_sync l JOIN tasks t ON t.id = l.task_id
      WHERE l.next_attempt_at <= @now AND l.deleted = 0 AND (
        l.dirty = 1 OR l.block_id IS NULL OR (l.attached = 0 AND l.detached = 0) OR l.notify IN ('pending', 'sending')
        OR (l.attached = 1 AND t.finished_at IS NOT NULL AND t.finished_at <= @detachBefore)
        OR t.workspace_removed_at IS NOT NULL)
      ORDER BY l.next_attempt_at LIMIT @limit`).all({ now, limit, detachBefore: now - detachDelayMs }) as LettaSyncRow[]
  }

  /**
   * Ended tasks whose end the agent was not told of (the process stopped between the task's end and
   * the outbox entry, or a follow-up turn ended): their notification becomes pending.
   */
  async catchUp (): Promise<void> {
    this.db.prepare(`UPDATE letta_sync SET notify = 'pending', dirty = 1 WHERE deleted = 0 AND task_id IN (
      SELECT t.id FROM tasks t WHERE t.id = letta_sync.task_id AND t.status IN ('completed', 'failed', 'timeout', 'cancelled')
      AND (letta_sync.notify = 'none' OR (letta_sync.notify = 'sent' AND t.turns > letta_sync.notified_turn)))`).run()
  }

  async markDirty (taskId: string): Promise<void> {
    this.db.prepare('UPDATE letta_sync SET dirty = 1 WHERE task_id = ? AND dirty = 0 AND deleted = 0').run(taskId)
  }

  /** Everything waiting in backoff is due now (Letta is back, or a new process starts). */
  async retryNow (): Promise<void> {
    this.db.prepare('UPDATE letta_sync SET next_attempt_at = 0 WHERE next_attempt_at > 0 AND deleted = 0').run()
  }

  /** Outbox rows not done yet (health: pending Letta work). */
  async pending (): Promise<number> {
    return (this.db.prepare("SELECT COUNT(*) AS n FROM letta_sync WHERE deleted = 0 AND (dirty = 1 OR notify IN ('pending', 'sending'))").get() as { n: number }).n
  }
}

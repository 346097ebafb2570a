/**
 * The Letta outbox on PostgreSQL (cluster mode): the same semantics as SqliteLettaOutboxStore, on
 * the task store's pool (table letta_sync, made by PgTaskStore's migrations, rows deleted with their
 * task).
 */
import type pg from 'pg'
import { assignments, columns } from '../tasks/pg-store.js'
import type { LettaOutboxStore, LettaSyncRow } from './outbox-store.js'

export class PgLettaOutboxStore implements LettaOutboxStore {
  constructor (private readonly pool: pg.Pool) {}

  async track (taskId: string, agentId: string): Promise<void> {
    await this.pool.query('INSERT INTO letta_sync (task_id, agent_id) VALUES ($1, $2) ON CONFLICT DO NOTHING', [taskId, agentId])
  }

  async get (taskId: string): Promise<LettaSyncRow | undefined> {
    return (await this.pool.query<LettaSyncRow>('SELECT * FROM letta_sync WHERE task_id = $1', [taskId])).rows[0]
  }

  async update (taskId: string, fields: Partial<Omit<LettaSyncRow, 'task_id'>>): Promise<void> {
    const keys = columns(fields)
    if (keys.length) await this.pool.query(`UPDATE letta_sync SET ${assignments(keys, 2)} WHERE task_id = $1`, [taskId, ...keys.map((k) => (fields as Record<string, unknown>)[k])])
  }

  async due (now: number, limit: number, detachDelayMs: number): Promise<LettaSyncRow[]> {
    return (await this.pool.query<LettaSyncRow>(`SELECT l.* FROM letta_sync l JOIN tasks t ON t.id = l.task_id
      WHERE l.next_attempt_at <= $1 AND l.deleted = 0 AND (
        l.dirty = 1 OR l.block_id IS NULL OR (l.attached = 0 AND l.detached = 0) OR l.notify IN ('pending', 'sending')
        OR (l.attached = 1 AND t.finished_at IS NOT NULL AND t.finished_at <= $3)
        OR t.workspace_removed_at IS NOT NULL)
      ORDER BY l.next_attempt_at LIMIT $2`, [now, limit, now - detachDelayMs])).rows
  }

  async catchUp (): Promise<void> {
    await this.pool.query(`UPDATE letta_sync l SET notify = 'pending', dirty = 1 FROM tasks t
      WHERE t.id = l.task_id AND l.deleted = 0 AND t.status IN ('completed', 'failed', 'timeout', 'cancelled')
      AND (l.notify = 'none' OR (l.notify = 'sent' AND t.turns > l.notified_turn))`)
  }

  async markDirty (taskId: string): Promise<void> {
    await this.pool.query('UPDATE letta_sync SET dirty = 1 WHERE task_id = $1 AND dirty = 0 AND deleted = 0', [taskId])
  }

  async retryNow (): Promise<void> {
    await this.pool.query('UPDATE letta_sync SET next_attempt_at = 0 WHERE next_attempt_at > 0 AND deleted = 0')
  }

  async pending (): Promise<number> {
    return (await this.pool.query<{ n: number }>("SELECT COUNT(*) AS n FROM letta_sync WHERE deleted = 0 AND (dirty = 1 OR notify IN ('pending', 'sending'))")).rows[0].n
  }
}

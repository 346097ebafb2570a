/**
 * The Letta outbox on PostgreSQL (cluster mode): the same semantics as SqliteLettaOutboxStore, on
 * the task store's pool (table letta_sync, made by PgTaskStore's migrations, rows deleted with their
 * task).
 */
import type pg from 'pg'
import { assignments, columns } from '../tasks/pg-store.js'
import type { LettaOutboxStore, LettaSyncRow } from './outbox-store.js'

/** How long a replica holds the outbox rows it took (longer than a pass: the SDK's retries and timeouts). */
export const OUTBOX_CLAIM_MS = 120_000

export class PgLettaOutboxStore implements LettaOutboxStore {
  /** `owner`: this replica (store.owner); the rows due() gives it are its own until OUTBOX_CLAIM_MS pass. */
  constructor (private readonly pool: pg.Pool, private readonly owner = 'local') {}

  async track (taskId: string, agentId: string): Promise<void> {
    await this.pool.query('INSERT INTO letta_sync (task_id, agent_id) VALUES ($1, $2) ON CONFLICT DO NOTHING', [taskId, agentId])
  }

  async get (taskId: string): Promise<LettaSyncRow | undefined> {
    const row = (await this.pool.query<LettaSyncRow & { claimed_by?: string | null, claimed_until?: number }>('SELECT * FROM letta_sync WHERE task_id = $1', [taskId])).rows[0]
    if (!row) return undefined
    const { claimed_by: _by, claimed_until: _until, ...rest } = row
    return rest
  }

  async update (taskId: string, fields: Partial<Omit<LettaSyncRow, 'task_id'>>): Promise<void> {
    const keys = columns(fields)
    if (keys.length) await this.pool.query(`UPDATE letta_sync SET ${assignments(keys, 2)} WHERE task_id = $1`, [taskId, ...keys.map((k) => (fields as Record<string, unknown>)[k])])
  }

  /**
   * The due rows, claimed for this replica (SKIP LOCKED, with an owner and an expiry): replicas
   * working the outbox at once get disjoint rows, so no notification is sent twice. A row stays this
   * replica's while its claim lasts; another takes it over once the claim has expired.
   */
  async due (now: number, limit: number, detachDelayMs: number): Promise<LettaSyncRow[]> {
    const { rows } = await this.pool.query<LettaSyncRow & { claimed_by?: string | null, claimed_until?: number }>(`UPDATE letta_sync SET claimed_by = $4, claimed_until = $1 + $5
      WHERE task_id IN (SELECT l.task_id FROM letta_sync l JOIN tasks t ON t.id = l.task_id
        WHERE l.next_attempt_at <= $1 AND l.deleted = 0 AND (l.claimed_until <= $1 OR l.claimed_by = $4) AND (
          l.dirty = 1 OR l.block_id IS NULL OR (l.attached = 0 AND l.detached = 0) OR l.notify IN ('pending', 'sending')
          OR (l.attached = 1 AND t.finished_at IS NOT NULL AND t.finished_at <= $3)
          OR t.workspace_removed_at IS NOT NULL)
        ORDER BY l.next_attempt_at LIMIT $2 FOR UPDATE OF l SKIP LOCKED)
      RETURNING *`, [now, limit, now - detachDelayMs, this.owner, OUTBOX_CLAIM_MS])
    return rows.map(({ claimed_by: _by, claimed_until: _until, ...row }) => row).sort((a, b) => a.next_attempt_at - b.next_attempt_at)
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

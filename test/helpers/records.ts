/** Task records written straight to a store (store, lifecycle, retention, cluster and dashboard tests). */
import type { TaskRecord } from '../../services/tasks/types.js'

/** A queued task of principal `p` with every field at its initial value, then `fields`. */
export function taskRecord (id: string, fields: Partial<TaskRecord> = {}): TaskRecord {
  return {
    id,
    principal: 'p',
    agent_id: null,
    description: `task ${id}`,
    status: 'queued',
    timeout_ms: 60_000,
    created_at: Date.now(),
    started_at: null,
    finished_at: null,
    exit_code: null,
    reason: null,
    error: null,
    output: null,
    output_truncated: false,
    output_bytes: 0,
    container_id: null,
    idempotency_key: null,
    model: null,
    result: null,
    turns: 0,
    pending: [],
    observers: [],
    repository: null,
    seed: null,
    diff: null,
    diff_truncated: false,
    workspace_removed_at: null,
    node_id: null,
    ...fields
  }
}

/** Task records and states, shared by the store, the engine, the tools and the routes. */
import type { EgressUsage } from '../runner/egress.js'
import type { RunResult } from '../runner/opencode.js'
import type { PushRequest, PushResult } from '../runner/push.js'

export const TASK_STATUSES = ['queued', 'running', 'paused', 'completed', 'failed', 'timeout', 'cancelled'] as const
export type TaskStatus = typeof TASK_STATUSES[number]
/** Bounds of the numbers clients send (SQLite refuses a LIMIT/OFFSET beyond 64 bits): list offsets
 * and event sequence numbers; byte offsets in a log (above the largest TASK_LOG_LIMIT, 10 GiB). */
export const MAX_OFFSET = 1_000_000_000
export const MAX_LOG_OFFSET = 2 ** 40

export const TERMINAL: ReadonlySet<TaskStatus> = new Set(['completed', 'failed', 'timeout', 'cancelled'])

/** Why a task ended the way it did. */
export type EndReason = 'exit' | 'timeout' | 'cancelled' | 'oom' | 'engine_error' | 'interrupted' | 'stalled' | 'budget' | 'node_lost'

/** A task's own limits (null: none), the caller's or the server's ceiling (RUNNER_MAX_*). */
export interface Limits { max_cost: number | null, max_tokens: number | null, max_steps: number | null }
/** What a task spent so far, over all its turns: tokens are input + output. */
export interface Spent { cost: number, tokens: number, steps: number }

export interface TaskRecord {
  id: string
  principal: string
  agent_id: string | null
  description: string
  status: TaskStatus
  timeout_ms: number
  created_at: number
  started_at: number | null
  finished_at: number | null
  exit_code: number | null
  reason: EndReason | null
  error: string | null
  output: string | null
  output_truncated: boolean
  output_bytes: number
  container_id: string | null
  idempotency_key: string | null
  /** provider/model the task runs with (null: OpenCode's configured default). */
  model: string | null
  /** What OpenCode reported: final answer, files changed, tokens, cost, session. */
  result: RunResult | null
  /** Turns run so far (the task, then each follow-up message). */
  turns: number
  /** Follow-up messages waiting for the next turn. */
  pending: string[]
  /** Who else follows the task (the original contract's `observers`): recorded, shown in the view. */
  observers: string[]
  /** The cloned repository; `push`: the branch its changes are pushed to when a turn completes. */
  repository: { url: string, branch: string | null, push?: PushRequest | null } | null
  seed: Array<{ path: string, content: string }> | null
  diff: string | null
  diff_truncated: boolean
  workspace_removed_at: number | null
  /** The task's budget (null: none); checked at every step end. */
  limits?: Limits | null
  /** Spent so far, written at every step end (the result is written at a turn's end). */
  spent?: Spent | null
  /** The task's own egress allow-list (RUNNER_EGRESS=allowlist), narrower than the server's; null: the server's. */
  egress_allow?: string[] | null
  /** The last push of the task's changes (repository.push): the branch and commit, or why it failed. */
  push?: PushResult | null
  /** What the task sent and received through the egress proxy (RUNNER_EGRESS=allowlist); null: nothing yet. */
  egress?: EgressUsage | null
  /** Run time left in the current turn when `resumed_at` was written (the timeout clock, kept across restarts). */
  remaining_ms?: number | null
  /** When the current running stretch began; null while paused (paused time does not count). */
  resumed_at?: number | null
  /** Cluster mode (PostgreSQL): the replica that runs or ran the task (its workspace, logs, container); null while unclaimed, and always with SQLite. */
  node_id?: string | null
  /** The Letta workspace block and notification, when the task has an agent and Letta is configured (read only). */
  letta?: { block_id: string | null, attached: boolean, notified: boolean, error: string | null } | null
}

export interface TaskEvent { seq: number, at: number, type: string, data: Record<string, unknown> }

/** Defined below the tasks and runner layers (both throw it); re-exported for the tools and routes. */
export { TaskError } from '../errors.js'

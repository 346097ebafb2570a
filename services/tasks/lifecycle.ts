/**
 * The task lifecycle: which status may follow which, and the one guarded transition through which
 * every status write goes. An illegal transition throws: it is a bug, never a caller's error.
 *
 *   queued    → running (a turn starts) | cancelled (cancelled while queued) | failed (the queue refused it)
 *   running   → paused | queued (a follow-up turn waits) | completed | failed (also over its budget) | timeout | cancelled
 *   paused    → running (resumed) | completed | failed | timeout | cancelled
 *   completed, failed, timeout → queued (a follow-up message starts a new turn)
 *   cancelled → nothing
 *
 * turnEnd() maps a turn's end (exit code, watchdog, cancel, engine error) to the task's status and error.
 *
 * Re-asserting a live status (running → running, paused → paused) is allowed: recovery re-attaches
 * a task in the state the store has.
 */
import type { Config } from '../config.js'
import { noOpencode, OPENCODE_NOT_FOUND } from '../runner/image.js'
import type { TurnOutcome } from './run.js'
import type { TaskFields, TaskStore } from './store.js'
import { TERMINAL, type EndReason, type TaskStatus } from './types.js'

export const TRANSITIONS: Readonly<Record<TaskStatus, readonly TaskStatus[]>> = {
  queued: ['running', 'cancelled', 'failed'],
  running: ['paused', 'queued', 'completed', 'failed', 'timeout', 'cancelled'],
  paused: ['running', 'completed', 'failed', 'timeout', 'cancelled'],
  completed: ['queued'],
  failed: ['queued'],
  timeout: ['queued'],
  cancelled: []
}

export class IllegalTransitionError extends Error {
  override name = 'IllegalTransitionError'
  constructor (readonly taskId: string, readonly from: TaskStatus | undefined, readonly to: TaskStatus) {
    super(`task ${taskId}: illegal status transition ${from ?? '(no task)'} → ${to}`)
  }
}

export function allowed (from: TaskStatus, to: TaskStatus): boolean {
  return (from === to && !TERMINAL.has(from)) || TRANSITIONS[from].includes(to)
}

/**
 * Writes the task's new status with `fields`, in one write, if the table allows it from the status
 * the store has now; resolves with the status it left once the write is durable. The store writes
 * it only if the status is still the one read (compare and set): a write that came in between (the
 * read and the write are two awaits now) makes it reject rather than overwrite. With `only`, the
 * write is made only from that status (a cancel of a queued task another replica may be starting).
 */
export async function transition (store: TaskStore, id: string, to: TaskStatus, fields: TaskFields = {}, only?: TaskStatus): Promise<TaskStatus> {
  const from = await store.status(id)
  if (from === undefined || !allowed(from, to) || (only !== undefined && from !== only)) throw new IllegalTransitionError(id, from, to)
  await store.setStatus(id, from, to, fields)
  return from
}

/**
 * How a turn's end maps to the task's end (when no follow-up turn comes): its status, and the error
 * its caller reads (null when it completed or was cancelled).
 */
export function turnEnd (outcome: Pick<TurnOutcome, 'reason' | 'exitCode' | 'engineError' | 'capture' | 'detail'>, timeoutMs: number | undefined,
  config: Pick<Config, 'RUNNER_MEMORY_LIMIT' | 'SHUTDOWN_GRACE_MS' | 'RUNNER_IDLE_TIMEOUT_MS' | 'RUNNER_IMAGE'>): { status: TaskStatus, error: string | null } {
  const { reason, exitCode, capture } = outcome
  const status: TaskStatus = reason === 'timeout'
    ? 'timeout'
    : reason === 'cancelled' ? 'cancelled' : reason === 'exit' && exitCode === 0 ? 'completed' : 'failed'
  const errors: Partial<Record<EndReason, string>> = {
    timeout: `timed out after ${timeoutMs} ms; the container was stopped`,
    oom: `killed for running out of memory (RUNNER_MEMORY_LIMIT=${config.RUNNER_MEMORY_LIMIT})`,
    engine_error: outcome.engineError ?? 'engine error',
    interrupted: `the service shut down before the task finished (SHUTDOWN_GRACE_MS=${config.SHUTDOWN_GRACE_MS}); its container was stopped; submit it again`,
    budget: outcome.detail ?? 'budget: the task went over its budget and was stopped',
    stalled: `no output for ${config.RUNNER_IDLE_TIMEOUT_MS} ms (RUNNER_IDLE_TIMEOUT_MS): the agent seemed stuck and was stopped`,
    exit: status === 'failed' ? (exitCode === 127 && OPENCODE_NOT_FOUND.test(capture.output.text()) ? noOpencode(config.RUNNER_IMAGE) : `exited with code ${exitCode}`) : undefined
  }
  return { status, error: errors[reason] ?? null }
}

/**
 * The task lifecycle: which status may follow which, and the one guarded transition through which
 * every status write goes. An illegal transition throws: it is a bug, never a caller's error.
 *
 *   queued    → running (a turn starts) | cancelled (cancelled while queued) | failed (the queue refused it)
 *   running   → paused | queued (a follow-up turn waits) | completed | failed | timeout | cancelled
 *   paused    → running (resumed) | completed | failed | timeout | cancelled
 *   completed, failed, timeout → queued (a follow-up message starts a new turn)
 *   cancelled → nothing
 *
 * Re-asserting a live status (running → running, paused → paused) is allowed: recovery re-attaches
 * a task in the state the store has.
 */
import type { TaskFields, TaskStore } from './store.js'
import { TERMINAL, type TaskStatus } from './types.js'

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
 * the store has now; returns the status it left. The store writes it only if the status is still
 * the one read (compare and set).
 */
export function transition (store: TaskStore, id: string, to: TaskStatus, fields: TaskFields = {}): TaskStatus {
  const from = store.status(id)
  if (from === undefined || !allowed(from, to)) throw new IllegalTransitionError(id, from, to)
  store.setStatus(id, from, to, fields)
  return from
}

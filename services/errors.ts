/**
 * The error every layer answers a caller with (the tools and routes map its code to a tool error or
 * an HTTP status). It lives below the tasks and runner layers so that both may throw it while the
 * runner layer imports nothing from the tasks layer.
 */
export class TaskError extends Error {
  override name = 'TaskError'
  constructor (readonly code: 'not_found' | 'conflict' | 'queue_full' | 'invalid' | 'disabled' | 'draining' | 'unavailable' | 'budget', message: string, readonly details: Record<string, unknown> = {}) {
    super(message)
  }
}

/** The HTTP status of each TaskError code (the HTTP routes, and the replicas' internal API). */
export const HTTP_STATUS: Record<TaskError['code'], number> = { not_found: 404, conflict: 409, invalid: 400, queue_full: 429, disabled: 403, draining: 503, unavailable: 503, budget: 429 }

/**
 * MCP Tasks over the durable task store, in both protocol eras. A task-augmented call of
 * `opencode_execute_task` answers at once with a task handle whose id is the task id every other
 * tool and route knows; the handle's status is mapped from ours and read from the store.
 *
 * - 2025-11-25 (experimental core, sessions): the `tasks` capability, `params.task` on tools/call,
 *   `tasks/get`, `tasks/result` (blocks until the end), `tasks/list`, `tasks/cancel`, and
 *   `notifications/tasks/status` on the session's stream when a task of the session ends.
 * - 2026-07-28 (the `io.modelcontextprotocol/tasks` extension, stateless): advertised under
 *   `capabilities.extensions`, opted into per request in the `_meta` envelope; `tasks/get` (with
 *   the result inlined once ended), `tasks/update`, `tasks/cancel`.
 *
 * Wire shapes are the official ext-tasks schemas (core/v1, core/v2). Every task request is scoped to
 * the caller's principal: another principal's task is as unknown as a task that never existed.
 */
import { MissingRequiredClientCapabilityError, ProtocolError, ProtocolErrorCode, type CallToolResult, type McpServer, type ServerContext } from '@modelcontextprotocol/server'
import { CancelTaskRequestV1Schema, GetTaskRequestV1Schema, GetTaskResultRequestV1Schema, ListTasksRequestV1Schema, type TaskV1 } from '@modelcontextprotocol/ext-tasks/core/v1'
import { CancelTaskRequestV2Schema, CLIENT_CAPABILITIES_META_KEY_V2, GetTaskRequestV2Schema, TASKS_EXTENSION_ID_V2, UpdateTaskRequestV2Schema, type TaskV2 } from '@modelcontextprotocol/ext-tasks/core/v2'
import type { TaskEngine } from '../tasks/engine.js'
import { MAX_OFFSET, TaskError, TERMINAL, type TaskRecord, type TaskStatus } from '../tasks/types.js'
import { recentEventView } from '../tasks/view.js'

export type Era = 'legacy' | 'modern'

export const TASKS_EXTENSION = TASKS_EXTENSION_ID_V2
/** How often a requester should poll `tasks/get`, in ms. */
export const POLL_INTERVAL_MS = 1_000
const RELATED_TASK = 'io.modelcontextprotocol/related-task'
const TASKS_PAGE = 50
/** setTimeout's ceiling: `tasks/result` waits in steps of this. */
const MAX_WAIT_MS = 2_147_483_647

const MCP_STATUS: Record<TaskStatus, TaskV1['status']> = {
  queued: 'working',
  running: 'working',
  paused: 'working',
  completed: 'completed',
  failed: 'failed',
  timeout: 'failed',
  cancelled: 'cancelled'
}

/** The server's task capability of each era. */
export function taskCapabilities (era: Era): Record<string, unknown> {
  return era === 'legacy'
    ? { tasks: { list: {}, cancel: {}, requests: { tools: { call: {} } } } }
    : { extensions: { [TASKS_EXTENSION]: {} } }
}

export interface TaskProtocolDeps {
  tasks: TaskEngine
  /** TASK_RETENTION_MS: how long an ended task is kept (0: forever), the handle's ttl. */
  retentionMs: number
  /** A task as the tool result `opencode_execute_task` gives (one view for every path). */
  view: (task: TaskRecord) => CallToolResult
}

/** What a task-augmented tools/call runs: submits the task, or answers with a tool error. */
export type SubmitAsTask = (args: unknown, ctx: ServerContext) => Promise<{ task: TaskRecord } | { refused: CallToolResult } | undefined>

type Handler = (request: { method: string, params?: Record<string, unknown> }, ctx: ServerContext) => Promise<Record<string, unknown>>
type WrapHandler = (method: string, handler: Handler) => Handler

/** Whether this request's client opted into Tasks: `params.task` (2025), the envelope's extension (2026). */
function wantsTask (era: Era, params: Record<string, unknown> | undefined, ctx: ServerContext): boolean {
  if (era === 'legacy') return typeof params?.task === 'object' && params.task !== null
  return declaresExtension(ctx)
}

function declaresExtension (ctx: ServerContext): boolean {
  const envelope = (ctx.mcpReq as { envelope?: Record<string, unknown> }).envelope
  const capabilities = envelope?.[CLIENT_CAPABILITIES_META_KEY_V2] as { extensions?: Record<string, unknown> } | undefined
  const declared = capabilities?.extensions?.[TASKS_EXTENSION]
  return typeof declared === 'object' && declared !== null
}

export class TaskProtocol {
  /** 2025: tells the session's stream that a task ended (set while the session is open). */
  private notifyEnd?: (task: TaskRecord) => void
  private readonly closed = new AbortController()

  constructor (private readonly deps: TaskProtocolDeps, private readonly principal: string, private readonly era: Era) {}

  /**
   * Registers the era's task methods and answers task-augmented calls of `tool` with a task handle.
   * The SDK validates every tools/call result as a CallToolResult, so the handle is answered in front
   * of that validation (its request-wrapping hook), before the tools are registered; every other call
   * goes through the SDK's own tool dispatch unchanged.
   */
  install (server: McpServer, tool: string, submit: SubmitAsTask): void {
    const inner = server.server as unknown as { _wrapHandler: WrapHandler }
    const wrap = inner._wrapHandler.bind(inner)
    inner._wrapHandler = (method, handler) => {
      const wrapped = wrap(method, handler)
      if (method !== 'tools/call') return wrapped
      return async (request, ctx) => {
        const params = request.params
        if (params?.name !== tool || !wantsTask(this.era, params, ctx)) return wrapped(request, ctx)
        const submitted = await submit(params.arguments ?? {}, ctx)
        // invalid arguments (or async execution disabled): the SDK's own dispatch answers
        if (submitted === undefined) return wrapped(request, ctx)
        if ('refused' in submitted) return submitted.refused
        const { task } = submitted
        this.watch(task)
        return this.era === 'legacy'
          ? { task: await this.v1(task), _meta: { 'io.modelcontextprotocol/model-immediate-response': `Task ${task.id} accepted; its result arrives when it ends.` } }
          : { resultType: 'task', ...await this.v2(task) }
      }
    }
    if (this.era === 'legacy') this.installV1(server)
    else this.installV2(server)
  }

  /** The task record, or the spec's error for an unknown task (another principal's included). */
  private async find (id: string): Promise<TaskRecord> {
    try {
      return await this.deps.tasks.get(this.principal, id)
    } catch (err) {
      if (err instanceof TaskError && err.code === 'not_found') throw new ProtocolError(ProtocolErrorCode.InvalidParams, `Failed to retrieve task: task ${id} not found`)
      throw err
    }
  }

  private async base (task: TaskRecord) {
    const [last] = await this.deps.tasks.recentEvents(this.principal, task.id, 1)
    const event = last ? recentEventView(last) : undefined
    const updated = Math.max(task.created_at, task.started_at ?? 0, task.finished_at ?? 0, event?.timestamp ?? 0)
    return {
      taskId: task.id,
      status: MCP_STATUS[task.status],
      statusMessage: `${task.status}${event ? `: ${event.message}` : ''}`.slice(0, 500),
      createdAt: new Date(task.created_at).toISOString(),
      lastUpdatedAt: new Date(updated).toISOString()
    }
  }

  private get ttl (): number | null {
    return this.deps.retentionMs === 0 ? null : this.deps.retentionMs
  }

  private async v1 (task: TaskRecord): Promise<TaskV1> {
    return { ...await this.base(task), ttl: this.ttl, pollInterval: POLL_INTERVAL_MS }
  }

  private async v2 (task: TaskRecord): Promise<TaskV2> {
    return { ...await this.base(task), ttlMs: this.ttl, pollIntervalMs: POLL_INTERVAL_MS }
  }

  /** The tool result an ended task stands for: the task view, an error result unless it completed. */
  private resultOf (task: TaskRecord): CallToolResult {
    const result = this.deps.view(task)
    return task.status === 'completed' ? result : { ...result, isError: true }
  }

  // --- 2025-11-25 ----------------------------------------------------------------------------

  private installV1 (server: McpServer): void {
    const protocol = server.server
    const onclose = protocol.onclose
    protocol.onclose = () => { this.closed.abort(); onclose?.() }
    this.notifyEnd = (task) => {
      this.v1(task).then((params) => protocol.notification({ method: 'notifications/tasks/status', params } as never)).catch(() => {})
    }

    protocol.setRequestHandler('tasks/get', { params: GetTaskRequestV1Schema.shape.params }, async ({ taskId }) => ({ ...await this.v1(await this.find(taskId)) }))

    protocol.setRequestHandler('tasks/result', { params: GetTaskResultRequestV1Schema.shape.params }, async ({ taskId }, ctx) => {
      let task = await this.find(taskId)
      while (!TERMINAL.has(task.status) && !ctx.mcpReq.signal.aborted) task = await this.deps.tasks.waitForEnd(taskId, MAX_WAIT_MS, ctx.mcpReq.signal)
      if (!TERMINAL.has(task.status)) throw new ProtocolError(ProtocolErrorCode.InternalError, `Task ${taskId} has not ended`)
      const result = this.resultOf(task)
      return { ...result, _meta: { ...result._meta, [RELATED_TASK]: { taskId } } }
    })

    protocol.setRequestHandler('tasks/list', { params: ListTasksRequestV1Schema.shape.params.unwrap().optional().default({}) }, async ({ cursor }) => {
      const offset = cursor === undefined ? 0 : Number(cursor)
      if (cursor !== undefined && (!/^\d{1,15}$/.test(cursor) || offset > MAX_OFFSET)) {
        throw new ProtocolError(ProtocolErrorCode.InvalidParams, `Invalid cursor "${cursor}": pass the nextCursor of the previous page`)
      }
      const { tasks, total } = await this.deps.tasks.list(this.principal, { limit: TASKS_PAGE, offset })
      const next = offset + tasks.length
      return { tasks: await Promise.all(tasks.map((t) => this.v1(t))), ...(next < total ? { nextCursor: String(next) } : {}) }
    })

    protocol.setRequestHandler('tasks/cancel', { params: CancelTaskRequestV1Schema.shape.params }, async ({ taskId }) => {
      const task = await this.find(taskId)
      if (TERMINAL.has(task.status)) throw new ProtocolError(ProtocolErrorCode.InvalidParams, `Cannot cancel task: already in terminal status '${MCP_STATUS[task.status]}'`)
      return { ...await this.v1(await this.cancel(task)) }
    })
  }

  /** A task created here: in 2025, its end is told on the session's stream while the session is open. */
  private watch (task: TaskRecord): void {
    const notifyEnd = this.notifyEnd
    if (!notifyEnd || TERMINAL.has(task.status)) return
    const signal = this.closed.signal
    const untilEnd = async () => {
      let t = task
      while (!TERMINAL.has(t.status) && !signal.aborted) t = await this.deps.tasks.waitForEnd(task.id, MAX_WAIT_MS, signal)
      if (TERMINAL.has(t.status) && !signal.aborted) notifyEnd(t)
    }
    untilEnd().catch(() => {})
  }

  private async cancel (task: TaskRecord): Promise<TaskRecord> {
    try {
      return await this.deps.tasks.control(this.principal, task.id, 'cancel', 'tasks/cancel')
    } catch (err) {
      // it ended meanwhile: its end stands
      if (err instanceof TaskError && err.code === 'conflict') return await this.find(task.id)
      throw err
    }
  }

  // --- 2026-07-28 ----------------------------------------------------------------------------

  private installV2 (server: McpServer): void {
    const protocol = server.server
    /** Every task request must carry the extension, checked before the task is looked up. */
    const gate = (ctx: ServerContext) => {
      if (!declaresExtension(ctx)) throw new MissingRequiredClientCapabilityError({ requiredCapabilities: { extensions: { [TASKS_EXTENSION]: {} } } })
    }

    protocol.setRequestHandler('tasks/get', { params: GetTaskRequestV2Schema.shape.params }, async ({ taskId }, ctx) => {
      gate(ctx)
      const task = await this.find(taskId)
      const detail = task.status === 'completed'
        ? { result: { ...this.resultOf(task), resultType: 'complete' } }
        : MCP_STATUS[task.status] === 'failed'
          ? { error: { code: -32_000, message: `Task ${task.status}: ${task.error ?? task.reason ?? 'no reason recorded'}`, data: this.deps.view(task).structuredContent } }
          : {}
      return { resultType: 'complete', ...await this.v2(task), ...detail }
    })

    // nothing of ours asks for input: answers are acknowledged and ignored, as the spec says of unknown keys.
    // The SDK lifts `inputResponses` out of params (into ctx.mcpReq) before validation, so the params
    // schema must not require it (it did: every tasks/update was -32602, before the -32021 gate as well)
    protocol.setRequestHandler('tasks/update', { params: UpdateTaskRequestV2Schema.shape.params.omit({ inputResponses: true }) }, async ({ taskId }, ctx) => {
      gate(ctx)
      if (ctx.mcpReq.inputResponses === undefined) throw new ProtocolError(ProtocolErrorCode.InvalidParams, 'Invalid params for tasks/update: inputResponses is required')
      await this.find(taskId)
      return { resultType: 'complete' }
    })

    protocol.setRequestHandler('tasks/cancel', { params: CancelTaskRequestV2Schema.shape.params }, async ({ taskId }, ctx) => {
      gate(ctx)
      const task = await this.find(taskId)
      // cancelling an ended task is acknowledged the same way (idempotent in this era)
      if (!TERMINAL.has(task.status)) await this.cancel(task)
      return { resultType: 'complete' }
    })
  }
}

/** The task tools: submit, status, history, control and list, all scoped to the caller's principal. */
import type { CallToolResult, McpServer, ServerContext } from '@modelcontextprotocol/server'
import * as z from 'zod'
import type { JSONSchema } from 'zod/v4/core'
import { DockerError } from '../docker/errors.js'
import { MESSAGE_TYPES, type TaskEngine } from '../tasks/engine.js'
import { MAX_LOG_OFFSET, MAX_OFFSET, TASK_STATUSES, TaskError, TERMINAL, type TaskRecord } from '../tasks/types.js'
import { eventView, RecentEventSchema, recentEventView, TaskEventSchema, TaskViewSchema, taskView } from '../tasks/view.js'
import { AGENT_ID_PATTERN } from '../security.js'
import { callerOf, jsonResult, toolError } from './results.js'
import { TaskProtocol, type Era } from './tasks-protocol.js'

export interface TaskToolDeps {
  tasks: TaskEngine
  asyncEnabled: boolean
  syncWaitMs: number
  /** TASK_RETENTION_MS: the ttl of MCP task handles. */
  retentionMs: number
}

/** The TypeBox view schemas as the zod schemas the MCP SDK takes: one definition for tools and routes. */
const fromTypeBox = (schema: object) => z.fromJSONSchema(schema as JSONSchema.JSONSchema)
const TaskViewOutput = fromTypeBox(TaskViewSchema) as z.ZodObject
const TaskEventOutput = fromTypeBox(TaskEventSchema)
const RecentEventOutput = fromTypeBox(RecentEventSchema)
const TaskViewShape = TaskViewOutput.shape

function fromError (err: unknown): CallToolResult {
  if (err instanceof TaskError) return toolError(err.message, { code: err.code, ...err.details })
  // the engine unreachable or refusing (files, diff through a helper container): the caller is told, nothing threw
  if (err instanceof DockerError) return toolError(err.message, { code: err.code })
  throw err
}

const taskId = z.string().min(1).max(100).describe('The task id returned by opencode_execute_task')

/** The original contract's workspace paths: a leading "/" is the workspace root ("/" itself, "/src/x.ts" is src/x.ts). */
const workspacePath = (path: string) => path.replace(/^\/+/, '')
/** events_limit=-1 ("all") returns at most this many events; page on with events_offset. */
const EVENTS_ALL_CAP = 10_000

/**
 * Waits for a task's end (at most `ms`), sending MCP progress notifications when the client gave a
 * progress token: one per agent event (the tool it used, its text), and a heartbeat every 2 s.
 */
async function waitWithProgress (tasks: TaskEngine, principal: string, id: string, ms: number, ctx: ServerContext) {
  const progressToken = ctx.mcpReq._meta?.progressToken
  if (progressToken === undefined) return tasks.waitForEnd(id, ms, ctx.mcpReq.signal)
  let progress = 0
  const send = (message: string) => {
    ctx.mcpReq.notify({ method: 'notifications/progress', params: { progressToken, progress: ++progress, message } }).catch(() => {})
  }
  // one engine dispatcher for every task's subscribers, not one engine listener per call
  const unsubscribe = tasks.subscribe(id, (event) => send(event.summary))
  send(`task ${(await tasks.get(principal, id)).status}`)
  const heartbeat = setInterval(() => {
    tasks.get(principal, id).then((task) => send(`task ${task.status}${tasks.lastEvent(id) ? `: ${tasks.lastEvent(id)}` : ''}`), () => {})
  }, 2_000)
  try {
    return await tasks.waitForEnd(id, ms, ctx.mcpReq.signal)
  } finally {
    clearInterval(heartbeat)
    unsubscribe()
  }
}

/** The tools' schemas, built once for every session (a schema per session costs heap per idle session). */
const OpencodeExecuteTaskInput = z.object({
  task_description: z.string().min(1).max(100_000).describe('What to do, in plain words'),
  agent_id: z.string().regex(AGENT_ID_PATTERN).optional().describe('The Letta agent id (defaults to the x-agent-id header)'),
  idempotency_key: z.string().min(1).max(200).optional().describe('Retries with the same key return the same task'),
  timeout_ms: z.number().int().min(1_000).max(86_400_000).optional().describe('Run time limit; defaults to RUNNER_TIMEOUT_MS'),
  sync: z.boolean().optional().describe('Wait for the result (default: false when async execution is enabled)'),
  model: z.string().min(3).max(200).optional().describe('provider/model for this task, from the server\'s allow-list (RUNNER_MODELS_ALLOWED)'),
  repository: z.object({
    url: z.string().min(1).max(2_000).describe('A network git URL (https://…, ssh://…, git@host:path)'),
    branch: z.string().min(1).max(250).regex(/^[^\s-][^\s]*$/).optional().describe('Branch or tag to clone (default: the remote\'s default)')
  }).optional().describe('A git repository cloned into the workspace before the agent starts'),
  files: z.array(z.object({
    path: z.string().min(1).max(1_000).describe('Path relative to the workspace'),
    content: z.string().describe('UTF-8 content')
  })).max(100).optional().describe('Files to put in the workspace before the agent starts (1 MB in all)'),
  observers: z.array(z.string().min(1).max(200)).max(20).optional().describe('Who else follows the task (at most 20 names): recorded in the task\'s history and status; nothing is sent to them'),
  max_cost: z.number().positive().max(1_000_000).optional().describe('The most the task may spend over all its turns, in the currency OpenCode reports; at most RUNNER_MAX_COST (the default when that is set)'),
  max_tokens: z.number().int().min(1).max(1_000_000_000_000).optional().describe('The most input + output tokens the task may use over all its turns; at most RUNNER_MAX_TOKENS (the default when that is set)'),
  egress_allow: z.array(z.string().min(1).max(300)).min(1).max(100).optional().describe('With RUNNER_EGRESS=allowlist: the hosts this task may reach (name, *.wildcard, optional :port), a subset of the server\'s RUNNER_EGRESS_ALLOW; a wider list is refused'),
  max_steps: z.number().int().min(1).max(100_000).optional().describe('The most model steps the agent may take over all its turns; at most RUNNER_MAX_STEPS (the default when that is set). Over a limit, the task is stopped and ends failed with reason budget')
})
const OpencodeExecuteTaskOutput = z.object({
  ...TaskViewShape,
  existing: z.boolean(),
  hint: z.string().optional(),
  message: z.string().optional().describe('While the task has not ended: what to do next')
})
const GetTaskStatusInput = z.object({ task_id: taskId })
const GetTaskStatusOutput = z.object({ ...TaskViewShape, recent_events: z.array(RecentEventOutput).describe('The last 5 events, oldest first') })
const GetTaskHistoryInput = z.object({
  task_id: taskId,
  after: z.number().int().min(0).max(MAX_OFFSET).optional().describe('Return events after this sequence number (default 0)'),
  limit: z.number().int().min(1).max(500).optional().describe('At most this many events (default 100); preferred over events_limit'),
  events_limit: z.number().int().min(-1).max(MAX_OFFSET).optional().describe(`Older name of limit: at most this many events (default 100); -1 = all, up to ${EVENTS_ALL_CAP} (larger values count as ${EVENTS_ALL_CAP})`),
  events_offset: z.number().int().min(0).max(MAX_OFFSET).optional().describe('Skip this many events first (default 0)'),
  include_artifacts: z.boolean().optional().describe('Also return artifacts: the files the agent changed, and whether get_task_diff has a diff')
})
const GetTaskHistoryOutput = z.object({
  task_id: z.string(),
  status: z.enum(TASK_STATUSES),
  events: z.array(TaskEventOutput),
  next_after: z.number().nullable(),
  events_total: z.number().describe('Events after `after` (all of them by default)'),
  events_returned: z.number(),
  events_offset: z.number(),
  has_more_events: z.boolean(),
  artifacts: z.array(z.object({
    type: z.enum(['file', 'diff']),
    name: z.string(),
    path: z.string().nullable(),
    timestamp: z.number().nullable().describe('When the task ended (ms since the epoch)'),
    hint: z.string().optional()
  })).optional()
})
const SendTaskControlInput = z.object({
  task_id: taskId,
  control: z.enum(['cancel', 'pause', 'resume']),
  reason: z.string().max(2_000).optional().describe('Why: kept in the task\'s history')
})
const ListTasksInput = z.object({
  status: z.enum(TASK_STATUSES).optional(),
  agent_id: z.string().regex(AGENT_ID_PATTERN).optional(),
  limit: z.number().int().min(1).max(200).optional(),
  offset: z.number().int().min(0).max(MAX_OFFSET).optional(),
  cost_total: z.boolean().optional().describe('Also return cost_total: what all the tasks the filter selects spent')
})
const ListTasksOutput = z.object({ tasks: z.array(TaskViewOutput), total: z.number(), cost_total: z.number().optional() })
const GetTaskLogsInput = z.object({
  task_id: taskId,
  offset: z.number().int().min(0).max(MAX_LOG_OFFSET).optional().describe('Byte offset to read from (default 0)'),
  limit: z.number().int().min(1).max(1_048_576).optional().describe('At most this many bytes (default 65536)')
})
const GetTaskLogsOutput = z.object({
  task_id: z.string(),
  status: z.enum(TASK_STATUSES),
  offset: z.number(),
  next_offset: z.number(),
  size: z.number().describe('Bytes in the log so far'),
  eof: z.boolean().describe('True when the task has ended and everything was read'),
  data: z.string()
})
const SendTaskMessageInput = z.object({
  task_id: taskId,
  message: z.string().min(1).max(100_000).describe('What the agent should do next'),
  message_type: z.enum(MESSAGE_TYPES).optional().describe('The kind of message (default update); any other type reaches the agent as a "[type] " prefix of the message'),
  metadata: z.record(z.string(), z.unknown()).optional().describe('Your own data about the message (at most 10 KB as JSON): kept in the task\'s history, not sent to the agent')
})
const SendTaskMessageOutput = z.object({
  ...TaskViewShape,
  delivery: z.enum(['queued_for_next_turn', 'follow_up_started']),
  message_id: z.string(),
  message_type: z.enum(MESSAGE_TYPES),
  timestamp: z.number().describe('When the message was accepted (ms since the epoch)')
})
const GetTaskFilesInput = z.object({
  task_id: taskId,
  path: z.string().max(1_000).optional().describe('A directory relative to the workspace; "/" or empty is its root (default)'),
  limit: z.number().int().min(1).max(5_000).optional().describe('At most this many entries (default 1000)')
})
const GetTaskFilesOutput = z.object({
  task_id: z.string(),
  path: z.string(),
  entries: z.array(z.object({ path: z.string(), type: z.enum(['file', 'directory', 'symlink']), size: z.number(), modified: z.string(), link_target: z.string().optional() })),
  files: z.array(z.string()).describe('The paths of the files and symlinks among entries (directories left out)'),
  truncated: z.boolean()
})
const ReadTaskFileInput = z.object({
  task_id: taskId,
  path: z.string().min(1).max(1_000).optional().describe('The file, relative to the workspace (preferred name)'),
  file_path: z.string().min(1).max(1_000).optional().describe('Older name of path: give one of the two')
})
const ReadTaskFileOutput = z.object({
  task_id: z.string(),
  path: z.string(),
  file_path: z.string().describe('The path as given (path or file_path)'),
  size: z.number(),
  binary: z.boolean(),
  encoding: z.enum(['utf8', 'base64']),
  content: z.string()
})
const GetTaskDiffInput = z.object({ task_id: taskId })
const GetTaskDiffOutput = z.object({ task_id: z.string(), status: z.enum(TASK_STATUSES), diff: z.string().nullable(), truncated: z.boolean(), hint: z.string().optional() })

/** A task as `opencode_execute_task` returns it (and MCP Tasks hand back as its result). */
function executeResult (task: TaskRecord, existing: boolean): CallToolResult {
  const view = { ...taskView(task), existing }
  if (!TERMINAL.has(task.status)) {
    const follow = `call get_task_status with task_id "${task.id}" to follow it (it is not cancelled if this call is interrupted).`
    return jsonResult({ ...view, hint: `The task continues in the background: ${follow}`, message: `Task ${task.status}: ${follow}` })
  }
  return jsonResult(view)
}

/**
 * MCP Tasks for `opencode_execute_task`: a client that asks for a task (2025: `params.task`; 2026:
 * the tasks extension) gets a handle at once. Installed before any tool is registered.
 */
export function installTasks (server: McpServer, deps: TaskToolDeps, principal: string, era: Era): void {
  const protocol = new TaskProtocol({ tasks: deps.tasks, retentionMs: deps.retentionMs, view: (task) => executeResult(task, false) }, principal, era)
  protocol.install(server, 'opencode_execute_task', async (args, ctx) => {
    const parsed = OpencodeExecuteTaskInput.safeParse(args)
    // invalid arguments get the SDK's validation error; with async execution off, the call runs synchronously
    if (!parsed.success || !deps.asyncEnabled) return undefined
    try {
      return { task: (await deps.tasks.submit({ principal, agentId: callerOf(principal, ctx).agentId }, parsed.data)).task }
    } catch (err) {
      return { refused: fromError(err) }
    }
  })
}

export function registerTaskTools (server: McpServer, deps: TaskToolDeps, principal: string): void {
  const { tasks } = deps

  const execute = server.registerTool('opencode_execute_task', {
    title: 'Run a development task with OpenCode',
    description: 'Runs a development task in an isolated, resource-limited container. With sync=true waits for the result ' +
      `(at most ${Math.round(deps.syncWaitMs / 1000)} s, then returns the task id with status running); otherwise returns the task id at once. ` +
      'Follow it with get_task_status / get_task_history. A sync call that is interrupted (the client goes away) stops waiting, ' +
      'never the task: it keeps its id and runs to its end. MCP Tasks clients get a task handle instead. observers are recorded only.',
    inputSchema: OpencodeExecuteTaskInput,
    outputSchema: OpencodeExecuteTaskOutput
  }, async (args, ctx) => {
    const sync = args.sync ?? !deps.asyncEnabled
    if (!sync && !deps.asyncEnabled) {
      return toolError('Asynchronous execution is disabled on this server (ENABLE_ASYNC_EXECUTE=false): call again with sync=true', { code: 'disabled' })
    }
    const caller = callerOf(principal, ctx)
    let submitted
    try {
      submitted = await tasks.submit({ principal, agentId: caller.agentId }, args)
    } catch (err) {
      return fromError(err)
    }
    let task = submitted.task
    if (sync && !TERMINAL.has(task.status)) {
      task = await waitWithProgress(tasks, principal, task.id, deps.syncWaitMs, ctx)
    }
    return executeResult(task, submitted.existing)
  })
  // MCP Tasks (2025-11-25): a client may ask for a task handle instead (see installTasks)
  execute.execution = { taskSupport: 'optional' }

  server.registerTool('get_task_status', {
    title: 'Task status',
    description: 'The current state of a task, with its result when it has ended, and its last 5 events (recent_events).',
    inputSchema: GetTaskStatusInput,
    outputSchema: GetTaskStatusOutput,
    annotations: { readOnlyHint: true }
  }, async ({ task_id: id }) => {
    try {
      return jsonResult({ ...taskView(await tasks.get(principal, id)), recent_events: (await tasks.recentEvents(principal, id, 5)).map(recentEventView) })
    } catch (err) {
      return fromError(err)
    }
  })

  server.registerTool('get_task_history', {
    title: 'Task history',
    description: 'The events of a task in order (queued, started, output, ended…), each with a one-line message, paged by sequence ' +
      'number (after, limit, next_after: preferred) or by position (events_offset, events_limit: older names; -1 = all, ' +
      `at most ${EVENTS_ALL_CAP}). include_artifacts=true adds the files the agent changed.`,
    inputSchema: GetTaskHistoryInput,
    outputSchema: GetTaskHistoryOutput,
    annotations: { readOnlyHint: true }
  }, async ({ task_id: id, after, limit, events_limit: eventsLimit, events_offset: offset = 0, include_artifacts: withArtifacts }) => {
    if (limit !== undefined && eventsLimit !== undefined) {
      return toolError('Give limit (preferred) or events_limit (older name), not both', { code: 'invalid' })
    }
    try {
      const pageSize = limit ?? (eventsLimit === undefined ? 100 : eventsLimit === -1 ? EVENTS_ALL_CAP : Math.min(eventsLimit, EVENTS_ALL_CAP))
      const { task, events, total } = await tasks.history(principal, id, after ?? 0, pageSize, offset)
      const ended = task.finished_at
      return jsonResult({
        task_id: task.id,
        status: task.status,
        events: events.map(eventView),
        next_after: events.length === pageSize && pageSize > 0 ? events[events.length - 1].seq : null,
        events_total: total,
        events_returned: events.length,
        events_offset: offset,
        has_more_events: offset + events.length < total,
        ...(withArtifacts
          ? {
              artifacts: [
                ...(task.result?.files_changed ?? []).map((path) => ({ type: 'file' as const, name: path, path, timestamp: ended, hint: 'read it with read_task_file' })),
                ...(task.diff !== null ? [{ type: 'diff' as const, name: 'workspace diff', path: null, timestamp: ended, hint: 'get it with get_task_diff' }] : [])
              ]
            }
          : {})
      })
    } catch (err) {
      return fromError(err)
    }
  })

  server.registerTool('send_task_control', {
    title: 'Control a task',
    description: 'cancel a queued or running task (its container is stopped), or pause / resume a running one (the timeout clock stops while paused). ' +
      'An optional reason is kept in the task\'s history.',
    inputSchema: SendTaskControlInput,
    outputSchema: TaskViewOutput
  }, async ({ task_id: id, control, reason }) => {
    try {
      return jsonResult(taskView(await tasks.control(principal, id, control, reason)))
    } catch (err) {
      return fromError(err)
    }
  })

  server.registerTool('list_tasks', {
    title: 'List tasks',
    description: 'Your tasks, newest first, optionally filtered by status or agent; cost_total=true adds what all the tasks the filter selects spent.',
    inputSchema: ListTasksInput,
    outputSchema: ListTasksOutput,
    annotations: { readOnlyHint: true }
  }, async (filter) => {
    const { tasks: list, total, cost_total: costTotal } = await tasks.list(principal, filter)
    return jsonResult({ tasks: list.map(taskView), total, ...(costTotal === undefined ? {} : { cost_total: costTotal }) })
  })

  server.registerTool('get_task_logs', {
    title: 'Task logs',
    description: 'The full output of a task (stdout and stderr as written, kept up to TASK_LOG_LIMIT bytes), read in byte ranges ' +
      'while it runs and after it ended. Call again with offset=next_offset to read on.',
    inputSchema: GetTaskLogsInput,
    outputSchema: GetTaskLogsOutput,
    annotations: { readOnlyHint: true }
  }, async ({ task_id: id, offset = 0, limit = 65_536 }) => {
    try {
      const { task, data, size } = await tasks.logs(principal, id, offset, limit)
      const next = offset + data.length
      return jsonResult({ task_id: task.id, status: task.status, offset, next_offset: next, size, eof: TERMINAL.has(task.status) && next >= size, data: data.toString('utf8') })
    } catch (err) {
      return fromError(err)
    }
  })

  server.registerTool('send_task_message', {
    title: 'Send a follow-up message to a task',
    description: 'Continues the task\'s OpenCode session in the same workspace: to a running task the message is queued and ' +
      'becomes the next turn when the current one ends; to an ended task it starts a follow-up turn. The reply says which happened. ' +
      'message_type (default update) tells the agent what kind of message it is: any other type reaches it as a "[type] " prefix ' +
      '(e.g. "[feedback] …"); metadata is kept in the history only.',
    inputSchema: SendTaskMessageInput,
    outputSchema: SendTaskMessageOutput
  }, async ({ task_id: id, message, message_type: type = 'update', metadata }) => {
    try {
      const { task, delivery, message_id: messageId, timestamp } = await tasks.message(principal, id, message, { type, metadata })
      return jsonResult({ ...taskView(task), delivery, message_id: messageId, message_type: type, timestamp })
    } catch (err) {
      return fromError(err)
    }
  })

  server.registerTool('get_task_files', {
    title: 'List workspace files',
    description: 'Lists the files of a task\'s workspace (recursively), during the run and after it, until WORKSPACE_RETENTION_MS. ' +
      'path is relative to the workspace, where "/" is its root (the default); entries has the details, files just the file paths.',
    inputSchema: GetTaskFilesInput,
    outputSchema: GetTaskFilesOutput,
    annotations: { readOnlyHint: true }
  }, async ({ task_id: id, path: given = '', limit = 1_000 }) => {
    const path = workspacePath(given)
    try {
      const { entries, truncated } = await tasks.files(principal, id, path, limit)
      return jsonResult({ task_id: id, path: path || '.', entries, files: entries.filter((e) => e.type !== 'directory').map((e) => e.path), truncated })
    } catch (err) {
      return fromError(err)
    }
  })

  server.registerTool('read_task_file', {
    title: 'Read a workspace file',
    description: 'Reads one file of a task\'s workspace: text as UTF-8, binary files as base64. Give path (preferred) or file_path ' +
      '(older name), relative to the workspace, where a leading "/" is the workspace root; ".." and symlinks leading outside are refused. ' +
      'At most MAX_TASK_FILE_SIZE bytes.',
    inputSchema: ReadTaskFileInput,
    outputSchema: ReadTaskFileOutput,
    annotations: { readOnlyHint: true }
  }, async ({ task_id: id, path, file_path: filePath }) => {
    const given = path ?? filePath
    if (given === undefined) return toolError('read_task_file needs path (preferred) or file_path (older name): the file to read, relative to the workspace, such as src/index.ts', { code: 'invalid' })
    if (path !== undefined && filePath !== undefined && path !== filePath) {
      return toolError(`path "${path}" and file_path "${filePath}" differ: give one of them (path is preferred)`, { code: 'invalid' })
    }
    try {
      return jsonResult({ task_id: id, ...await tasks.readFile(principal, id, workspacePath(given)), file_path: given })
    } catch (err) {
      return fromError(err)
    }
  })

  server.registerTool('get_task_diff', {
    title: 'Task diff',
    description: 'The changes the task made to a git workspace (a cloned repository), untracked files included, as a unified diff (size-capped).',
    inputSchema: GetTaskDiffInput,
    outputSchema: GetTaskDiffOutput,
    annotations: { readOnlyHint: true }
  }, async ({ task_id: id }) => {
    try {
      const task = await tasks.get(principal, id)
      const hint = task.diff === null ? (TERMINAL.has(task.status) ? 'The workspace is not a git repository: get_task_files and read_task_file show its files.' : 'The diff is made when the task ends.') : undefined
      return jsonResult({ task_id: id, status: task.status, diff: task.diff, truncated: task.diff_truncated, ...(hint ? { hint } : {}) })
    } catch (err) {
      return fromError(err)
    }
  })
}

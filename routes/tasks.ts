/**
 * HTTP task endpoints, with the same auth and principal scoping as /mcp: list, a live stream of the
 * list's changes (SSE), status, history, logs (with a follow mode), controls (cancel, pause, resume),
 * follow-up messages, workspace files, the diff and the patch. Each calls the engine method its MCP tool calls.
 * Schemas for every status code; another principal's task is a 404.
 */
import { Readable } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply } from 'fastify'
import { Type } from 'typebox'
import { DockerError, type DockerErrorCode } from '../services/docker/errors.js'
import { HTTP_STATUS } from '../services/errors.js'
import { MESSAGE_TYPES } from '../services/tasks/engine.js'
import { MAX_LOG_OFFSET, MAX_OFFSET, TaskError, TERMINAL, type TaskRecord } from '../services/tasks/types.js'
import { eventView, TaskEventSchema, TaskListSchema, TaskStatusSchema, TaskViewSchema, taskView } from '../services/tasks/view.js'

const ErrorSchema = Type.Object({ statusCode: Type.Integer(), error: Type.String(), message: Type.String() })
const errors = { 400: ErrorSchema, 401: ErrorSchema, 403: ErrorSchema, 404: ErrorSchema }
const TaskParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 100, description: 'The task id' }) })

/** The Docker engine's errors of a workspace read (files, file): the engine down is a 503, its refusals a 4xx. */
const DOCKER_STATUS_OF: Partial<Record<DockerErrorCode, number>> = { no_such_container: 404, no_such_volume: 404, no_such_image: 503, conflict: 409, bad_request: 400 }

/** A workspace path as the MCP tools take it: a leading "/" is the workspace root. */
const workspacePath = (path: string) => path.replace(/^\/+/, '')
const Reason = Type.Object({ reason: Type.Optional(Type.String({ maxLength: 2_000, description: 'Why: kept in the task\'s history' })) }, { additionalProperties: false })
const FileEntrySchema = Type.Object({
  path: Type.String(),
  type: Type.Union([Type.Literal('file'), Type.Literal('directory'), Type.Literal('symlink')]),
  size: Type.Number(),
  modified: Type.String(),
  link_target: Type.Optional(Type.String())
})
/** SSE heartbeat: proxies and the browser see the stream alive. */
const HEARTBEAT_MS = 15_000

const route: FastifyPluginAsyncTypebox = async (fastify) => {
  const tasks = fastify.tasks
  fastify.addHook('onRequest', fastify.requireCaller)

  /** The engine's TaskError as the HTTP error of the same meaning. */
  async function engineCall<T> (fn: () => T | Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (err) {
      if (err instanceof TaskError) throw fastify.httpErrors.createError(HTTP_STATUS[err.code], err.message)
      if (err instanceof DockerError) throw fastify.httpErrors.createError(DOCKER_STATUS_OF[err.code] ?? 503, err.message)
      throw err
    }
  }

  fastify.get('/tasks', {
    schema: {
      summary: 'Your tasks, newest first',
      querystring: Type.Object({
        status: Type.Optional(TaskStatusSchema),
        agent_id: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9._:-]{1,128}$' })),
        limit: Type.Integer({ minimum: 1, maximum: 200, default: 20 }),
        offset: Type.Integer({ minimum: 0, maximum: MAX_OFFSET, default: 0 }),
        cost_total: Type.Boolean({ default: false, description: 'Also return cost_total: what all the tasks the filter selects spent' })
      }, { additionalProperties: false }),
      response: { 200: TaskListSchema, ...errors }
    }
  }, async (request) => {
    const { tasks: list, total, cost_total: costTotal } = await tasks.list(request.principal, request.query)
    return { tasks: list.map(taskView), total, ...(costTotal === undefined ? {} : { cost_total: costTotal }) }
  })

  /**
   * The list's changes as server-sent events: `task` with the task's view each time one of the
   * caller's tasks is queued, starts or ends. A client re-reads its page on each (the events carry the
   * view, so a client may also patch its rows). Pause, resume and follow-up turns show in the next read.
   */
  const streams = new Set<() => void>()
  fastify.addHook('preClose', async () => { for (const end of streams) end() })
  fastify.get('/tasks/events', {
    schema: {
      summary: 'Server-sent events: `task` (the view) whenever one of your tasks is queued, starts or ends',
      response: { 200: { content: { 'text/event-stream': { schema: Type.String() } } }, ...errors }
    }
  }, async (request, reply) => {
    const principal = request.principal
    reply.hijack()
    const res = reply.raw
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', 'x-accel-buffering': 'no', connection: 'keep-alive' })
    res.write('retry: 2000\n: connected\n\n')
    const send = (task: TaskRecord) => {
      if (task.principal === principal) res.write(`event: task\ndata: ${JSON.stringify(taskView(task))}\n\n`)
    }
    const events = ['queued', 'started', 'ended'] as const
    for (const name of events) tasks.on(name, send)
    const heartbeat = setInterval(() => res.write(': heartbeat\n\n'), HEARTBEAT_MS).unref()
    const end = () => {
      clearInterval(heartbeat)
      for (const name of events) tasks.off(name, send)
      streams.delete(end)
      if (!res.writableEnded) res.end()
    }
    streams.add(end)
    res.once('close', end)
  })

  fastify.get('/tasks/:id', {
    schema: { summary: 'A task and its result', params: TaskParams, response: { 200: TaskViewSchema, ...errors } }
  }, async (request) => engineCall(async () => taskView(await tasks.get(request.principal, request.params.id))))

  fastify.post('/tasks/:id/cancel', {
    schema: {
      summary: 'Cancel a queued or running task (its container is stopped)',
      params: TaskParams,
      response: { 200: TaskViewSchema, ...errors, 409: ErrorSchema }
    }
  }, async (request) => engineCall(async () => taskView(await tasks.control(request.principal, request.params.id, 'cancel'))))

  for (const action of ['pause', 'resume'] as const) {
    fastify.post(`/tasks/:id/${action}`, {
      schema: {
        summary: action === 'pause' ? 'Pause a running task (its container is frozen; the timeout clock stops)' : 'Resume a paused task',
        params: TaskParams,
        body: Reason,
        response: { 200: TaskViewSchema, ...errors, 409: ErrorSchema, 503: ErrorSchema }
      },
      // the body (a reason) is optional: none is an empty one
      preValidation: async (request) => { request.body ??= {} }
    }, async (request) => engineCall(async () => taskView(await tasks.control(request.principal, request.params.id, action, request.body.reason))))
  }

  fastify.post('/tasks/:id/messages', {
    schema: {
      summary: 'A follow-up message: queued for the next turn of a running task, or a new turn of an ended one',
      params: TaskParams,
      body: Type.Object({
        message: Type.String({ minLength: 1, maxLength: 100_000 }),
        message_type: Type.Optional(Type.Enum(MESSAGE_TYPES))
      }, { additionalProperties: false }),
      response: {
        200: Type.Object({ task: TaskViewSchema, delivery: Type.String(), message_id: Type.String(), timestamp: Type.Integer() }),
        ...errors,
        409: ErrorSchema,
        429: ErrorSchema,
        503: ErrorSchema
      }
    }
  }, async (request) => engineCall(async () => {
    const { task, delivery, message_id: messageId, timestamp } = await tasks.message(request.principal, request.params.id, request.body.message, { type: request.body.message_type })
    return { task: taskView(task), delivery, message_id: messageId, timestamp }
  }))

  fastify.get('/tasks/:id/events', {
    schema: {
      summary: 'The task\'s event history after sequence number `after`, oldest first',
      params: TaskParams,
      querystring: Type.Object({
        after: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER, default: 0 }),
        limit: Type.Integer({ minimum: 1, maximum: 1_000, default: 200 })
      }, { additionalProperties: false }),
      response: {
        200: Type.Object({ task_id: Type.String(), status: TaskStatusSchema, events: Type.Array(TaskEventSchema), total: Type.Integer() }),
        ...errors
      }
    }
  }, async (request) => engineCall(async () => {
    const { task, events, total } = await tasks.history(request.principal, request.params.id, request.query.after, request.query.limit)
    return { task_id: task.id, status: task.status, events: events.map(eventView), total }
  }))

  fastify.get('/tasks/:id/files', {
    schema: {
      summary: 'The files of the task\'s workspace (recursively), during the run and after it',
      params: TaskParams,
      querystring: Type.Object({
        path: Type.String({ maxLength: 1_000, default: '' }),
        limit: Type.Integer({ minimum: 1, maximum: 5_000, default: 1_000 })
      }, { additionalProperties: false }),
      response: {
        200: Type.Object({ task_id: Type.String(), path: Type.String(), entries: Type.Array(FileEntrySchema), truncated: Type.Boolean() }),
        ...errors,
        409: ErrorSchema,
        503: ErrorSchema
      }
    }
  }, async (request) => engineCall(async () => {
    const path = workspacePath(request.query.path)
    const { entries, truncated } = await tasks.files(request.principal, request.params.id, path, request.query.limit)
    return { task_id: request.params.id, path: path || '.', entries, truncated }
  }))

  fastify.get('/tasks/:id/file', {
    schema: {
      summary: 'One workspace file: text as UTF-8, binary as base64 (at most MAX_TASK_FILE_SIZE bytes)',
      params: TaskParams,
      querystring: Type.Object({ path: Type.String({ minLength: 1, maxLength: 1_000 }) }, { additionalProperties: false }),
      response: {
        200: Type.Object({ task_id: Type.String(), path: Type.String(), size: Type.Number(), binary: Type.Boolean(), encoding: Type.Union([Type.Literal('utf8'), Type.Literal('base64')]), content: Type.String() }),
        ...errors,
        409: ErrorSchema,
        503: ErrorSchema
      }
    }
  }, async (request) => engineCall(async () => ({ task_id: request.params.id, ...await tasks.readFile(request.principal, request.params.id, workspacePath(request.query.path)) })))

  fastify.get('/tasks/:id/diff', {
    schema: {
      summary: 'The changes the task made to a cloned repository, as a unified diff (null for other workspaces)',
      params: TaskParams,
      response: { 200: Type.Object({ task_id: Type.String(), status: TaskStatusSchema, diff: Type.Union([Type.String(), Type.Null()]), truncated: Type.Boolean(), ended: Type.Boolean() }), ...errors }
    }
  }, async (request) => engineCall(async () => {
    const task = await tasks.get(request.principal, request.params.id)
    return { task_id: task.id, status: task.status, diff: task.diff, truncated: task.diff_truncated, ended: TERMINAL.has(task.status) }
  }))

  fastify.get('/tasks/:id/patch', {
    schema: {
      summary: 'The changes an ended task made to its cloned repository, as a git format-patch series from the original commit (capped at 1 MiB)',
      params: TaskParams,
      response: {
        200: Type.Object({ task_id: Type.String(), status: TaskStatusSchema, patch: Type.String(), commits: Type.Integer(), truncated: Type.Boolean() }),
        ...errors,
        409: ErrorSchema,
        503: ErrorSchema
      }
    }
  }, async (request) => engineCall(async () => {
    const { task, patch, commits, truncated } = await tasks.patch(request.principal, request.params.id)
    return { task_id: task.id, status: task.status, patch, commits, truncated }
  }))

  fastify.get('/tasks/:id/logs', {
    schema: {
      summary: 'The full output of a task as text; with follow=true, streamed until the task ends',
      params: TaskParams,
      querystring: Type.Object({
        follow: Type.Boolean({ default: false }),
        offset: Type.Integer({ minimum: 0, maximum: MAX_LOG_OFFSET, default: 0, description: 'Byte offset to start from' })
      }, { additionalProperties: false }),
      response: { 200: { content: { 'text/plain': { schema: Type.String() } } }, ...errors }
    }
  }, async (request, reply) => {
    const stop = new AbortController()
    // the client going away ends the follow
    reply.raw.once('close', () => stop.abort())
    const { task, chunks } = await engineCall(() => tasks.streamLogs(request.principal, request.params.id, { ...request.query, signal: stop.signal }))
    // a stream, not a string: the schema documents the content, the stream is sent as it is
    return (reply as FastifyReply)
      .type('text/plain; charset=utf-8')
      .header('x-task-status', task.status)
      .header('cache-control', 'no-store')
      .send(Readable.from(chunks))
  })
}

export default route

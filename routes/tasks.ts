/**
 * HTTP task endpoints, with the same auth and principal scoping as /mcp: list, status, logs (with
 * a follow mode) and cancel. Schemas for every status code; another principal's task is a 404.
 */
import { Readable } from 'node:stream'
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import type { FastifyReply } from 'fastify'
import { Type } from 'typebox'
import { MAX_LOG_OFFSET, MAX_OFFSET, TaskError } from '../services/tasks/types.js'
import { TaskListSchema, TaskStatusSchema, TaskViewSchema, taskView } from '../services/tasks/view.js'

const ErrorSchema = Type.Object({ statusCode: Type.Integer(), error: Type.String(), message: Type.String() })
const errors = { 400: ErrorSchema, 401: ErrorSchema, 403: ErrorSchema, 404: ErrorSchema }
const TaskParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 100, description: 'The task id' }) })

const STATUS_OF: Record<TaskError['code'], number> = { not_found: 404, conflict: 409, invalid: 400, queue_full: 429, disabled: 403, draining: 503, unavailable: 503, budget: 429 }

const route: FastifyPluginAsyncTypebox = async (fastify) => {
  const tasks = fastify.tasks
  fastify.addHook('onRequest', fastify.requireCaller)

  /** The engine's TaskError as the HTTP error of the same meaning. */
  async function engineCall<T> (fn: () => T | Promise<T>): Promise<T> {
    try {
      return await fn()
    } catch (err) {
      if (err instanceof TaskError) throw fastify.httpErrors.createError(STATUS_OF[err.code], err.message)
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
    const { tasks: list, total, cost_total: costTotal } = tasks.list(request.principal, request.query)
    return { tasks: list.map(taskView), total, ...(costTotal === undefined ? {} : { cost_total: costTotal }) }
  })

  fastify.get('/tasks/:id', {
    schema: { summary: 'A task and its result', params: TaskParams, response: { 200: TaskViewSchema, ...errors } }
  }, async (request) => engineCall(() => taskView(tasks.get(request.principal, request.params.id))))

  fastify.post('/tasks/:id/cancel', {
    schema: {
      summary: 'Cancel a queued or running task (its container is stopped)',
      params: TaskParams,
      response: { 200: TaskViewSchema, ...errors, 409: ErrorSchema }
    }
  }, async (request) => engineCall(async () => taskView(await tasks.control(request.principal, request.params.id, 'cancel'))))

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

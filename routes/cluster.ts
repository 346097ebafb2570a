/**
 * The replicas' internal API (cluster mode with CLUSTER_TOKEN only): POST /cluster/call runs a
 * node-local engine call (services/tasks/remote.ts) for the principal another replica carries over;
 * GET /cluster/logs streams a task's log. Authenticated with the cluster token only; answers are
 * JSON with Buffers as base64, errors keep their kind and code (services/cluster/forward.ts).
 */
import { Readable } from 'node:stream'
import type { FastifyPluginAsync, FastifyReply } from 'fastify'
import { DockerError } from '../services/docker/errors.js'
import { HTTP_STATUS } from '../services/errors.js'
import { CALL_PATH, encode, errorToWire, LOGS_PATH } from '../services/cluster/forward.js'
import { REMOTE_METHODS, type RemoteMethod } from '../services/tasks/remote.js'
import { TaskError } from '../services/tasks/types.js'

function statusOf (err: unknown): number {
  if (err instanceof TaskError) return HTTP_STATUS[err.code]
  if (err instanceof DockerError) return 502
  return 500
}

const route: FastifyPluginAsync = async (fastify) => {
  if (!fastify.cluster) return
  const tasks = fastify.tasks
  fastify.addHook('onRequest', fastify.clusterCaller)

  const failed = (reply: FastifyReply, err: unknown) => {
    if (!(err instanceof TaskError) && !(err instanceof DockerError)) reply.log.error({ err }, 'forwarded call failed')
    return reply.code(statusOf(err)).type('application/json').send(encode({ error: errorToWire(err) }))
  }

  fastify.post<{ Body: { method: RemoteMethod, args: unknown[] } }>(CALL_PATH, {
    schema: {
      body: {
        type: 'object',
        required: ['method', 'args'],
        additionalProperties: false,
        properties: { method: { type: 'string', enum: [...REMOTE_METHODS] }, args: { type: 'array', maxItems: 8 } }
      }
    }
  }, async (request, reply) => {
    const { method, args } = request.body
    try {
      const fn = tasks[method] as (principal: string, ...a: unknown[]) => Promise<unknown>
      const result = await fn.call(tasks, request.principal, ...args)
      return await reply.type('application/json').send(encode({ result }))
    } catch (err) {
      return failed(reply, err)
    }
  })

  fastify.get<{ Querystring: { id: string, follow: boolean, offset: number } }>(LOGS_PATH, {
    schema: {
      querystring: {
        type: 'object',
        required: ['id'],
        additionalProperties: false,
        properties: { id: { type: 'string', minLength: 1, maxLength: 100 }, follow: { type: 'boolean', default: false }, offset: { type: 'integer', minimum: 0, default: 0 } }
      }
    }
  }, async (request, reply) => {
    const stop = new AbortController()
    reply.raw.once('close', () => stop.abort())
    try {
      const { chunks } = await tasks.streamLogs(request.principal, request.query.id, { follow: request.query.follow, offset: request.query.offset, signal: stop.signal })
      return await reply.type('application/octet-stream').header('cache-control', 'no-store').send(Readable.from(chunks))
    } catch (err) {
      return failed(reply, err)
    }
  })
}

export default route

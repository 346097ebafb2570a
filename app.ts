/**
 * The root plugin: plugins in dependency order, then routes, and one error handler that logs and
 * hides the message of server errors. Everything the routes use is a decorator set by a plugin.
 */
import { STATUS_CODES } from 'node:http'
import type { Duplex } from 'node:stream'
import sensible from '@fastify/sensible'
import { LogController, type FastifyError, type FastifyPluginAsync, type FastifyReply, type FastifyRequest, type FastifyServerOptions } from 'fastify'
import fp from 'fastify-plugin'
import clusterPlugin from './plugins/cluster.js'
import configPlugin, { type ConfigPluginOptions } from './plugins/config.js'
import dockerPlugin, { type DockerPluginOptions } from './plugins/docker.js'
import healthPlugin from './plugins/health.js'
import lettaPlugin from './plugins/letta.js'
import loadSheddingPlugin from './plugins/load-shedding.js'
import mcpSessionsPlugin from './plugins/mcp-sessions.js'
import metricsPlugin from './plugins/metrics.js'
import securityPlugin from './plugins/security.js'
import tasksPlugin from './plugins/tasks.js'
import clusterRoute from './routes/cluster.js'
import healthRoute from './routes/health.js'
import mcpRoute from './routes/mcp.js'
import metricsRoute from './routes/metrics.js'
import tasksRoute from './routes/tasks.js'
import uiRoute from './routes/ui.js'

export type AppOptions = ConfigPluginOptions & DockerPluginOptions

/**
 * Fastify's per-request lines ("incoming request", "request completed") at debug instead of info:
 * at info they cost a tenth of the CPU of a busy MCP endpoint, and a tool call has its own info
 * line. Errors keep their levels.
 */
export class RequestLogs extends LogController {
  override incomingRequest (request: FastifyRequest): void {
    if (!this.isLogDisabled(request)) request.log.debug({ req: request }, 'incoming request')
  }

  override requestCompleted (error: Error | null | undefined, request: FastifyRequest, reply: FastifyReply, metadata?: Record<string, unknown>): void {
    if (error) super.requestCompleted(error, request, reply, metadata)
    else if (!this.isLogDisabled(request)) reply.log.debug({ res: reply, responseTime: reply.elapsedTime }, 'request completed')
  }
}

/** Server options of the service (the entry point adds the logger and plugin timeout). */
export function serverOptions (): FastifyServerOptions {
  return {
    requestTimeout: 0, // SSE streams and sync tool calls are long-lived; idle sockets still time out
    keepAliveTimeout: 65_000,
    connectionTimeout: 0,
    forceCloseConnections: 'idle',
    // during the drain requests are still served: /health says draining, status tools keep working
    return503OnClosing: false,
    logController: new RequestLogs()
  }
}

type Bounds = Record<string, { minimum?: number, maximum?: number } | undefined>

/**
 * Ajv coerces a query value such as `1e400` to Infinity and checks no bound after coercing (its
 * bounds apply to finite numbers only): a non-finite number in the query string or the path is
 * refused here, with the bound its schema gives.
 */
async function refuseNonFinite (request: FastifyRequest): Promise<void> {
  const schema = request.routeOptions.schema as { querystring?: { properties?: Bounds }, params?: { properties?: Bounds } } | undefined
  for (const [part, values] of [['querystring', request.query], ['params', request.params]] as const) {
    for (const [name, value] of Object.entries((values ?? {}) as Record<string, unknown>)) {
      if (typeof value !== 'number' || Number.isFinite(value)) continue
      const bounds = schema?.[part]?.properties?.[name] ?? {}
      const bound = value > 0 ? (bounds.maximum !== undefined ? `<= ${bounds.maximum}` : 'finite') : (bounds.minimum !== undefined ? `>= ${bounds.minimum}` : 'finite')
      throw Object.assign(new Error(`${part}/${name} must be ${bound}`), { statusCode: 400 })
    }
  }
}

/**
 * Node's answer to a request it cannot parse (headers too large, malformed HTTP, timeout) closes the
 * socket; the reply says so with `Connection: close`, which Fastify's default answer leaves out.
 */
function answerClientError (err: NodeJS.ErrnoException, socket: Duplex): void {
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const [status, message] = err.code === 'HPE_HEADER_OVERFLOW'
    ? [431, 'Request header fields too large: keep all headers together under 16 KB']
    : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'Request timeout: send the whole request sooner'] : [400, 'Malformed HTTP request']
  const body = JSON.stringify({ statusCode: status, error: STATUS_CODES[status], message })
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
  }
  // Fastify's own handler runs next and leaves a destroyed socket alone
  socket.destroy()
}

const app: FastifyPluginAsync<AppOptions> = async (fastify, opts) => {
  await fastify.register(sensible)
  fastify.server.prependListener('clientError', answerClientError)
  await fastify.register(configPlugin, opts)
  await fastify.register(loadSheddingPlugin)
  await fastify.register(dockerPlugin, opts)
  await fastify.register(securityPlugin)
  await fastify.register(tasksPlugin)
  await fastify.register(clusterPlugin)
  await fastify.register(metricsPlugin)
  await fastify.register(lettaPlugin)
  await fastify.register(mcpSessionsPlugin)
  await fastify.register(healthPlugin)

  // Letta's MCP client (the Python SDK) sends content-type: application/json on every request, GET
  // and DELETE included, with no body: a bodiless request is served as if the header were absent.
  const parseJson = fastify.getDefaultJsonParser(fastify.initialConfig.onProtoPoisoning ?? 'error', fastify.initialConfig.onConstructorPoisoning ?? 'error')
  fastify.removeContentTypeParser('application/json')
  fastify.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    if (body === '') done(null, undefined)
    else parseJson(request, body as string, done)
  })

  fastify.setErrorHandler((err: FastifyError, request, reply) => {
    const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500
    // a 503 (overloaded, draining) is a message for the client; other 5xx details stay in the log
    const hidden = status >= 500 && status !== 503
    if (hidden) request.log.error({ err }, 'request failed')
    else request.log[status === 503 ? 'warn' : 'info']({ status, message: err.message }, 'request rejected')
    return reply.code(status).send({
      statusCode: status,
      error: hidden ? 'Internal Server Error' : (err.name === 'Error' ? 'Bad Request' : err.name),
      message: hidden ? 'Internal Server Error' : err.message
    })
  })

  fastify.addHook('preHandler', refuseNonFinite)

  await fastify.register(healthRoute)
  await fastify.register(mcpRoute)
  await fastify.register(tasksRoute)
  await fastify.register(metricsRoute)
  await fastify.register(uiRoute)
  await fastify.register(clusterRoute)
}

// not encapsulated: the entry point and the tests read the decorators (config, docker, …) from the root
export default fp(app, { name: 'app', fastify: '5.x' })

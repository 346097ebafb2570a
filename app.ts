/**
 * The root plugin: plugins in dependency order, then routes, and one error handler that logs and
 * hides the message of server errors. Everything the routes use is a decorator set by a plugin.
 */
import sensible from '@fastify/sensible'
import type { FastifyError, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import configPlugin, { type ConfigPluginOptions } from './plugins/config.js'
import dockerPlugin, { type DockerPluginOptions } from './plugins/docker.js'
import healthPlugin from './plugins/health.js'
import lettaPlugin from './plugins/letta.js'
import loadSheddingPlugin from './plugins/load-shedding.js'
import mcpSessionsPlugin from './plugins/mcp-sessions.js'
import metricsPlugin from './plugins/metrics.js'
import securityPlugin from './plugins/security.js'
import tasksPlugin from './plugins/tasks.js'
import healthRoute from './routes/health.js'
import mcpRoute from './routes/mcp.js'
import metricsRoute from './routes/metrics.js'
import tasksRoute from './routes/tasks.js'

export type AppOptions = ConfigPluginOptions & DockerPluginOptions

const app: FastifyPluginAsync<AppOptions> = async (fastify, opts) => {
  await fastify.register(sensible)
  await fastify.register(configPlugin, opts)
  await fastify.register(loadSheddingPlugin)
  await fastify.register(dockerPlugin, opts)
  await fastify.register(securityPlugin)
  await fastify.register(tasksPlugin)
  await fastify.register(metricsPlugin)
  await fastify.register(lettaPlugin)
  await fastify.register(mcpSessionsPlugin)
  await fastify.register(healthPlugin)

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

  await fastify.register(healthRoute)
  await fastify.register(mcpRoute)
  await fastify.register(tasksRoute)
  await fastify.register(metricsRoute)
}

// not encapsulated: the entry point and the tests read the decorators (config, docker, …) from the root
export default fp(app, { name: 'app', fastify: '5.x' })

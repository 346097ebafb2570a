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
import mcpSessionsPlugin from './plugins/mcp-sessions.js'
import securityPlugin from './plugins/security.js'
import tasksPlugin from './plugins/tasks.js'
import healthRoute from './routes/health.js'
import mcpRoute from './routes/mcp.js'
import tasksRoute from './routes/tasks.js'

export type AppOptions = ConfigPluginOptions & DockerPluginOptions

const app: FastifyPluginAsync<AppOptions> = async (fastify, opts) => {
  await fastify.register(sensible)
  await fastify.register(configPlugin, opts)
  await fastify.register(dockerPlugin, opts)
  await fastify.register(securityPlugin)
  await fastify.register(tasksPlugin)
  await fastify.register(mcpSessionsPlugin)
  await fastify.register(healthPlugin)

  fastify.setErrorHandler((err: FastifyError, request, reply) => {
    const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500
    if (status >= 500) request.log.error({ err }, 'request failed')
    else request.log.info({ status, message: err.message }, 'request rejected')
    return reply.code(status).send({
      statusCode: status,
      error: status >= 500 ? 'Internal Server Error' : (err.name === 'Error' ? 'Bad Request' : err.name),
      message: status >= 500 ? 'Internal Server Error' : err.message
    })
  })

  await fastify.register(healthRoute)
  await fastify.register(mcpRoute)
  await fastify.register(tasksRoute)
}

// not encapsulated: the entry point and the tests read the decorators (config, docker, …) from the root
export default fp(app, { name: 'app', fastify: '5.x' })

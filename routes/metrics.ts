/**
 * GET /metrics in the Prometheus text format. With METRICS_TOKEN set, that bearer token is required
 * (scrapers are not browsers: no Host/Origin check); otherwise the same checks as /mcp apply.
 */
import type { FastifyPluginAsync } from 'fastify'
import { NOT_SHED } from '../plugins/load-shedding.js'

const route: FastifyPluginAsync = async (fastify) => {
  fastify.get('/metrics', {
    logLevel: 'warn',
    config: NOT_SHED,
    schema: { response: { 200: { content: { 'text/plain': { schema: { type: 'string' } } } } } },
    onRequest: async (request, reply) => {
      if (!fastify.guard.metricsTokenSet) return fastify.requireCaller(request, reply)
      const result = fastify.guard.checkMetrics(request.headers.authorization)
      if (!result.ok) {
        if (result.authenticate) reply.header('www-authenticate', result.authenticate)
        throw fastify.httpErrors.createError(result.status, result.message)
      }
    }
  }, async (_request, reply) => {
    return reply.type(fastify.metrics.contentType).send(await fastify.metrics.text())
  })
}

export default route

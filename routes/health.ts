/** GET /health: the deployment guide's report; 200 when healthy or degraded, 503 when unhealthy. */
import type { FastifyPluginAsync } from 'fastify'
import * as z from 'zod'
import { NOT_SHED } from '../plugins/load-shedding.js'
import { HealthReportSchema } from '../services/health.js'

const HealthJsonSchema = z.toJSONSchema(HealthReportSchema, { target: 'draft-7' })

const route: FastifyPluginAsync = async (fastify) => {
  fastify.get('/health', {
    schema: { response: { 200: HealthJsonSchema, 503: HealthJsonSchema } },
    logLevel: 'warn',
    config: NOT_SHED
  }, async (_request, reply) => {
    const { statusCode, body } = await fastify.health()
    return reply.code(statusCode).send(body)
  })
}

export default route

/** GET /health: the deployment guide's report; 200 when healthy or degraded, 503 when unhealthy. */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'

const Nullable = <T extends ReturnType<typeof Type.String>>(t: T) => Type.Union([t, Type.Null()])

export const HealthSchema = Type.Object({
  status: Type.Union([Type.Literal('healthy'), Type.Literal('degraded'), Type.Literal('unhealthy')]),
  service: Type.String(),
  version: Type.String(),
  transport: Type.Literal('streamable_http'),
  protocol_version: Type.String(),
  protocol_versions: Type.Array(Type.String()),
  sessions: Type.Integer(),
  uptime: Type.Number(),
  timestamp: Type.String(),
  security: Type.Object({ origin_validation: Type.Boolean(), localhost_binding: Type.Boolean(), authentication: Type.Boolean() }),
  docker: Type.Object({
    reachable: Type.Boolean(),
    version: Nullable(Type.String()),
    api_version: Nullable(Type.String()),
    last_error: Nullable(Type.String()),
    checked_at: Nullable(Type.String())
  })
})

const route: FastifyPluginAsyncTypebox = async (fastify) => {
  fastify.get('/health', {
    schema: { response: { 200: HealthSchema, 503: HealthSchema } },
    logLevel: 'warn'
  }, async (_request, reply) => {
    const { statusCode, body } = fastify.health()
    return reply.code(statusCode).send(body)
  })
}

export default route

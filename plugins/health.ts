/**
 * Health plugin: `fastify.health()` assembles the report from cached state only (engine probe,
 * session count, security settings), so a probe never waits on a dependency.
 */
import fp from 'fastify-plugin'
import { SUPPORTED_PROTOCOL_VERSIONS } from '@modelcontextprotocol/sdk/types.js'
import { healthReport, type HealthReport } from '../services/health.js'
import { SERVICE_VERSION } from '../services/meta.js'

declare module 'fastify' {
  interface FastifyInstance {
    health: () => { statusCode: 200 | 503, body: HealthReport }
  }
}

export default fp(async (fastify) => {
  fastify.decorate('health', () => {
    const body = healthReport({
      version: SERVICE_VERSION,
      engine: fastify.engineProbe.state,
      sessions: fastify.mcpSessions.size,
      security: fastify.securityReport(),
      protocolVersions: SUPPORTED_PROTOCOL_VERSIONS
    })
    return { statusCode: body.status === 'unhealthy' ? 503 : 200, body }
  })
}, { name: 'health', dependencies: ['docker', 'security', 'mcp-sessions'], fastify: '5.x' })

/**
 * Health plugin: `fastify.health()` assembles the report from cached state (engine probe, session
 * count, security settings) and the store's count of pending Letta work, so a probe never waits on
 * a remote dependency.
 */
import fp from 'fastify-plugin'
import { healthReport, type HealthReport } from '../services/health.js'
import { PROTOCOL_VERSIONS } from '../services/mcp/server.js'
import { SERVICE_VERSION } from '../services/meta.js'

declare module 'fastify' {
  interface FastifyInstance {
    health: () => Promise<{ statusCode: 200 | 503, body: HealthReport }>
  }
}

export default fp(async (fastify) => {
  fastify.decorate('health', async () => {
    const body = healthReport({
      version: SERVICE_VERSION,
      engine: fastify.engineProbe.state,
      sessions: fastify.mcpSessions.size,
      runner: fastify.runnerImage.state,
      security: fastify.securityReport(),
      protocolVersions: PROTOCOL_VERSIONS,
      tasks: {
        running: fastify.tasks.running,
        queued: fastify.tasks.queued,
        max_concurrent: fastify.config.MAX_CONCURRENT_TASKS,
        max_queued: fastify.config.MAX_QUEUED_TASKS,
        accepting: !fastify.tasks.draining
      },
      letta: fastify.letta
        ? { ...fastify.letta.state, pending: await fastify.letta.pending() }
        : { configured: false, reachable: null, version: null, last_error: null, checked_at: null, pending: 0 },
      load: (({ eventLoopDelay, heapUsed }) => ({
        shedding: fastify.isUnderPressure(),
        // under-pressure reports Infinity until its first sample: 0 (nothing measured yet), never a non-number
        event_loop_delay_ms: Number.isFinite(eventLoopDelay) ? Math.round(eventLoopDelay * 100) / 100 : 0,
        heap_used_bytes: heapUsed
      }))(fastify.memoryUsage())
    })
    return { statusCode: body.status === 'unhealthy' || body.status === 'draining' ? 503 : 200, body }
  })
}, { name: 'health', dependencies: ['docker', 'security', 'tasks', 'letta', 'mcp-sessions', 'load-shedding'], fastify: '5.x' })

/**
 * Health plugin: `fastify.health()` assembles the report from cached state (engine probe, session
 * count, security settings) and two reads of the store (the queue's backlog, which in cluster mode
 * is the cluster's, and the pending Letta work), so a probe waits on nothing but the store; a store
 * that fails makes the report unhealthy.
 */
import fp from 'fastify-plugin'
import { healthReport, storeErrorText, type HealthReport } from '../services/health.js'
import { PROTOCOL_VERSIONS } from '../services/mcp/server.js'
import { SERVICE_VERSION } from '../services/meta.js'

declare module 'fastify' {
  interface FastifyInstance {
    health: () => Promise<{ statusCode: 200 | 503, body: HealthReport }>
  }
}

export default fp(async (fastify) => {
  const backend = fastify.config.DATABASE_URL ? 'postgres' as const : 'sqlite' as const
  fastify.decorate('health', async () => {
    // the store's numbers: a store that does not answer makes the report unhealthy (503), never a 500
    let storeError: string | null = null
    const fromStore = async <T>(read: () => Promise<T>, fallback: T): Promise<T> => {
      try {
        return await read()
      } catch (err) {
        storeError ??= storeErrorText(err)
        return fallback
      }
    }
    const queue = await fromStore(() => fastify.tasks.queueState(), { waiting: fastify.tasks.queued, full: false })
    const pending = fastify.letta ? await fromStore(() => fastify.letta!.pending(), 0) : 0
    const body = healthReport({
      version: SERVICE_VERSION,
      engine: fastify.engineProbe.state,
      sessions: fastify.mcpSessions.size,
      runner: fastify.runnerImage.state,
      queueFull: queue.full,
      store: { backend, reachable: storeError === null, last_error: storeError },
      security: fastify.securityReport(),
      protocolVersions: PROTOCOL_VERSIONS,
      tasks: {
        running: fastify.tasks.running,
        queued: queue.waiting,
        max_concurrent: fastify.config.MAX_CONCURRENT_TASKS,
        max_queued: fastify.config.MAX_QUEUED_TASKS,
        accepting: !fastify.tasks.draining
      },
      letta: fastify.letta
        ? { ...fastify.letta.state, pending }
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

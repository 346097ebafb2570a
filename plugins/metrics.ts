/**
 * Metrics plugin: the Prometheus registry as `metrics`, fed by the task engine's events. Gauges
 * read the engine, the probe and the session registry when scraped.
 */
import fp from 'fastify-plugin'
import { Metrics } from '../services/metrics.js'

declare module 'fastify' {
  interface FastifyInstance {
    metrics: Metrics
  }
}

export default fp(async (fastify) => {
  const tasks = fastify.tasks
  const metrics = new Metrics({
    taskCounts: () => tasks.countByStatus(),
    queued: async () => (await tasks.queueState()).waiting,
    running: () => tasks.running,
    // registered after this plugin; read at scrape time
    sessions: () => fastify.mcpSessions?.size ?? 0,
    engineUp: () => fastify.engineProbe.state.reachable,
    draining: () => tasks.draining
  })
  tasks.on('started', (task) => metrics.taskStarted(task))
  tasks.on('ended', (task) => metrics.taskEnded(task))
  // cluster mode: a lost replica's tasks are counted once, by the replica whose sweep ended them
  tasks.on('lost', (task) => metrics.taskEnded(task))
  tasks.on('orphan_removed', () => metrics.orphanRemoved())
  tasks.on('spent', (task, cost, tokens) => metrics.spent(task, cost, tokens))
  fastify.egress?.proxy.on('denied', (d) => metrics.egressDenied(d.reason))
  fastify.egress?.proxy.on('allowed', (a) => metrics.egressAllowed(a.rule))
  fastify.egress?.proxy.on('closed', (c) => metrics.egressBytes(c.bytes_out, c.bytes_in))
  fastify.decorate('metrics', metrics)
}, { name: 'metrics', dependencies: ['docker', 'tasks'], fastify: '5.x' })

/**
 * Letta plugin: when LETTA_API_URL and LETTA_API_TOKEN are set, the Letta sync (workspace blocks and
 * completion messages, services/letta/sync.ts) as `letta`, fed by the task engine's events; else
 * `letta` is null. Its probe feeds /health. On close it writes out what is due, after the drain.
 */
import fp from 'fastify-plugin'
import { LettaSync } from '../services/letta/sync.js'

declare module 'fastify' {
  interface FastifyInstance {
    letta: LettaSync | null
  }
}

export default fp(async (fastify) => {
  const { config, tasks } = fastify
  if (!config.LETTA_API_URL || !config.LETTA_API_TOKEN) {
    fastify.decorate('letta', null)
    return
  }
  const letta = new LettaSync(tasks.store, fastify.lettaOutbox, config, fastify.log, (kind) => fastify.metrics.lettaFailure(kind))
  tasks.on('queued', (task) => letta.track(task))
  tasks.on('started', (task) => letta.changed(task.id))
  tasks.on('event', (taskId) => letta.changed(taskId))
  tasks.on('ended', (task) => letta.ended(task))
  fastify.decorate('letta', letta)
  fastify.addHook('onReady', async () => letta.start())
  fastify.addHook('onClose', async () => {
    await letta.flush().catch(() => {})
    await letta.stop()
  })
}, { name: 'letta', dependencies: ['config', 'tasks', 'metrics'], fastify: '5.x' })

/**
 * Tasks plugin: the task store (SQLite in DATA_DIR) and the task engine with its semaphore queue,
 * decorated as `tasks`. Recovery and orphan reconciliation run at start-up and periodically; the
 * drain runs first on close.
 */
import fp from 'fastify-plugin'
import { TaskEngine } from '../services/tasks/engine.js'
import { TaskStore } from '../services/tasks/store.js'

declare module 'fastify' {
  interface FastifyInstance {
    tasks: TaskEngine
  }
}

export default fp(async (fastify) => {
  const store = new TaskStore(fastify.config.DATA_DIR)
  const engine = new TaskEngine(store, fastify.docker, fastify.config, fastify.log, fastify.runnerEnv)
  fastify.decorate('tasks', engine)
  let timer: NodeJS.Timeout | undefined
  fastify.addHook('onReady', async () => {
    await engine.recover().catch((err: Error) => fastify.log.error({ err }, 'task recovery failed; it runs again at the next reconcile'))
    timer = setInterval(() => {
      engine.reconcile().catch((err: Error) => fastify.log.warn({ err }, 'reconcile failed'))
    }, fastify.config.RECONCILE_INTERVAL_MS).unref()
  })
  // runs before the sessions close and before the server stops listening: status calls still work
  fastify.addHook('preClose', async () => engine.drain(fastify.config.SHUTDOWN_GRACE_MS))
  fastify.addHook('onClose', async () => {
    clearInterval(timer)
    engine.close()
    store.close()
  })
}, { name: 'tasks', dependencies: ['config', 'docker'], fastify: '5.x' })

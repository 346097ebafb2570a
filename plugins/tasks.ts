/**
 * Tasks plugin: the task store (SQLite in DATA_DIR) and the task engine with its semaphore queue,
 * decorated as `tasks`. Recovery and orphan reconciliation run at start-up and periodically; the
 * drain runs first on close. The RUNNER_IMAGE check (`runnerImage`) runs at start and on the engine
 * probe's cadence; the engine refuses tasks while it finds the image unusable.
 */
import fp from 'fastify-plugin'
import { RunnerImageProbe } from '../services/runner/image.js'
import { TaskEngine } from '../services/tasks/engine.js'
import { SqliteTaskStore } from '../services/tasks/store.js'

declare module 'fastify' {
  interface FastifyInstance {
    tasks: TaskEngine
    /** The SQLite task store behind `tasks` (its handle also holds the Letta outbox). */
    taskStore: SqliteTaskStore
    runnerImage: RunnerImageProbe
  }
}

export default fp(async (fastify) => {
  const store = new SqliteTaskStore(fastify.config.DATA_DIR)
  const runnerImage = new RunnerImageProbe(fastify.docker, fastify.config, store.owner, fastify.config.DOCKER_PROBE_INTERVAL_MS, (state) => {
    if (state.error) fastify.log.error({ image: state.image, present: state.present }, state.error)
    else fastify.log.info({ image: state.image, opencode: state.opencode_version }, 'runner image ready')
  })
  const engine = new TaskEngine(store, fastify.docker, fastify.config, fastify.log, fastify.runnerEnv, runnerImage)
  fastify.decorate('tasks', engine)
  fastify.decorate('taskStore', store)
  fastify.decorate('runnerImage', runnerImage)
  let timer: NodeJS.Timeout | undefined
  fastify.addHook('onReady', async () => {
    runnerImage.start()
    await engine.recover().catch((err: Error) => fastify.log.error({ err }, 'task recovery failed; it runs again at the next reconcile'))
    timer = setInterval(() => {
      engine.reconcile().catch((err: Error) => fastify.log.warn({ err }, 'reconcile failed'))
    }, fastify.config.RECONCILE_INTERVAL_MS).unref()
  })
  // runs before the sessions close and before the server stops listening: status calls still work
  fastify.addHook('preClose', async () => engine.drain(fastify.config.SHUTDOWN_GRACE_MS))
  fastify.addHook('onClose', async () => {
    clearInterval(timer)
    runnerImage.stop()
    engine.close()
    store.close()
  })
}, { name: 'tasks', dependencies: ['config', 'docker'], fastify: '5.x' })

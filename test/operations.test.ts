/** Operations: Prometheus metrics after a known sequence of tasks, graceful drain, load shedding. */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import t from 'tap'
import { LABEL } from '../services/runner/container-spec.js'
import { build, listen, tempDir } from './helpers/app.js'
import { containerRuns, engine, waitFor } from './helpers/docker.js'
import { connect } from './helpers/mcp.js'
import { storeEnv } from './helpers/postgres.js'
import { freePort, healthy, startServer } from './helpers/server.js'
import { settled, type TaskResult } from './helpers/tasks.js'

const ENV = { RUNNER_IMAGE: 'letta-opencode-test-agent:latest', RUNNER_NETWORK: 'none', RUNNER_MEMORY_LIMIT: '64m', RUNNER_STOP_GRACE_S: '1' }

async function call (client: Client, name: string, args: Record<string, unknown>): Promise<CallToolResult> {
  return await client.callTool({ name, arguments: args }) as CallToolResult
}
// a sync answer comes at SYNC_WAIT_MS at the latest: on a busy machine the end is waited for by status
const task = async (client: Client, args: Record<string, unknown>) => {
  const res = (await call(client, 'opencode_execute_task', args)).structuredContent as TaskResult
  return args.sync ? await settled(client, res) : res
}

/** `name{labels} value` lines of the Prometheus text format → a lookup by `name{labels}`. */
function parseMetrics (text: string): Map<string, number> {
  const values = new Map<string, number>()
  for (const line of text.split('\n')) {
    const m = /^([a-z_]+(?:\{[^}]*\})?) (\S+)$/.exec(line)
    if (m) values.set(m[1], Number(m[2]))
  }
  return values
}

t.test('GET /metrics after a known sequence of tasks', async (t) => {
  const { url } = await listen(t, { env: ENV })
  const { client } = await connect(t, url)
  await task(client, { task_description: 'say ok', sync: true })
  await task(client, { task_description: 'say ok again', sync: true })
  await task(client, { task_description: 'exit 3', sync: true })
  await task(client, { task_description: 'sleep 20', timeout_ms: 1_000, sync: true })
  const long = await task(client, { task_description: 'sleep 20' })
  await waitFor(t, 'running', async () => ((await call(client, 'get_task_status', { task_id: long.task_id })).structuredContent as { status: string }).status === 'running')
  await call(client, 'send_task_control', { task_id: long.task_id, control: 'cancel' })
  await call(client, 'get_task_status', { task_id: 'task_unknown' })

  const res = await fetch(`${url}/metrics`)
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /^text\/plain; version=0\.0\.4/)
  const m = parseMetrics(await res.text())
  t.equal(m.get('lop_tasks{state="completed"}'), 2)
  t.equal(m.get('lop_tasks{state="failed"}'), 1)
  t.equal(m.get('lop_tasks{state="timeout"}'), 1)
  t.equal(m.get('lop_tasks{state="cancelled"}'), 1)
  t.equal(m.get('lop_tasks{state="running"}'), 0)
  t.equal(m.get('lop_task_outcomes_total{outcome="completed"}'), 2)
  t.equal(m.get('lop_task_outcomes_total{outcome="failed"}'), 1)
  t.equal(m.get('lop_task_outcomes_total{outcome="timeout"}'), 1)
  t.equal(m.get('lop_task_outcomes_total{outcome="cancelled"}'), 1)
  t.equal(m.get('lop_task_duration_seconds_count{outcome="completed"}'), 2)
  t.ok((m.get('lop_task_duration_seconds_sum{outcome="timeout"}') ?? 0) >= 1, 'the timeout ran at least its second')
  t.equal(m.get('lop_queue_wait_seconds_count'), 5)
  t.equal(m.get('lop_queue_depth'), 0)
  t.equal(m.get('lop_running_containers'), 0)
  t.equal(m.get('lop_mcp_sessions'), 1)
  t.equal(m.get('lop_docker_engine_up'), 1)
  t.equal(m.get('lop_draining'), 0)
  t.equal(m.get('lop_mcp_tool_calls_total{tool="opencode_execute_task",outcome="ok"}'), 5)
  t.equal(m.get('lop_mcp_tool_calls_total{tool="get_task_status",outcome="error"}'), 1)
  t.equal(m.get('lop_orphans_removed_total'), 0)
  t.ok(m.has('lop_process_cpu_user_seconds_total'), 'default process metrics')
  t.ok(m.has('lop_nodejs_eventloop_lag_seconds'))
})

t.test('GET /metrics is protected by the MCP tokens, or by METRICS_TOKEN alone when set', async (t) => {
  const mcpToken = 'm'.repeat(32)
  const metricsToken = 'p'.repeat(32)
  const withMcp = await build(t, { env: { MCP_AUTH_TOKENS: `ops:${mcpToken}` } })
  t.equal((await withMcp.inject({ url: '/metrics' })).statusCode, 401)
  t.equal((await withMcp.inject({ url: '/metrics', headers: { authorization: `Bearer ${mcpToken}` } })).statusCode, 200)

  const withMetrics = await build(t, { env: { MCP_AUTH_TOKENS: `ops:${mcpToken}`, METRICS_TOKEN: metricsToken } })
  const denied = await withMetrics.inject({ url: '/metrics', headers: { authorization: `Bearer ${mcpToken}` } })
  t.equal(denied.statusCode, 401)
  t.match(denied.json(), { message: /METRICS_TOKEN/ })
  t.match(denied.headers['www-authenticate'], /^Bearer/)
  const scraped = await withMetrics.inject({ url: '/metrics', headers: { authorization: `Bearer ${metricsToken}`, host: 'letta-opencode-plugin:3500' } })
  t.equal(scraped.statusCode, 200, 'a scraper on another host name, with the metrics token')
  t.notMatch(scraped.body, metricsToken, 'no secret in the metrics')

  await t.rejects(build(t, { env: { METRICS_TOKEN: 'short' } }), /METRICS_TOKEN=<redacted>: expected a token of at least 16 characters/, 'a short metrics token is refused, and not echoed')
})

t.test('SIGTERM drains: health says draining, new tasks refused, running tasks get the grace, then interrupted; queued tasks resume on the next start', async (t) => {
  const dataDir = tempDir(t)
  const port = await freePort()
  const url = `http://127.0.0.1:${port}`
  const env = { ...ENV, MCP_PORT: String(port), DATA_DIR: dataDir, MAX_CONCURRENT_TASKS: '2', SHUTDOWN_GRACE_MS: '10000', ...(await storeEnv(t, dataDir)) }
  let proc = startServer(dataDir, env)
  t.teardown(() => { proc.child.kill('SIGKILL') })
  t.ok(await healthy(port))
  const { client } = await connect(t, url)
  const quick = await task(client, { task_description: 'sleep 4 echo quick' })
  const slow = await task(client, { task_description: 'sleep 60' })
  const waiting = await task(client, { task_description: 'echo waited' })
  await waitFor(t, 'two running', async () => {
    const states = await Promise.all([quick, slow].map(async (x) => ((await call(client, 'get_task_status', { task_id: x.task_id })).structuredContent as { status: string }).status))
    return states.every((s) => s === 'running')
  })
  // a task is marked running before its container is created: the drain starts once both containers run
  await waitFor(t, 'two containers running', async () => await containerRuns(quick.task_id) && await containerRuns(slow.task_id), 60_000)

  const stopAt = Date.now()
  proc.child.kill('SIGTERM')
  let health = await fetch(`${url}/health`)
  await waitFor(t, 'draining', async () => (health = await fetch(`${url}/health`)).status === 503, 10_000)
  t.equal(health.status, 503)
  t.match(await health.json(), { status: 'draining', tasks: { accepting: false } })
  const refused = await call(client, 'opencode_execute_task', { task_description: 'say too late' })
  t.equal(refused.isError, true)
  t.match((refused.content[0] as { text: string }).text, /shutting down/)
  t.match((await call(client, 'get_task_status', { task_id: slow.task_id })).structuredContent, { status: 'running' }, 'status calls still work while draining')

  t.equal(await proc.exited, 0, 'exit 0')
  const took = Date.now() - stopAt
  t.ok(took >= 9_500 && took < 10_000 + 60_000, `exited after the grace period (${took} ms)`)
  t.same(await engine.listContainers({ [LABEL.task]: slow.task_id }), [], "the interrupted task's container is gone")

  proc = startServer(dataDir, env)
  t.ok(await healthy(port))
  const again = (await connect(t, url)).client
  const view = async (id: string) => (await call(again, 'get_task_status', { task_id: id })).structuredContent as Record<string, unknown>
  t.match(await view(quick.task_id), { status: 'completed', output: 'quick\n' }, 'finished within the grace')
  t.match(await view(slow.task_id), { status: 'failed', reason: 'interrupted', error: /SHUTDOWN_GRACE_MS=10000/ })
  await waitFor(t, 'the queued task ran after the restart', async () => (await view(waiting.task_id)).status === 'completed', 60_000)
  t.equal((await view(waiting.task_id)).output, 'waited\n')
  proc.child.kill('SIGTERM')
  t.equal(await proc.exited, 0)
})

t.test('load shedding: a stalled event loop answers 503 with Retry-After, then recovers; /health reports it', async (t) => {
  const app = await build(t, { env: { SHED_EVENT_LOOP_DELAY_MS: '100' } })
  // a busy machine may delay the loop by itself for a moment: wait for a calm start
  await waitFor(t, 'served at rest', async () => (await app.inject({ url: '/tasks' })).statusCode === 200, 60_000)
  // stall the loop in bursts for longer than a sample interval, well past the threshold
  const until = Date.now() + 1_500
  while (Date.now() < until) {
    const burst = Date.now() + 300
    while (Date.now() < burst) { /* busy */ }
    await new Promise((resolve) => setImmediate(resolve))
  }
  const shed = await app.inject({ url: '/tasks' })
  t.equal(shed.statusCode, 503)
  t.equal(shed.headers['retry-after'], '5')
  t.match(shed.json(), { statusCode: 503, message: /overloaded; retry in 5 s/ })
  const health = await app.inject({ url: '/health' })
  t.equal(health.statusCode, 200, 'probes are not shed: an overload is no reason to restart the container')
  t.match(health.json(), { status: 'degraded', load: { shedding: true } })
  t.ok((health.json().load.event_loop_delay_ms as number) > 100)
  t.equal((await app.inject({ url: '/metrics' })).statusCode, 200, 'metrics stay readable under load')
  await waitFor(t, 'recovered once the loop is free', async () => (await app.inject({ url: '/tasks' })).statusCode === 200, 30_000)
  await waitFor(t, 'healthy again', async () => (await app.inject({ url: '/health' })).json().status === 'healthy', 30_000)
  t.match((await app.inject({ url: '/health' })).json(), { status: 'healthy', load: { shedding: false } })
})

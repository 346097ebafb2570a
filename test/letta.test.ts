/**
 * Letta integration against the Letta API test server (test/fixtures/letta-server.ts), through the
 * official SDK: the workspace block (created, attached, updated, detached), one completion message
 * per task under injected failures and across a restart, the block limit with 10,000 events and a
 * 5 MB output, an outage that leaves tasks untouched, and an unknown agent.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import t, { type Test } from 'tap'
import { buildBlockValue } from '../services/letta/block.js'
import type { TaskRecord } from '../services/tasks/types.js'
import { FakeLetta } from './fixtures/letta-server.js'
import { build, listen, tempDir } from './helpers/app.js'
import { waitFor } from './helpers/docker.js'
import { connect } from './helpers/mcp.js'
import { settled, type TaskResult } from './helpers/tasks.js'

const TOKEN = 'letta-test-token-0123456789'
const AGENT = 'agent-6b1e2f3a-1111-4222-8333-944455556666'

async function fakeLetta (t: Test): Promise<FakeLetta> {
  const letta = new FakeLetta(TOKEN, [AGENT])
  await letta.start()
  t.teardown(() => letta.stop())
  return letta
}

function env (letta: FakeLetta, extra: Record<string, string> = {}): Record<string, string> {
  return {
    RUNNER_IMAGE: 'letta-opencode-test-agent:latest',
    RUNNER_NETWORK: 'none',
    RUNNER_MEMORY_LIMIT: '64m',
    RUNNER_STOP_GRACE_S: '1',
    LETTA_API_URL: letta.url,
    LETTA_API_TOKEN: TOKEN,
    LETTA_FLUSH_INTERVAL_MS: '100',
    LETTA_TIMEOUT_MS: '1000',
    LETTA_MAX_RETRIES: '2',
    LETTA_PROBE_INTERVAL_MS: '1000',
    ...extra
  }
}

async function execute (client: Client, args: Record<string, unknown>): Promise<Record<string, unknown> & { task_id: string }> {
  const res = await client.callTool({ name: 'opencode_execute_task', arguments: { agent_id: AGENT, ...args } }) as CallToolResult
  if (res.isError) throw new Error(JSON.stringify(res.content))
  // a sync answer comes at SYNC_WAIT_MS at the latest: on a busy machine the end is waited for by status
  return args.sync ? await settled(client, res.structuredContent as TaskResult) : res.structuredContent as Record<string, unknown> & { task_id: string }
}
const view = async (client: Client, id: string) => ((await client.callTool({ name: 'get_task_status', arguments: { task_id: id } })) as CallToolResult).structuredContent as Record<string, unknown> & { letta: { block_id: string, attached: boolean, notified: boolean, error: string | null } | null }
const messagesFor = (letta: FakeLetta, taskId: string) => (letta.messages.get(AGENT) ?? []).filter((m) => m.content.includes(taskId))

t.test('a task gets a workspace block, attached and updated, one completion message, then the block is detached', async (t) => {
  const letta = await fakeLetta(t)
  // long enough that the block is still attached when the notification is seen, on a busy machine too
  const { app, url } = await listen(t, { env: env(letta, { LETTA_DETACH_DELAY_MS: '5000' }) })
  const { client } = await connect(t, url)
  await waitFor(t, 'letta probed', async () => (await app.health()).body.letta.reachable === true)
  t.match((await app.health()).body, { status: 'healthy', letta: { configured: true, reachable: true, version: '0.test' } })

  const done = await execute(client, { task_description: 'echo one echo two', sync: true })
  t.equal(done.status, 'completed')
  await waitFor(t, 'notified', async () => (await view(client, done.task_id)).letta?.notified === true, 30_000)
  const status = await view(client, done.task_id)
  const block = letta.blocks.get(status.letta?.block_id as string)
  t.ok(block, 'the block exists in Letta')
  t.match(block, { label: `opencode_workspace_${done.task_id}`, limit: 50_000, description: /get_task_status/ })
  t.ok(letta.agents.get(AGENT)?.has(block?.id as string), 'attached to the agent')
  const value = JSON.parse(block?.value as string)
  t.match(value, {
    version: 1,
    task_id: done.task_id,
    agent_id: AGENT,
    status: 'completed',
    created_at: String,
    updated_at: String,
    artifacts: [{ type: 'summary', status: 'completed' }],
    metadata: { events_trimmed: 0 }
  })
  t.same(value.events.map((e: { type: string }) => e.type), ['queued', 'started', 'completed'])

  const messages = messagesFor(letta, done.task_id)
  t.equal(messages.length, 1, 'one message')
  t.match(messages[0].content, new RegExp(`OpenCode task ${done.task_id} completed after [0-9.]+ s\\.[\\s\\S]*get_task_status with task_id "${done.task_id}"`))
  t.ok(letta.requests.some((r) => r.method === 'POST' && r.path === `/v1/agents/${AGENT}/messages/async`), 'sent through the asynchronous message API')

  await waitFor(t, 'detached after LETTA_DETACH_DELAY_MS', () => !letta.agents.get(AGENT)?.has(block?.id as string), 30_000)
  // the service records the detach once Letta has answered it: a moment after Letta's side shows it
  await waitFor(t, 'the detach recorded', async () => (await view(client, done.task_id)).letta?.attached === false, 30_000)
  t.match(await view(client, done.task_id), { letta: { attached: false, notified: true } })
  const history = await client.callTool({ name: 'get_task_history', arguments: { task_id: done.task_id } }) as CallToolResult
  t.match(history.structuredContent, { events: [{ type: 'queued' }, { type: 'started' }, { type: 'completed' }] }, 'history is served from the store after detachment')
})

t.test('injected 409s and 500s: retried, one block and exactly one message', async (t) => {
  const letta = await fakeLetta(t)
  letta.fail(/^POST \/v1\/blocks\/$/, 409, 1)
  letta.fail(/attach/, 500, 2)
  letta.fail(/messages\/async$/, 503, 1)
  letta.fail(/^PATCH \/v1\/blocks\//, 429, 1)
  const { app, url } = await listen(t, { env: env(letta) })
  const { client } = await connect(t, url)
  const done = await execute(client, { task_description: 'echo retried', sync: true })
  t.equal(done.status, 'completed', 'Letta failures never fail the task')
  await waitFor(t, 'notified', async () => (await view(client, done.task_id)).letta?.notified === true, 20_000)
  t.equal(messagesFor(letta, done.task_id).length, 1, 'exactly one message')
  t.equal([...letta.blocks.values()].filter((b) => b.label.endsWith(done.task_id)).length, 1, 'one block')
  t.ok(letta.requests.filter((r) => r.status >= 400).length >= 4, 'the failures happened')
  const metrics = await app.inject({ url: '/metrics' })
  t.match(metrics.body, /lop_letta_failures_total\{kind="notification"\} [1-9]/, 'the failed notification attempt is counted')
})

t.test('a restart sends what is pending, once', async (t) => {
  const letta = await fakeLetta(t)
  const dataDir = tempDir(t, 'lop-letta-data-')
  const first = await build(t, { env: { ...env(letta), DATA_DIR: dataDir } })
  await first.listen({ host: '127.0.0.1', port: 0 })
  const { client } = await connect(t, `http://127.0.0.1:${(first.server.address() as { port: number }).port}`)
  const earlier = await execute(client, { task_description: 'echo earlier', sync: true })
  await waitFor(t, 'earlier notified', async () => (await view(client, earlier.task_id)).letta?.notified === true, 30_000)

  // Letta goes away before the task ends, the service stops, Letta comes back, the service starts again
  // long enough to be running when Letta goes (its block is attached within a second or so)
  const task = await execute(client, { task_description: 'sleep 5 echo later' })
  await waitFor(t, 'block attached', async () => (await view(client, task.task_id)).letta?.attached === true, 10_000)
  await letta.stop()
  await waitFor(t, 'ended', async () => (await view(client, task.task_id)).status === 'completed', 120_000)
  t.match(await view(client, task.task_id), { status: 'completed', letta: { notified: false } }, 'the task ended normally during the outage')
  await client.close()
  await first.close()
  await letta.start(letta.port)
  const again = await build(t, { env: { ...env(letta), DATA_DIR: dataDir } })
  await waitFor(t, 'notified after the restart', async () => (await again.letta?.outbox.get(task.task_id))?.notify === 'sent', 15_000)
  t.equal(messagesFor(letta, task.task_id).length, 1, 'one message across the restart')
  t.equal(messagesFor(letta, earlier.task_id).length, 1, 'and still one for the earlier task')
})

t.test('a lost answer to the send: the next attempt finds the message and does not send it again', async (t) => {
  const letta = await fakeLetta(t)
  const { app, url } = await listen(t, { env: env(letta, { LETTA_TIMEOUT_MS: '600' }) })
  const { client } = await connect(t, url)
  // long enough that the answers are slowed before it ends (its block is attached within a second or so)
  const done = await execute(client, { task_description: 'sleep 5 echo ambiguous' })
  await waitFor(t, 'block attached', async () => (await view(client, done.task_id)).letta?.attached === true, 10_000)
  letta.delayMs = 1_000 // every answer now comes after the client's timeout: the send arrives, its answer is lost
  await waitFor(t, 'the send was attempted', () => messagesFor(letta, done.task_id).length === 1, 15_000)
  t.equal((await app.letta?.outbox.get(done.task_id))?.notify, 'sending', 'the outcome is unknown to the service')
  letta.delayMs = 0
  await waitFor(t, 'recorded as sent', async () => (await app.letta?.outbox.get(done.task_id))?.notify === 'sent', 20_000)
  t.equal(messagesFor(letta, done.task_id).length, 1, 'found among the agent\'s messages, not sent twice')
})

t.test('the block never goes over its limit: 10,000 events and 5 MB of output', async (t) => {
  const letta = await fakeLetta(t)
  const { url } = await listen(t, { env: env(letta, { WORKSPACE_BLOCK_LIMIT: '8000', WORKSPACE_MAX_EVENTS: '50' }) })
  const { client } = await connect(t, url)
  const done = await execute(client, { task_description: 'events 10000 print-mb 5', sync: true, timeout_ms: 600_000 })
  t.equal(done.status, 'completed')
  await waitFor(t, 'notified', async () => (await view(client, done.task_id)).letta?.notified === true, 20_000)
  const block = letta.blocks.get((await view(client, done.task_id)).letta?.block_id as string)
  const value = JSON.parse(block?.value as string)
  t.ok((block?.value.length ?? 0) <= 8000, `final value within the limit (${block?.value.length})`)
  t.ok(letta.longestValue <= 8000, `every write within the limit (longest ${letta.longestValue})`)
  t.equal(letta.refusedOverLimit, 0, 'Letta never refused a write')
  t.ok(value.events.length <= 50)
  t.ok(value.metadata.events_trimmed > 0, 'the trimming is marked')
  t.equal(value.status, 'completed', 'a large result never turns a success into a failure')

  // the builder alone, with a 5 MB answer: the artifact is shortened and marked
  const task = { id: 'task_x', agent_id: AGENT, description: 'd', status: 'completed', created_at: 0, started_at: 0, finished_at: 1, turns: 1, model: null, error: null, result: { answer: 'a'.repeat(5 * 1024 * 1024), files_changed: Array.from({ length: 5000 }, (_, i) => `f${i}.ts`), tokens: { input: 1, output: 1, reasoning: 0, cache_read: 0, cache_write: 0 }, cost: 0, session_id: 's', steps: 1, tool_calls: 0 } } as unknown as TaskRecord
  const events = Array.from({ length: 10_000 }, (_, i) => ({ seq: i + 1, at: i, type: 'text', data: { text: `event ${i} ${'x'.repeat(200)}` } }))
  for (const limit of [1_000, 5_000, 50_000]) {
    const built = buildBlockValue(task, events, { chars: limit, maxEvents: 50 })
    t.ok(built.length <= limit, `within ${limit} (${built.length})`)
    t.equal(JSON.parse(built).status, 'completed')
  }
  t.match(JSON.parse(buildBlockValue(task, events, { chars: 50_000, maxEvents: 50 })), { artifacts: [{ truncated: true, answer: /\[trimmed\]$/ }], metadata: { artifacts_trimmed: true } })
})

t.test('a Letta outage: tasks run as usual, /health is degraded, updates go out when Letta returns', async (t) => {
  const letta = await fakeLetta(t)
  const { app, url } = await listen(t, { env: env(letta) })
  const { client } = await connect(t, url)
  await waitFor(t, 'letta probed', async () => (await app.health()).body.letta.reachable === true)
  // the same task with Letta up: the baseline of this machine
  const before = Date.now()
  t.equal((await execute(client, { task_description: 'echo regardless', sync: true })).status, 'completed')
  const baseline = Date.now() - before
  await letta.stop()
  await waitFor(t, 'outage seen', async () => (await app.health()).body.letta.reachable === false, 30_000)
  t.match(await app.health(), { statusCode: 200, body: { status: 'degraded', letta: { reachable: false, last_error: String } } })
  const started = Date.now()
  const done = await execute(client, { task_description: 'echo regardless', sync: true })
  t.equal(done.status, 'completed')
  const took = Date.now() - started
  t.ok(took < 3 * baseline + 10_000, `not slowed by the outage: ${took} ms against ${baseline} ms with Letta up (Letta calls with retries would take longer)`)
  t.ok((await app.health()).body.letta.pending >= 1, 'the update waits in the outbox')
  await letta.start(letta.port)
  await waitFor(t, 'notified after the outage', async () => (await view(client, done.task_id)).letta?.notified === true, 90_000)
  t.equal(messagesFor(letta, done.task_id).length, 1)
  await waitFor(t, 'healthy again', async () => (await app.health()).body.status === 'healthy', 30_000)
})

t.test('an unknown agent id leaves the task running and the error visible', async (t) => {
  const letta = await fakeLetta(t)
  const { url } = await listen(t, { env: env(letta) })
  const { client } = await connect(t, url)
  const done = await execute(client, { task_description: 'echo alone', agent_id: 'agent-nobody', sync: true })
  t.equal(done.status, 'completed')
  await waitFor(t, 'error recorded', async () => Boolean((await view(client, done.task_id)).letta?.error), 30_000)
  t.match((await view(client, done.task_id)).letta, { attached: false, notified: false, error: /Letta agent agent-nobody was not found/ })
})

/**
 * Races and ordering in the task engine, against the real engine and the stand-in agent: an
 * idempotent retry under a full queue, a follow-up message that arrives while a turn's end is being
 * recorded, per-task progress subscribers, observers that throw, and a Letta worker whose store fails.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import t, { type Test } from 'tap'
import type { LettaSync } from '../services/letta/sync.js'
import { FakeLetta } from './fixtures/letta-server.js'
import { listen } from './helpers/app.js'
import { waitFor } from './helpers/docker.js'
import { connect } from './helpers/mcp.js'
import { settled, untilEnded, type TaskResult } from './helpers/tasks.js'

const BASE_ENV = { RUNNER_IMAGE: 'letta-opencode-test-agent:latest', RUNNER_NETWORK: 'none', RUNNER_MEMORY_LIMIT: '64m', RUNNER_STOP_GRACE_S: '1', RUNNER_CPU_LIMIT: '0.5' }

async function call (client: Client, name: string, args: Record<string, unknown>): Promise<CallToolResult> {
  return await client.callTool({ name, arguments: args }) as CallToolResult
}
async function execute (client: Client, args: Record<string, unknown>): Promise<TaskResult> {
  const res = await call(client, 'opencode_execute_task', args)
  if (res.isError) throw new Error((res.content[0] as { text: string }).text)
  return res.structuredContent as TaskResult
}
const errorOf = (res: CallToolResult) => JSON.parse((res.content[0] as { text: string }).text) as Record<string, unknown>

async function setup (t: Test, env: Record<string, string> = {}) {
  const { app, url } = await listen(t, { env: { ...BASE_ENV, ...env } })
  const { client } = await connect(t, url, { 'x-agent-id': 'agent-races' })
  return { app, url, client }
}

/** Holds the engine between "the turn ended" and "the end is recorded" (its diff step) until released. */
function holdDiff (app: Awaited<ReturnType<typeof setup>>['app']) {
  const workspaces = app.tasks.workspaces
  const diff = workspaces.diff.bind(workspaces)
  let entered!: () => void
  let release!: () => void
  const reached = new Promise<void>((resolve) => { entered = resolve })
  const gate = new Promise<void>((resolve) => { release = resolve })
  workspaces.diff = async (...args) => {
    entered()
    await gate
    return diff(...args)
  }
  return { reached, release }
}

t.test('an idempotent retry gets its task back when the queue is full; other arguments still conflict', async (t) => {
  const { client } = await setup(t, { MAX_CONCURRENT_TASKS: '1', MAX_QUEUED_TASKS: '1' })
  const a = await execute(client, { task_description: 'sleep 60', idempotency_key: 'ka' })
  const b = await execute(client, { task_description: 'sleep 60', idempotency_key: 'kb' })
  const full = await call(client, 'opencode_execute_task', { task_description: 'sleep 60', idempotency_key: 'kc' })
  t.match(errorOf(full), { code: 'queue_full' }, 'a new task is refused')
  for (const [key, task] of [['ka', a], ['kb', b]] as const) {
    const again = await call(client, 'opencode_execute_task', { task_description: 'sleep 60', idempotency_key: key })
    t.notOk(again.isError, `the retry with ${key} is not refused`)
    t.match(again.structuredContent, { task_id: task.task_id, existing: true })
  }
  const conflict = await call(client, 'opencode_execute_task', { task_description: 'sleep 61', idempotency_key: 'ka' })
  t.match(errorOf(conflict), { code: 'conflict', task_id: a.task_id })
  const afterAll = await call(client, 'opencode_execute_task', { task_description: 'sleep 60', idempotency_key: 'kc' })
  t.match(errorOf(afterAll), { code: 'queue_full' }, 'the refused key was not stored')
  for (const x of [b, a]) await call(client, 'send_task_control', { task_id: x.task_id, control: 'cancel' })
})

t.test('submissions and follow-ups in flight at once: the queue never overfills, no message is lost', async (t) => {
  const { app } = await setup(t, { MAX_CONCURRENT_TASKS: '1', MAX_QUEUED_TASKS: '1' })
  const caller = { principal: 'anonymous' }
  // started in one tick: each awaits the store between its check of the queue's room and its scheduling
  const submitted = await Promise.allSettled(Array.from({ length: 4 }, () => app.tasks.submit(caller, { task_description: 'sleep 60' })))
  const accepted = submitted.flatMap((r) => (r.status === 'fulfilled' ? [r.value.task] : []))
  const refused = submitted.flatMap((r) => (r.status === 'rejected' ? [r.reason as { code?: string }] : []))
  t.equal(accepted.length, 2, 'one running and one waiting are accepted')
  t.match(refused, [{ code: 'queue_full' }, { code: 'queue_full' }], 'the others are refused at once')
  const places = await app.tasks.countByStatus()
  t.equal((places.running ?? 0) + (places.queued ?? 0), 2, 'the two accepted tasks only are in the queue')
  // single host: the in-memory semaphore holds them (cluster mode queues in the database)
  if (!app.tasks.clustered) t.equal(app.tasks.running + app.tasks.queued, 2, 'the semaphore holds the two accepted tasks only')
  // the one that runs: the first (in memory), or either (cluster mode claims by creation time, and both were made in one millisecond)
  let first = accepted[0]
  await waitFor(t, 'an accepted task runs', async () => {
    const running = (await Promise.all(accepted.map((x) => app.tasks.get('anonymous', x.id)))).find((x) => x.status === 'running')
    if (running) first = running
    return running !== undefined
  }, 60_000)
  const second = accepted.find((x) => x.id !== first.id)!
  t.notOk((await app.tasks.countByStatus()).failed, 'no accepted task was failed for a full queue')

  // three messages at once to the running task: each read-modify-write of its pending list waits for the one before
  const sent = await Promise.all(['one', 'two', 'three'].map((m) => app.tasks.message('anonymous', first.id, `say ${m}`)))
  t.same(sent.map((x) => x.delivery), ['queued_for_next_turn', 'queued_for_next_turn', 'queued_for_next_turn'])
  t.same((await app.tasks.get('anonymous', first.id)).pending, ['say one', 'say two', 'say three'], 'every message is kept, in order')
  const queued = (await app.tasks.history('anonymous', first.id)).events.filter((e) => e.type === 'message_queued')
  t.same(queued.map((e) => e.data.position), [1, 2, 3])
  for (const task of [second, first]) await app.tasks.control('anonymous', task.id, 'cancel')
})

t.test('a follow-up sent while the end of a turn is being recorded runs as the next turn', async (t) => {
  const { app, client } = await setup(t)
  const hold = holdDiff(app)
  const task = await execute(client, { task_description: 'say first' })
  await hold.reached
  const sent = await call(client, 'send_task_message', { task_id: task.task_id, message: 'say second' })
  t.match(sent.structuredContent, { delivery: 'queued_for_next_turn' })
  hold.release()
  // the task ends only after its second turn (between the turns it is queued, then running)
  const done = await untilEnded(client, task.task_id)
  t.match(done, { status: 'completed', turns: 2, pending_messages: 0, output: /second/ })
})

t.test('a follow-up waiting when a turn fails is not run, and the task says so', async (t) => {
  const { app, client } = await setup(t)
  const hold = holdDiff(app)
  const task = await execute(client, { task_description: 'exit 3' })
  await hold.reached
  const sent = await call(client, 'send_task_message', { task_id: task.task_id, message: 'say never' })
  t.match(sent.structuredContent, { delivery: 'queued_for_next_turn' })
  hold.release()
  const done = await untilEnded(client, task.task_id)
  t.match(done, { status: 'failed', exit_code: 3, turns: 1, pending_messages: 0, error: /exited with code 3; 1 follow-up message\(s\) were not run .*send them again/ })
  const history = (await call(client, 'get_task_history', { task_id: task.task_id })).structuredContent as { events: Array<{ type: string, data: Record<string, unknown> }> }
  t.match(history.events.find((e) => e.type === 'messages_dropped'), { data: { messages: ['say never'], reason: 'failed' } })
})

t.test('concurrent sync calls with progress share one dispatcher: no listener per call, each gets its own task\'s events', async (t) => {
  const { app, client } = await setup(t, { MAX_CONCURRENT_TASKS: '4', MAX_QUEUED_TASKS: '20', SYNC_WAIT_MS: '600000' })
  const warnings: Error[] = []
  const onWarning = (w: Error) => { if (w.name === 'MaxListenersExceededWarning') warnings.push(w) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  const baseline = app.tasks.listenerCount('event')
  const notes: string[][] = Array.from({ length: 12 }, () => [])
  const calls = notes.map((mine, i) => client.callTool({ name: 'opencode_execute_task', arguments: { task_description: `events 2 say call-${i}`, sync: true } }, undefined, {
    onprogress: (p) => { mine.push(p.message ?? '') },
    timeout: 600_000
  }) as Promise<CallToolResult>)
  await waitFor(t, 'every call is waiting', () => notes.every((n) => n.length > 0), 60_000)
  t.equal(app.tasks.listenerCount('event'), baseline, 'no engine listener per waiting call')
  const results = await Promise.all(calls)
  for (const [i, res] of results.entries()) t.match(res.structuredContent, { status: 'completed', output: new RegExp(`call-${i}`) })
  t.ok(notes.every((n) => n.includes('event 1')), 'each call got its task\'s events as progress')
  t.equal(app.tasks.listenerCount('event'), baseline)
  t.same(warnings, [], 'no MaxListenersExceededWarning')
})

t.test('observers that throw or reject are isolated: the task runs, ends, and its waiters hear of it', async (t) => {
  const { app, client } = await setup(t, { SYNC_WAIT_MS: '600000' })
  const thrown: string[] = []
  for (const name of ['queued', 'started', 'event', 'ended'] as const) {
    app.tasks.on(name, () => { thrown.push(name); throw new Error(`observer of ${name} broke`) })
    app.tasks.on(name, async () => { throw new Error(`async observer of ${name} broke`) })
  }
  const task = await execute(client, { task_description: 'events 2 say observed' })
  const ended = app.tasks.waitForEnd(task.task_id, 600_000)
  let resolved: TaskResult | undefined
  ended.then((r) => { resolved = { ...r, task_id: r.id } }, () => {})
  const done = await untilEnded(client, task.task_id)
  t.match(done, { status: 'completed', output: 'observed\n' })
  await waitFor(t, 'the end waiter resolved', () => resolved !== undefined, 30_000)
  t.match(resolved, { status: 'completed' })
  t.ok(['queued', 'started', 'event', 'ended'].every((n) => thrown.includes(n)), 'every observer was called')
  t.match(await execute(client, { task_description: 'say still working', sync: true }), { status: 'completed', output: 'still working\n' })
})

t.test('the Letta worker survives a failing store: logged, no unhandled rejection, and it catches up', async (t) => {
  const TOKEN = 'letta-test-token-0123456789'
  const AGENT = 'agent-6b1e2f3a-1111-4222-8333-944455556666'
  const letta = new FakeLetta(TOKEN, [AGENT])
  await letta.start()
  t.teardown(() => letta.stop())
  const rejections: unknown[] = []
  const onRejection = (reason: unknown) => { rejections.push(reason) }
  process.on('unhandledRejection', onRejection)
  t.teardown(() => { process.off('unhandledRejection', onRejection) })
  const { app, client } = await setup(t, { LETTA_API_URL: letta.url, LETTA_API_TOKEN: TOKEN, LETTA_FLUSH_INTERVAL_MS: '100', LETTA_TIMEOUT_MS: '1000', LETTA_PROBE_INTERVAL_MS: '1000' })
  const outbox = (app.letta as LettaSync).outbox
  const due = outbox.due.bind(outbox)
  let failures = 0
  outbox.due = () => { failures++; throw new Error('SQLITE_IOERR: disk I/O error') }
  const done = await settled(client, await execute(client, { task_description: 'say through a broken outbox', agent_id: AGENT, sync: true }))
  t.equal(done.status, 'completed', 'tasks run while the outbox fails')
  await waitFor(t, 'several failed worker passes', () => failures >= 5, 30_000)
  t.same(rejections, [], 'no unhandled rejection')
  outbox.due = due
  await waitFor(t, 'the agent was told once the store works again', async () => {
    const view = (await call(client, 'get_task_status', { task_id: done.task_id })).structuredContent as { letta: { notified: boolean } | null }
    return view.letta?.notified === true
  }, 30_000)
  t.same(rejections, [])
})

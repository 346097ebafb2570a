/**
 * The original tool contract (issue 13, part 2): every tool called exactly the way the published
 * predecessor's agents call it (its argument names, its values), through the real MCP SDK client
 * over real HTTP, with the stand-in agent in real containers; the fields its results had are there.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import t, { type Test } from 'tap'
import { FakeLetta } from './fixtures/letta-server.js'
import { listen } from './helpers/app.js'
import { waitFor } from './helpers/docker.js'
import { connect } from './helpers/mcp.js'

const AGENT = 'agent-6b1e2f3a-1111-4222-8333-944455556666'
// load shedding off: a busy test machine (event-loop delay past 1 s) is not what these tests are about
const BASE_ENV = { RUNNER_IMAGE: 'letta-opencode-test-agent:latest', RUNNER_NETWORK: 'none', RUNNER_MEMORY_LIMIT: '64m', RUNNER_STOP_GRACE_S: '1', RUNNER_CPU_LIMIT: '0.5', SHED_EVENT_LOOP_DELAY_MS: '0' }

type Result = Record<string, unknown> & { task_id: string, status: string }
interface OldEvent { timestamp: number, type: string, message: string, data: Record<string, unknown> }

async function call (client: Client, name: string, args: Record<string, unknown>): Promise<CallToolResult> {
  return await client.callTool({ name, arguments: args }) as CallToolResult
}
/** A tool call that must succeed: its structured result. */
async function ok (client: Client, name: string, args: Record<string, unknown>): Promise<Result> {
  const res = await call(client, name, args)
  if (res.isError) throw new Error(`${name} failed: ${(res.content[0] as { text: string }).text}`)
  return res.structuredContent as Result
}
const errorText = (res: CallToolResult) => (res.content[0] as { text: string }).text
const status = (client: Client, id: string) => ok(client, 'get_task_status', { task_id: id })
async function ended (t: Test, client: Client, id: string): Promise<Result> {
  await waitFor(t, `task ${id} ended`, async () => ['completed', 'failed', 'timeout', 'cancelled'].includes((await status(client, id)).status), 60_000)
  return status(client, id)
}
async function history (client: Client, id: string, args: Record<string, unknown> = {}) {
  return await ok(client, 'get_task_history', { task_id: id, ...args }) as Result & { events: OldEvent[], events_total: number, events_returned: number, events_offset: number, has_more_events: boolean, artifacts?: Array<Record<string, unknown>> }
}

async function setup (t: Test, env: Record<string, string> = {}) {
  const { url } = await listen(t, { env: { ...BASE_ENV, ...env } })
  // the predecessor's agents name themselves with agent_id, not a header
  return (await connect(t, url)).client
}

/** An OpenCode event line the stand-in prints with `say`: the agent wrote `file`. */
const wrote = (file: string) => `say {"type":"tool_use","sessionID":"ses_stand-in","part":{"tool":"write","state":{"status":"completed","input":{"filePath":"/workspace/${file}"}}}}`

t.test('opencode_execute_task and get_task_status: observers, workspace_block_id, message, recent_events', async (t) => {
  const client = await setup(t)
  const observers = ['@alice:matrix.example', '@bob:matrix.example']
  const args = { agent_id: AGENT, task_description: 'sleep 0.5 say hello', idempotency_key: 'old-agent-1', timeout_ms: 60_000, sync: false, observers }
  const queued = await ok(client, 'opencode_execute_task', args)
  t.match(queued, { task_id: /^task_/, status: /^(queued|running)$/, workspace_block_id: null, message: /get_task_status/, observers })
  t.ok('workspace_block_id' in queued, 'workspace_block_id is present (null without Letta)')

  const running = await status(client, queued.task_id)
  t.match(running, { task_id: queued.task_id, workspace_block_id: null, observers })
  t.match((running.recent_events as OldEvent[])[0], { timestamp: Number, type: 'queued', message: /^queued/ })

  const done = await ended(t, client, queued.task_id)
  t.match(done, { status: 'completed', exit_code: 0, output: 'hello\n', workspace_block_id: null })
  const recent = done.recent_events as OldEvent[]
  t.same(recent.map((e) => e.type), ['queued', 'started', 'completed'], 'the last (at most 5) events, oldest first')
  t.ok(recent.every((e) => typeof e.timestamp === 'number' && e.timestamp <= Date.now() && typeof e.message === 'string'))
  t.same(Object.keys(recent[0]).sort(), ['message', 'timestamp', 'type'])
  const { events } = await history(client, queued.task_id)
  t.same(events[0].data.observers, observers, 'observers are recorded in the queued event')

  const again = await ok(client, 'opencode_execute_task', args)
  t.equal(again.task_id, queued.task_id, 'idempotency_key keeps its meaning')

  const sync = await ok(client, 'opencode_execute_task', { agent_id: AGENT, task_description: 'events 7', sync: true })
  t.match(sync, { status: 'completed', exit_code: 0, duration_ms: Number, output: String, workspace_block_id: null, observers: [] })
  const last5 = (await status(client, sync.task_id)).recent_events as OldEvent[]
  t.same(last5.map((e) => e.message), ['event 3', 'event 4', 'event 5', 'event 6', 'completed: exit'], 'recent_events holds the last 5')

  const tooMany = await call(client, 'opencode_execute_task', { agent_id: AGENT, task_description: 'say x', observers: Array.from({ length: 21 }, (_, i) => `o${i}`) })
  t.equal(tooMany.isError, true, 'observers are bounded')
  t.match(errorText(tooMany), /observers/)
})

t.test('workspace_block_id is the Letta workspace block of the task', async (t) => {
  const TOKEN = 'letta-test-token-0123456789'
  const letta = new FakeLetta(TOKEN, [AGENT])
  await letta.start()
  t.teardown(() => letta.stop())
  const client = await setup(t, { LETTA_API_URL: letta.url, LETTA_API_TOKEN: TOKEN, LETTA_FLUSH_INTERVAL_MS: '100', LETTA_TIMEOUT_MS: '1000' })
  const done = await ok(client, 'opencode_execute_task', { agent_id: AGENT, task_description: 'say hi', sync: true })
  await waitFor(t, 'block created', async () => (await status(client, done.task_id)).workspace_block_id !== null, 15_000)
  const view = await status(client, done.task_id)
  t.equal(view.workspace_block_id, (view.letta as { block_id: string }).block_id)
  t.match(view.workspace_block_id, /\w/)
})

t.test('get_task_history: events_limit, events_offset (-1 = all), {timestamp, type, message}, include_artifacts', async (t) => {
  const client = await setup(t)
  const done = await ok(client, 'opencode_execute_task', { agent_id: AGENT, task_description: `events 12 ${wrote('src/app.py')}`, sync: true })
  t.equal(done.status, 'completed')
  // queued, started, 12 texts, the write, completed
  const page = await history(client, done.task_id, { include_artifacts: true, events_limit: 5, events_offset: 3 })
  t.match(page, { task_id: done.task_id, status: 'completed', events_total: 16, events_returned: 5, events_offset: 3, has_more_events: true })
  t.same(page.events.map((e) => e.message), ['event 1', 'event 2', 'event 3', 'event 4', 'event 5'])
  t.ok(page.events.every((e) => typeof e.timestamp === 'number' && e.type === 'text'))
  t.match(page.artifacts, [{ type: 'file', path: 'src/app.py', name: 'src/app.py' }])

  const all = await history(client, done.task_id, { include_artifacts: false, events_limit: -1, events_offset: 0 })
  t.match(all, { events_total: 16, events_returned: 16, events_offset: 0, has_more_events: false })
  t.equal(all.artifacts, undefined, 'artifacts only when asked')
  t.match(all.events[14], { type: 'tool_use', message: 'write src/app.py' })
  t.match(all.events[15], { type: 'completed', message: /^completed/ })

  const tail = await history(client, done.task_id, { events_offset: 14 })
  t.match(tail, { events_returned: 2, has_more_events: false }, 'events_limit defaults to 100')
  const newer = await history(client, done.task_id, { after: 14, limit: 1 })
  t.match(newer, { events_returned: 1, events_total: 2, next_after: 15 }, 'after/limit/next_after keep working beside them')
  const both = await call(client, 'get_task_history', { task_id: done.task_id, limit: 5, events_limit: 5 })
  t.equal(both.isError, true)
  t.match(errorText(both), /limit .*events_limit/)
})

t.test('send_task_message: message_type and metadata kept, the type reaches the agent, message_id and timestamp returned', async (t) => {
  const client = await setup(t)
  const done = await ok(client, 'opencode_execute_task', { agent_id: AGENT, task_description: 'events 1', sync: true })
  t.equal(done.session_id, 'ses_stand-in')

  const before = Date.now()
  const first = await ok(client, 'send_task_message', { task_id: done.task_id, message: 'say thanks' })
  t.match(first, { task_id: done.task_id, message_id: /^msg_/, message_type: 'update', timestamp: Number, delivery: 'follow_up_started' })
  t.ok((first.timestamp as number) >= before)
  t.match(await ended(t, client, done.task_id), { status: 'completed', output: /thanks/ })

  const metadata = { source: 'code-review', round: 2, tags: ['style'] }
  const second = await ok(client, 'send_task_message', { task_id: done.task_id, message: 'say again', message_type: 'feedback', metadata })
  t.match(second, { message_id: /^msg_/, message_type: 'feedback', timestamp: Number })
  t.not(second.message_id, first.message_id, 'message ids are unique')
  // the stand-in does not know the word "[feedback]" and says so: the agent got the type with the message
  t.match(await ended(t, client, done.task_id), { output: /unknown word: \[feedback\]/ })

  const { events } = await history(client, done.task_id, { events_limit: -1 })
  const queuedMessages = events.filter((e) => e.type === 'message_queued')
  t.match(queuedMessages[0].data, { message: 'say thanks', message_type: 'update', message_id: first.message_id })
  t.match(queuedMessages[1], { data: { message: 'say again', message_type: 'feedback', metadata, message_id: second.message_id }, message: 'message_queued (feedback): say again' })
  t.same(events.filter((e) => e.type === 'turn_started').map((e) => e.data.message), ['say thanks', '[feedback] say again'])

  const big = await call(client, 'send_task_message', { task_id: done.task_id, message: 'say big', metadata: { blob: 'x'.repeat(11 * 1024) } })
  t.equal(big.isError, true)
  t.match(errorText(big), /metadata is \d+ bytes .* over the limit/)
})

t.test('send_task_control: reason is recorded for pause, resume and cancel', async (t) => {
  const client = await setup(t)
  const task = await ok(client, 'opencode_execute_task', { agent_id: AGENT, task_description: 'sleep 30', sync: false })
  await waitFor(t, 'running', async () => (await status(client, task.task_id)).status === 'running', 30_000)
  t.match(await ok(client, 'send_task_control', { task_id: task.task_id, control: 'pause', reason: 'waiting for review' }), { status: 'paused' })
  t.match(await ok(client, 'send_task_control', { task_id: task.task_id, control: 'resume', reason: 'review done' }), { status: 'running' })
  t.match(await ok(client, 'send_task_control', { task_id: task.task_id, control: 'cancel', reason: 'no longer needed' }), { status: 'cancelled' })
  const { events } = await history(client, task.task_id)
  const byType = (type: string) => events.find((e) => e.type === type) as OldEvent
  t.match(byType('paused'), { data: { reason: 'waiting for review' }, message: 'paused: waiting for review' })
  t.match(byType('resumed').data, { reason: 'review done' })
  t.match(byType('cancel_requested'), { data: { reason: 'no longer needed' }, message: 'cancel_requested: no longer needed' })
})

t.test('get_task_files (path "/" is the workspace root) and read_task_file with file_path', async (t) => {
  const client = await setup(t)
  const done = await ok(client, 'opencode_execute_task', {
    agent_id: AGENT, task_description: 'say ok', sync: true, files: [{ path: 'src/hello.txt', content: 'hi there' }, { path: 'README', content: 'r' }]
  })
  t.equal(done.status, 'completed')

  const root = await ok(client, 'get_task_files', { task_id: done.task_id })
  t.same((root.files as string[]).sort(), ['README', 'src/hello.txt'], 'files: the file paths, directories left out')
  t.ok((root.entries as unknown[]).length >= 3, 'entries beside them (src too)')
  t.same((await ok(client, 'get_task_files', { task_id: done.task_id, path: '/' })).files, root.files, '"/" is the workspace root')
  t.same((await ok(client, 'get_task_files', { task_id: done.task_id, path: '/src' })).files, ['src/hello.txt'])

  const file = await ok(client, 'read_task_file', { task_id: done.task_id, file_path: 'src/hello.txt' })
  t.match(file, { task_id: done.task_id, file_path: 'src/hello.txt', content: 'hi there', size: 8 })
  t.match(await ok(client, 'read_task_file', { task_id: done.task_id, file_path: '/src/hello.txt' }), { file_path: '/src/hello.txt', path: 'src/hello.txt', content: 'hi there' })
  t.match(await ok(client, 'read_task_file', { task_id: done.task_id, path: 'README' }), { content: 'r', file_path: 'README' }, 'path (preferred) works too')

  const neither = await call(client, 'read_task_file', { task_id: done.task_id })
  t.equal(neither.isError, true)
  t.match(errorText(neither), /path \(preferred\) or file_path/)
  const outside = await call(client, 'read_task_file', { task_id: done.task_id, file_path: '/../etc/passwd' })
  t.equal(outside.isError, true)
  t.match(errorText(outside), /\.\./)
})

t.test('the tool descriptions say which names are preferred', async (t) => {
  const client = await setup(t)
  const { tools } = await client.listTools()
  const describe = (name: string) => JSON.stringify(tools.find((x) => x.name === name))
  t.match(describe('read_task_file'), /path \(preferred\) or file_path \(older name\)/)
  t.match(describe('get_task_history'), /events_limit: older names/)
  t.match(describe('send_task_message'), /\[feedback\]/)
})

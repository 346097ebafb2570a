import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import v8 from 'node:v8'
import { runInNewContext } from 'node:vm'
import t, { type Test } from 'tap'
import { LABEL } from '../services/runner/container-spec.js'
import { listen } from './helpers/app.js'
import { engine, waitFor } from './helpers/docker.js'
import { connect } from './helpers/mcp.js'
import { settled } from './helpers/tasks.js'

const AGENT_IMAGE = 'letta-opencode-test-agent:latest'
const BASE_ENV = { RUNNER_IMAGE: AGENT_IMAGE, RUNNER_NETWORK: 'none', RUNNER_MEMORY_LIMIT: '64m', RUNNER_STOP_GRACE_S: '1', RUNNER_CPU_LIMIT: '0.5' }

type Task = Record<string, unknown> & { task_id: string, status: string }

async function call (client: Client, name: string, args: Record<string, unknown>): Promise<CallToolResult> {
  return await client.callTool({ name, arguments: args }) as CallToolResult
}
async function execute (client: Client, args: Record<string, unknown>): Promise<Task> {
  const res = await call(client, 'opencode_execute_task', args)
  if (res.isError) throw new Error((res.content[0] as { text: string }).text)
  // a sync answer comes at SYNC_WAIT_MS at the latest: on a busy machine the end is waited for by status
  return args.sync ? await settled(client, res.structuredContent as Task) : res.structuredContent as Task
}
async function status (client: Client, id: string): Promise<Task> {
  return (await call(client, 'get_task_status', { task_id: id })).structuredContent as Task
}
const containersOf = (taskId: string) => engine.listContainers({ [LABEL.task]: taskId })

async function setup (t: Test, env: Record<string, string> = {}) {
  const { app, url } = await listen(t, { env: { ...BASE_ENV, ...env } })
  const { client } = await connect(t, url, { 'x-agent-id': 'agent-tests' })
  return { app, url, client }
}

t.test('a sync task runs to completion in a hardened container and reports its output', async (t) => {
  const { client } = await setup(t)
  const done = await execute(client, { task_description: 'say hello from the runner', sync: true })
  t.match(done, { status: 'completed', exit_code: 0, output: 'hello from the runner\n', output_truncated: false, agent_id: 'agent-tests', reason: 'exit', error: null })
  t.ok((done.duration_ms as number) >= 0)
  t.same(await containersOf(done.task_id), [], 'container removed after the output was collected')

  const who = await execute(client, { task_description: 'whoami', sync: true })
  t.equal(who.output, '1000\n', 'runs as a non-root user')

  const history = (await call(client, 'get_task_history', { task_id: done.task_id })).structuredContent as { events: Array<{ type: string }> }
  t.same(history.events.map((e) => e.type), ['queued', 'started', 'completed'])
})

t.test('the container spec carries the limits and drops every privilege', async (t) => {
  const { client } = await setup(t)
  const task = await execute(client, { task_description: 'sleep 20' })
  await waitFor(t, 'container running', async () => (await containersOf(task.task_id)).some((c) => c.State === 'running'))
  const [c] = await containersOf(task.task_id)
  const info = await engine.inspectContainer(c.Id)
  t.match(info.HostConfig, { NanoCpus: 5e8, Memory: 64 * 1024 ** 2, MemorySwap: 64 * 1024 ** 2, PidsLimit: 512, CapDrop: ['ALL'], Privileged: false, Init: true, NetworkMode: 'none' })
  t.ok(info.HostConfig.SecurityOpt.some((o) => o.startsWith('no-new-privileges')))
  t.equal(info.Config.User, '1000:1000')
  t.same(info.Config.Cmd, ['run', '--format', 'json', '--auto', '--', 'sleep 20'], 'the task is one argv element')
  t.match(info.Config.Labels, { [LABEL.service]: 'letta-opencode-plugin', [LABEL.agent]: 'agent-tests' })
  const cancelled = (await call(client, 'send_task_control', { task_id: task.task_id, control: 'cancel' })).structuredContent as Task
  t.match(cancelled, { status: 'cancelled', reason: 'cancelled' })
  await waitFor(t, 'container removed', async () => (await containersOf(task.task_id)).length === 0)
})

t.test('a non-zero exit fails the task with its code', async (t) => {
  const { client } = await setup(t)
  const done = await execute(client, { task_description: 'exit 3', sync: true })
  t.match(done, { status: 'failed', exit_code: 3, reason: 'exit', error: 'exited with code 3' })
})

t.test('a timeout stops the container through the API and records timeout', async (t) => {
  const { client } = await setup(t)
  const started = Date.now()
  const done = await execute(client, { task_description: 'sleep 600', timeout_ms: 1_500, sync: true })
  t.match(done, { status: 'timeout', reason: 'timeout', error: /timed out after 1500 ms/ })
  t.ok(Date.now() - started < 300_000, 'did not wait for the sleep')
  await waitFor(t, 'container removed', async () => (await containersOf(done.task_id)).length === 0)
})

t.test('an OOM kill is recorded as such', async (t) => {
  const { client } = await setup(t)
  const done = await execute(client, { task_description: 'alloc-mb 256', sync: true })
  t.match(done, { status: 'failed', reason: 'oom', error: /out of memory/ })
})

t.test('cancel while queued and while running; pause and resume', async (t) => {
  const { client } = await setup(t, { MAX_CONCURRENT_TASKS: '1' })
  const first = await execute(client, { task_description: 'sleep 30' })
  const second = await execute(client, { task_description: 'say never' })
  t.equal((await status(client, second.task_id)).status, 'queued')
  const c2 = (await call(client, 'send_task_control', { task_id: second.task_id, control: 'cancel' })).structuredContent as Task
  t.match(c2, { status: 'cancelled', error: 'cancelled while queued' })

  await waitFor(t, 'first running', async () => (await status(client, first.task_id)).status === 'running')
  const paused = (await call(client, 'send_task_control', { task_id: first.task_id, control: 'pause' })).structuredContent as Task
  t.equal(paused.status, 'paused')
  const [c] = await containersOf(first.task_id)
  t.equal((await engine.inspectContainer(c.Id)).State.Status, 'paused', 'paused through the engine')
  const resumed = (await call(client, 'send_task_control', { task_id: first.task_id, control: 'resume' })).structuredContent as Task
  t.equal(resumed.status, 'running')
  const c1 = (await call(client, 'send_task_control', { task_id: first.task_id, control: 'cancel' })).structuredContent as Task
  t.match(c1, { status: 'cancelled' })
  // the slot is free again
  const third = await execute(client, { task_description: 'say next', sync: true })
  t.equal(third.status, 'completed')
  const again = await call(client, 'send_task_control', { task_id: first.task_id, control: 'cancel' })
  t.equal(again.isError, true, 'an ended task cannot be cancelled')
})

t.test('30 parallel submissions never exceed MAX_CONCURRENT_TASKS', async (t) => {
  const { client } = await setup(t, { MAX_CONCURRENT_TASKS: '3' })
  let max = 0
  const sampling = { on: true }
  const sampler = (async () => {
    while (sampling.on) {
      const running = (await engine.listContainers({ [LABEL.service]: 'letta-opencode-plugin', [LABEL.agent]: 'agent-parallel' }, false)).length
      max = Math.max(max, running)
      await new Promise((resolve) => setTimeout(resolve, 25))
    }
  })()
  const tasks = await Promise.all(Array.from({ length: 30 }, (_, i) => execute(client, { task_description: `sleep 0.3 say ${i}`, agent_id: 'agent-parallel' })))
  const finals = await Promise.all(tasks.map(async (task) => {
    // the last of ten waves of three containers: minutes on a busy machine
    await waitFor(t, `task ${task.task_id} ended`, async () => ['completed', 'failed'].includes((await status(client, task.task_id)).status), 300_000)
    return status(client, task.task_id)
  }))
  sampling.on = false
  await sampler
  t.equal(finals.filter((f) => f.status === 'completed').length, 30, 'all completed')
  t.ok(max <= 3, `at most 3 containers ran at once (saw ${max})`)
  t.ok(max >= 2, 'they did run concurrently')
})

t.test('a full queue is a tool error with the counts and a retry hint', async (t) => {
  const { client } = await setup(t, { MAX_CONCURRENT_TASKS: '1', MAX_QUEUED_TASKS: '1' })
  const a = await execute(client, { task_description: 'sleep 10' })
  const b = await execute(client, { task_description: 'sleep 10' })
  const full = await call(client, 'opencode_execute_task', { task_description: 'sleep 10' })
  t.equal(full.isError, true)
  t.match(JSON.parse((full.content[0] as { text: string }).text), { error: /queue full: 1 tasks running .* 1 waiting/, code: 'queue_full', running: 1, queued: 1, retry_after_s: 60 })
  for (const x of [b, a]) await call(client, 'send_task_control', { task_id: x.task_id, control: 'cancel' })
})

t.test('idempotency: same key and arguments → the same task; different arguments → a conflict; concurrent → one task', async (t) => {
  const { client } = await setup(t)
  const first = await execute(client, { task_description: 'say once', idempotency_key: 'k1', sync: true })
  const again = await execute(client, { task_description: 'say once', idempotency_key: 'k1' })
  t.equal(again.task_id, first.task_id)
  t.equal(again.existing, true)
  t.equal(again.status, 'completed', 'the original task in whatever state')
  const conflict = await call(client, 'opencode_execute_task', { task_description: 'say twice', idempotency_key: 'k1' })
  t.equal(conflict.isError, true)
  t.match((conflict.content[0] as { text: string }).text, /idempotency_key \\"k1\\" was already used for different arguments/)
  const concurrent = await Promise.all(Array.from({ length: 10 }, () => execute(client, { task_description: 'say together', idempotency_key: 'k2' })))
  t.equal(new Set(concurrent.map((c) => c.task_id)).size, 1, 'one task for ten concurrent duplicates')
})

t.test('with ENFORCE_IDEMPOTENCY=false every call creates a task; with ENABLE_ASYNC_EXECUTE=false async is refused', async (t) => {
  const { client } = await setup(t, { ENFORCE_IDEMPOTENCY: 'false', ENABLE_ASYNC_EXECUTE: 'false' })
  const a = await execute(client, { task_description: 'say a', idempotency_key: 'same' })
  const b = await execute(client, { task_description: 'say a', idempotency_key: 'same' })
  t.not(a.task_id, b.task_id)
  t.equal(a.status, 'completed', 'sync by default when async is disabled')
  const refused = await call(client, 'opencode_execute_task', { task_description: 'say a', sync: false })
  t.equal(refused.isError, true)
  t.match((refused.content[0] as { text: string }).text, /ENABLE_ASYNC_EXECUTE=false/)
})

t.test('a sync call returns the task id while it still runs after SYNC_WAIT_MS', async (t) => {
  const { client } = await setup(t, { SYNC_WAIT_MS: '500' })
  const res = (await call(client, 'opencode_execute_task', { task_description: 'sleep 2 say late', sync: true })).structuredContent as Task
  // still running after 500 ms (or, on a busy machine, not started yet)
  t.match(res, { status: /^(running|queued)$/, hint: /get_task_status/ })
  await waitFor(t, 'completion', async () => (await status(client, res.task_id)).status === 'completed', 60_000)
  t.equal((await status(client, res.task_id)).output, 'late\n')
})

t.test('tasks are scoped to the principal', async (t) => {
  const A = 'a'.repeat(32)
  const B = 'b'.repeat(32)
  const { url } = await listen(t, { env: { ...BASE_ENV, MCP_AUTH_TOKENS: `alice:${A},bob:${B}` } })
  const alice = (await connect(t, url, { authorization: `Bearer ${A}` })).client
  const bob = (await connect(t, url, { authorization: `Bearer ${B}` })).client
  const task = await execute(alice, { task_description: 'say mine', sync: true })
  const peek = await call(bob, 'get_task_status', { task_id: task.task_id })
  t.equal(peek.isError, true)
  t.match((peek.content[0] as { text: string }).text, /No task/)
  const listed = (await call(bob, 'list_tasks', {})).structuredContent as { total: number }
  t.equal(listed.total, 0)
  t.equal(((await call(alice, 'list_tasks', {})).structuredContent as { total: number }).total, 1)
})

t.test('large output is kept as head and tail with a truncated flag; the full log goes to disk', async (t) => {
  const { app, client } = await setup(t, { TASK_OUTPUT_LIMIT: '4096' })
  const done = await execute(client, { task_description: 'print-mb 8', sync: true })
  t.match(done, { status: 'completed', output_truncated: true, output_bytes: 8 * 1024 * 1024 })
  t.ok((done.output as string).length < 5000, 'bounded in the result')
  t.match(done.output, /bytes omitted/)
  const { statSync } = await import('node:fs')
  t.equal(statSync(app.tasks.logPath(done.task_id)).size, 8 * 1024 * 1024, 'full log on disk')
})

t.test('a fork bomb is held by the pids limit, ends at its timeout, and leaves the service working', async (t) => {
  const { client } = await setup(t, { RUNNER_PIDS_LIMIT: '32' })
  const task = await execute(client, { task_description: 'fork-bomb', timeout_ms: 20_000 })
  await waitFor(t, 'container running', async () => (await containersOf(task.task_id)).some((c) => c.State === 'running'))
  const [c] = await containersOf(task.task_id)
  let most = 0
  // sampled until the bomb has forked (a busy machine starts it late), within the task's timeout
  await waitFor(t, 'the bomb forked', async () => {
    const stats = await engine.containerStats(c.Id).catch(() => ({ pids: 0 }))
    most = Math.max(most, stats.pids)
    return most > 8
  }, 15_000)
  t.ok(most > 8, `the bomb did fork (saw ${most} processes)`)
  t.ok(most <= 32, `never more processes than the limit (saw ${most})`)
  await waitFor(t, 'task ended', async () => (await status(client, task.task_id)).status !== 'running', 60_000)
  t.match(await status(client, task.task_id), { status: 'timeout', reason: 'timeout' })
  await waitFor(t, 'container removed', async () => (await containersOf(task.task_id)).length === 0)
  t.equal((await execute(client, { task_description: 'say still here', sync: true })).output, 'still here\n')
})

t.test('100 MB of output: service memory stays bounded, the result holds head and tail, the log the rest', async (t) => {
  const { app, client } = await setup(t, { RUNNER_CPU_LIMIT: '1', TASK_LOG_LIMIT: String(16 * 1024 * 1024) })
  // live memory: a forced GC before each sample, so garbage waiting for a collection does not count
  v8.setFlagsFromString('--expose-gc')
  const gc = runInNewContext('gc') as () => void
  const used = () => { gc(); const m = process.memoryUsage(); return m.heapUsed + m.arrayBuffers }
  const before = used()
  let peak = before
  const sampler = setInterval(() => { peak = Math.max(peak, used()) }, 50)
  // waited for by status (execute), never by SYNC_WAIT_MS: other test files share the two cores
  const done = await execute(client, { task_description: 'print-mb 100', sync: true, timeout_ms: 600_000 })
  clearInterval(sampler)
  t.match(done, { status: 'completed', output_truncated: true, output_bytes: 100 * 1024 * 1024 })
  t.ok((done.output as string).length < 70_000, 'the result is bounded by TASK_OUTPUT_LIMIT')
  const growth = (peak - before) / 1024 / 1024
  t.ok(growth < 32, `live heap + buffers grew by ${growth.toFixed(1)} MB while 100 MB went through`)
  const { statSync } = await import('node:fs')
  t.ok(statSync(app.tasks.logPath(done.task_id)).size <= 16 * 1024 * 1024 + 100, 'the on-disk log stops at TASK_LOG_LIMIT')
})

t.test('a sync call sends progress notifications when the client gives a progress token', async (t) => {
  const { client } = await setup(t)
  const notes: Array<{ progress: number, message?: string }> = []
  const res = await client.callTool({ name: 'opencode_execute_task', arguments: { task_description: 'sleep 4.5 say done', sync: true } }, undefined, {
    onprogress: (p) => { notes.push(p) }
  }) as CallToolResult
  t.match(await settled(client, res.structuredContent as Task), { status: 'completed', output: 'done\n' })
  t.ok(notes.length >= 2, `progress notifications arrived (${notes.length})`)
  t.ok(notes.every((n, i) => i === 0 || n.progress > notes[i - 1].progress), 'progress increases')
  t.match(notes[0].message, /task (queued|running)/)
})

t.test('a client that disconnects does not cancel its submitted task', async (t) => {
  const { url } = await setup(t)
  const first = await connect(t, url, { 'x-agent-id': 'agent-tests' })
  const second = (await connect(t, url, { 'x-agent-id': 'agent-tests' })).client
  const listed = async () => ((await call(second, 'list_tasks', {})).structuredContent as { tasks: Task[] }).tasks
  const pending = first.client.callTool({ name: 'opencode_execute_task', arguments: { task_description: 'sleep 3 say survived', sync: true } }).catch(() => undefined)
  // the client goes away while its sync call waits (not before the call arrived)
  await waitFor(t, 'the task submitted', async () => (await listed()).length === 1, 30_000)
  await first.client.close()
  await pending
  const tasks = await listed()
  t.equal(tasks.length, 1)
  await waitFor(t, 'completion', async () => (await status(second, tasks[0].task_id)).status === 'completed', 60_000)
  t.equal((await status(second, tasks[0].task_id)).output, 'survived\n')
})

/**
 * MCP Tasks for `opencode_execute_task`, in both protocol eras, over real HTTP: the official
 * ext-tasks requester client (on the SDK v2 client) runs a real task to completion with the real
 * OpenCode CLI against the scripted model, and cancels another; raw requests check the wire rules
 * (status mapping, scoping, errors, the 2026 capability gate) with the stand-in agent.
 */
import { Client, StreamableHTTPClientTransport, type Tool } from '@modelcontextprotocol/client'
import { createTaskSessionFromClient, resultFromTaskOutcome, toolDeclarationFromMcpTool, type RawClientDispatch } from '@modelcontextprotocol/ext-tasks/client'
import t, { type Test } from 'tap'
import { LABEL } from '../services/runner/container-spec.js'
import { startModelServer } from './fixtures/model-server.js'
import { listen } from './helpers/app.js'
import { engine, waitFor } from './helpers/docker.js'
import { callTool, connect, post } from './helpers/mcp.js'
import { AGENT_ENV, ALICE, BOB, envelope, modern, MODERN, TOKENS } from './helpers/modern.js'
import { opencodeConfigDir, runnerEnv } from './helpers/opencode.js'

const TASKS = { extensions: { 'io.modelcontextprotocol/tasks': {} } }
const clientInfo = { name: 'ext-tasks-requester', version: '1.0.0' }

/** The host side ext-tasks needs for 2026-07-28: one POST per request with the era's headers. */
function rawDispatchTo (url: string): RawClientDispatch {
  let next = 1
  return async (request, options) => {
    const req = request as { method: string, params?: Record<string, unknown> & { _meta?: Record<string, unknown> } }
    const id = `raw-${next++}`
    const name = req.method === 'tools/call' ? req.params?.name : req.params?.taskId
    const headers = new Headers({
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      'mcp-protocol-version': String(req.params?._meta?.['io.modelcontextprotocol/protocolVersion'] ?? MODERN),
      'mcp-method': req.method,
      ...(typeof name === 'string' ? { 'mcp-name': name } : {})
    })
    for (const [k, v] of Object.entries(options?.context?.headers ?? {})) headers.set(k, v)
    const res = await fetch(new URL('/mcp', url), { method: 'POST', signal: options?.signal, headers, body: JSON.stringify({ jsonrpc: '2.0', id, ...req }) })
    const text = await res.text()
    const messages = (res.headers.get('content-type') ?? '').includes('text/event-stream')
      ? text.split(/\r?\n/).filter((l) => l.startsWith('data:')).map((l) => JSON.parse(l.slice(5)))
      : [JSON.parse(text)]
    const message = messages.find((m) => m.id === id) ?? messages.at(-1)
    return message?.error ? { kind: 'error', error: message.error } : { kind: 'result', result: message.result }
  }
}

/** An ext-tasks session on a v2 client connected in the given era. */
async function requester (t: Test, url: string, era: 'legacy' | 'modern') {
  const client = new Client(clientInfo, { capabilities: {}, ...(era === 'modern' ? { versionNegotiation: { mode: 'auto' as const } } : {}) })
  await client.connect(new StreamableHTTPClientTransport(new URL('/mcp', url)))
  t.equal(client.getProtocolEra(), era, `the client speaks the ${era} era`)
  const byName = new Map<string, Tool>((await client.listTools()).tools.map((tool) => [tool.name, tool]))
  const tools = { currentTool: (name: string) => { const tool = byName.get(name); return tool && toolDeclarationFromMcpTool(tool) } }
  const session = era === 'modern'
    ? createTaskSessionFromClient(client, { endpointId: 'lop', tools, rawDispatch: rawDispatchTo(url), v2RequestFraming: { protocolVersion: client.getNegotiatedProtocolVersion() as string, clientInfo, clientCapabilities: {} } })
    : createTaskSessionFromClient(client, { endpointId: 'lop', tools })
  t.teardown(async () => { await session.close(); await client.close() })
  return { client, session }
}

const containersOf = (taskId: string) => engine.listContainers({ [LABEL.task]: taskId })

t.test('the ext-tasks requester runs a real OpenCode task to completion and cancels another, in each era', async (t) => {
  const model = await startModelServer('127.0.0.1')
  t.teardown(() => model.close())
  const { url } = await listen(t, {
    env: runnerEnv(opencodeConfigDir(t, model.url))
  })
  const { client: observer } = await connect(t, url)

  for (const era of ['legacy', 'modern'] as const) {
    await t.test(era, async (t) => {
      const { session } = await requester(t, url, era)
      const execution = await session.callTool('opencode_execute_task', { task_description: '[script:write-edit] create hello.txt and fix its wording' }, { task: { preference: 'prefer' } })
      t.equal(execution.kind, 'task', 'a task handle, not an immediate result')
      if (execution.kind !== 'task') return
      const taskId = execution.handle.taskId as string
      t.match(taskId, /^task_[0-9a-f-]{36}$/, 'the handle is the service\'s own task id')
      // the same task through the ordinary tools, while it runs or after
      const status = await callTool(observer, 'get_task_status', { task_id: taskId })
      t.equal((status.structuredContent as { task_id: string }).task_id, taskId, 'get_task_status knows the task')

      const { outcome } = await execution.settle()
      t.equal(outcome.status, 'completed')
      const result = resultFromTaskOutcome(outcome) as { structuredContent: Record<string, unknown> }
      t.match(result.structuredContent, { task_id: taskId, status: 'completed', answer: 'Done: wrote hello.txt and edited it.', files_changed: ['hello.txt'] }, 'the result is the task view')

      const other = await session.callTool('opencode_execute_task', { task_description: '[script:stall] never answers' }, { task: { preference: 'prefer' } })
      t.equal(other.kind, 'task')
      if (other.kind !== 'task') return
      const otherId = other.handle.taskId as string
      await waitFor(t, 'the stalled task\'s container runs', async () => (await containersOf(otherId)).some((c) => c.State === 'running'))
      await other.cancel()
      const settled = await other.settle()
      t.equal(settled.outcome.status, 'cancelled')
      const view = (await callTool(observer, 'get_task_status', { task_id: otherId })).structuredContent as { status: string, reason: string }
      t.match(view, { status: 'cancelled', reason: 'cancelled' }, 'the service task is cancelled too')
      await waitFor(t, 'the container is gone', async () => (await containersOf(otherId)).length === 0)
    })
  }
})

/** A raw legacy session's JSON-RPC request; the result or error of the response. */
async function legacyRpc (url: string, headers: Record<string, string>, method: string, params: Record<string, unknown>) {
  const res = await post(url, { jsonrpc: '2.0', id: 9, method, params }, headers)
  const text = await res.text()
  const line = text.split('\n').filter((l) => l.startsWith('data:')).at(-1)
  return JSON.parse(line ? line.slice(5) : text) as { result?: Record<string, unknown>, error?: { code: number, message: string } }
}

async function legacySession (url: string, token?: string) {
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {}
  const res = await post(url, { jsonrpc: '2.0', id: 1, method: 'initialize', params: { protocolVersion: '2025-11-25', capabilities: {}, clientInfo } }, headers)
  const init = JSON.parse((await res.text()).split('\n').filter((l) => l.startsWith('data:')).at(-1)!.slice(5))
  const id = res.headers.get('mcp-session-id') as string
  await (await post(url, { jsonrpc: '2.0', method: 'notifications/initialized' }, { ...headers, 'mcp-session-id': id, 'mcp-protocol-version': '2025-11-25' })).text()
  const sessionHeaders = { ...headers, 'mcp-session-id': id, 'mcp-protocol-version': '2025-11-25' }
  return { id, capabilities: init.result.capabilities, rpc: (method: string, params: Record<string, unknown>) => legacyRpc(url, sessionHeaders, method, params) }
}

t.test('2025-11-25 Tasks on the wire: capability, handle, status, list, result, cancel, scoping', async (t) => {
  const { url } = await listen(t, { env: { ...AGENT_ENV, ...TOKENS } })
  const alice = await legacySession(url, ALICE)
  t.same(alice.capabilities.tasks, { list: {}, cancel: {}, requests: { tools: { call: {} } } }, 'the tasks capability')
  const tools = await alice.rpc('tools/list', {})
  const execute = (tools.result?.tools as Array<{ name: string, execution?: unknown }>).find((tool) => tool.name === 'opencode_execute_task')
  t.same(execute?.execution, { taskSupport: 'optional' })

  const created = await alice.rpc('tools/call', { name: 'opencode_execute_task', arguments: { task_description: 'say done' }, task: { ttl: 60_000 } })
  const task = created.result?.task as Record<string, unknown>
  t.match(task, { taskId: /^task_/, status: 'working', createdAt: /^\d{4}-\d\d-\d\dT/, lastUpdatedAt: /^\d{4}-\d\d-\d\dT/, pollInterval: 1000 })
  const taskId = task.taskId as string

  const result = await alice.rpc('tasks/result', { taskId })
  t.match(result.result, { structuredContent: { task_id: taskId, status: 'completed', output: 'done\n' }, _meta: { 'io.modelcontextprotocol/related-task': { taskId } } }, 'tasks/result waits for the end and gives the task view')
  t.notOk(result.result?.isError)
  t.match((await alice.rpc('tasks/get', { taskId })).result, { taskId, status: 'completed', statusMessage: /^completed/ })

  const list = await alice.rpc('tasks/list', {})
  t.ok((list.result?.tasks as Array<{ taskId: string }>).some((x) => x.taskId === taskId), 'tasks/list has it')
  t.match((await alice.rpc('tasks/list', { cursor: 'nope' })).error, { code: -32602 }, 'a bad cursor is refused')

  t.match((await alice.rpc('tasks/cancel', { taskId })).error, { code: -32602, message: /terminal status 'completed'/ }, 'an ended task cannot be cancelled')

  // a plain call (no params.task) keeps today's behaviour: the task view at once
  const plain = await alice.rpc('tools/call', { name: 'opencode_execute_task', arguments: { task_description: 'sleep 30' } })
  const runningId = (plain.result?.structuredContent as { task_id: string }).task_id
  t.match(plain.result?.structuredContent, { task_id: /^task_/, status: /queued|running/ }, 'without params.task: today\'s result')
  t.match((await alice.rpc('tasks/get', { taskId: runningId })).result, { taskId: runningId, status: 'working' }, 'the same id space: a plain task is a task too')

  const bob = await legacySession(url, BOB)
  for (const method of ['tasks/get', 'tasks/result', 'tasks/cancel']) {
    t.match((await bob.rpc(method, { taskId: runningId })).error, { code: -32602, message: /not found/ }, `${method}: another principal's task is unknown`)
  }
  t.notOk(((await bob.rpc('tasks/list', {})).result?.tasks as unknown[]).length, 'another principal lists none of them')

  const cancelled = await alice.rpc('tasks/cancel', { taskId: runningId })
  t.match(cancelled.result, { taskId: runningId, status: 'cancelled' }, 'tasks/cancel answers once the task is cancelled')
  t.match((await alice.rpc('tasks/get', { taskId: 'task_00000000-0000-0000-0000-000000000000' })).error, { code: -32602 })
})

t.test('2025-11-25: the end of a task made in a session is told on its stream (notifications/tasks/status)', async (t) => {
  const { url } = await listen(t, { env: AGENT_ENV })
  const session = await legacySession(url)
  const stream = await fetch(new URL('/mcp', url), { headers: { accept: 'text/event-stream', 'mcp-session-id': session.id, 'mcp-protocol-version': '2025-11-25' } })
  t.equal(stream.status, 200)
  const created = await session.rpc('tools/call', { name: 'opencode_execute_task', arguments: { task_description: 'say notified' }, task: {} })
  const taskId = (created.result?.task as { taskId: string }).taskId
  const reader = stream.body!.pipeThrough(new TextDecoderStream()).getReader()
  let text = ''
  while (!text.includes('"notifications/tasks/status"')) {
    const { value, done } = await reader.read()
    if (done) break
    text += value
  }
  await reader.cancel()
  const line = text.split('\n').find((l) => l.includes('notifications/tasks/status')) as string
  t.match(JSON.parse(line.slice(5)).params, { taskId, status: 'completed' })
})

t.test('2026-07-28 Tasks on the wire: opt-in per request, the gate, inlined results, idempotent cancel', async (t) => {
  const { url } = await listen(t, { env: AGENT_ENV })
  const call = (args: Record<string, unknown>, capabilities: Record<string, unknown>) => modern(url, 'tools/call', { name: 'opencode_execute_task', arguments: args }, {}, capabilities)

  // no extension declared: today's behaviour (no handle)
  const plain = await call({ task_description: 'say plain' }, {})
  t.equal(plain.json.result.resultType, 'complete')
  t.match(plain.json.result.structuredContent, { task_id: /^task_/ })

  const created = await call({ task_description: 'say modern' }, TASKS)
  t.equal(created.status, 200)
  t.match(created.json.result, { resultType: 'task', taskId: /^task_/, status: 'working', pollIntervalMs: 1000, createdAt: /^\d{4}-/ })
  t.ok('ttlMs' in created.json.result, 'ttlMs')
  t.notOk('ttl' in created.json.result || 'pollInterval' in created.json.result, 'no 2025 field names')
  const taskId = created.json.result.taskId as string

  // durable before the answer: an immediate tasks/get resolves
  t.match((await modern(url, 'tasks/get', { taskId }, {}, TASKS)).json.result, { resultType: 'complete', taskId })
  const gated = await modern(url, 'tasks/get', { taskId }, {}, {})
  t.equal(gated.status, 400, 'without the extension: HTTP 400')
  t.match(gated.json.error, { code: -32021, data: { requiredCapabilities: { extensions: { 'io.modelcontextprotocol/tasks': {} } } } })

  let done: Record<string, unknown> = {}
  await waitFor(t, 'the task completes', async () => {
    done = (await modern(url, 'tasks/get', { taskId }, {}, TASKS)).json.result
    return done.status === 'completed'
  })
  t.match(done, { result: { resultType: 'complete', structuredContent: { task_id: taskId, output: 'modern\n' } } }, 'the result is inlined')
  t.notOk((done.result as { _meta?: Record<string, unknown> })._meta?.['io.modelcontextprotocol/related-task'], 'no related-task _meta on an inlined result')
  t.same((await modern(url, 'tasks/cancel', { taskId }, {}, TASKS)).json.result.resultType, 'complete', 'cancelling an ended task is acknowledged')

  const failing = await call({ task_description: 'exit 3' }, TASKS)
  const failedId = failing.json.result.taskId as string
  let failed: Record<string, unknown> = {}
  await waitFor(t, 'the failing task ends', async () => {
    failed = (await modern(url, 'tasks/get', { taskId: failedId }, {}, TASKS)).json.result
    return failed.status !== 'working'
  })
  t.match(failed, { status: 'failed', error: { code: -32000, message: /failed/ } }, 'a failed task carries an error, no result')
  t.notOk('result' in failed)

  for (const method of ['tasks/result', 'tasks/list']) {
    t.equal((await modern(url, method, { taskId }, {}, TASKS)).json.error?.code, -32601, `${method} does not exist in this era`)
  }
  t.equal((await modern(url, 'tasks/get', { taskId: 'task_unknown' }, {}, TASKS)).json.error?.code, -32602)
  t.equal((await modern(url, 'tasks/update', { taskId, inputResponses: { unknown: { ignored: true } } }, {}, TASKS)).json.result?.resultType, 'complete')
})

t.test('2026-07-28: a sync call whose client disconnects leaves the task running to its end', async (t) => {
  const { url } = await listen(t, { env: AGENT_ENV })
  const abort = new AbortController()
  const call = fetch(new URL('/mcp', url), {
    method: 'POST',
    signal: abort.signal,
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': MODERN, 'mcp-method': 'tools/call', 'mcp-name': 'opencode_execute_task' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'opencode_execute_task', arguments: { task_description: 'sleep 3', sync: true, idempotency_key: 'disconnect-1' }, _meta: envelope() } })
  }).catch((err: Error) => err)
  const { client } = await connect(t, url)
  let id = ''
  await waitFor(t, 'the task runs', async () => {
    const list = (await callTool(client, 'list_tasks', {})).structuredContent as { tasks: Array<{ task_id: string, status: string }> }
    id = list.tasks[0]?.task_id ?? ''
    return list.tasks[0]?.status === 'running'
  })
  abort.abort()
  t.type(await call, Error, 'the client went away mid-call')
  let view: { status: string, output: string } = { status: '', output: '' }
  await waitFor(t, 'the task ends', async () => {
    view = (await callTool(client, 'get_task_status', { task_id: id })).structuredContent as typeof view
    return view.status !== 'running' && view.status !== 'queued'
  })
  t.equal(view.status, 'completed', 'not cancelled by the disconnect')
})

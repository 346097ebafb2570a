/**
 * Generated bad input (seeded, so a failure replays): every task route, raw /mcp messages and every
 * tool's arguments. Whatever comes in, the answer is a 4xx or a tool error, never a 5xx, a JSON-RPC
 * internal error or a tool that threw. The engine is unreachable (a dead socket), so submitted
 * tasks fail at once and no container starts. FUZZ_SEED replays another run.
 */
import fc from 'fast-check'
import type { FastifyInstance } from 'fastify'
import t from 'tap'
import { build, tempDir } from './helpers/app.js'
import { INITIALIZE } from './helpers/mcp.js'

const SEED = Number(process.env.FUZZ_SEED ?? 20251125)
const TOKEN = 'a'.repeat(32)
const AUTH = { authorization: `Bearer ${TOKEN}` }
const MCP = { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...AUTH }
/** Stands for a number JSON can carry but JavaScript cannot (JSON.parse gives Infinity). */
const HUGE = '\u0000huge'

/** Query and path values: numbers in every spelling, and not numbers at all. */
const queryValue = fc.oneof(
  fc.integer().map(String),
  fc.bigInt({ min: -(10n ** 30n), max: 10n ** 30n }).map(String),
  fc.double().map(String),
  fc.constantFrom('1e400', '-1e400', '1e19', '9223372036854775808', '99999999999999999999', '-0', '0x10', '1_000', '', ' 1', '1.5',
    'Infinity', '-Infinity', 'NaN', 'true', 'null', '[]', '%00', '..', '%2e%2e%2f', 'queued', 'running', 'completed'),
  fc.string({ maxLength: 300 }),
  fc.string({ unit: 'binary', maxLength: 50 })
)

/** Argument values of any type, with the edge numbers tools must bound. */
const argValue = fc.oneof(
  fc.integer(),
  fc.double(),
  fc.constantFrom(2 ** 53, 2 ** 63, 1e19, 1e308, -1, 0, -0, 0.5, HUGE, '', 'x', true, false, null),
  fc.string({ maxLength: 200 }),
  fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 3 }),
  fc.jsonValue({ maxDepth: 3 })
)

/** JSON text, with the HUGE stand-in written as 1e400. */
function json (value: unknown): string {
  return JSON.stringify(value).replaceAll(JSON.stringify(HUGE), '1e400')
}

function query (pairs: Array<[string, string]>): string {
  return pairs.length === 0 ? '' : '?' + pairs.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&')
}

/** The JSON-RPC message of an SSE or JSON reply (undefined when there is none, e.g. a 202). */
function rpcOf (body: string): { error?: { code: number }, result?: { isError?: boolean } } | undefined {
  const data = body.split('\n').find((l) => l.startsWith('data: ') && l.length > 6)
  if (data) return JSON.parse(data.slice(6))
  return body.trim().startsWith('{') ? JSON.parse(body) : undefined
}

async function exceptions (app: FastifyInstance): Promise<number> {
  const metric = await app.metrics.registry.getSingleMetric('lop_mcp_tool_calls_total')?.get()
  return (metric?.values ?? []).filter((v) => v.labels.outcome === 'exception').reduce((n, v) => n + v.value, 0)
}

/** The inputs that answered 500 before (issue 14), and the field each 400 must name. */
const NAMED: Array<[string, RegExp]> = [
  ['/tasks?offset=99999999999999999999', /querystring\/offset must be <= 1000000000/],
  ['/tasks?offset=9223372036854775808', /querystring\/offset must be <= 1000000000/],
  ['/tasks?offset=1e19', /querystring\/offset must be <= 1000000000/],
  ['/tasks?offset=1e400', /querystring\/offset must be <= 1000000000/],
  ['/tasks?offset=-1e400', /querystring\/offset must be >= 0/],
  ['/tasks?limit=1e400', /querystring\/limit must be <= 200/],
  ['/tasks?limit=Infinity', /querystring\/limit must be <= 200/],
  ['/tasks/x/logs?offset=1e400', /querystring\/offset must be <= 1099511627776/],
  ['/tasks/x/logs?offset=99999999999999999999', /querystring\/offset must be <= 1099511627776/]
]

t.test('numbers in the query are bounded, integer and finite: a 400 that names the field', async (t) => {
  const app = await build(t, { env: { SHED_EVENT_LOOP_DELAY_MS: '0' }, docker: { socketPath: `${tempDir(t)}/no-engine.sock` } })
  for (const [url, message] of NAMED) {
    const res = await app.inject(url)
    t.equal(res.statusCode, 400, url)
    t.match(res.json(), { statusCode: 400, message }, url)
  }
  t.equal((await app.inject('/tasks?offset=1000000000&limit=200')).statusCode, 200, 'the bounds themselves are accepted')
})

t.test('generated bad input: no 5xx, no internal error, no tool exception', async (t) => {
  const app = await build(t, {
    env: { MCP_AUTH_TOKENS: `alice:${TOKEN},bob:${'b'.repeat(32)}`, SYNC_WAIT_MS: '100', SHED_EVENT_LOOP_DELAY_MS: '0' },
    docker: { socketPath: `${tempDir(t)}/no-engine.sock` }
  })

  // one session and one real (failed) task, so ids that exist are among the inputs too
  const init = await app.inject({ method: 'POST', url: '/mcp', headers: MCP, payload: INITIALIZE })
  const session = init.headers['mcp-session-id'] as string
  t.ok(session, 'a session')
  const inSession = { ...MCP, 'mcp-session-id': session, 'mcp-protocol-version': '2025-06-18' }
  let rpcId = 1
  const call = (payload: string, headers: Record<string, string> = inSession) => app.inject({ method: 'POST', url: '/mcp', headers, payload })
  const submitted = rpcOf((await call(json({ jsonrpc: '2.0', id: rpcId++, method: 'tools/call', params: { name: 'opencode_execute_task', arguments: { task_description: 'fuzz' } } }))).body)
  const taskId = JSON.parse((submitted?.result as { content: Array<{ text: string }> }).content[0].text).task_id as string
  t.ok(taskId, 'a task')
  const tools = rpcOf((await call(json({ jsonrpc: '2.0', id: rpcId++, method: 'tools/list' }))).body)?.result as unknown as { tools: Array<{ name: string, inputSchema: { properties?: Record<string, unknown> } }> }
  t.ok(tools.tools.length >= 9, 'the tools to call')

  const id = fc.oneof(fc.constant(taskId), fc.constant('task_' + '0'.repeat(20)), queryValue)
  const routes = fc.oneof(
    fc.array(fc.tuple(fc.constantFrom('limit', 'offset', 'status', 'agent_id', 'follow', 'x'), queryValue), { maxLength: 4 })
      .map((q) => ({ method: 'GET' as const, url: '/tasks' + query(q) })),
    id.map((i) => ({ method: 'GET' as const, url: `/tasks/${encodeURIComponent(i)}` })),
    fc.tuple(id, fc.array(fc.tuple(fc.constantFrom('offset', 'follow', 'limit'), queryValue), { maxLength: 3 }))
      // follow=true on a task that ended returns what there is; a running one would stream: never the case here
      .map(([i, q]) => ({ method: 'GET' as const, url: `/tasks/${encodeURIComponent(i)}/logs` + query(q) })),
    fc.tuple(id, fc.option(fc.constantFrom('application/json', 'application/json; charset=utf-8', 'text/plain', 'APPLICATION/JSON', 'application/x-www-form-urlencoded', '')),
      fc.option(fc.oneof(fc.string({ maxLength: 100 }), fc.jsonValue({ maxDepth: 2 }).map(json))))
      .map(([i, type, body]) => ({ method: 'POST' as const, url: `/tasks/${encodeURIComponent(i)}/cancel`, headers: type === null ? {} : { 'content-type': type }, payload: body ?? undefined })),
    // the dashboard's routes (issue #16)
    fc.tuple(id, fc.constantFrom('events', 'files', 'file', 'diff'), fc.array(fc.tuple(fc.constantFrom('after', 'limit', 'path', 'x'), queryValue), { maxLength: 3 }))
      .map(([i, what, q]) => ({ method: 'GET' as const, url: `/tasks/${encodeURIComponent(i)}/${what}` + query(q) })),
    fc.tuple(id, fc.constantFrom('pause', 'resume', 'messages'), fc.option(fc.constantFrom('application/json', 'text/plain', '')),
      fc.option(fc.oneof(fc.string({ maxLength: 100 }), fc.jsonValue({ maxDepth: 2 }).map(json), fc.record({ message: fc.string({ maxLength: 50 }), message_type: fc.string({ maxLength: 12 }) }).map(json))))
      .map(([i, what, type, body]) => ({ method: 'POST' as const, url: `/tasks/${encodeURIComponent(i)}/${what}`, headers: type === null ? {} : { 'content-type': type }, payload: body ?? undefined })),
    fc.constantFrom('/health', '/metrics', '/health?x=1e400', '/', '/ui', '/ui/health', '/ui/assets/x.js', '/ui/tasks/%3Cscript%3E').map((url) => ({ method: 'GET' as const, url }))
  )
  await fc.assert(fc.asyncProperty(routes, async (req) => {
    const res = await app.inject({ ...req, headers: { ...AUTH, ...('headers' in req ? req.headers : {}) } })
    // /health answers 503 while the engine is unreachable: that is its report, not a failure; so
    // does a workspace read (files, file), which needs the engine, with the engine's error
    const reported = res.statusCode === 503 && (req.url.startsWith('/health') || /^Docker engine unreachable/.test(res.json().message))
    if (res.statusCode >= 500 && !reported) throw new Error(`${req.method} ${req.url} → ${res.statusCode} ${res.body}`)
  }), { seed: SEED, numRuns: 2_500, examples: NAMED.map(([url]) => [{ method: 'GET' as const, url }] as [{ method: 'GET', url: string }]) })
  t.pass('task routes: 2500 generated requests, no 5xx')

  const method = fc.constantFrom('initialize', 'ping', 'tools/list', 'tools/call', 'logging/setLevel', 'resources/list', 'notifications/initialized', 'notifications/cancelled', 'x/unknown')
  const message = fc.oneof(
    fc.record({ jsonrpc: fc.oneof(fc.constant('2.0'), argValue), id: argValue, method: fc.oneof(method, fc.string()), params: argValue }, { requiredKeys: ['jsonrpc', 'method'] }).map(json),
    fc.jsonValue({ maxDepth: 3 }).map(json),
    fc.string({ maxLength: 200 })
  )
  const headerValue = (valid: string) => fc.oneof(fc.constant(valid), fc.string({ maxLength: 40 }).filter((s) => /^[\x20-\x7e]*$/.test(s)))
  const raw = fc.record({
    message,
    sessionId: fc.option(headerValue(session)),
    version: fc.option(headerValue('2025-06-18')),
    accept: headerValue(MCP.accept),
    type: headerValue('application/json')
  })
  await fc.assert(fc.asyncProperty(raw, async ({ message, sessionId, version, accept, type }) => {
    const headers: Record<string, string> = { ...AUTH, accept, 'content-type': type }
    if (sessionId !== null) headers['mcp-session-id'] = sessionId
    if (version !== null) headers['mcp-protocol-version'] = version
    const res = await call(message, headers)
    if (res.statusCode >= 500) throw new Error(`POST /mcp ${message} → ${res.statusCode} ${res.body}`)
    if (res.statusCode === 200 && rpcOf(res.body)?.error?.code === -32603) throw new Error(`POST /mcp ${message} → internal error ${res.body}`)
  }), { seed: SEED, numRuns: 1_000 })
  t.pass('raw /mcp: 1000 generated messages, no 5xx')

  const toolCall = fc.constantFrom(...tools.tools).chain((tool) => {
    const known = Object.keys(tool.inputSchema.properties ?? {})
    const keyed = Object.fromEntries(known.map((k) => [k, k === 'task_id' ? fc.oneof(fc.constant<unknown>(taskId), argValue) : argValue]))
    return fc.tuple(fc.constant(tool.name), fc.record(keyed, { requiredKeys: [] }), fc.dictionary(fc.string({ maxLength: 10 }), argValue, { maxKeys: 2 }))
      .map(([name, args, extra]) => ({ name, args: { ...extra, ...args } }))
  })
  await fc.assert(fc.asyncProperty(toolCall, async ({ name, args }) => {
    const before = await exceptions(app)
    const payload = json({ jsonrpc: '2.0', id: rpcId++, method: 'tools/call', params: { name, arguments: args } })
    const res = await call(payload)
    if (res.statusCode >= 500) throw new Error(`${payload} → ${res.statusCode} ${res.body}`)
    const rpc = rpcOf(res.body)
    if (rpc?.error?.code === -32603) throw new Error(`${payload} → internal error ${res.body}`)
    if (await exceptions(app) !== before) throw new Error(`${payload} → the tool threw: ${res.body}`)
  }), { seed: SEED, numRuns: 1_500 })
  t.pass('tools: 1500 generated calls, every answer a result or a tool error')
  t.equal(await exceptions(app), 0, 'no tool threw')
})

t.test('generated bad input in the 2026-07-28 era, Tasks included: no 5xx, no internal error, no tool exception', async (t) => {
  const app = await build(t, {
    env: { MCP_AUTH_TOKENS: `alice:${TOKEN}`, SYNC_WAIT_MS: '100', SHED_EVENT_LOOP_DELAY_MS: '0' },
    docker: { socketPath: `${tempDir(t)}/no-engine.sock` }
  })
  const MODERN = '2026-07-28'
  const TASKS = { extensions: { 'io.modelcontextprotocol/tasks': {} } }
  const envelope = (capabilities: unknown) => ({
    'io.modelcontextprotocol/protocolVersion': MODERN,
    'io.modelcontextprotocol/clientInfo': { name: 'fuzz', version: '1' },
    'io.modelcontextprotocol/clientCapabilities': capabilities
  })
  const send = (body: Record<string, unknown>, headers: Record<string, string>) => app.inject({ method: 'POST', url: '/mcp', headers: { ...MCP, 'mcp-protocol-version': MODERN, ...headers }, payload: json(body) })
  // a real (failed) task of the caller, so existing ids are among the inputs
  const created = rpcOf((await send({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'opencode_execute_task', arguments: { task_description: 'fuzz' }, _meta: envelope(TASKS) } }, { 'mcp-method': 'tools/call', 'mcp-name': 'opencode_execute_task' })).body)
  const taskId = (created?.result as { taskId?: string } | undefined)?.taskId as string
  t.match(taskId, /^task_/, 'a task handle')

  const methods = fc.constantFrom('server/discover', 'tools/list', 'tools/call', 'tasks/get', 'tasks/update', 'tasks/cancel', 'tasks/result', 'tasks/list', 'ping', 'initialize', 'subscriptions/listen', 'x/unknown')
  const name = fc.oneof(fc.constantFrom('opencode_execute_task', 'get_task_status', 'send_task_control', 'ping', 'nope'), fc.string({ maxLength: 20 }))
  const capabilities = fc.oneof(fc.constant<unknown>(TASKS), fc.constant<unknown>({}), argValue)
  const message = fc.record({
    method: methods,
    name,
    taskId: fc.oneof(fc.constant<unknown>(taskId), argValue),
    args: fc.oneof(fc.dictionary(fc.constantFrom('task_description', 'task_id', 'sync', 'timeout_ms', 'control', 'limit', 'x'), argValue, { maxKeys: 4 }), argValue),
    extra: fc.dictionary(fc.constantFrom('task', 'inputResponses', 'cursor', '_meta'), argValue, { maxKeys: 2 }),
    capabilities,
    withEnvelope: fc.boolean(),
    headerMethod: fc.option(fc.oneof(methods, fc.string({ maxLength: 20 }).filter((s) => /^[\x21-\x7e]*$/.test(s)))),
    headerName: fc.option(fc.oneof(name, fc.constant(taskId)).filter((s) => /^[\x21-\x7e]+$/.test(s)))
  })
  let rpcId = 2
  await fc.assert(fc.asyncProperty(message, async (m) => {
    const params = { ...m.extra, ...(m.method === 'tools/call' ? { name: m.name, arguments: m.args } : { taskId: m.taskId }), ...(m.withEnvelope ? { _meta: envelope(m.capabilities) } : {}) }
    const headers: Record<string, string> = {}
    if (m.headerMethod !== null) headers['mcp-method'] = m.headerMethod
    if (m.headerName !== null) headers['mcp-name'] = m.headerName
    const body = { jsonrpc: '2.0', id: rpcId++, method: m.method, params }
    const res = await send(body, headers)
    if (res.statusCode >= 500) throw new Error(`${json(body)} ${JSON.stringify(headers)} → ${res.statusCode} ${res.body}`)
    if (rpcOf(res.body)?.error?.code === -32603) throw new Error(`${json(body)} → internal error ${res.body}`)
  }), { seed: SEED, numRuns: 1_500 })
  t.pass('modern /mcp: 1500 generated messages, no 5xx, no internal error')
  t.equal(await exceptions(app), 0, 'no tool threw')
})

/**
 * Both MCP protocol eras on /mcp: the 2025 sessions (the SDK v1 client, as Letta and other field
 * clients use) and the stateless 2026-07-28 era (the SDK v2 client in `auto` mode, and raw
 * requests for the wire's status codes), over real HTTP against the real app.
 */
import t from 'tap'
import { listen } from './helpers/app.js'
import { connect } from './helpers/mcp.js'
import { AGENT_ENV, ALICE, BOB, bearer, connectV2, envelope, modern, MODERN, TOKENS } from './helpers/modern.js'

t.test('the v2 client in auto mode speaks 2026-07-28: no session, the same tools as the 2025 era', async (t) => {
  const { app, url } = await listen(t, { env: TOKENS })
  const { client, transport } = await connectV2(t, url, bearer(ALICE))
  t.equal(client.getProtocolEra(), 'modern')
  t.equal(client.getNegotiatedProtocolVersion(), MODERN)
  t.equal(transport.sessionId, undefined, 'no Mcp-Session-Id in the modern era')
  t.equal(app.mcpSessions.size, 0, 'no session was opened')

  const ping = await client.callTool({ name: 'ping', arguments: {} })
  t.match(ping.structuredContent, { pong: true, principal: 'alice', session_id: null })

  const { client: legacy } = await connect(t, url, bearer(ALICE))
  const names = (list: { tools: Array<{ name: string }> }) => list.tools.map((tool) => tool.name).sort()
  t.same(names(await client.listTools()), names(await legacy.listTools()), 'one tool set for both eras')
  t.equal(app.mcpSessions.size, 1, 'only the 2025 client holds a session')

  const { client: pinned } = await connectV2(t, url, bearer(ALICE), 'legacy')
  t.equal(pinned.getProtocolEra(), 'legacy', 'a v2 client in legacy mode still gets a 2025 session')
  t.match((await pinned.callTool({ name: 'ping', arguments: {} })).structuredContent, { principal: 'alice' })
})

t.test('server/discover advertises the version, the tools and the Tasks extension', async (t) => {
  const { url } = await listen(t)
  const { status, json } = await modern(url, 'server/discover')
  t.equal(status, 200)
  t.same(json.result.supportedVersions, [MODERN])
  t.ok(json.result.capabilities.tools, 'tools')
  t.same(json.result.capabilities.extensions, { 'io.modelcontextprotocol/tasks': {} })
  t.notOk(json.result.capabilities.tasks, 'no 2025 tasks capability in this era')
  t.equal(json.result._meta['io.modelcontextprotocol/serverInfo'].name, 'letta-opencode-plugin')
})

t.test('/health names the versions of both eras; a bare probe that claims no era is a 2025 request: 400, never a 5xx', async (t) => {
  const { app, url } = await listen(t)
  const health = await app.inject({ url: '/health' })
  t.same(health.json().protocol_versions.slice(0, 3), [MODERN, '2025-11-25', '2025-06-18'])
  // server/discover with no version header and no envelope: Claude Code's probe falls back to initialize on this
  const res = await fetch(new URL('/mcp', url), { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'server/discover' }) })
  t.equal(res.status, 400)
  t.match(await res.json(), { error: { message: /Mcp-Session-Id header is required/ } })
})

t.test('the modern wire: required headers, versions and methods are checked, never a 5xx', async (t) => {
  const { url } = await listen(t)
  const cases: Array<[string, () => Promise<{ status: number, json: { error?: { code: number } } }>, number, number]> = [
    ['no Mcp-Method header', () => modern(url, 'tools/list', {}, { 'mcp-method': '' }), 400, -32020],
    ['Mcp-Method differs from the body', () => modern(url, 'tools/list', {}, { 'mcp-method': 'tools/call' }), 400, -32020],
    ['tools/call without Mcp-Name', () => modern(url, 'tools/call', { name: 'ping', arguments: {} }, { 'mcp-name': '' }), 400, -32020],
    ['unsupported version', () => modern(url, 'tools/list', {}, { 'mcp-protocol-version': '2099-01-01' }), 400, -32020],
    ['unknown method', () => modern(url, 'foo/bar'), 404, -32601],
    ['initialize in the modern era', () => modern(url, 'initialize', { protocolVersion: MODERN, capabilities: {}, clientInfo: { name: 'x', version: '1' } }), 404, -32601]
  ]
  for (const [name, send, status, code] of cases) {
    const res = await send()
    t.equal(res.status, status, `${name}: HTTP ${status}`)
    t.equal(res.json.error?.code, code, `${name}: ${code}`)
  }

  // a version the server does not serve, claimed consistently: -32022 with the supported list
  const res = await fetch(new URL('/mcp', url), {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-protocol-version': '2099-01-01', 'mcp-method': 'tools/list' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list', params: { _meta: { ...envelope(), 'io.modelcontextprotocol/protocolVersion': '2099-01-01' } } })
  })
  t.equal(res.status, 400)
  t.match(await res.json(), { error: { code: -32022, data: { supported: [MODERN], requested: '2099-01-01' } } })

  for (const method of ['GET', 'DELETE']) {
    const r = await fetch(new URL('/mcp', url), { method, headers: { accept: 'text/event-stream', 'mcp-protocol-version': MODERN } })
    t.equal(r.status, 405, `${method} in the modern era: 405`)
    await r.body?.cancel()
  }
})

t.test('auth, Origin and principal scoping apply to the modern era as to the legacy one', async (t) => {
  const { url } = await listen(t, { env: { ...TOKENS, ...AGENT_ENV } })
  t.equal((await modern(url, 'tools/list')).status, 401, 'no token')
  t.equal((await modern(url, 'tools/list', {}, bearer('wrong'))).status, 401, 'wrong token')
  t.equal((await modern(url, 'tools/list', {}, { ...bearer(ALICE), origin: 'http://evil.example' })).status, 403, 'foreign Origin')

  const { client: alice } = await connect(t, url, bearer(ALICE))
  const submitted = await alice.callTool({ name: 'opencode_execute_task', arguments: { task_description: 'say hi' } })
  const id = (submitted.structuredContent as { task_id: string }).task_id

  const mine = await modern(url, 'tools/call', { name: 'get_task_status', arguments: { task_id: id } }, bearer(ALICE))
  t.equal(mine.json.result.structuredContent.task_id, id, 'the owner reads its task through the modern era')
  const theirs = await modern(url, 'tools/call', { name: 'get_task_status', arguments: { task_id: id } }, bearer(BOB))
  t.equal(theirs.json.result.isError, true, 'another principal gets an error')
  t.match(theirs.json.result.content[0].text, /not_found/)
})

import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import t from 'tap'
import { listen } from './helpers/app.js'
import { waitFor } from './helpers/docker.js'
import { connect, INITIALIZE, openSession, post, rawPost } from './helpers/mcp.js'

const TOKEN_A = 'a'.repeat(32)
const TOKEN_B = 'b'.repeat(32)

t.test('the SDK client initializes, lists tools, calls them and terminates', async (t) => {
  const { app, url } = await listen(t)
  const { client, transport } = await connect(t, url, { 'x-agent-id': 'agent-123e4567-e89b-12d3-a456-426614174000' })
  t.equal(client.getServerVersion()?.name, 'letta-opencode-plugin')
  t.ok(client.getServerCapabilities()?.logging, 'logging capability')
  t.equal(app.mcpSessions.size, 1)
  t.equal((await app.inject('/health')).json().sessions, 1, '/health counts live sessions')

  const { tools } = await client.listTools()
  const ping = tools.find((x) => x.name === 'ping')
  t.ok(ping?.outputSchema, 'ping has an output schema')
  t.ok(tools.find((x) => x.name === 'health')?.outputSchema)

  const res = await client.callTool({ name: 'ping', arguments: {} }) as CallToolResult
  t.match(res.structuredContent, { pong: true, principal: 'local', agent_id: 'agent-123e4567-e89b-12d3-a456-426614174000', session_id: transport.sessionId })
  t.same(JSON.parse((res.content[0] as { text: string }).text), res.structuredContent, 'the same JSON as text')

  const health = await client.callTool({ name: 'health', arguments: {} }) as CallToolResult
  t.match(health.structuredContent, { status: 'healthy', service: 'letta-opencode-plugin', sessions: 1, docker: { reachable: true } })

  await client.setLoggingLevel('debug')
  t.pass('logging/setLevel accepted')

  await transport.terminateSession()
  await waitFor(t, 'session removed', () => app.mcpSessions.size === 0)
})

t.test('two sessions calling concurrently each get their own responses', async (t) => {
  const { url } = await listen(t)
  const a = await connect(t, url, { 'x-agent-id': 'agent-a' })
  const b = await connect(t, url, { 'x-agent-id': 'agent-b' })
  const calls = []
  for (let i = 0; i < 25; i++) {
    calls.push(a.client.callTool({ name: 'ping', arguments: {} }).then((r) => ['agent-a', a.transport.sessionId, r]))
    calls.push(b.client.callTool({ name: 'ping', arguments: {} }).then((r) => ['agent-b', b.transport.sessionId, r]))
  }
  for (const [agent, session, r] of await Promise.all(calls)) {
    const sc = (r as CallToolResult).structuredContent
    t.equal(sc?.agent_id, agent)
    t.equal(sc?.session_id, session)
  }
  t.not(a.transport.sessionId, b.transport.sessionId)
})

t.test('spec status codes', async (t) => {
  const { url } = await listen(t)
  const session = await openSession(url)
  const version = { 'mcp-protocol-version': '2025-06-18' }

  const unknown = await post(url, { jsonrpc: '2.0', id: 2, method: 'ping' }, { 'mcp-session-id': 'no-such-session', ...version })
  t.equal(unknown.status, 404, 'unknown session id')
  t.match(await unknown.json(), { jsonrpc: '2.0', error: { code: -32001, message: /Session not found/ } })

  const missing = await post(url, { jsonrpc: '2.0', id: 2, method: 'ping' }, version)
  t.equal(missing.status, 400, 'missing session id on a non-initialize request')
  t.match(await missing.json(), { error: { message: /Mcp-Session-Id header is required/ } })

  const badVersion = await post(url, { jsonrpc: '2.0', id: 2, method: 'ping' }, { 'mcp-session-id': session, 'mcp-protocol-version': '1999-01-01' })
  t.equal(badVersion.status, 400, 'unsupported MCP-Protocol-Version')
  t.match(await badVersion.json(), { error: { message: /Unsupported protocol version/ } })

  for (const v of ['2025-06-18', '2025-11-25']) {
    const ok = await post(url, { jsonrpc: '2.0', id: 3, method: 'ping' }, { 'mcp-session-id': session, 'mcp-protocol-version': v })
    t.equal(ok.status, 200, `protocol version ${v}`)
    t.match(await ok.text(), /"result":\{\}/)
  }

  const batch = await post(url, [{ jsonrpc: '2.0', id: 4, method: 'ping' }], { 'mcp-session-id': session, ...version })
  t.equal(batch.status, 400, 'batch arrays')
  t.match(await batch.json(), { error: { code: -32600, message: /batches are not supported/ } })

  const malformed = await post(url, '{"jsonrpc": "2.0", "id": ', { 'mcp-session-id': session, ...version })
  t.equal(malformed.status, 400)
  t.match(await malformed.json(), { error: { code: -32700 } }, 'malformed JSON is a parse error')

  const big = await post(url, { jsonrpc: '2.0', id: 5, method: 'ping', params: { pad: 'x'.repeat(5 * 1024 * 1024) } }, { 'mcp-session-id': session, ...version })
  t.equal(big.status, 413, 'body size capped')
  t.match(await big.json(), { error: { message: /too large/i } })

  const get = await fetch(new URL('/mcp', url), { headers: { accept: 'text/event-stream' } })
  t.equal(get.status, 400, 'GET without a session')
  const put = await fetch(new URL('/mcp', url), { method: 'PUT' })
  t.equal(put.status, 405)
  t.equal(put.headers.get('allow'), 'GET, POST, DELETE')

  const del = await fetch(new URL('/mcp', url), { method: 'DELETE', headers: { 'mcp-session-id': session, ...version } })
  t.equal(del.status, 200, 'DELETE terminates')
  const after = await post(url, { jsonrpc: '2.0', id: 6, method: 'ping' }, { 'mcp-session-id': session, ...version })
  t.equal(after.status, 404, 'a terminated session is gone')
})

t.test('Host and Origin are matched exactly', async (t) => {
  const { url } = await listen(t, { env: { MCP_ALLOWED_HOSTS: 'mcp.example.com,localhost:7777', MCP_ALLOWED_ORIGINS: 'https://app.example.com' } })
  const send = (headers: Record<string, string>) => rawPost(url, INITIALIZE, headers).then((r) => r.status)
  t.equal(await send({ host: 'mcp.example.com' }), 200, 'listed host, any port')
  t.equal(await send({ host: 'mcp.example.com:3500' }), 200)
  t.equal(await send({ host: 'localhost:7777' }), 200, 'listed host:port')
  t.equal(await send({ host: 'localhost:7778' }), 403, 'other port of a host:port entry')
  t.equal(await send({ host: 'mcp.example.com.evil.net' }), 403, 'no prefix matching')
  t.equal(await send({ host: 'evil.mcp.example.com' }), 403, 'no suffix matching')
  t.equal(await send({ host: '127.0.0.1' }), 403, 'the list replaces the loopback default')
  t.equal(await send({ host: 'mcp.example.com', origin: 'https://app.example.com' }), 200, 'listed origin')
  t.equal(await send({ host: 'mcp.example.com', origin: 'https://app.example.com.evil.net' }), 403)
  t.equal(await send({ host: 'mcp.example.com', origin: 'http://app.example.com' }), 403, 'scheme matters')
  const res = await rawPost(url, INITIALIZE, { host: 'evil.example' })
  t.match(JSON.parse(res.body), { error: { message: /Host header "evil.example" is not allowed; add it to MCP_ALLOWED_HOSTS/ } })
})

t.test('loopback names and origins are allowed by default, others refused', async (t) => {
  const { url } = await listen(t)
  const send = (headers: Record<string, string>) => rawPost(url, INITIALIZE, headers).then((r) => r.status)
  t.equal(await send({ host: 'localhost:3500' }), 200)
  t.equal(await send({ host: '[::1]:3500' }), 200)
  t.equal(await send({ host: 'localhost', origin: 'http://localhost:5173' }), 200)
  t.equal(await send({ host: 'attacker.example' }), 403, 'DNS rebinding')
  t.equal(await send({ host: 'localhost', origin: 'http://attacker.example' }), 403)
  t.equal(await send({ host: 'localhost', origin: 'null' }), 403)
  t.equal(await send({ host: 'localhost.attacker.example' }), 403)
})

t.test('bearer tokens: missing or wrong → 401 with WWW-Authenticate; sessions belong to their principal', async (t) => {
  const { url } = await listen(t, { env: { MCP_AUTH_TOKENS: `alice:${TOKEN_A},bob:${TOKEN_B}` } })
  const none = await post(url, INITIALIZE)
  t.equal(none.status, 401)
  t.match(none.headers.get('www-authenticate'), /^Bearer realm="letta-opencode-plugin"$/)
  t.match(await none.json(), { error: { message: /Missing bearer token/ } })

  const wrong = await post(url, INITIALIZE, { authorization: `Bearer ${'c'.repeat(32)}` })
  t.equal(wrong.status, 401)
  t.match(wrong.headers.get('www-authenticate'), /error="invalid_token"/)
  await wrong.body?.cancel()

  const { client, transport } = await connect(t, url, { authorization: `Bearer ${TOKEN_A}` })
  const res = await client.callTool({ name: 'ping', arguments: {} }) as CallToolResult
  t.equal(res.structuredContent?.principal, 'alice')

  const stolen = await post(url, { jsonrpc: '2.0', id: 2, method: 'ping' }, {
    authorization: `Bearer ${TOKEN_B}`, 'mcp-session-id': transport.sessionId as string, 'mcp-protocol-version': '2025-06-18'
  })
  t.equal(stolen.status, 404, 'another principal\'s session is not found')
  await stolen.body?.cancel()

  const health = await fetch(new URL('/health', url))
  t.equal(health.status, 200, '/health needs no token')
  t.match(await health.json(), { security: { authentication: true } })
})

t.test('x-agent-id is validated', async (t) => {
  const { url } = await listen(t)
  const res = await post(url, INITIALIZE, { 'x-agent-id': 'agent 1; rm -rf /' })
  t.equal(res.status, 400)
  t.match(await res.json(), { error: { message: /x-agent-id header is malformed/ } })
})

t.test('idle sessions expire after the TTL: freed and their transports closed', async (t) => {
  const { app, url } = await listen(t, { env: { MCP_SESSION_TTL_MS: '1000' } })
  const { transport } = await connect(t, url)
  let closed = false
  const session = app.mcpSessions.get(transport.sessionId as string)
  t.ok(session)
  const onclose = session!.transport.onclose
  session!.transport.onclose = () => { closed = true; onclose?.() }
  await waitFor(t, 'TTL eviction', () => app.mcpSessions.size === 0, 30_000)
  t.ok(closed, 'the transport was closed')
  const res = await post(url, { jsonrpc: '2.0', id: 2, method: 'ping' }, { 'mcp-session-id': transport.sessionId as string, 'mcp-protocol-version': '2025-06-18' })
  t.equal(res.status, 404, 'an expired session is 404, so the client re-initializes')
  await res.body?.cancel()
})

t.test('the session cap evicts the least recently used idle session, or answers 503', async (t) => {
  const { app, url } = await listen(t, { env: { MCP_MAX_SESSIONS: '2' } })
  const first = await openSession(url)
  const second = await openSession(url)
  // touch the first, so the second is the least recently used
  const touch = await post(url, { jsonrpc: '2.0', id: 2, method: 'ping' }, { 'mcp-session-id': first, 'mcp-protocol-version': '2025-06-18' })
  await touch.text()
  const third = await openSession(url)
  t.equal(app.mcpSessions.size, 2)
  t.ok(app.mcpSessions.get(first), 'recently used session kept')
  t.notOk(app.mcpSessions.get(second), 'least recently used session evicted')
  t.ok(app.mcpSessions.get(third))

  // an open GET stream does not pin a session; a call in flight does (held here as a slow tool call would)
  const stream = await fetch(new URL('/mcp', url), { headers: { accept: 'text/event-stream', 'mcp-session-id': first, 'mcp-protocol-version': '2025-06-18' } })
  t.equal(stream.status, 200)
  const releases = [first, third].map((id) => app.mcpSessions.hold(app.mcpSessions.get(id)!))
  const full = await post(url, INITIALIZE)
  t.equal(full.status, 503)
  t.equal(full.headers.get('retry-after'), '5')
  t.match(await full.json(), { error: { message: /Too many MCP sessions: all 2 are busy \(MCP_MAX_SESSIONS\)/ } })
  releases.forEach((release) => release())
  const fourth = await openSession(url)
  t.ok(app.mcpSessions.get(fourth), 'room again once a call finished')
  t.equal(app.mcpSessions.size, 2)
  await stream.body?.cancel()
})

/**
 * What clients in the field send, byte for byte where it matters: Letta's MCP client (the Python
 * `mcp` SDK over httpx) on every step of a session's life, header values in other cases and with
 * parameters, bodiless requests that carry a JSON content type, and `Connection: close`.
 */
import { Agent, request, type IncomingMessage } from 'node:http'
import { connect as netConnect } from 'node:net'
import t from 'tap'
import { build, listen } from './helpers/app.js'
import { INITIALIZE, openSession } from './helpers/mcp.js'

type Header = [string, string]

/** No load shedding: on a busy test machine the event loop lags, and shedding is not what is tested here. */
const QUIET = { SHED_EVENT_LOOP_DELAY_MS: '0' }

/**
 * The Python SDK's request headers (mcp/client/streamable_http.py `_prepare_headers`): the same
 * accept and content-type on every request, GET and DELETE included, then the session id and the
 * negotiated protocol version once known. httpx puts its client defaults first (its own accept is
 * replaced by the SDK's).
 */
function pythonHeaders (session?: string, version?: string): Header[] {
  return [
    ['Accept-Encoding', 'gzip, deflate'],
    ['Connection', 'keep-alive'],
    ['User-Agent', 'python-httpx/0.28.1'],
    ['accept', 'application/json, text/event-stream'],
    ['content-type', 'application/json'],
    ...(session ? [['mcp-session-id', session] as Header] : []),
    ...(version ? [['mcp-protocol-version', version] as Header] : [])
  ]
}

/** One request through node:http with exactly these headers (a flat raw list, duplicates kept). */
function send (agent: Agent, url: string, method: string, headers: Header[], body?: string): Promise<IncomingMessage> {
  return new Promise((resolve, reject) => {
    // a raw header list gets no Host from node:http; httpx sends it first, Content-Length for a body
    // and nothing at all for a bodiless GET or DELETE
    const target = new URL('/mcp', url)
    const all: Header[] = [['Host', target.host], ...headers, ...(body === undefined ? [] : [['Content-Length', String(Buffer.byteLength(body))] as Header])]
    const req = request(target, { method, agent, headers: all.flat() }, resolve)
    req.on('error', reject)
    req.end(body)
  })
}

async function text (res: IncomingMessage): Promise<string> {
  let out = ''
  for await (const chunk of res) out += chunk
  return out
}

/** The JSON-RPC message of an SSE reply (`event: message` / `data: {...}`) or of a JSON reply. */
function rpcOf (res: IncomingMessage, body: string): Record<string, unknown> {
  if (String(res.headers['content-type']).startsWith('text/event-stream')) {
    const data = body.split('\n').find((l) => l.startsWith('data: ') && l.length > 6)
    return JSON.parse((data as string).slice(6))
  }
  return JSON.parse(body)
}

t.test('Letta\'s Python MCP client: initialize, initialized, GET stream, tools/call, DELETE; the session is gone', async (t) => {
  const { app, url } = await listen(t, { env: QUIET })
  const agent = new Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())

  // initialize: no session id, no protocol version yet; httpx's json= body
  const init = await send(agent, url, 'POST', pythonHeaders(), JSON.stringify({
    jsonrpc: '2.0', id: 0, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'mcp', version: '0.1.0' } }
  }))
  const initBody = await text(init)
  t.equal(init.statusCode, 200, initBody.slice(0, 300))
  const session = init.headers['mcp-session-id'] as string
  t.ok(session, 'a session id')
  const version = (rpcOf(init, initBody).result as { protocolVersion: string }).protocolVersion
  t.equal(version, '2025-06-18')

  const initialized = await send(agent, url, 'POST', pythonHeaders(session, version), JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }))
  await text(initialized)
  t.equal(initialized.statusCode, 202, 'notifications/initialized accepted')

  // the GET stream (httpx-sse adds its own Accept and Cache-Control beside the SDK's headers), with no body
  const stream = await send(agent, url, 'GET', [...pythonHeaders(session, version), ['Accept', 'text/event-stream'], ['Cache-Control', 'no-store']])
  t.equal(stream.statusCode, 200, 'GET stream opened')
  t.match(stream.headers['content-type'], /^text\/event-stream/)
  const streamEnded = text(stream)

  const call = await send(agent, url, 'POST', pythonHeaders(session, version), JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'ping', arguments: {} } }))
  const callBody = await text(call)
  t.equal(call.statusCode, 200, callBody.slice(0, 300))
  t.match(rpcOf(call, callBody), { id: 1, result: { structuredContent: { pong: true, session_id: session } } })
  t.equal((await app.inject('/health')).json().sessions, 1)

  // DELETE: content-type application/json and no body at all (the SDK's terminate_session)
  const del = await send(agent, url, 'DELETE', pythonHeaders(session, version))
  const delBody = await text(del)
  t.equal(del.statusCode, 200, `DELETE terminates the session: ${delBody}`)
  if (del.statusCode !== 200) stream.destroy() // the session lives on: do not wait for its stream
  await streamEnded
  t.pass('the open GET stream ended with the session')
  t.equal((await app.inject('/health')).json().sessions, 0, '/health counts no session')

  const after = await send(agent, url, 'POST', pythonHeaders(session, version), JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'ping' }))
  await text(after)
  t.equal(after.statusCode, 404, 'the terminated session is unknown: the client re-initializes')
})

t.test('header values in other cases and with parameters, bodiless requests with a JSON content type', async (t) => {
  const { app, url } = await listen(t, { env: QUIET })
  const agent = new Agent({ keepAlive: true })
  t.teardown(() => agent.destroy())
  const base: Header[] = [['Connection', 'keep-alive']]

  const variants: Header[][] = [
    [['Accept', 'APPLICATION/JSON, TEXT/EVENT-STREAM'], ['Content-Type', 'Application/JSON']],
    [['Accept', 'application/json, text/event-stream'], ['Content-Type', 'application/json; charset=utf-8']],
    [['Accept', 'Application/Json;q=0.9, Text/Event-Stream'], ['Content-Type', 'APPLICATION/JSON; Charset=UTF-8']]
  ]
  for (const headers of variants) {
    const label = headers.map(([k, v]) => `${k}: ${v}`).join(', ')
    const init = await send(agent, url, 'POST', [...base, ...headers], JSON.stringify(INITIALIZE))
    const body = await text(init)
    t.equal(init.statusCode, 200, `initialize with ${label}: ${body.slice(0, 300)}`)
    const session = init.headers['mcp-session-id'] as string
    const withSession: Header[] = [...base, ...headers, ['mcp-session-id', session], ['MCP-Protocol-Version', '2025-06-18']]

    const call = await send(agent, url, 'POST', withSession, JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'ping', arguments: {} } }))
    const callBody = await text(call)
    t.equal(call.statusCode, 200, `tools/call with ${label}: ${callBody.slice(0, 300)}`)

    const stream = await send(agent, url, 'GET', [...withSession, ['Content-Length', '0']])
    t.equal(stream.statusCode, 200, `GET stream with ${label}`)
    const ended = text(stream)

    // a bodiless DELETE that says Content-Length: 0 (as fetch and curl send it)
    const del = await send(agent, url, 'DELETE', [...withSession, ['Content-Length', '0']])
    t.equal(del.statusCode, 200, `DELETE with ${label}: ${await text(del)}`)
    if (del.statusCode !== 200) stream.destroy()
    await ended
  }
  t.equal(app.mcpSessions.size, 0, 'every session terminated')

  // an empty POST is a JSON-RPC error that says what is missing, not an HTTP parse failure
  const empty = await send(agent, url, 'POST', [...base, ['Accept', 'application/json, text/event-stream'], ['Content-Type', 'application/json'], ['Content-Length', '0']])
  t.equal(empty.statusCode, 400)
  t.match(JSON.parse(await text(empty)), { jsonrpc: '2.0', error: { code: -32600, message: /the body must be one JSON-RPC message object/ } })
})

t.test('task routes: POST /tasks/:id/cancel with a JSON content type and no body reaches the route', async (t) => {
  const app = await build(t, { env: QUIET })
  for (const headers of [
    { 'content-type': 'application/json', 'content-length': '0' },
    { 'content-type': 'application/json; charset=utf-8' },
    { 'content-type': 'Application/JSON' }
  ]) {
    const res = await app.inject({ method: 'POST', url: '/tasks/no-such-task/cancel', headers })
    t.equal(res.statusCode, 404, `${JSON.stringify(headers)}: ${res.body}`)
    t.match(res.json(), { message: /no-such-task|not found/i })
  }
  const list = await app.inject({ method: 'GET', url: '/tasks', headers: { 'content-type': 'application/json' } })
  t.equal(list.statusCode, 200, 'GET with a JSON content type and no body')
  const bad = await app.inject({ method: 'POST', url: '/tasks/no-such-task/cancel', headers: { 'content-type': 'application/json' }, payload: '{"x":' })
  t.equal(bad.statusCode, 400, 'a body that is not JSON is still refused')
})

/** A raw HTTP/1.1 exchange on one socket: what came back, and whether the server closed the socket. */
function exchange (url: string, raw: string | Buffer): Promise<{ head: string, body: string, closed: boolean }> {
  const { port } = new URL(url)
  return new Promise((resolve, reject) => {
    const socket = netConnect(Number(port), '127.0.0.1')
    let data = ''
    // bounded only for a failing run (the server keeps the socket open); a passing run ends at once
    const guard = setTimeout(() => { socket.destroy(); finish(false) }, 30_000)
    function finish (closed: boolean) {
      clearTimeout(guard)
      const at = data.indexOf('\r\n\r\n')
      resolve({ head: at < 0 ? data : data.slice(0, at), body: at < 0 ? '' : data.slice(at + 4), closed })
    }
    socket.on('data', (d) => { data += d.toString('latin1') })
    socket.on('end', () => { socket.end(); finish(true) })
    socket.on('error', (err) => { clearTimeout(guard); reject(err) })
    socket.write(raw)
  })
}

function httpRequest (method: string, path: string, headers: Record<string, string>, body = ''): string {
  const lines = [`${method} ${path} HTTP/1.1`, 'Host: 127.0.0.1', ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`)]
  if (body || method === 'POST') lines.push(`Content-Length: ${Buffer.byteLength(body)}`)
  return lines.join('\r\n') + '\r\n\r\n' + body
}

t.test('Connection: close is honoured on /mcp, and error replies that close the socket say so', async (t) => {
  const { url } = await listen(t, { env: { ...QUIET, MCP_BODY_LIMIT: '2048' } })
  const mcp = { Accept: 'application/json, text/event-stream', 'Content-Type': 'application/json' }

  const init = await exchange(url, httpRequest('POST', '/mcp', { ...mcp, Connection: 'close' }, JSON.stringify(INITIALIZE)))
  t.match(init.head, /^HTTP\/1\.1 200/)
  t.match(init.head, /\r\nconnection: close\r\n/i, 'the streamed initialize reply says close')
  t.notMatch(init.head, /keep-alive/i)
  t.ok(init.closed, 'and the server closed the socket after it')
  t.match(init.body, /"protocolVersion"/)

  const session = await openSession(url)
  const withSession = { ...mcp, 'Mcp-Session-Id': session, 'MCP-Protocol-Version': '2025-06-18', Connection: 'close' }
  const call = await exchange(url, httpRequest('POST', '/mcp', withSession, JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'ping' })))
  t.match(call.head, /\r\nconnection: close\r\n/i, 'a request in a session too')
  t.ok(call.closed)
  const note = await exchange(url, httpRequest('POST', '/mcp', withSession, JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' })))
  t.match(note.head, /^HTTP\/1\.1 202/)
  t.match(note.head, /\r\nconnection: close\r\n/i, 'a 202 too')
  t.ok(note.closed)

  // replies that close the socket whatever the client asked
  const cases: Array<[string, string | Buffer, RegExp]> = [
    ['431 (headers too large)', httpRequest('GET', '/health', { 'X-Pad': 'x'.repeat(20_000) }), /^HTTP\/1\.1 431/],
    ['400 (malformed HTTP)', 'GARBAGE\r\n\r\n', /^HTTP\/1\.1 400/],
    ['400 (malformed JSON on /mcp)', httpRequest('POST', '/mcp', { ...mcp, 'Mcp-Session-Id': session }, '{"jsonrpc": '), /^HTTP\/1\.1 400/],
    ['413 (declared body too large)', httpRequest('POST', '/mcp', mcp, JSON.stringify({ ...INITIALIZE, pad: 'x'.repeat(4096) })), /^HTTP\/1\.1 413/],
    ['400 (malformed JSON on /tasks)', httpRequest('POST', '/tasks/x/cancel', { 'Content-Type': 'application/json' }, '{'), /^HTTP\/1\.1 400/]
  ]
  for (const [what, raw, status] of cases) {
    const res = await exchange(url, raw)
    t.match(res.head, status, what)
    t.match(res.head, /\r\nconnection: close(\r\n|$)/i, `${what} says Connection: close`)
    t.ok(res.closed, `${what} closes the socket`)
  }

  // keep-alive stays the default
  const health = await new Promise<IncomingMessage>((resolve, reject) => request(new URL('/health', url), resolve).on('error', reject).end())
  await text(health)
  t.notOk(/close/i.test(String(health.headers.connection)), 'keep-alive otherwise')
})

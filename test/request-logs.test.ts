/**
 * Logging at info: one line per MCP tool call (principal, tool, outcome, duration), none for an
 * ordinary request, whose lines Fastify writes at debug. The service's own server options, a
 * logger writing to memory, real HTTP.
 */
import t, { type Test } from 'tap'
import { serverOptions } from '../app.js'
import { listen } from './helpers/app.js'
import { callTool, connect } from './helpers/mcp.js'

const TOKEN = 'carol-token-0123456789'
const DEBUG = 20
const INFO = 30

interface Line { level: number, msg: string, reqId?: string, tool?: string, principal?: string, outcome?: string, durationMs?: number, res?: { statusCode: number } }

/** The app at debug level, its log lines parsed as they are written. */
async function logged (t: Test) {
  const lines: Line[] = []
  const stream = { write: (line: string) => { lines.push(JSON.parse(line) as Line) } }
  const { url } = await listen(t, { env: { MCP_AUTH_TOKENS: `carol:${TOKEN}` }, server: { ...serverOptions(), logger: { level: 'debug', stream } } })
  return { lines, url }
}

/** Waits until a line matches (the reply can reach the client before its line is written). */
async function lineOf (lines: Line[], match: (l: Line) => boolean): Promise<Line> {
  for (let i = 0; i < 2000; i++) {
    const line = lines.find(match)
    if (line) return line
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  throw new Error('no such log line')
}

t.test('an ordinary request is logged at debug only', async (t) => {
  const { lines, url } = await logged(t)
  const res = await fetch(`${url}/tasks`, { headers: { authorization: `Bearer ${TOKEN}` } })
  t.equal(res.status, 200)
  await res.text()
  const completed = await lineOf(lines, (l) => l.msg === 'request completed')
  t.equal(completed.level, DEBUG)
  t.equal(completed.res?.statusCode, 200)
  const incoming = await lineOf(lines, (l) => l.msg === 'incoming request' && l.reqId === completed.reqId)
  t.equal(incoming.level, DEBUG)
  t.same(lines.filter((l) => l.reqId === completed.reqId && l.level >= INFO), [], 'no info line for the request')
})

t.test('each MCP tool call writes one info line: principal, tool, outcome, duration', async (t) => {
  const { lines, url } = await logged(t)
  const { client } = await connect(t, url, { authorization: `Bearer ${TOKEN}` })
  const pong = await callTool(client, 'ping', {})
  t.notOk(pong.isError)
  const ok = await lineOf(lines, (l) => l.msg === 'mcp tool call' && l.tool === 'ping')
  t.match(ok, { level: INFO, principal: 'carol', tool: 'ping', outcome: 'ok' })
  t.type(ok.durationMs, 'number')
  t.ok((ok.durationMs as number) >= 0)

  const missing = await callTool(client, 'get_task_status', { task_id: 'no-such-task' })
  t.ok(missing.isError)
  const error = await lineOf(lines, (l) => l.msg === 'mcp tool call' && l.tool === 'get_task_status')
  t.match(error, { level: INFO, principal: 'carol', outcome: 'error' })

  // the HTTP requests of the exchange (initialize, notifications, the calls) have no info line
  const requestIds = new Set(lines.filter((l) => l.msg === 'request completed').map((l) => l.reqId))
  t.ok(requestIds.size >= 3)
  t.same(lines.filter((l) => l.level >= INFO && l.msg !== 'mcp tool call' && requestIds.has(l.reqId)), [])
  t.equal(lines.filter((l) => l.msg === 'mcp tool call').length, 2, 'one line per call')
})

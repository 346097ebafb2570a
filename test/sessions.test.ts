/**
 * The session cap under concurrency: concurrent raw initializes never open more than
 * MCP_MAX_SESSIONS, and one principal's burst takes its room from the largest holder (itself when
 * it holds as many as anyone), so it cannot push another principal out.
 */
import { McpServer } from '@modelcontextprotocol/server'
import t from 'tap'
import { SessionCapacityError, SessionRegistry } from '../services/mcp/sessions.js'
import { listen } from './helpers/app.js'
import { INITIALIZE, post } from './helpers/mcp.js'

const ALICE = { authorization: `Bearer ${'a'.repeat(32)}` }
const BOB = { authorization: `Bearer ${'b'.repeat(32)}` }
const env = (max: number) => ({ MCP_AUTH_TOKENS: `alice:${'a'.repeat(32)},bob:${'b'.repeat(32)}`, MCP_MAX_SESSIONS: String(max) })

/** One raw initialize: the session id, or the HTTP status it was refused with. */
async function initialize (url: string, headers: Record<string, string>): Promise<string | number> {
  const res = await post(url, INITIALIZE, headers)
  await res.body?.cancel()
  return res.headers.get('mcp-session-id') ?? res.status
}

/** The most sessions the registry ever held at once, from now on (counted where they are stored). */
function mostSessions (registry: object): () => number {
  const map = (registry as { sessions: Map<string, unknown> }).sessions
  const set = map.set.bind(map)
  let most = map.size
  map.set = (key, value) => {
    set(key, value)
    most = Math.max(most, map.size)
    return map
  }
  return () => most
}

t.test('the registry: an initialize reserves its slot when it opens, and gives it back when discarded', async (t) => {
  const registry = new SessionRegistry({ ttlMs: 60_000, maxSessions: 3, createServer: () => new McpServer({ name: 'test', version: '1' }) })
  t.teardown(() => registry.closeAll())
  // five initializes opened before any of them registered its session (as concurrent requests do)
  const opened = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => registry.open(i % 2 ? 'alice' : 'bob')))
  t.equal(opened.filter((r) => r.status === 'fulfilled').length, 3, 'three slots')
  for (const r of opened.filter((r) => r.status === 'rejected')) t.type(r.reason, SessionCapacityError, 'the rest refused: nothing to evict yet')
  const first = opened[0] as PromiseFulfilledResult<Awaited<ReturnType<SessionRegistry['open']>>>
  await first.value.discard()
  const again = await registry.open('carol')
  t.ok(again.transport, 'a failed initialize gave its slot back')
  await t.rejects(registry.open('carol'), SessionCapacityError)
})

t.test('concurrent initializes never exceed MCP_MAX_SESSIONS', async (t) => {
  const { app, url } = await listen(t, { env: env(3) })
  const most = mostSessions(app.mcpSessions)
  const results = await Promise.all(Array.from({ length: 12 }, (_, i) => initialize(url, i % 2 ? ALICE : BOB)))
  t.ok(most() <= 3, `never more than the cap at once (at most ${most()})`)
  t.equal(app.mcpSessions.size, 3)
  t.ok(results.filter((r) => typeof r === 'string').length >= 3, 'the cap\'s worth opened')
  t.same(results.filter((r) => typeof r !== 'string'), results.filter((r) => r === 503), 'the others are told to retry')
})

t.test('a principal\'s burst evicts its own idle sessions, not another principal\'s', async (t) => {
  const { app, url } = await listen(t, { env: env(4) })
  const bob = [await initialize(url, BOB), await initialize(url, BOB)] as string[]
  const alice = [await initialize(url, ALICE), await initialize(url, ALICE)] as string[]
  t.equal(app.mcpSessions.size, 4, 'at the cap')

  const most = mostSessions(app.mcpSessions)
  const burst = await Promise.all(Array.from({ length: 8 }, () => initialize(url, ALICE)))
  t.ok(most() <= 4, `never more than the cap at once (at most ${most()})`)
  t.ok(burst.some((r) => typeof r === 'string'), 'alice got new sessions')
  for (const id of bob) t.ok(app.mcpSessions.get(id), 'bob keeps his sessions')
  for (const id of alice) t.notOk(app.mcpSessions.get(id), 'alice lost her own oldest idle sessions')
  t.equal(app.mcpSessions.size, 4)
})

t.test('a principal holding more than its share is the one that loses a session', async (t) => {
  const { app, url } = await listen(t, { env: env(4) })
  const bob = [] as string[]
  for (let i = 0; i < 4; i++) bob.push(await initialize(url, BOB) as string)
  t.equal(app.mcpSessions.size, 4)
  // alice holds nothing: bob's least recently used idle sessions make room, down to an even share;
  // then, with even shares, alice's next session replaces her own oldest
  const a1 = await initialize(url, ALICE)
  const a2 = await initialize(url, ALICE)
  const a3 = await initialize(url, ALICE)
  // (get() marks a session used: every look is taken after the initializes)
  for (const a of [a1, a2, a3]) t.type(a, 'string')
  t.notOk(app.mcpSessions.get(bob[0]), 'bob\'s oldest went')
  t.notOk(app.mcpSessions.get(bob[1]))
  t.notOk(app.mcpSessions.get(a1 as string), 'then alice\'s own oldest')
  t.ok(app.mcpSessions.get(bob[2]), 'bob keeps his share')
  t.ok(app.mcpSessions.get(bob[3]))
  t.ok(app.mcpSessions.get(a2 as string))
  t.equal(app.mcpSessions.size, 4)
})

/**
 * Cluster mode, forwarding (issue #15): two replicas (two listening apps, their own DATA_DIR) on one
 * PostgreSQL database. A task runs on the replica it was submitted to; its files, log, controls and
 * follow-up messages work through the other one, and a legacy MCP session opened on one replica is
 * used through the other.
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import type { FastifyInstance } from 'fastify'
import type pg from 'pg'
import t, { type Test } from 'tap'
import { TOKEN_HEADER, PRINCIPAL_HEADER } from '../services/cluster/forward.js'
import type { PgTaskStore } from '../services/tasks/pg-store.js'
import { listen } from './helpers/app.js'
import { engine, waitFor } from './helpers/docker.js'
import { connect, INITIALIZE, openSession, post as mcpPost, toolOk } from './helpers/mcp.js'
import { AGENT_ENV, ALICE, BOB, bearer, TOKENS } from './helpers/modern.js'
import { freshDatabase } from './helpers/postgres.js'
import { settled, type TaskResult } from './helpers/tasks.js'

const CLUSTER_TOKEN = 'cluster-secret-0123456789abcdef-0123'
const alice = bearer(ALICE)

interface Replica { app: FastifyInstance, url: string }

/**
 * Two replicas on a fresh database (each registers itself as a live node). Replica 2 claims nothing:
 * every task runs on replica 1, the one these tests reach through replica 2 (claims: cluster.test.ts).
 */
async function cluster (t: Test, env: Record<string, string> = {}): Promise<{ r1: Replica, r2: Replica, pool: pg.Pool, env: Record<string, string> }> {
  const all = { ...AGENT_ENV, ...TOKENS, DATABASE_URL: await freshDatabase(t), CLUSTER_TOKEN, ...env }
  const r1 = await listen(t, { env: all })
  const r2 = await listen(t, { env: all })
  const node = r2.app.clusterNode
  if (!node) throw new Error('replica 2 is not in cluster mode')
  node.claim = async () => undefined
  const pool = (r1.app.taskStore as PgTaskStore).pool
  await waitFor(t, 'both replicas registered at their URLs', async () =>
    (await pool.query('SELECT 1 FROM nodes WHERE NOT lost AND url = ANY($1::text[])', [[r1.url, r2.url]])).rowCount === 2)
  return { r1, r2, pool, env: all }
}

async function status (r: Replica, id: string): Promise<string> {
  const res = await fetch(`${r.url}/tasks/${id}`, { headers: alice })
  return (await res.json() as { status: string }).status
}

const post = (url: string, headers: Record<string, string> = {}) => fetch(url, { method: 'POST', headers: { ...alice, ...headers } })

t.test('files, a workspace file, logs, pause, resume, cancel and messages of a task on replica 1 through replica 2', async (t) => {
  const { r1, r2, pool, env } = await cluster(t)
  const { client } = await connect(t, r1.url, alice)
  const res = await client.callTool({ name: 'opencode_execute_task', arguments: { task_description: 'echo forwarded-log say done', sync: true, files: [{ path: 'notes/seed.txt', content: 'seeded on r1' }] } }) as CallToolResult
  const done = await settled(client, res.structuredContent as TaskResult)
  t.equal(done.status, 'completed')
  const id = done.task_id
  const { rows } = await pool.query('SELECT node_id FROM tasks WHERE id = $1', [id])
  t.equal(rows[0].node_id, r1.app.tasks.owner, 'the task records the replica that ran it')

  // the log is in replica 1's DATA_DIR only: replica 2 answers with it by forwarding
  const logs = await fetch(`${r2.url}/tasks/${id}/logs`, { headers: alice })
  t.equal(logs.status, 200)
  t.match(await logs.text(), /forwarded-log/)
  const ranged = await r2.app.tasks.logs('alice', id, 0, 5)
  t.ok(Buffer.isBuffer(ranged.data), 'a byte range comes back as bytes')
  t.equal(ranged.data.toString(), 'forwa')

  const files = await fetch(`${r2.url}/tasks/${id}/files`, { headers: alice })
  t.equal(files.status, 200)
  t.ok((await files.json() as { entries: Array<{ path: string }> }).entries.some((e) => e.path === 'notes/seed.txt'), 'files listed through replica 2')
  const file = await fetch(`${r2.url}/tasks/${id}/file?path=notes/seed.txt`, { headers: alice })
  t.match(await file.json(), { content: 'seeded on r1', encoding: 'utf8' })
  const { client: c2 } = await connect(t, r2.url, alice)
  t.match(await toolOk(c2, 'read_task_file', { task_id: id, file_path: 'notes/seed.txt' }), { content: 'seeded on r1' })

  // errors come back unchanged: another principal's task is a 404, a missing file keeps its status
  t.equal((await fetch(`${r2.url}/tasks/${id}/logs`, { headers: bearer(BOB) })).status, 404, 'scoped to the principal')
  const missing = await fetch(`${r2.url}/tasks/${id}/file?path=nope.txt`, { headers: alice })
  t.equal(missing.status, (await fetch(`${r1.url}/tasks/${id}/file?path=nope.txt`, { headers: alice })).status, 'the owner\'s status for a missing file')
  const ended = await post(`${r2.url}/tasks/${id}/pause`)
  t.equal(ended.status, 409)
  t.match((await ended.json() as { message: string }).message, /already ended/)

  // a log followed through replica 2 streams what replica 1 writes, until the task ends
  const { structuredContent: slow } = await client.callTool({ name: 'opencode_execute_task', arguments: { task_description: 'echo first sleep 3 echo second' } }) as CallToolResult
  const followed = await fetch(`${r2.url}/tasks/${(slow as TaskResult).task_id}/logs?follow=true`, { headers: alice })
  t.equal(followed.status, 200)
  t.match(await followed.text(), /first\n[^]*second\n/, 'the whole log, streamed to the end')
  t.equal(await status(r1, (slow as TaskResult).task_id), 'completed', 'the stream ended with the task')

  // a running task: pause, resume and cancel through replica 2 act on replica 1's container
  const { structuredContent: running } = await client.callTool({ name: 'opencode_execute_task', arguments: { task_description: 'sleep 120' } }) as CallToolResult
  const rid = (running as TaskResult).task_id
  await waitFor(t, 'the task runs on replica 1', async () => (await status(r1, rid)) === 'running', 120_000)
  await waitFor(t, 'its container started', async () => (await r1.app.taskStore.get(rid))?.container_id != null, 120_000)
  const paused = await post(`${r2.url}/tasks/${rid}/pause`)
  t.equal(paused.status, 200, 'paused through replica 2')
  const containerId = (await r1.app.taskStore.get(rid))!.container_id!
  t.equal((await engine.inspectContainer(containerId)).State.Paused, true, 'replica 1\'s container is paused')
  t.equal((await post(`${r2.url}/tasks/${rid}/resume`)).status, 200, 'resumed through replica 2')
  t.equal((await engine.inspectContainer(containerId)).State.Paused, false)
  const message = await fetch(`${r2.url}/tasks/${rid}/messages`, { method: 'POST', headers: { ...alice, 'content-type': 'application/json' }, body: JSON.stringify({ message: 'say later' }) })
  t.equal(message.status, 200, 'a follow-up message through replica 2')
  t.same((await r1.app.taskStore.get(rid))!.pending, ['say later'])
  const cancelled = await post(`${r2.url}/tasks/${rid}/cancel`)
  t.equal(cancelled.status, 200)
  t.equal((await cancelled.json() as { status: string }).status, 'cancelled', 'cancelled through replica 2')

  // the owner down, or lost: a 503 naming it
  await pool.query('UPDATE nodes SET url = $1 WHERE node_id = $2', ['http://127.0.0.1:9', r1.app.tasks.owner])
  const down = await fetch(`${r2.url}/tasks/${id}/logs`, { headers: alice })
  t.equal(down.status, 503)
  t.match((await down.json() as { message: string }).message, new RegExp(`replica ${r1.app.tasks.owner} .*does not answer`))
  await pool.query('UPDATE nodes SET lost = true WHERE node_id = $1', [r1.app.tasks.owner])
  const lost = await fetch(`${r2.url}/tasks/${id}/files`, { headers: alice })
  t.equal(lost.status, 503)
  t.match((await lost.json() as { message: string }).message, /was lost/)

  // a replica without CLUSTER_TOKEN forwards nothing: a clear 409 naming the task's replica and the variable
  const r3 = await listen(t, { env: { ...env, CLUSTER_TOKEN: '' } })
  const refused = await fetch(`${r3.url}/tasks/${id}/logs`, { headers: alice })
  t.equal(refused.status, 409)
  t.match((await refused.json() as { message: string }).message, new RegExp(`replica ${r1.app.tasks.owner}.*CLUSTER_TOKEN`))
})

t.test('a legacy MCP session opened on replica 1 is used through replica 2', async (t) => {
  const { r1, r2, pool } = await cluster(t)
  // opened raw on replica 1 (an SDK client would hold the session's one GET stream)
  const sessionId = await openSession(r1.url, alice)
  const initialized = await mcpPost(r1.url, { jsonrpc: '2.0', method: 'notifications/initialized' }, { ...alice, 'mcp-session-id': sessionId, 'mcp-protocol-version': '2025-06-18' })
  t.equal(initialized.status, 202)
  t.match(sessionId, new RegExp(`^${r1.app.tasks.owner}\\.[0-9a-f-]{36}$`), 'the session id carries its replica')

  // the same session through replica 2 (the SDK client skips initialize when given a session id)
  const via2 = new StreamableHTTPClientTransport(new URL(`${r2.url}/mcp`), { sessionId, requestInit: { headers: alice } })
  const second = new Client({ name: 'via-r2', version: '1.0.0' })
  await second.connect(via2)
  t.teardown(() => second.close())
  const notes: Array<{ progress: number }> = []
  const res = await second.callTool({ name: 'opencode_execute_task', arguments: { task_description: 'sleep 4.5 say through r2', sync: true } }, undefined, {
    onprogress: (p) => { notes.push(p) }
  }) as CallToolResult
  t.match(await settled(second, res.structuredContent as TaskResult), { status: 'completed', output: 'through r2\n' })
  t.ok(notes.length >= 2, `progress notifications came through replica 2 (${notes.length})`)
  t.equal(r2.app.mcpSessions.size, 0, 'replica 2 holds no session')
  t.equal(r1.app.mcpSessions.size, 1)

  // the GET stream through replica 2
  const stop = new AbortController()
  const stream = await fetch(`${r2.url}/mcp`, { headers: { ...alice, accept: 'text/event-stream', 'mcp-session-id': sessionId, 'mcp-protocol-version': '2025-06-18' }, signal: stop.signal })
  t.equal(stream.status, 200)
  t.match(stream.headers.get('content-type'), /text\/event-stream/)
  const second1 = await fetch(`${r1.url}/mcp`, { headers: { ...alice, accept: 'text/event-stream', 'mcp-session-id': sessionId, 'mcp-protocol-version': '2025-06-18' } })
  t.equal(second1.status, 409, 'the stream opened through replica 2 is the session\'s one GET stream on replica 1')
  await second1.body?.cancel()
  stop.abort()

  // another principal's session id through replica 2 is unknown there too
  const bobs = await fetch(`${r2.url}/mcp`, { method: 'POST', headers: { ...bearer(BOB), 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': sessionId }, body: JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'tools/list' }) })
  t.equal(bobs.status, 404)

  // the entry replica checks the client as for its own sessions: a foreign Origin is refused there
  const foreign = await mcpPost(r2.url, { jsonrpc: '2.0', id: 8, method: 'tools/list' }, { ...alice, origin: 'https://evil.example', 'mcp-session-id': sessionId, 'mcp-protocol-version': '2025-06-18' })
  t.equal(foreign.status, 403, 'a foreign Origin is refused on replica 2')

  // DELETE through replica 2 closes the session on replica 1
  const deleted = await fetch(`${r2.url}/mcp`, { method: 'DELETE', headers: { ...alice, 'mcp-session-id': sessionId, 'mcp-protocol-version': '2025-06-18' } })
  t.equal(deleted.status, 200)
  await waitFor(t, 'the session is gone on replica 1', () => r1.app.mcpSessions.size === 0)
  const closed = await mcpPost(r1.url, { jsonrpc: '2.0', id: 3, method: 'tools/list' }, { ...alice, 'mcp-session-id': sessionId, 'mcp-protocol-version': '2025-06-18' })
  t.equal(closed.status, 404, 'the closed session is unknown on replica 1 too')

  // a session of a lost replica is unknown: the client initializes again
  const { transport: again } = await connect(t, r1.url, alice)
  await pool.query('UPDATE nodes SET lost = true WHERE node_id = $1', [r1.app.tasks.owner])
  const gone = await fetch(`${r2.url}/mcp`, { method: 'POST', headers: { ...alice, 'content-type': 'application/json', accept: 'application/json, text/event-stream', 'mcp-session-id': again.sessionId! }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' }) })
  t.equal(gone.status, 404)
})

t.test('the internal API takes the cluster token only', async (t) => {
  const { r2 } = await cluster(t)
  const call = (headers: Record<string, string>) => fetch(`${r2.url}/cluster/call`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ method: 'logs', args: ['task_missing', 0, 10] })
  })
  t.equal((await call({})).status, 401, 'no token')
  t.equal((await call(alice)).status, 401, 'an MCP token is not the cluster token')
  t.equal((await call({ [TOKEN_HEADER]: 'x'.repeat(40), [PRINCIPAL_HEADER]: 'alice' })).status, 403, 'a wrong cluster token')
  t.equal((await call({ [TOKEN_HEADER]: CLUSTER_TOKEN })).status, 400, 'no principal')
  const notFound = await call({ [TOKEN_HEADER]: CLUSTER_TOKEN, [PRINCIPAL_HEADER]: 'alice' })
  t.equal(notFound.status, 404)
  t.match(await notFound.json(), { error: { kind: 'task', code: 'not_found' } })
  const badMethod = await fetch(`${r2.url}/cluster/call`, { method: 'POST', headers: { 'content-type': 'application/json', [TOKEN_HEADER]: CLUSTER_TOKEN, [PRINCIPAL_HEADER]: 'alice' }, body: JSON.stringify({ method: 'submit', args: [] }) })
  t.equal(badMethod.status, 400, 'only the node-local methods')
  t.equal((await fetch(`${r2.url}/cluster/logs?id=x`, { headers: { [TOKEN_HEADER]: 'y'.repeat(40), [PRINCIPAL_HEADER]: 'alice' } })).status, 403)
  // a wrong cluster token on /mcp is refused too, never served as a forwarded request
  const mcp = await fetch(`${r2.url}/mcp`, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', [TOKEN_HEADER]: 'z'.repeat(40), [PRINCIPAL_HEADER]: 'alice' }, body: JSON.stringify(INITIALIZE) })
  t.equal(mcp.status, 403)
})

t.test('with SQLite there is no internal API and session ids are plain', async (t) => {
  const { app, url } = await listen(t, { env: { ...AGENT_ENV, ...TOKENS, DATABASE_URL: '' } })
  t.equal(app.cluster, undefined)
  t.equal((await fetch(`${url}/cluster/call`, { method: 'POST', headers: { [TOKEN_HEADER]: CLUSTER_TOKEN } })).status, 404)
  const { transport } = await connect(t, url, alice)
  t.match(transport.sessionId, /^[0-9a-f-]{36}$/)
})

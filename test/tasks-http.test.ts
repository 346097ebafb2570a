/** The HTTP task endpoints: same auth and principal scoping as /mcp, schemas for every status. */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import t from 'tap'
import { listen } from './helpers/app.js'
import { waitFor } from './helpers/docker.js'
import { connect } from './helpers/mcp.js'
import { settled, type TaskResult } from './helpers/tasks.js'

const A = 'a'.repeat(32)
const B = 'b'.repeat(32)
const ENV = {
  RUNNER_IMAGE: 'letta-opencode-test-agent:latest',
  RUNNER_NETWORK: 'none',
  RUNNER_MEMORY_LIMIT: '64m',
  RUNNER_STOP_GRACE_S: '1',
  MCP_AUTH_TOKENS: `alice:${A},bob:${B}`
}
const alice = { authorization: `Bearer ${A}` }
const bob = { authorization: `Bearer ${B}` }

async function submit (client: Client, args: Record<string, unknown>): Promise<{ task_id: string, status: string }> {
  const res = await client.callTool({ name: 'opencode_execute_task', arguments: args }) as CallToolResult
  if (res.isError) throw new Error(JSON.stringify(res.content))
  // a sync answer comes at SYNC_WAIT_MS at the latest: on a busy machine the end is waited for by status
  return args.sync ? await settled(client, res.structuredContent as TaskResult) : res.structuredContent as { task_id: string, status: string }
}

t.test('GET /tasks, GET /tasks/:id and POST /tasks/:id/cancel are authenticated and scoped', async (t) => {
  const { url } = await listen(t, { env: ENV })
  const { client } = await connect(t, url, { ...alice, 'x-agent-id': 'agent-http' })
  const done = await submit(client, { task_description: 'say over http', sync: true })
  const running = await submit(client, { task_description: 'sleep 30' })

  t.equal((await fetch(`${url}/tasks`)).status, 401, 'no token')
  const wrong = await fetch(`${url}/tasks`, { headers: { authorization: 'Bearer ' + 'c'.repeat(32) } })
  t.equal(wrong.status, 401)
  t.match(wrong.headers.get('www-authenticate'), /^Bearer/)

  const list = await fetch(`${url}/tasks`, { headers: alice })
  t.equal(list.status, 200)
  const body = await list.json() as { tasks: Array<{ task_id: string }>, total: number }
  t.equal(body.total, 2)
  t.same(body.tasks.map((x) => x.task_id), [running.task_id, done.task_id], 'newest first')

  const filtered = await (await fetch(`${url}/tasks?status=completed&limit=1`, { headers: alice })).json() as { tasks: unknown[], total: number }
  t.match(filtered, { total: 1, tasks: [{ task_id: done.task_id, status: 'completed', output: null, output_bytes: 10, exit_code: 0, agent_id: 'agent-http' }] })

  const bad = await fetch(`${url}/tasks?status=sleeping&limit=0`, { headers: alice })
  t.equal(bad.status, 400)
  t.match(await bad.json(), { statusCode: 400, message: /status|limit/ })

  t.equal((await fetch(`${url}/tasks`, { headers: bob }).then((r) => r.json()) as { total: number }).total, 0, "bob sees none of alice's tasks")

  const one = await fetch(`${url}/tasks/${done.task_id}`, { headers: alice })
  t.equal(one.status, 200)
  t.match(await one.json(), { task_id: done.task_id, status: 'completed', duration_ms: Number })

  for (const path of [`/tasks/${done.task_id}`, `/tasks/${done.task_id}/logs`]) {
    const other = await fetch(url + path, { headers: bob })
    t.equal(other.status, 404, `${path} is not found for another principal`)
    t.match(await other.json(), { statusCode: 404, message: /No task/ })
  }
  const otherCancel = await fetch(`${url}/tasks/${running.task_id}/cancel`, { method: 'POST', headers: bob })
  t.equal(otherCancel.status, 404, 'bob cannot cancel it')

  const cancel = await fetch(`${url}/tasks/${running.task_id}/cancel`, { method: 'POST', headers: alice })
  t.equal(cancel.status, 200)
  t.match(await cancel.json(), { task_id: running.task_id, status: 'cancelled', reason: 'cancelled' })
  const again = await fetch(`${url}/tasks/${running.task_id}/cancel`, { method: 'POST', headers: alice })
  t.equal(again.status, 409)
  t.match(await again.json(), { statusCode: 409, message: /already ended \(cancelled\)/ })
})

t.test('GET /tasks/:id/logs returns the full log; follow=true streams it until the task ends', async (t) => {
  const { url } = await listen(t, { env: { ...ENV, TASK_OUTPUT_LIMIT: '1024' } })
  const { client } = await connect(t, url, alice)

  const big = await submit(client, { task_description: 'print-mb 1', sync: true })
  const full = await fetch(`${url}/tasks/${big.task_id}/logs`, { headers: alice })
  t.equal(full.status, 200)
  t.match(full.headers.get('content-type'), /^text\/plain/)
  t.equal(full.headers.get('x-task-status'), 'completed')
  const text = await full.text()
  t.equal(text.length, 1024 * 1024, 'the whole output, where the result holds head and tail only')
  t.equal((await (await fetch(`${url}/tasks/${big.task_id}/logs?offset=1048000`, { headers: alice })).text()).length, 576, 'from an offset')

  const slow = await submit(client, { task_description: 'echo one sleep 5 echo two' })
  await waitFor(t, 'running', async () => (await (await fetch(`${url}/tasks/${slow.task_id}`, { headers: alice })).json() as { status: string }).status === 'running')
  const follow = await fetch(`${url}/tasks/${slow.task_id}/logs?follow=true`, { headers: alice })
  t.equal(follow.headers.get('x-task-status'), 'running')
  const reader = (follow.body as ReadableStream<Uint8Array>).getReader()
  const decoder = new TextDecoder()
  let seen = ''
  let first = ''
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    seen += decoder.decode(value, { stream: true })
    first ||= seen
  }
  t.equal(seen, 'one\ntwo\n', 'every line, and the stream ends with the task')
  t.equal(first, 'one\n', 'the first line arrived on its own, before the task ended')
  t.match(await (await fetch(`${url}/tasks/${slow.task_id}`, { headers: alice })).json(), { status: 'completed' })

  const badFollow = await fetch(`${url}/tasks/${slow.task_id}/logs?follow=maybe`, { headers: alice })
  t.equal(badFollow.status, 400)
})

t.test('get_task_logs reads the log in byte ranges through MCP', async (t) => {
  const { url } = await listen(t, { env: ENV })
  const { client } = await connect(t, url, alice)
  const done = await submit(client, { task_description: 'echo alpha echo beta', sync: true })
  const first = (await client.callTool({ name: 'get_task_logs', arguments: { task_id: done.task_id, limit: 6 } }) as CallToolResult).structuredContent
  t.match(first, { data: 'alpha\n', offset: 0, next_offset: 6, size: 11, eof: false })
  const rest = (await client.callTool({ name: 'get_task_logs', arguments: { task_id: done.task_id, offset: 6 } }) as CallToolResult).structuredContent
  t.match(rest, { data: 'beta\n', next_offset: 11, eof: true })
  const other = await connect(t, url, bob)
  const denied = await other.client.callTool({ name: 'get_task_logs', arguments: { task_id: done.task_id } }) as CallToolResult
  t.equal(denied.isError, true)
})

/**
 * Retention (issue 14): ended tasks past TASK_RETENTION_MS are deleted with their events, log,
 * idempotency keys and Letta outbox rows; expired idempotency keys make a new task and are deleted;
 * lists leave the large columns out; read_task_file reads at most MAX_TASK_FILE_SIZE and redacts
 * the passed-through secrets. Ages are made by back-dating stored times, never by waiting.
 */
import { existsSync } from 'node:fs'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import { pack } from 'tar-stream'
import t from 'tap'
import { DockerEngine } from '../services/docker/engine.js'
import { readFile } from '../services/runner/workspace.js'
import { SqliteLettaOutboxStore } from '../services/letta/outbox-store.js'
import { SqliteTaskStore } from '../services/tasks/store.js'
import type { TaskRecord } from '../services/tasks/types.js'
import { listen, tempDir } from './helpers/app.js'
import { BASE_IMAGE, cleanupContainers, engine, TEST_LABEL } from './helpers/docker.js'
import { EngineProxy } from './helpers/engine-proxy.js'
import { connect } from './helpers/mcp.js'
import { taskRecord } from './helpers/records.js'

const DAY = 86_400_000
const BASE_ENV = { RUNNER_IMAGE: 'letta-opencode-test-agent:latest', RUNNER_NETWORK: 'none', RUNNER_MEMORY_LIMIT: '64m', RUNNER_STOP_GRACE_S: '1', RUNNER_CPU_LIMIT: '0.5', SHED_EVENT_LOOP_DELAY_MS: '0' }

function record (id: string, fields: Partial<TaskRecord> = {}): TaskRecord {
  const now = Date.now()
  return taskRecord(id, {
    agent_id: 'agent',
    status: 'completed',
    timeout_ms: 1000,
    started_at: now,
    finished_at: now,
    exit_code: 0,
    reason: 'exit',
    output: 'x'.repeat(10_000),
    output_bytes: 10_000,
    turns: 1,
    repository: { url: 'https://example.invalid/r.git', branch: null },
    seed: [{ path: 'a.txt', content: 'y'.repeat(10_000) }],
    diff: 'diff --git a/a.txt b/a.txt',
    ...fields
  })
}
const count = (store: SqliteTaskStore, table: string, id: string) =>
  (store.db.prepare(`SELECT COUNT(*) AS n FROM ${table} WHERE task_id = ?`).get(id) as { n: number }).n

t.test('store: deleteEnded deletes only ended tasks past the cut-off, with their events, keys and Letta rows', async (t) => {
  const store = new SqliteTaskStore(tempDir(t))
  t.teardown(() => store.close())
  const old = Date.now() - 40 * DAY
  const tasks = {
    oldCompleted: record('task_old-completed', { finished_at: old }),
    oldFailed: record('task_old-failed', { status: 'failed', finished_at: old }),
    recent: record('task_recent'),
    running: record('task_running', { status: 'running', created_at: old, started_at: old, finished_at: null }),
    // a follow-up turn of an old task: queued again, its finished_at cleared
    followUp: record('task_follow-up', { status: 'queued', created_at: old, finished_at: null })
  }
  for (const task of Object.values(tasks)) {
    await store.claimIdempotent({ principal: 'p', agent_id: 'agent', key: task.id, args_hash: 'h', ttlMs: DAY }, () => task)
    await store.addEvent(task.id, 'queued')
    await new SqliteLettaOutboxStore(store.db).track(task.id, 'agent')
  }
  const deleted = await store.deleteEnded(Date.now() - 30 * DAY)
  t.same(deleted.sort(), ['task_old-completed', 'task_old-failed'])
  for (const id of deleted) {
    t.equal(await store.get(id), undefined, `${id} deleted`)
    for (const table of ['task_events', 'idempotency_keys', 'letta_sync']) t.equal(count(store, table, id), 0, `${id}: its ${table} rows too`)
  }
  for (const task of [tasks.recent, tasks.running, tasks.followUp]) {
    t.ok(await store.get(task.id), `${task.id} kept`)
    for (const table of ['task_events', 'idempotency_keys', 'letta_sync']) t.equal(count(store, table, task.id), 1)
  }
  t.same(await store.deleteEnded(Date.now() - 30 * DAY), [], 'nothing left to delete')
})

t.test('store: a task whose Letta block still exists is kept until the block is deleted', async (t) => {
  const store = new SqliteTaskStore(tempDir(t))
  t.teardown(() => store.close())
  const task = record('task_with-block', { finished_at: Date.now() - 40 * DAY })
  await store.insert(task)
  const outbox = new SqliteLettaOutboxStore(store.db)
  await outbox.track(task.id, 'agent')
  await outbox.update(task.id, { block_id: 'block-1' })
  t.same(await store.deleteEnded(Date.now() - 30 * DAY), [], 'kept: its block is still in Letta (the worker deletes it after the workspace)')
  await outbox.update(task.id, { deleted: 1 })
  t.same(await store.deleteEnded(Date.now() - 30 * DAY), [task.id], 'deleted once the block is')
})

t.test('store: a list leaves output, seed and diff out; one task\'s read has them', async (t) => {
  const store = new SqliteTaskStore(tempDir(t))
  t.teardown(() => store.close())
  await store.insert(record('task_with-diff'))
  await store.insert(record('task_no-diff', { diff: null, repository: null }))
  const { tasks, total } = await store.list({ principal: 'p', limit: 10, offset: 0 })
  t.equal(total, 2)
  for (const task of tasks) {
    t.equal(task.output, null, 'no output in a list')
    t.equal(task.seed, null, 'no seed files in a list')
    t.equal(task.output_bytes, 10_000, 'the output size is listed')
  }
  t.equal(tasks.find((x) => x.id === 'task_with-diff')?.diff, '', 'a diff is only marked (has_diff)')
  t.equal(tasks.find((x) => x.id === 'task_no-diff')?.diff, null)
  const one = await store.get('task_with-diff') as TaskRecord
  t.equal(one.output?.length, 10_000)
  t.equal(one.seed?.[0].content.length, 10_000)
  t.equal(one.diff, 'diff --git a/a.txt b/a.txt')
})

t.test('through the app: an ended task past TASK_RETENTION_MS is deleted at reconcile, with its log and events', async (t) => {
  const { app, url } = await listen(t, { env: { ...BASE_ENV, ORPHAN_GRACE_MS: '600000' } })
  const { client } = await connect(t, url, { 'x-agent-id': 'agent-retention' })
  const run = async (text: string, key: string) => {
    const res = await client.callTool({ name: 'opencode_execute_task', arguments: { task_description: text, sync: true, idempotency_key: key } }) as CallToolResult
    return res.structuredContent as { task_id: string, status: string }
  }
  const old = await run('say old', 'old-key')
  const recent = await run('say recent', 'recent-key')
  for (const task of [old, recent]) t.equal((await app.tasks.waitForEnd(task.task_id, 120_000)).status, 'completed')
  t.ok(existsSync(app.tasks.logPath(old.task_id)), 'the old task has a log file')

  await app.tasks.reconcile() // the start-up run is over: the next call runs anew
  await app.tasks.store.update(old.task_id, { finished_at: Date.now() - 31 * DAY })
  await app.tasks.reconcile()

  const status = await client.callTool({ name: 'get_task_status', arguments: { task_id: old.task_id } }) as CallToolResult
  t.ok(status.isError, 'the old task is gone')
  t.match((status.content[0] as { text: string }).text, /No task/)
  t.notOk(existsSync(app.tasks.logPath(old.task_id)), 'its log file is deleted')
  t.equal(count(app.taskStore as SqliteTaskStore, 'task_events', old.task_id), 0, 'its events are deleted')
  t.equal(count(app.taskStore as SqliteTaskStore, 'idempotency_keys', old.task_id), 0, 'its idempotency key is deleted')
  t.match(await client.callTool({ name: 'get_task_status', arguments: { task_id: recent.task_id } }), { structuredContent: { status: 'completed' } }, 'the recent task is kept')
  t.ok(existsSync(app.tasks.logPath(recent.task_id)))
})

t.test('TASK_RETENTION_MS=0 keeps ended tasks forever', async (t) => {
  const { app } = await listen(t, { env: { ...BASE_ENV, TASK_RETENTION_MS: '0' } })
  const { task } = await app.tasks.submit({ principal: 'anonymous' }, { task_description: 'say kept' })
  t.equal((await app.tasks.waitForEnd(task.id, 120_000)).status, 'completed')
  await app.tasks.store.update(task.id, { finished_at: Date.now() - 3650 * DAY })
  await app.tasks.reconcile()
  t.ok(await app.tasks.store.get(task.id), 'still there')
})

t.test('IDEMPOTENCY_TTL_MS: an expired key makes a new task, and expired keys are deleted', async (t) => {
  const { app } = await listen(t, { env: { ...BASE_ENV, IDEMPOTENCY_TTL_MS: String(DAY) } })
  const caller = { principal: 'anonymous', agentId: 'agent-ttl' }
  const first = await app.tasks.submit(caller, { task_description: 'say one', idempotency_key: 'k1' })
  t.equal((await app.tasks.submit(caller, { task_description: 'say one', idempotency_key: 'k1' })).task.id, first.task.id, 'within the TTL: the same task')
  const keys = (app.taskStore as SqliteTaskStore).db.prepare('UPDATE idempotency_keys SET created_at = ? WHERE key = ?')
  keys.run(Date.now() - DAY - 1, 'k1')
  const again = await app.tasks.submit(caller, { task_description: 'say one', idempotency_key: 'k1' })
  t.equal(again.existing, false, 'past the TTL: a new task')
  t.not(again.task.id, first.task.id)

  const other = await app.tasks.submit(caller, { task_description: 'say two', idempotency_key: 'k2' })
  await app.tasks.reconcile() // the start-up run is over: the next call runs anew
  keys.run(Date.now() - DAY - 1, 'k2')
  await app.tasks.reconcile()
  const left = (app.taskStore as SqliteTaskStore).db.prepare('SELECT key, task_id FROM idempotency_keys').all()
  t.same(left, [{ key: 'k1', task_id: again.task.id }], 'the expired key k2 is deleted, the live k1 kept')
  t.ok(await app.tasks.store.get(other.task.id), 'its task is not (it is not past TASK_RETENTION_MS)')
  for (const id of [first.task.id, again.task.id, other.task.id]) await app.tasks.waitForEnd(id, 120_000)
})

t.test('read_task_file redacts passed-through secrets, in text and binary files', async (t) => {
  const secret = 's3cr3t-token-for-retention-test'
  const { url } = await listen(t, { env: { ...BASE_ENV, RUNNER_ENV_PASSTHROUGH: 'LOP_TEST_SECRET', LOP_TEST_SECRET: secret } })
  const { client } = await connect(t, url)
  const res = await client.callTool({
    name: 'opencode_execute_task',
    arguments: { task_description: 'say done', sync: true, files: [{ path: 'notes.txt', content: `token=${secret}\n` }, { path: 'blob.bin', content: `\u0000bin ${secret}` }] }
  }) as CallToolResult
  const task = res.structuredContent as { task_id: string, status: string }
  t.equal(task.status, 'completed')
  const read = async (path: string) => (await client.callTool({ name: 'read_task_file', arguments: { task_id: task.task_id, path } }) as CallToolResult).structuredContent as { content: string, encoding: string }
  const text = await read('notes.txt')
  t.equal(text.content, 'token=[redacted]\n')
  const blob = await read('blob.bin')
  t.equal(blob.encoding, 'base64')
  t.equal(Buffer.from(blob.content, 'base64').toString('utf8'), '\u0000bin [redacted]')
})

t.test('readFile stops at MAX_TASK_FILE_SIZE while reading, whatever the stat said', async (t) => {
  const run = `retention-${process.pid}`
  cleanupContainers(t, run)
  const { Id } = await engine.createContainer({ Image: BASE_IMAGE, Cmd: ['true'], Labels: { [TEST_LABEL]: run } })
  const tar = pack()
  tar.entry({ name: 'workspace/big.txt', mode: 0o644 }, 'z'.repeat(10_000))
  tar.entry({ name: 'workspace/small.txt', mode: 0o644 }, 'small')
  tar.finalize()
  await engine.putArchive(Id, '/', tar as never)

  // the file "grew after the stat": the proxy reports it as 100 bytes
  const proxy = new EngineProxy(tempDir(t))
  await proxy.start()
  t.teardown(() => proxy.stop())
  proxy.rewriteHeaders = (method, _path, headers) => {
    const stat = headers['x-docker-container-path-stat']
    if (method !== 'HEAD' || typeof stat !== 'string') return headers
    const parsed = JSON.parse(Buffer.from(stat, 'base64').toString('utf8'))
    return { ...headers, 'x-docker-container-path-stat': Buffer.from(JSON.stringify({ ...parsed, size: Math.min(parsed.size, 100) })).toString('base64') }
  }
  const docker = new DockerEngine({ socketPath: proxy.socketPath })
  await t.rejects(readFile(docker, Id, 'big.txt', 1024), { code: 'too_large', message: /big\.txt.*over MAX_TASK_FILE_SIZE=1024/ })
  t.match(await readFile(docker, Id, 'small.txt', 1024), { content: 'small', size: 5 }, 'a file within the limit is read')
})

/**
 * The task store's contract (issue 15, store seam), one suite run against both stores: SQLite in a
 * temporary DATA_DIR and PostgreSQL in a fresh database (test/helpers/postgres.ts; scripts/postgres.sh
 * starts it). Every call is awaited, so the same lines drive the synchronous SQLite store and the
 * asynchronous PostgreSQL one. Ages are given as times, never waited for.
 */
import pg from 'pg'
import t, { type Test } from 'tap'
import { SqliteLettaOutboxStore, type LettaOutboxStore } from '../services/letta/outbox-store.js'
import { PgLettaOutboxStore } from '../services/letta/pg-outbox-store.js'
import { PgTaskStore, SCHEMA_VERSION } from '../services/tasks/pg-store.js'
import { SqliteTaskStore, type TaskStore } from '../services/tasks/store.js'
import { openStores } from '../services/stores.js'
import type { TaskRecord } from '../services/tasks/types.js'
import { tempDir } from './helpers/app.js'
import { freshDatabase } from './helpers/postgres.js'
import { taskRecord } from './helpers/records.js'

type Store = TaskStore
/** Every migration's number, once each. */
const versions = Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1)
type Outbox = LettaOutboxStore
type Kind = 'sqlite' | 'postgres'

const DAY = 86_400_000
const T0 = 1_750_000_000_000

function record (id: string, fields: Partial<TaskRecord> = {}): TaskRecord {
  return taskRecord(id, { agent_id: 'agent', created_at: T0, ...fields })
}

/** A store of this kind on a place of its own: a data directory, or a database (and a data directory for the replica id). */
async function place (t: Test, kind: Kind): Promise<{ dataDir: string, url: string }> {
  return { dataDir: tempDir(t), url: kind === 'postgres' ? await freshDatabase(t) : '' }
}

/** Opens (again) the store of a place; closed after the test. */
async function open (t: Test, kind: Kind, at: { dataDir: string, url: string }): Promise<{ store: Store, outbox: Outbox }> {
  if (kind === 'postgres') {
    const store = await PgTaskStore.open({ url: at.url, poolSize: 10, dataDir: at.dataDir })
    t.teardown(() => store.close())
    return { store, outbox: new PgLettaOutboxStore(store.pool) }
  }
  const store = new SqliteTaskStore(at.dataDir)
  t.teardown(() => store.close())
  return { store: store as unknown as Store, outbox: new SqliteLettaOutboxStore(store.db) as unknown as Outbox }
}

async function fresh (t: Test, kind: Kind): Promise<{ store: Store, outbox: Outbox }> {
  return open(t, kind, await place(t, kind))
}

const ids = (tasks: TaskRecord[]) => tasks.map((task) => task.id)

for (const kind of ['sqlite', 'postgres'] as const) {
  t.test(`${kind}: insert, get, update and status read back what was written`, async (t) => {
    const { store } = await fresh(t, kind)
    const task = record('a', {
      output: 'out',
      seed: [{ path: 'a.txt', content: 'y' }],
      repository: { url: 'https://example.invalid/r.git', branch: 'main' },
      pending: ['next'],
      observers: ['o1'],
      limits: { max_cost: 1.5, max_tokens: null, max_steps: 3 },
      egress_allow: ['api.example.com']
    })
    await store.insert(task)
    const got = await store.get('a')
    t.has(got, { ...task, letta: null }, 'every field back, with its type')
    t.equal(typeof got?.created_at, 'number', 'a time in ms is a number')
    t.equal(got?.remaining_ms, null)
    t.equal(await store.get('missing'), undefined)

    await store.update('a', { output: 'more', output_truncated: true, diff: 'diff --git', result: { answer: 'ok', cost: 0.25 } as unknown as TaskRecord['result'], turns: 2, resumed_at: T0 + 5 })
    t.has(await store.get('a'), { output: 'more', output_truncated: true, diff: 'diff --git', result: { answer: 'ok', cost: 0.25 }, turns: 2, resumed_at: T0 + 5, seed: task.seed })
    t.equal(await store.status('a'), 'queued')
    t.equal(await store.status('missing'), undefined)

    const push = { branch: 'lop/a', commit: 'abc123', url: null, error: null, message: null, at: T0 }
    const egress = { bytes_out: 10, bytes_in: 2_000, connections: 1, denied: 0, hosts: { 'api.example.com:443': 1 } }
    await store.update('a', { push, egress })
    t.has(await store.get('a'), { push, egress }, 'the push and egress columns (JSON) read back')

    const listed = (await store.list({ principal: 'p', limit: 10, offset: 0 })).tasks[0]
    t.has(listed, { id: 'a', output: null, seed: null, diff: '', output_truncated: true }, 'a list leaves the large columns out')
    await store.update('a', { diff: null })
    t.equal((await store.list({ principal: 'p', limit: 10, offset: 0 })).tasks[0].diff, null, 'no diff: null in a list')
  })

  t.test(`${kind}: setStatus is a compare and set`, async (t) => {
    const { store } = await fresh(t, kind)
    await store.insert(record('a'))
    await store.setStatus('a', 'queued', 'running', { started_at: T0 + 1 })
    t.has(await store.get('a'), { status: 'running', started_at: T0 + 1 })
    await t.rejects(async () => store.setStatus('a', 'queued', 'failed', { error: 'late', output: 'x' }), /status is no longer queued/)
    t.has(await store.get('a'), { status: 'running', error: null, output: null }, 'the refused write left everything as it was')
  })

  t.test(`${kind}: list pages, filters and totals`, async (t) => {
    const { store } = await fresh(t, kind)
    for (let i = 0; i < 7; i++) {
      await store.insert(record(`t${i}`, { created_at: T0 + i, agent_id: i % 2 ? 'odd' : 'even', status: i < 3 ? 'completed' : 'queued' }))
    }
    await store.insert(record('other', { principal: 'q' }))
    await store.insert(record('tie', { created_at: T0 + 6 }))
    const all = await store.list({ principal: 'p', limit: 100, offset: 0 })
    t.same(ids(all.tasks), ['t6', 'tie', 't5', 't4', 't3', 't2', 't1', 't0'], 'newest first, then by id')
    t.equal(all.total, 8)
    const page = await store.list({ principal: 'p', limit: 3, offset: 2 })
    t.same(ids(page.tasks), ['t5', 't4', 't3'])
    t.equal(page.total, 8, 'the total counts every page')
    const done = await store.list({ principal: 'p', status: 'completed', limit: 2, offset: 0 })
    t.same([ids(done.tasks), done.total], [['t2', 't1'], 3])
    const odd = await store.list({ principal: 'p', agent_id: 'odd', status: 'queued', limit: 10, offset: 0 })
    t.same([ids(odd.tasks), odd.total], [['t5', 't3'], 2])
    t.same(await store.list({ principal: 'nobody', limit: 10, offset: 0 }), { tasks: [], total: 0 })
  })

  t.test(`${kind}: costTotal sums spent, else the result's cost`, async (t) => {
    const { store } = await fresh(t, kind)
    await store.insert(record('a', { spent: { cost: 1.25, tokens: 10, steps: 1 } }))
    await store.insert(record('b', { status: 'completed', result: { cost: 0.5 } as unknown as TaskRecord['result'] }))
    await store.insert(record('c', { status: 'completed', spent: { cost: 2, tokens: 1, steps: 1 }, result: { cost: 9 } as unknown as TaskRecord['result'] }))
    await store.insert(record('d'))
    await store.insert(record('e', { principal: 'q', spent: { cost: 100, tokens: 1, steps: 1 } }))
    t.equal(await store.costTotal({ principal: 'p' }), 3.75)
    t.equal(await store.costTotal({ principal: 'p', status: 'completed' }), 2.5)
    t.equal(await store.costTotal({ principal: 'p', agent_id: 'none' }), 0)
  })

  t.test(`${kind}: events are numbered per task, read in order, with offsets and counts`, async (t) => {
    const { store } = await fresh(t, kind)
    await store.insert(record('a'))
    await store.insert(record('b'))
    await store.addEvents('a', [{ type: 'one', data: { n: 1 } }, { type: 'two', data: { n: 2, z: 'x', a: [1] } }, { type: 'three', data: {} }])
    await store.addEvents('a', [])
    const fourth = await store.addEvent('a', 'four', { n: 4 })
    t.has(fourth, { seq: 4, type: 'four', data: { n: 4 } })
    t.has(await store.addEvent('b', 'first'), { seq: 1, data: {} }, 'numbers are per task')
    t.same((await store.events('a', 0, 10)).map((e) => [e.seq, e.type]), [[1, 'one'], [2, 'two'], [3, 'three'], [4, 'four']])
    t.same((await store.events('a', 0, 10))[1].data, { n: 2, z: 'x', a: [1] }, 'data back as written')
    t.same((await store.events('a', 1, 2)).map((e) => e.seq), [2, 3], 'after a seq, limited')
    t.same((await store.events('a', 0, 2, 'desc')).map((e) => e.seq), [4, 3], 'newest first')
    t.same((await store.events('a', 0, 2, 'asc', 1)).map((e) => e.seq), [2, 3], 'skipping an offset')
    t.same((await store.events('a', 0, 2, 'desc', 3)).map((e) => e.seq), [1])
    t.equal(await store.eventCount('a'), 4)
    t.equal(await store.eventCount('a', 2), 2)
    t.equal(await store.eventCount('missing'), 0)
    await t.rejects(async () => store.addEvent('missing', 'x'), 'no events for a task that does not exist')
  })

  t.test(`${kind}: 50 concurrent addEvent calls get 50 distinct numbers`, async (t) => {
    const at = await place(t, kind)
    const { store } = await open(t, kind, at)
    const { store: other } = await open(t, kind, at)
    await store.insert(record('a'))
    const written = await Promise.all(Array.from({ length: 50 }, (_, i) => (i % 2 ? other : store).addEvent('a', 'e', { i })))
    t.same(written.map((e) => e.seq).sort((x, y) => x - y), Array.from({ length: 50 }, (_, i) => i + 1), 'two stores writing: 1 to 50, each once')
    t.equal(await store.eventCount('a'), 50)
  })

  t.test(`${kind}: claimIdempotent gives one task to concurrent duplicates, and a new one past the TTL`, async (t) => {
    const at = await place(t, kind)
    const { store } = await open(t, kind, at)
    const { store: other } = await open(t, kind, at)
    const scope = { principal: 'p', agent_id: 'agent', key: 'k1', args_hash: 'h1', ttlMs: DAY }
    let made = 0
    const create = () => record(`task-${++made}`, { idempotency_key: 'k1' })
    const claims = await Promise.all(Array.from({ length: 10 }, (_, i) => (i % 2 ? other : store).claimIdempotent(scope, create)))
    const first = claims.find((c) => !c.existing)
    t.equal(claims.filter((c) => !c.existing).length, 1, 'one claim made the task')
    t.same(new Set(claims.map((c) => c.task.id)), new Set([first?.task.id]), 'every claim names it')
    t.same(new Set(claims.map((c) => c.args_hash)), new Set(['h1']))
    t.equal((await store.list({ principal: 'p', limit: 100, offset: 0 })).total, 1, 'one task stored (a lost race left none behind)')

    const other2 = await store.claimIdempotent({ ...scope, args_hash: 'h2' }, create)
    t.same([other2.existing, other2.task.id, other2.args_hash], [true, first?.task.id, 'h1'], 'different arguments: the first hash is returned')

    const expired = await store.claimIdempotent({ ...scope, args_hash: 'h3', ttlMs: 0 }, create)
    t.equal(expired.existing, false, 'past the TTL the key makes a new task')
    t.not(expired.task.id, first?.task.id)
    const again = await other.claimIdempotent(scope, create)
    t.same([again.existing, again.task.id, again.args_hash], [true, expired.task.id, 'h3'], 'the key now names the new task')
    t.has(await store.get(expired.task.id), { idempotency_key: 'k1', status: 'queued' })
  })

  t.test(`${kind}: deleteEnded keeps tasks whose Letta block exists, and cascades the rest`, async (t) => {
    const { store, outbox } = await fresh(t, kind)
    const ended = { status: 'completed' as const, finished_at: T0, output: 'o', diff: 'd' }
    await store.insert(record('plain', ended))
    await store.insert(record('block', { ...ended, finished_at: T0 - 2 }))
    await store.insert(record('gone', { ...ended, finished_at: T0 - 1 }))
    await store.insert(record('late', { ...ended, finished_at: T0 + DAY }))
    await store.insert(record('running', { status: 'running', finished_at: T0 }))
    await store.addEvent('plain', 'x')
    await store.claimIdempotent({ principal: 'p', agent_id: 'agent', key: 'k', args_hash: 'h', ttlMs: DAY }, () => record('keyed', ended))
    for (const id of ['block', 'gone']) await outbox.track(id, 'agent')
    await outbox.update('block', { block_id: 'b1' })
    await outbox.update('gone', { block_id: 'b2', deleted: 1 })

    t.same(await store.deleteEnded(T0, 1), ['gone'], 'oldest first, at most the limit')
    t.same((await store.deleteEnded(T0)).sort(), ['keyed', 'plain'])
    t.same(await store.deleteEnded(T0), [])
    t.same(await Promise.all(['plain', 'gone', 'keyed'].map((id) => store.get(id))), [undefined, undefined, undefined])
    t.equal(await store.eventCount('plain'), 0, 'its events went with it')
    t.equal(await outbox.get('gone'), undefined, 'its outbox row went with it')
    t.ok(await store.get('block'), 'a task whose block exists is kept')
    t.ok(await store.get('late'))
    t.ok(await store.get('running'))
    const made = await store.claimIdempotent({ principal: 'p', agent_id: 'agent', key: 'k', args_hash: 'h', ttlMs: DAY }, () => record('keyed2'))
    t.same([made.existing, made.task.id], [false, 'keyed2'], 'its idempotency key went with it')
  })

  t.test(`${kind}: deleteExpiredKeys deletes the keys created at or before a time`, async (t) => {
    const { store } = await fresh(t, kind)
    await store.claimIdempotent({ principal: 'p', agent_id: '', key: 'k', args_hash: 'h', ttlMs: DAY }, () => record('a'))
    t.equal(await store.deleteExpiredKeys(Date.now() - DAY), 0)
    t.equal(await store.deleteExpiredKeys(Date.now() + 1), 1)
    const again = await store.claimIdempotent({ principal: 'p', agent_id: '', key: 'k', args_hash: 'h', ttlMs: DAY }, () => record('b'))
    t.same([again.existing, again.task.id], [false, 'b'])
    t.ok(await store.get('a'), 'the task stays')
  })

  t.test(`${kind}: spending counts a step once, per principal or agent, within the window`, async (t) => {
    const { store } = await fresh(t, kind)
    const step = { task_id: 'a', principal: 'p', agent_id: 'x', cost: 0.5, tokens: 100 }
    await store.addSpend({ ...step, step: 1, at: T0 + 1 })
    await store.addSpend({ ...step, step: 1, at: T0 + 1 })
    await store.addSpend({ ...step, step: 2, at: T0 + 2, cost: 0.25, tokens: 3_000_000_000 })
    await store.addSpend({ ...step, step: 3, at: T0 + 3, cost: 0, tokens: 7 })
    await store.addSpend({ ...step, task_id: 'b', step: 1, at: T0 + 4, agent_id: 'y' })
    await store.addSpend({ ...step, task_id: 'c', step: 1, at: T0 - 10, principal: 'q' })
    t.same(await store.spending('p', T0), { cost: 1.25, tokens: 3_000_000_207, steps: [{ at: T0 + 1, cost: 0.5 }, { at: T0 + 2, cost: 0.25 }, { at: T0 + 4, cost: 0.5 }] })
    t.same(await store.spending('p', T0, 'y'), { cost: 0.5, tokens: 100, steps: [{ at: T0 + 4, cost: 0.5 }] })
    t.same(await store.spending('p', T0 + 2), { cost: 0.5, tokens: 107, steps: [{ at: T0 + 4, cost: 0.5 }] }, 'after the window start only')
    t.equal(await store.deleteSpendBefore(T0 + 2), 3)
    t.equal((await store.spending('p', 0)).tokens, 107)
  })

  t.test(`${kind}: countByStatus and withStatus`, async (t) => {
    const { store } = await fresh(t, kind)
    await store.insert(record('q2', { created_at: T0 + 2 }))
    await store.insert(record('q1', { created_at: T0 + 1 }))
    await store.insert(record('r', { status: 'running', output: 'big' }))
    await store.insert(record('c', { status: 'completed' }))
    t.same(await store.countByStatus(), { queued: 2, running: 1, completed: 1 })
    const back = await store.withStatus('queued', 'running')
    t.same(ids(back), ['r', 'q1', 'q2'], 'oldest first')
    t.equal(back[0].output, 'big', 'full records')
    t.same(await store.withStatus('paused'), [])
  })

  t.test(`${kind}: opening the store again migrates nothing and keeps data and owner`, async (t) => {
    const at = await place(t, kind)
    const { store } = await open(t, kind, at)
    await store.insert(record('a'))
    const { store: again } = await open(t, kind, at)
    t.ok(await again.get('a'))
    t.equal(again.owner, store.owner, 'the owner is kept')
    t.match(store.owner, /^[0-9a-f-]{36}$/)
    if (kind === 'postgres') {
      const { store: replica } = await open(t, kind, { ...at, dataDir: tempDir(t) })
      t.not(replica.owner, store.owner, 'another replica (another DATA_DIR) on the same database has its own owner')
      const { rows } = await (store as PgTaskStore).pool.query('SELECT version FROM schema_migrations ORDER BY version')
      t.same(rows.map((r) => r.version), versions, 'each migration recorded once')
    }
  })

  t.test(`${kind}: the Letta outbox`, async (t) => {
    const { store, outbox } = await fresh(t, kind)
    const now = T0 + 10 * DAY
    await store.insert(record('a', { status: 'running' }))
    await store.insert(record('b', { status: 'completed', finished_at: now - 1000, turns: 1 }))
    await outbox.track('a', 'agent')
    await outbox.track('a', 'other')
    await outbox.track('b', 'agent')
    t.has(await outbox.get('a'), { task_id: 'a', agent_id: 'agent', block_id: null, attached: 0, dirty: 1, notify: 'none', notified_turn: 0, attempts: 0, next_attempt_at: 0 }, 'tracked once, with the defaults')
    t.equal(await outbox.get('missing'), undefined)
    t.equal(await outbox.pending(), 2, 'dirty rows are pending')
    t.same((await outbox.due(now, 10, 60_000)).map((r) => r.task_id).sort(), ['a', 'b'])

    // written, attached, clean, notified: nothing due until the detach delay has passed
    const done = { block_id: 'blk', attached: 1, dirty: 0, notify: 'sent' as const, notified_turn: 1 }
    await outbox.update('a', done)
    await outbox.update('b', done)
    t.equal(await outbox.pending(), 0)
    t.same(await outbox.due(now, 10, 60_000), [])
    t.same((await outbox.due(now, 10, 500)).map((r) => r.task_id), ['b'], 'an ended task\'s block is due for detach')
    t.has(await store.get('b'), { letta: { block_id: 'blk', attached: true, notified: true, error: null } }, 'a task\'s view has its Letta state')

    await outbox.markDirty('a')
    t.has(await outbox.get('a'), { dirty: 1 })
    t.equal(await outbox.pending(), 1)

    // backoff: not due until retryNow
    await outbox.update('a', { next_attempt_at: now + DAY, attempts: 2, error: 'down' })
    t.same((await outbox.due(now, 10, 60_000)).map((r) => r.task_id), [])
    await outbox.retryNow()
    t.same((await outbox.due(now, 10, 60_000)).map((r) => r.task_id), ['a'])
    t.equal((await outbox.due(now, 0, 60_000)).length, 0, 'the limit holds')

    // catchUp: an ended task with a later turn than the one notified becomes pending again; a running one does not
    await outbox.update('a', { dirty: 0, notify: 'none' })
    await store.update('b', { turns: 2 })
    await outbox.catchUp()
    t.has(await outbox.get('b'), { notify: 'pending', dirty: 1 })
    t.has(await outbox.get('a'), { notify: 'none', dirty: 0 }, 'a running task is not caught up')
    await outbox.update('b', { deleted: 1 })
    t.equal(await outbox.pending(), 0, 'deleted rows are done')
  })
}

t.test('postgres: replicas starting together on one database migrate once', async (t) => {
  const url = await freshDatabase(t)
  const stores = await Promise.all(Array.from({ length: 4 }, () => PgTaskStore.open({ url, poolSize: 2, dataDir: tempDir(t) })))
  t.teardown(() => Promise.all(stores.map((s) => s.close())))
  const { rows } = await stores[0].pool.query('SELECT version FROM schema_migrations ORDER BY version')
  t.same(rows.map((r) => r.version), versions, 'each migration recorded once')
  await stores[1].insert(record('a'))
  t.ok(await stores[3].get('a'), 'every replica sees the others\' writes')
  t.equal(new Set(stores.map((s) => s.owner)).size, 4, 'one owner per replica')
  t.equal(pg.types.getTypeParser(pg.types.builtins.INT8)('5'), '5', 'BIGINT is parsed as a number on the stores\' pools only, not globally')
})

t.test('openStores: SQLite without DATABASE_URL, PostgreSQL with it; the location has no password', async (t) => {
  const sqlite = await openStores({ DATA_DIR: tempDir(t), DATABASE_URL: '', DATABASE_POOL_SIZE: 10 })
  t.teardown(() => sqlite.tasks.close())
  t.ok(sqlite.tasks instanceof SqliteTaskStore)
  t.ok(sqlite.outbox instanceof SqliteLettaOutboxStore)
  t.match(sqlite.location, /^sqlite:.*tasks\.db$/)

  const url = await freshDatabase(t)
  const postgres = await openStores({ DATA_DIR: tempDir(t), DATABASE_URL: url, DATABASE_POOL_SIZE: 3 })
  t.teardown(() => postgres.tasks.close())
  t.ok(postgres.tasks instanceof PgTaskStore)
  t.ok(postgres.outbox instanceof PgLettaOutboxStore)
  t.equal((postgres.tasks as PgTaskStore).pool.options.max, 3, 'the pool is DATABASE_POOL_SIZE')
  t.notMatch(postgres.location, `:${new URL(url).password}@`)
  t.match(postgres.location, /^postgres:\/\/lop:\*\*\*@127\.0\.0\.1:5432\/lop_t_/)
})

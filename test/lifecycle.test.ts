/**
 * The task lifecycle (issue 15, first step): the table of allowed status transitions, and the one
 * guarded transition every status write goes through, on the real SQLite store: an illegal one
 * throws and writes nothing; the store's compare and set refuses a write from a stale status.
 */
import t from 'tap'
import { allowed, IllegalTransitionError, transition, turnEnd } from '../services/tasks/lifecycle.js'
import type { TurnOutcome } from '../services/tasks/run.js'
import { SqliteTaskStore } from '../services/tasks/store.js'
import { TASK_STATUSES, type TaskRecord, type TaskStatus } from '../services/tasks/types.js'
import { tempDir } from './helpers/app.js'
import { taskRecord } from './helpers/records.js'

/** Every legal move, spelled out: a change to the table must change this list. */
const LEGAL = [
  'queued→running', 'queued→cancelled', 'queued→failed', 'queued→queued',
  'running→running', 'running→paused', 'running→queued', 'running→completed', 'running→failed', 'running→timeout', 'running→cancelled',
  'paused→paused', 'paused→running', 'paused→completed', 'paused→failed', 'paused→timeout', 'paused→cancelled',
  'completed→queued', 'failed→queued', 'timeout→queued'
]

function task (id: string, status: TaskStatus): TaskRecord {
  return taskRecord(id, { status, timeout_ms: 1000 })
}

t.test('the table: exactly the legal moves are allowed', async (t) => {
  const legal: string[] = []
  for (const from of TASK_STATUSES) for (const to of TASK_STATUSES) if (allowed(from, to)) legal.push(`${from}→${to}`)
  t.same(legal.sort(), [...LEGAL].sort())
  t.notOk(allowed('cancelled', 'queued'), 'a cancelled task never runs again')
  t.notOk(allowed('completed', 'completed'), 'a terminal status is written once')
  t.notOk(allowed('queued', 'completed'), 'a task completes only after it ran')
})

t.test('transition: writes the status with its fields; an illegal one rejects and writes nothing', async (t) => {
  const store = new SqliteTaskStore(tempDir(t))
  t.teardown(() => store.close())
  await store.insert(task('task_a', 'queued'))
  t.equal(await transition(store, 'task_a', 'running', { turns: 1, started_at: 5 }), 'queued', 'resolves with the status it left')
  t.match(await store.get('task_a'), { status: 'running', turns: 1, started_at: 5 })
  await transition(store, 'task_a', 'completed', { finished_at: 6, exit_code: 0, reason: 'exit' })
  t.match(await store.get('task_a'), { status: 'completed', finished_at: 6, exit_code: 0 })
  await t.rejects(transition(store, 'task_a', 'running', { turns: 2 }), IllegalTransitionError, 'completed → running skips the queue')
  t.match(await store.get('task_a'), { status: 'completed', turns: 1 }, 'nothing written')
  await transition(store, 'task_a', 'queued', { pending: ['more'], finished_at: null })
  t.match(await store.get('task_a'), { status: 'queued', pending: ['more'], finished_at: null }, 'a follow-up message re-queues an ended task')

  await store.insert(task('task_b', 'cancelled'))
  const err = await transition(store, 'task_b', 'queued').catch((e: unknown) => e)
  t.match(err, { name: 'IllegalTransitionError', taskId: 'task_b', from: 'cancelled', to: 'queued' })
  await t.rejects(transition(store, 'task_none', 'running'), IllegalTransitionError, 'no task: no transition')
})

t.test('setStatus is a compare and set: a write from a stale status is refused', async (t) => {
  const store = new SqliteTaskStore(tempDir(t))
  t.teardown(() => store.close())
  await store.insert(task('task_c', 'running'))
  await t.rejects(store.setStatus('task_c', 'queued', 'running', { turns: 9 }), /no longer queued/)
  t.match(await store.get('task_c'), { status: 'running', turns: 0 }, 'nothing written')
  await store.setStatus('task_c', 'running', 'paused', { remaining_ms: 10 })
  t.match(await store.get('task_c'), { status: 'paused', remaining_ms: 10 })
})

t.test('transition: a write that comes between its read and its write is not overwritten', async (t) => {
  const store = new SqliteTaskStore(tempDir(t))
  t.teardown(() => store.close())
  await store.insert(task('task_d', 'running'))
  // another writer ends the task after transition() read "running" and before its write
  const status = store.status.bind(store)
  store.status = async (id) => {
    const read = await status(id)
    await store.setStatus(id, 'running', 'completed', { finished_at: 7 })
    return read
  }
  await t.rejects(transition(store, 'task_d', 'paused', { remaining_ms: 5 }), /no longer running/, 'the compare and set refuses the stale write')
  t.match(await store.get('task_d'), { status: 'completed', finished_at: 7, remaining_ms: null }, 'the end that came first stands')
})

t.test('turnEnd: a turn\'s end as the task\'s status and error', async (t) => {
  const config = { RUNNER_MEMORY_LIMIT: '64m', SHUTDOWN_GRACE_MS: 5000, RUNNER_IDLE_TIMEOUT_MS: 900, RUNNER_IMAGE: 'img:1' }
  const end = (reason: TurnOutcome['reason'], exitCode: number | null, output = '', engineError?: string) =>
    turnEnd({ reason, exitCode, engineError, capture: { output: { text: () => output } } as unknown as TurnOutcome['capture'] }, 1234, config)
  t.same(end('exit', 0), { status: 'completed', error: null })
  t.same(end('exit', 3), { status: 'failed', error: 'exited with code 3' })
  t.match(end('exit', 127, 'sh: opencode: not found'), { status: 'failed', error: /img:1 has no `opencode`/ })
  t.same(end('exit', 127, 'something else'), { status: 'failed', error: 'exited with code 127' })
  t.same(end('timeout', null), { status: 'timeout', error: 'timed out after 1234 ms; the container was stopped' })
  t.same(end('cancelled', 137), { status: 'cancelled', error: null })
  t.match(end('oom', 137), { status: 'failed', error: /RUNNER_MEMORY_LIMIT=64m/ })
  t.match(end('stalled', 143), { status: 'failed', error: /no output for 900 ms/ })
  t.match(end('interrupted', 143), { status: 'failed', error: /SHUTDOWN_GRACE_MS=5000/ })
  t.same(end('engine_error', null, '', 'socket hang up'), { status: 'failed', error: 'socket hang up' })
  const budget = turnEnd({ reason: 'budget', exitCode: 0, detail: 'budget: stopped after step 2: tokens 225 > max_tokens 150', capture: { output: { text: () => '' } } as unknown as TurnOutcome['capture'] }, 1234, config)
  t.same(budget, { status: 'failed', error: 'budget: stopped after step 2: tokens 225 > max_tokens 150' }, 'a budget stop fails the task with its numbers, whatever the exit code')
})

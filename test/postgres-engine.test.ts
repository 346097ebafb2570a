/**
 * The task service on PostgreSQL: engine-level test files run again with TEST_STORE=postgres, each
 * app on a database of its own (test/helpers/postgres.ts `storeEnv`). Submit, idempotency, the queue
 * and its limits, controls, races, restart recovery and the Letta outbox: the same assertions hold
 * on either store (PostgreSQL is cluster mode: a cluster of one replica here). The store contract itself is test/store.test.ts; several replicas, cluster.test.ts.
 */
import t from 'tap'

/** The files, and the subtests left out on the second store (resource limits: nothing of the store in them). */
const FILES: Array<{ file: string, skip?: string }> = [
  { file: 'tasks', skip: 'fork bomb|100 MB of output|OOM kill|container spec carries' },
  { file: 'races' },
  { file: 'recovery' },
  { file: 'letta' }
]

for (const { file, skip } of FILES) {
  t.test(`${file}.test.ts on PostgreSQL`, async (t) => {
    const filter = skip ? { TAP_GREP: skip, TAP_INVERT: '1' } : {}
    await t.spawn(process.execPath, ['--import=tsx', `test/${file}.test.ts`], { env: { ...process.env, TEST_STORE: 'postgres', ...filter } })
  })
}

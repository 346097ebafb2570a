/**
 * The task service on PostgreSQL: the engine-level test files run again with TEST_STORE=postgres,
 * each app on a database of its own (test/helpers/postgres.ts `storeEnv`). Submit, idempotency,
 * queue and turns, controls, races, restart recovery, drain and the Letta outbox: the same
 * assertions hold on either store. The store contract itself is test/store.test.ts.
 */
import t from 'tap'

const FILES = ['tasks', 'races', 'recovery', 'letta', 'operations']

for (const file of FILES) {
  t.test(`${file}.test.ts on PostgreSQL`, async (t) => {
    await t.spawn(process.execPath, ['--import=tsx', `test/${file}.test.ts`], { env: { ...process.env, TEST_STORE: 'postgres' } })
  })
}

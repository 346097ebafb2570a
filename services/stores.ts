/**
 * The task store and the Letta outbox store for the configured backend: SQLite in DATA_DIR
 * (DATABASE_URL empty, the default) or PostgreSQL (DATABASE_URL, cluster mode).
 */
import type { Config } from './config.js'
import { redactUrl } from './config.js'
import { PgLettaOutboxStore } from './letta/pg-outbox-store.js'
import { SqliteLettaOutboxStore, type LettaOutboxStore } from './letta/outbox-store.js'
import { PgTaskStore } from './tasks/pg-store.js'
import { SqliteTaskStore, type TaskStore } from './tasks/store.js'

export interface Stores {
  tasks: TaskStore
  outbox: LettaOutboxStore
  /** Where the tasks are kept, for the start-up log line (no password). */
  location: string
}

export async function openStores (config: Pick<Config, 'DATA_DIR' | 'DATABASE_URL' | 'DATABASE_POOL_SIZE'>): Promise<Stores> {
  if (config.DATABASE_URL) {
    const tasks = await PgTaskStore.open({ url: config.DATABASE_URL, poolSize: config.DATABASE_POOL_SIZE, dataDir: config.DATA_DIR })
    return { tasks, outbox: new PgLettaOutboxStore(tasks.pool, tasks.owner), location: redactUrl(config.DATABASE_URL) }
  }
  const tasks = new SqliteTaskStore(config.DATA_DIR)
  return { tasks, outbox: new SqliteLettaOutboxStore(tasks.db), location: `sqlite:${config.DATA_DIR}/tasks.db` }
}

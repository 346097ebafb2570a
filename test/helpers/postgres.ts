/**
 * PostgreSQL for the store tests: a fresh database per test, made from TEST_DATABASE_URL (default:
 * the role and database scripts/postgres.sh makes) and dropped in teardown. An unreachable server
 * fails the test, naming the script that installs and starts it.
 */
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import pg from 'pg'
import type { Test } from 'tap'

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL || 'postgres://lop:lop@127.0.0.1:5432/lop_test'

async function admin<T> (fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: TEST_DATABASE_URL, connectionTimeoutMillis: 30_000 })
  try {
    await c.connect()
  } catch (err) {
    throw new Error(`PostgreSQL is unreachable at ${new URL(TEST_DATABASE_URL).host} (${(err as Error).message}): run scripts/postgres.sh (as root) to install and start it, or set TEST_DATABASE_URL`)
  }
  try {
    return await fn(c)
  } finally {
    await c.end()
  }
}

/** The URL of a new, empty database (its owner: the test role), dropped after the test. */
export async function freshDatabase (t: Test): Promise<string> {
  const name = `lop_t_${randomBytes(6).toString('hex')}`
  await admin((c) => c.query(`CREATE DATABASE ${name}`))
  t.teardown(() => admin((c) => c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)))
  const url = new URL(TEST_DATABASE_URL)
  url.pathname = `/${name}`
  return url.toString()
}

/** The store of the engine-level tests: SQLite (the default), or PostgreSQL with TEST_STORE=postgres. */
export const TEST_STORE = process.env.TEST_STORE === 'postgres' ? 'postgres' : 'sqlite'

const byDataDir = new Map<string, string>()
/**
 * The environment that selects the test store for an app on `dataDir`: nothing for SQLite; with
 * TEST_STORE=postgres a fresh database (dropped when `t` ends), the same one for every app a test
 * starts on the same data directory (a restart sees its tasks again).
 */
export async function storeEnv (t: Test, dataDir?: string): Promise<Record<string, string>> {
  if (TEST_STORE === 'sqlite') return {}
  let url = dataDir ? byDataDir.get(dataDir) : undefined
  if (!url) {
    url = await freshDatabase(t)
    if (dataDir) {
      byDataDir.set(dataDir, url)
      t.teardown(() => { byDataDir.delete(dataDir) })
    }
  }
  return { DATABASE_URL: url }
}

/**
 * A TCP relay on loopback in front of the test server: `url` is `databaseUrl` through it. `cut()`
 * closes it and breaks every connection through it (the database is gone for its clients: a
 * restart, a partition); `restore()` listens again on the same port.
 */
export async function databaseRelay (t: Test, databaseUrl: string): Promise<{ url: string, cut: () => Promise<void>, restore: () => Promise<void> }> {
  const target = new URL(databaseUrl)
  const sockets = new Set<net.Socket>()
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 5432), target.hostname)
    for (const s of [client, upstream]) {
      sockets.add(s)
      s.on('error', () => {})
      s.on('close', () => { sockets.delete(s); client.destroy(); upstream.destroy() })
    }
    client.pipe(upstream).pipe(client)
  })
  const open = (port = 0) => new Promise<number>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => { server.off('error', reject); resolve((server.address() as net.AddressInfo).port) })
  })
  const port = await open()
  const cut = async () => {
    const closed = new Promise<void>((resolve) => server.close(() => resolve()))
    for (const s of sockets) s.destroy()
    await closed
  }
  t.teardown(() => { if (server.listening) return cut() })
  const url = new URL(databaseUrl)
  url.host = `127.0.0.1:${port}`
  return { url: url.toString(), cut, restore: async () => { await open(port) } }
}

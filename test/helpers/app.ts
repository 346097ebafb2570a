/** Test helpers: build the real app (inject), or listen on a free port for real HTTP clients. */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { Test } from 'tap'
import app, { type AppOptions } from '../../app.js'
import { removeOwned } from './docker.js'
import { storeEnv } from './postgres.js'

export interface BuildOptions extends Omit<AppOptions, 'env'> {
  env?: Record<string, string>
  /** Fastify's options (default: no logger). */
  server?: FastifyServerOptions
}

/** A temporary directory removed when the test ends. */
export function tempDir (t: Test, prefix = 'lop-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

/** The app with the given environment only (process.env and .env are not read), closed after the test. */
export async function build (t: Test, opts: BuildOptions = {}): Promise<FastifyInstance> {
  const { server, ...appOpts } = opts
  // a busy machine (or a fresh PostgreSQL database being migrated) may take longer than the default 10 s to start
  const fastify = Fastify({ logger: false, pluginTimeout: 60_000, ...server })
  const dataDir = mkdtempSync(join(tmpdir(), 'lop-data-'))
  // no drain wait at teardown unless a test asks for one; no load shedding unless a test asks for it
  // (a busy CI machine delays the event loop past the default threshold and would see 503s)
  // TEST_STORE=postgres: the same tests on a database of their own (registered first, dropped last)
  const database = opts.env?.DATABASE_URL ? {} : await storeEnv(t, opts.env?.DATA_DIR)
  const env = { DATA_DIR: dataDir, SHUTDOWN_GRACE_MS: '0', SHED_EVENT_LOOP_DELAY_MS: '0', ...database, ...opts.env }
  await fastify.register(app, { ...appOpts, env, envFile: false })
  t.teardown(async () => {
    await fastify.close()
    rmSync(dataDir, { recursive: true, force: true })
    await removeOwned(fastify.tasks.owner)
  })
  await fastify.ready()
  return fastify
}

/** The app listening on 127.0.0.1 and a free port; returns its base URL. */
export async function listen (t: Test, opts: BuildOptions = {}): Promise<{ app: FastifyInstance, url: string }> {
  const fastify = await build(t, opts)
  await fastify.listen({ host: '127.0.0.1', port: 0 })
  const address = fastify.server.address()
  if (!address || typeof address === 'string') throw new Error('no TCP address')
  return { app: fastify, url: `http://127.0.0.1:${address.port}` }
}

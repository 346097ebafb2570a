/** The entry point as a user runs it: `npm start` in a directory with no .env. */
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { tempDir } from './helpers/app.js'
import { waitFor } from './helpers/docker.js'
import { freePort, healthy, startServer as start } from './helpers/server.js'

t.test('starts with no .env, answers /health, exits 0 on SIGTERM', async (t) => {
  const cwd = tempDir(t)
  const port = await freePort()
  const proc = start(cwd, { MCP_PORT: String(port), DATA_DIR: cwd })
  t.teardown(() => { proc.child.kill('SIGKILL') })
  const body = await healthy(port)
  t.match(body, { status: 'healthy', docker: { reachable: true }, security: { localhost_binding: true } })
  proc.child.kill('SIGTERM')
  t.equal(await proc.exited, 0, 'graceful exit')
  const lines = proc.output().stdout.trim().split('\n').map((l) => JSON.parse(l) as { msg: string })
  t.ok(lines.some((l) => l.msg.startsWith('Server listening at http://127.0.0.1:')), 'JSON logs, bound to loopback by default')
})

t.test('a bad value stops start-up with one clear line and exit code 1', async (t) => {
  const cwd = tempDir(t)
  const proc = start(cwd, { MAX_CONCURRENT_TASKS: '0', DATA_DIR: cwd })
  t.equal(await proc.exited, 1)
  t.equal(proc.output().stderr.trim(), 'Invalid configuration: MAX_CONCURRENT_TASKS="0": expected an integer from 1 to 64')
})

t.test('an open bind without a token is refused with the fix', async (t) => {
  const cwd = tempDir(t)
  const proc = start(cwd, { MCP_HOST: '0.0.0.0', DATA_DIR: cwd })
  t.equal(await proc.exited, 1)
  t.match(proc.output().stderr.trim(), /^Refusing to listen on 0\.0\.0\.0 without authentication: set MCP_AUTH_TOKENS=principal:token \(generate a token with: openssl rand -hex 32\)/)
})

t.test('secrets from NAME_FILE (Docker secrets) start the entry point: the token from the file is required', async (t) => {
  const cwd = tempDir(t)
  const port = await freePort()
  const file = join(cwd, 'tokens')
  writeFileSync(file, 'ops:file-token-0123456789abcdef\n')
  const proc = start(cwd, { MCP_PORT: String(port), DATA_DIR: cwd, MCP_AUTH_TOKENS_FILE: file })
  t.teardown(() => { proc.child.kill('SIGKILL') })
  t.match(await healthy(port), { status: 'healthy', security: { authentication: true } }, proc.output().stderr)
  t.equal((await fetch(`http://127.0.0.1:${port}/tasks`)).status, 401)
  t.equal((await fetch(`http://127.0.0.1:${port}/tasks`, { headers: { authorization: 'Bearer file-token-0123456789abcdef' } })).status, 200, 'the token read from the file')
  proc.child.kill('SIGTERM')
  t.equal(await proc.exited, 0)
})

t.test('a promise rejection nobody handles is logged, and the service goes on', async (t) => {
  const cwd = tempDir(t)
  const port = await freePort()
  const cue = join(cwd, 'reject-now')
  const preload = fileURLToPath(new URL('./fixtures/reject-on-cue.mjs', import.meta.url))
  const proc = start(cwd, { MCP_PORT: String(port), DATA_DIR: cwd, TEST_REJECT_CUE: cue, NODE_OPTIONS: `--import ${preload}` })
  t.teardown(() => { proc.child.kill('SIGKILL') })
  t.ok(await healthy(port), 'started')
  writeFileSync(cue, '')
  await waitFor(t, 'the rejection logged', () => proc.output().stdout.includes('unhandled promise rejection; the service goes on'), 60_000)
  t.match(proc.output().stdout, /test: a rejection nobody handles/, 'with its error')
  t.equal((await fetch(`http://127.0.0.1:${port}/health`)).status, 200, 'still serving')
  proc.child.kill('SIGTERM')
  t.equal(await proc.exited, 0, 'and it still shuts down gracefully')
})

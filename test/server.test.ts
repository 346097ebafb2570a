/** The entry point as a user runs it: `npm start` in a directory with no .env. */
import { spawn } from 'node:child_process'
import { createServer } from 'node:net'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { tempDir } from './helpers/app.js'

const SERVER = fileURLToPath(new URL('../server.ts', import.meta.url))

async function freePort (): Promise<number> {
  const srv = createServer()
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  const { port } = srv.address() as { port: number }
  await new Promise((resolve) => srv.close(resolve))
  return port
}

function start (cwd: string, env: Record<string, string>) {
  const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), SERVER], {
    cwd,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, NODE_OPTIONS: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => { stdout += d })
  child.stderr.on('data', (d) => { stderr += d })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  return { child, exited, output: () => ({ stdout, stderr }) }
}

t.test('starts with no .env, answers /health, exits 0 on SIGTERM', async (t) => {
  const cwd = tempDir(t)
  const port = await freePort()
  const proc = start(cwd, { MCP_PORT: String(port), DATA_DIR: cwd })
  t.teardown(() => { proc.child.kill('SIGKILL') })
  let body: Record<string, unknown> | undefined
  const until = Date.now() + 15_000
  while (!body && Date.now() < until) {
    body = await fetch(`http://127.0.0.1:${port}/health`).then((r) => r.json() as Promise<Record<string, unknown>>, () => undefined)
    if (!body) await new Promise((resolve) => setTimeout(resolve, 50))
  }
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

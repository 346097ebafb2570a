/** The real entry point (server.ts) as a child process, the way `npm start` runs it. */
import { spawn } from 'node:child_process'
import { createServer } from 'node:net'
import { fileURLToPath } from 'node:url'

const SERVER = fileURLToPath(new URL('../../server.ts', import.meta.url))

export async function freePort (): Promise<number> {
  const srv = createServer()
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  const { port } = srv.address() as { port: number }
  await new Promise((resolve) => srv.close(resolve))
  return port
}

/**
 * Starts the service in `cwd` with only the given environment (plus PATH and HOME). Load shedding is
 * off unless asked for: compiling at start-up on a busy machine delays the event loop past its threshold.
 */
export function startServer (cwd: string, env: Record<string, string>) {
  const child = spawn(process.execPath, ['--import', import.meta.resolve('tsx'), SERVER], {
    cwd,
    env: { PATH: process.env.PATH, HOME: process.env.HOME, NODE_OPTIONS: '', SHED_EVENT_LOOP_DELAY_MS: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d) => { stdout += d })
  child.stderr.on('data', (d) => { stderr += d })
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  return { child, exited, output: () => ({ stdout, stderr }) }
}

/** Polls GET /health until it answers; its body. */
export async function healthy (port: number, timeoutMs = 120_000): Promise<Record<string, unknown> | undefined> {
  const until = Date.now() + timeoutMs
  while (Date.now() < until) {
    const body = await fetch(`http://127.0.0.1:${port}/health`).then((r) => r.json() as Promise<Record<string, unknown>>, () => undefined)
    if (body) return body
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return undefined
}

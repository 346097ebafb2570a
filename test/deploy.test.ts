/**
 * The real stack, the way an operator deploys it: a stack directory (compose.yaml + .env made from
 * .env.example, as Dockge holds it) brought up with the Compose tool of this machine. Both images are
 * built from the locally made bases (scripts/node-image.sh, scripts/base-image.sh). From outside: a
 * task through MCP that spawns a runner container through the mounted socket, its result and a
 * workspace file, a non-root service, and the task store surviving `down` + `up`.
 */
import { execFile, execFileSync } from 'node:child_process'
import { chmodSync, cpSync, readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import t from 'tap'
import { LABEL } from '../services/runner/container-spec.js'
import { startModelServer } from './fixtures/model-server.js'
import { tempDir } from './helpers/app.js'
import { engine, waitFor } from './helpers/docker.js'
import { connect } from './helpers/mcp.js'
import { freePort } from './helpers/server.js'
import { settled, type TaskResult } from './helpers/tasks.js'

const run = promisify(execFile)
const ROOT = new URL('..', import.meta.url).pathname
const TOKEN = 'deploy-test-token-0123456789abcdef'
const CONTAINER = 'letta-opencode-plugin'

/** `docker compose` (v2) where it exists, else Debian's docker-compose (1.29). */
function composeCommand (): string[] {
  try {
    execFileSync('docker', ['compose', 'version'], { stdio: 'ignore' })
    return ['docker', 'compose']
  } catch {
    return ['docker-compose']
  }
}

/** .env.example with some values replaced: the file an operator would make. */
function envFrom (example: string, values: Record<string, string>): string {
  const seen = new Set<string>()
  const lines = example.split('\n').map((line) => {
    const m = /^([A-Z0-9_]+)=/.exec(line)
    if (!m || !(m[1] in values)) return line
    seen.add(m[1])
    return `${m[1]}=${values[m[1]]}`
  })
  return [...lines, ...Object.entries(values).filter(([k]) => !seen.has(k)).map(([k, v]) => `${k}=${v}`)].join('\n') + '\n'
}

t.test('compose stack: healthy, runs a task through the socket, non-root, /data survives down + up', async (t) => {
  const [cmd, ...pre] = composeCommand()
  const stack = tempDir(t, 'letta-opencode-plugin-')
  // the stack directory: the project's files (no node_modules, no git), as a Dockge stack would hold them
  const skip = new Set(['node_modules', '.git', 'data', 'dist', '.tap', '.env'].map((d) => join(ROOT, d)))
  cpSync(ROOT, stack, { recursive: true, filter: (src) => !skip.has(src.replace(/\/$/, '')) })

  const model = await startModelServer('127.0.0.1')
  t.teardown(() => model.close())
  const configDir = tempDir(t, 'lop-deploy-opencode-')
  chmodSync(configDir, 0o755)
  writeFileSync(join(configDir, 'opencode.json'), JSON.stringify({ provider: { mock: { npm: '@ai-sdk/openai-compatible', name: 'Scripted', options: { baseURL: model.url, apiKey: 'x' }, models: { scripted: { name: 'Scripted' } } } }, small_model: 'mock/scripted' }))
  chmodSync(join(configDir, 'opencode.json'), 0o644)

  const port = await freePort()
  const volume = `lop-deploy-test-${process.pid}`
  writeFileSync(join(stack, '.env'), envFrom(readFileSync(join(ROOT, '.env.example'), 'utf8'), {
    MCP_PORT: String(port),
    MCP_AUTH_TOKENS: `ci:${TOKEN}`,
    DOCKER_GID: String(statSync('/var/run/docker.sock').gid),
    NODE_IMAGE: 'letta-opencode-node:22',
    RUNNER_BASE_IMAGE: 'letta-opencode-base:bookworm',
    RUNNER_NETWORK: 'host',
    RUNNER_MEMORY_LIMIT: '1g',
    RUNNER_MODEL: 'mock/scripted',
    RUNNER_OPENCODE_CONFIG_DIR: configDir,
    DATA_VOLUME: volume,
    HEALTHCHECK_INTERVAL: '2s'
  }))
  const compose = (...args: string[]) => run(cmd, [...pre, ...args], { cwd: stack, timeout: 15 * 60_000, maxBuffer: 64 * 1024 * 1024 })
  const health = async () => (await engine.inspectContainer(CONTAINER).catch(() => undefined) as { State: { Health?: { Status: string } } } | undefined)?.State.Health?.Status
  t.teardown(async () => {
    await compose('down', '--remove-orphans').catch(() => {})
    await engine.removeVolume(volume, true).catch(() => {})
  })

  await compose('up', '-d', '--build')
  await waitFor(t, 'the container reports healthy', async () => (await health()) === 'healthy', 120_000)
  const info = await engine.inspectContainer(CONTAINER)
  t.equal(info.Config.User, 'letta', 'the service runs as the non-root user letta')
  t.not((await run('docker', ['exec', CONTAINER, 'id', '-u'])).stdout.trim(), '0')
  const res = await fetch(`http://127.0.0.1:${port}/health`)
  t.match(await res.json(), { status: 'healthy', service: 'letta-opencode-plugin', transport: 'streamable_http', security: { localhost_binding: false, authentication: true }, docker: { reachable: true } })
  t.equal((await fetch(`http://127.0.0.1:${port}/tasks`)).status, 401, 'the open bind needs the token')

  const url = `http://127.0.0.1:${port}`
  const { client } = await connect(t, url, { authorization: `Bearer ${TOKEN}` })
  const result = await client.callTool({ name: 'opencode_execute_task', arguments: { task_description: '[script:write-edit] make hello.txt', sync: true } }, undefined, { timeout: 180_000 }) as CallToolResult
  const task = await settled(client, result.structuredContent as TaskResult) as unknown as { task_id: string, status: string, answer: string }
  t.match(task, { status: 'completed', answer: 'Done: wrote hello.txt and edited it.' }, 'a runner container started through the mounted socket did the work')
  t.teardown(async () => {
    for (const v of await engine.listVolumes({ [LABEL.task]: task.task_id })) await engine.removeVolume(v.Name, true).catch(() => {})
  })
  const file = (await client.callTool({ name: 'read_task_file', arguments: { task_id: task.task_id, path: 'hello.txt' } }) as CallToolResult).structuredContent
  t.match(file, { content: 'hello from the real OpenCode\n' }, 'a workspace file, read through the Engine API from inside the service container')
  await client.close()
  const logs = await compose('logs', '--no-color', 'letta-opencode-plugin')
  t.match(logs.stdout, new RegExp(`"taskId":"${task.task_id}".*"msg":"task ended"`), 'one log line per task state change')
  t.notMatch(logs.stdout, TOKEN, 'no token in the logs')

  await compose('down')
  t.equal(await health(), undefined, 'down removed the container')
  await compose('up', '-d')
  await waitFor(t, 'healthy again', async () => (await health()) === 'healthy', 120_000)
  const again = (await connect(t, url, { authorization: `Bearer ${TOKEN}` })).client
  const listed = (await again.callTool({ name: 'list_tasks', arguments: {} }) as CallToolResult).structuredContent as { tasks: Array<{ task_id: string, status: string }> }
  t.match(listed.tasks, [{ task_id: task.task_id, status: 'completed' }], 'the task store in /data survived down + up')
})

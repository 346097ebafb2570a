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
import t, { type Test } from 'tap'
import { LABEL } from '../services/runner/container-spec.js'
import { startModelServer } from './fixtures/model-server.js'
import { tempDir } from './helpers/app.js'
import { HTTP, PROXY, section } from './helpers/egress.js'
import { engine, TEST_LABEL, waitFor } from './helpers/docker.js'
import { connect } from './helpers/mcp.js'
import { freePort } from './helpers/server.js'
import { buildShellImage, SHELL_IMAGE } from './helpers/shell-image.js'
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

/** A stack directory: the project's files (no node_modules, no git), as a Dockge stack would hold them; and its Compose tool. */
function stackDir (t: Test): { stack: string, compose: (...args: string[]) => Promise<{ stdout: string }> } {
  const [cmd, ...pre] = composeCommand()
  const stack = tempDir(t, 'letta-opencode-plugin-')
  const skip = new Set(['node_modules', '.git', 'data', 'dist', '.tap', '.env'].map((d) => join(ROOT, d)))
  cpSync(ROOT, stack, { recursive: true, filter: (src) => !skip.has(src.replace(/\/$/, '')) })
  return { stack, compose: (...args: string[]) => run(cmd, [...pre, ...args], { cwd: stack, timeout: 15 * 60_000, maxBuffer: 64 * 1024 * 1024 }) }
}

const health = async () => (await engine.inspectContainer(CONTAINER).catch(() => undefined) as { State: { Health?: { Status: string } } } | undefined)?.State.Health?.Status

t.test('compose stack: healthy, runs a task through the socket, non-root, /data survives down + up', async (t) => {
  const { stack, compose } = stackDir(t)

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

t.test('compose stack with RUNNER_EGRESS=allowlist: the service joins the internal network; a runner reaches an allowed host through it, nothing else', async (t) => {
  buildShellImage()
  const { stack, compose } = stackDir(t)
  const port = await freePort()
  const volume = `lop-deploy-egress-${process.pid}`
  // the outside world: an internal network this test makes, with two servers named on it; the
  // service container joins it (its "internet"), the runners do not
  const outside = `lop-deploy-outside-${process.pid}`
  const allowedName = `lop-deploy-allowed-${process.pid}`
  const deniedName = `lop-deploy-denied-${process.pid}`
  writeFileSync(join(stack, '.env'), envFrom(readFileSync(join(ROOT, '.env.example'), 'utf8'), {
    MCP_PORT: String(port),
    MCP_AUTH_TOKENS: `ci:${TOKEN}`,
    DOCKER_GID: String(statSync('/var/run/docker.sock').gid),
    NODE_IMAGE: 'letta-opencode-node:22',
    RUNNER_IMAGE: SHELL_IMAGE,
    RUNNER_MEMORY_LIMIT: '128m',
    RUNNER_STOP_GRACE_S: '1',
    RUNNER_EGRESS: 'allowlist',
    RUNNER_EGRESS_ALLOW: `${allowedName}:8080`,
    DATA_VOLUME: volume,
    HEALTHCHECK_INTERVAL: '2s'
  }))
  const servers: string[] = []
  let egressNetwork = ''
  t.teardown(async () => {
    for (const id of servers) await engine.removeContainer(id, { force: true }).catch(() => {})
    await compose('down', '--remove-orphans').catch(() => {})
    await engine.removeNetwork(outside).catch(() => {})
    if (egressNetwork) await engine.removeNetwork(egressNetwork).catch(() => {})
    await engine.removeVolume(volume, true).catch(() => {})
  })
  await engine.createNetwork({ Name: outside, Internal: true, Labels: { [TEST_LABEL]: `deploy-${process.pid}` } })
  for (const name of [allowedName, deniedName]) {
    const { Id } = await engine.createContainer({
      Image: SHELL_IMAGE,
      Entrypoint: ['perl', '-MIO::Socket::INET', '-e', `$s=IO::Socket::INET->new(LocalPort=>8080,Listen=>5,ReuseAddr=>1) or die; while($c=$s->accept){print $c "HTTP/1.0 200 OK\\r\\n\\r\\nhello from ${name}\\n"; close $c}`],
      Labels: { [TEST_LABEL]: `deploy-${process.pid}` },
      HostConfig: { NetworkMode: outside }
    }, name)
    servers.push(Id)
    await engine.startContainer(Id)
  }
  const allowedIp = Object.values((await engine.inspectNetwork(outside))?.Containers ?? {}).find((c) => c.Name === allowedName)?.IPv4Address.split('/')[0]
  t.ok(allowedIp, 'the allowed server has an address')

  // only the service: the runner image is the shell stand-in, not built here
  await compose('up', '-d', '--build', 'letta-opencode-plugin')
  await waitFor(t, 'the container reports healthy', async () => (await health()) === 'healthy', 120_000)
  await engine.connectNetwork(outside, CONTAINER)
  type Networks = { NetworkSettings: { Networks: Record<string, { IPAddress: string }> } }
  const networks = ((await engine.inspectContainer(CONTAINER)) as unknown as Networks).NetworkSettings.Networks
  egressNetwork = Object.keys(networks).find((n) => n.startsWith('lop-egress-')) ?? ''
  t.ok(egressNetwork, 'the service container joined its egress network')
  t.match(await engine.inspectNetwork(egressNetwork), { Internal: true, Labels: { [LABEL.service]: 'letta-opencode-plugin' } })
  const proxyAddress = networks[egressNetwork]?.IPAddress

  const script = [HTTP, PROXY,
    'echo "proxy=$HTTP_PROXY"',
    `echo "== allowed"; http "GET http://${allowedName}:8080/ HTTP/1.0\\n\\n" "$PH" "$PP"`,
    `echo "== denied"; http "GET http://${deniedName}:8080/ HTTP/1.0\\n\\n" "$PH" "$PP"`,
    `echo "== direct"; http "GET / HTTP/1.0\\n\\n" ${allowedIp} 8080`,
    `echo "== service"; http "GET /health HTTP/1.0\\n\\n" "$PH" ${port}`,
    `echo "== dns"; getent hosts ${allowedName} || echo "no names"`].join('\n')
  const url = `http://127.0.0.1:${port}`
  const { client } = await connect(t, url, { authorization: `Bearer ${TOKEN}` })
  const result = await client.callTool({ name: 'opencode_execute_task', arguments: { task_description: script, sync: true } }, undefined, { timeout: 180_000 }) as CallToolResult
  const done = await settled(client, result.structuredContent as TaskResult)
  t.equal(done.status, 'completed', String(done.error))
  const out = String(done.output)
  t.match(out, `proxy=http://${proxyAddress}:`, 'the proxy listens on the service container\'s address on the egress network')
  t.match(section(out, 'allowed'), new RegExp(`200 OK[\\s\\S]*hello from ${allowedName}`), 'the allowed host, resolved and reached by the service')
  t.match(section(out, 'denied'), /^HTTP\/1\.1 403 Forbidden/)
  t.notMatch(section(out, 'denied'), /hello/)
  t.match(section(out, 'direct'), /^connect failed/, 'no direct route to the outside network')
  t.notMatch(section(out, 'service'), /HTTP|healthy/, 'the service\'s own port answers nothing on the egress network')
  t.match(section(out, 'dns'), /^no names/)

  type View = { egress: { connections: number, denied: number, hosts: Record<string, number>, bytes_in: number } | null }
  await waitFor(t, 'the counts in the task view', async () => {
    const view = (await client.callTool({ name: 'get_task_status', arguments: { task_id: done.task_id } }) as CallToolResult).structuredContent as View
    return view.egress?.connections === 1 && view.egress.denied === 1
  })
  const view = (await client.callTool({ name: 'get_task_status', arguments: { task_id: done.task_id } }) as CallToolResult).structuredContent as View
  t.same(view.egress?.hosts, { [`${allowedName}:8080`]: 1 })
  t.ok((view.egress?.bytes_in ?? 0) > 0)
  const history = (await client.callTool({ name: 'get_task_history', arguments: { task_id: done.task_id } }) as CallToolResult).structuredContent as { events: Array<{ type: string, data: Record<string, unknown> }> }
  t.match(history.events.filter((e) => e.type === 'egress_denied').map((e) => e.data), [{ host: deniedName, port: 8080, reason: 'not_allowed' }])
  await client.close()

  await compose('down')
  t.equal(await engine.inspectNetwork(egressNetwork), null, 'down: the service left and removed its egress network')
})

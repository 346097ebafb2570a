/**
 * Restart recovery: the real service killed with SIGKILL while tasks run and wait, then started
 * again on the same data directory. Nothing is lost or stuck, and no orphan container survives.
 */
import { execFileSync } from 'node:child_process'
import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import t from 'tap'
import { LABEL } from '../services/runner/container-spec.js'
import { tempDir } from './helpers/app.js'
import { containerRuns, engine, runContainers, waitFor } from './helpers/docker.js'
import { connect } from './helpers/mcp.js'
import { storeEnv } from './helpers/postgres.js'
import { freePort, healthy, startServer } from './helpers/server.js'
import { untilEnded } from './helpers/tasks.js'

type Task = { task_id: string, status: string, reason: string | null, output: string | null, error: string | null }

async function call (client: Client, name: string, args: Record<string, unknown>): Promise<Record<string, unknown>> {
  const res = await client.callTool({ name, arguments: args }) as CallToolResult
  if (res.isError) throw new Error(JSON.stringify(res.content))
  return res.structuredContent as Record<string, unknown>
}
const status = async (client: Client, id: string) => await call(client, 'get_task_status', { task_id: id }) as Task
const waitForEnd = async (client: Client, id: string) => await untilEnded(client, id, 120_000) as unknown as Task

t.test('SIGKILL while tasks run and wait: re-attached, failed with the reason, resumed; orphans removed', async (t) => {
  const dataDir = tempDir(t)
  const port = await freePort()
  const env = {
    MCP_PORT: String(port),
    DATA_DIR: dataDir,
    ...(await storeEnv(t, dataDir)),
    RUNNER_IMAGE: 'letta-opencode-test-agent:latest',
    RUNNER_NETWORK: 'none',
    RUNNER_MEMORY_LIMIT: '64m',
    RUNNER_STOP_GRACE_S: '1',
    MAX_CONCURRENT_TASKS: '2',
    ORPHAN_GRACE_MS: '1500',
    RECONCILE_INTERVAL_MS: '1000'
  }
  const url = `http://127.0.0.1:${port}`
  let proc = startServer(dataDir, env)
  t.teardown(() => { proc.child.kill('SIGKILL') })
  t.ok(await healthy(port), 'first start')
  let client = (await connect(t, url)).client

  const survivor = await call(client, 'opencode_execute_task', { task_description: 'sleep 300 echo survived' }) as Task
  const lost = await call(client, 'opencode_execute_task', { task_description: 'sleep 60' }) as Task
  const waiting = [
    await call(client, 'opencode_execute_task', { task_description: 'echo first-in-line' }) as Task,
    await call(client, 'opencode_execute_task', { task_description: 'echo second-in-line' }) as Task
  ]
  await waitFor(t, 'two tasks running', async () => (await status(client, survivor.task_id)).status === 'running' && (await status(client, lost.task_id)).status === 'running')
  t.equal((await status(client, waiting[0].task_id)).status, 'queued')

  // a task is marked running before its container is created and started (its workspace helpers,
  // labelled with the task too, come and go meanwhile): wait for the engine to run both agents
  await waitFor(t, 'both containers started', async () => await containerRuns(survivor.task_id) && await containerRuns(lost.task_id), 60_000)
  const [survivorContainer] = await runContainers(survivor.task_id)
  const [lostContainer] = await runContainers(lost.task_id)
  const owner = survivorContainer.Labels[LABEL.owner]
  t.teardown(async () => {
    for (const c of await engine.listContainers({ [LABEL.owner]: owner })) await engine.removeContainer(c.Id, { force: true }).catch(() => {})
  })

  proc.child.kill('SIGKILL')
  await proc.exited
  await client.close().catch(() => {})
  // while it is down: one task's container ends by itself (its sleep is cut short, it prints and exits 0),
  // one disappears, and a container of this owner appears with no task
  try {
    execFileSync('docker', ['exec', survivorContainer.Id, 'sh', '-c', 'for p in /proc/[0-9]*; do [ "$(cat "$p/comm" 2>/dev/null)" = sleep ] && kill "$(basename "$p")"; done; true'])
  } catch {
    // the container may end (and take this exec with it) before the loop does: its state decides
  }
  await waitFor(t, "the survivor's container ended while the service was down", async () => (await engine.inspectContainer(survivorContainer.Id)).State.Status === 'exited', 60_000)
  await engine.removeContainer(lostContainer.Id, { force: true })
  const orphan = await engine.createContainer({
    Image: 'letta-opencode-test-agent:latest',
    Entrypoint: ['opencode'],
    Cmd: ['sleep 60'],
    Labels: { [LABEL.service]: 'letta-opencode-plugin', [LABEL.owner]: owner, [LABEL.task]: 'task_never-stored' },
    HostConfig: { NetworkMode: 'none' }
  })
  await engine.startContainer(orphan.Id)
  // a container of another service sharing the engine is not this service's to remove
  const foreign = await engine.createContainer({
    Image: 'letta-opencode-test-agent:latest',
    Entrypoint: ['opencode'],
    Cmd: ['sleep 60'],
    Labels: { [LABEL.service]: 'letta-opencode-plugin', [LABEL.owner]: 'another-service', [LABEL.task]: 'task_foreign' },
    HostConfig: { NetworkMode: 'none' }
  })
  t.teardown(() => engine.removeContainer(foreign.Id, { force: true }).catch(() => {}))

  proc = startServer(dataDir, env)
  t.ok(await healthy(port), 'second start')
  client = (await connect(t, url)).client

  await waitFor(t, 'every task ended', async () => {
    const states = await Promise.all([survivor, lost, ...waiting].map(async (x) => (await status(client, x.task_id)).status))
    return states.every((s) => ['completed', 'failed'].includes(s))
  }, 120_000)
  t.match(await status(client, survivor.task_id), { status: 'completed', output: 'survived\n' }, 're-attached to the container that ended while the service was down: its output and exit code read back')
  const history = await call(client, 'get_task_history', { task_id: survivor.task_id }) as { events: Array<{ type: string }> }
  t.same(history.events.map((e) => e.type), ['queued', 'started', 'reattached', 'completed'])
  t.match(await status(client, lost.task_id), { status: 'failed', reason: 'interrupted', error: /container is gone/ })
  for (const w of waiting) t.match(await status(client, w.task_id), { status: 'completed', output: /-in-line\n/ }, 'queued tasks resumed')

  await waitFor(t, 'orphan removed after the grace period', async () => (await engine.listContainers({ [LABEL.owner]: owner })).length === 0, 60_000)
  t.equal((await engine.listContainers({ [LABEL.owner]: 'another-service' })).length, 1, "another service's container on the same engine is left alone")

  proc.child.kill('SIGTERM')
  t.equal(await proc.exited, 0)
})

t.test('after SIGKILL, re-attached containers take their slots first, a paused task stays paused, clocks re-armed from the store', async (t) => {
  const dataDir = tempDir(t)
  const port = await freePort()
  const env = {
    MCP_PORT: String(port),
    DATA_DIR: dataDir,
    ...(await storeEnv(t, dataDir)),
    RUNNER_IMAGE: 'letta-opencode-test-agent:latest',
    RUNNER_NETWORK: 'none',
    RUNNER_MEMORY_LIMIT: '64m',
    RUNNER_STOP_GRACE_S: '1',
    MAX_CONCURRENT_TASKS: '2',
    MAX_QUEUED_TASKS: '2'
  }
  const url = `http://127.0.0.1:${port}`
  let proc = startServer(dataDir, env)
  t.teardown(() => { proc.child.kill('SIGKILL') })
  t.ok(await healthy(port), 'first start')
  let client = (await connect(t, url)).client

  // a running task with a timeout, a paused one, and two queued behind them
  const timed = await call(client, 'opencode_execute_task', { task_description: 'sleep 600', timeout_ms: 30_000 }) as Task
  const paused = await call(client, 'opencode_execute_task', { task_description: 'sleep 600' }) as Task
  const queued = [
    await call(client, 'opencode_execute_task', { task_description: 'echo q1' }) as Task,
    await call(client, 'opencode_execute_task', { task_description: 'echo q2' }) as Task
  ]
  await waitFor(t, 'two tasks running', async () => (await status(client, timed.task_id)).status === 'running' && (await status(client, paused.task_id)).status === 'running', 60_000)
  // the kill comes once both containers run (a task is running before its container is started)
  await waitFor(t, 'both containers started', async () => await containerRuns(timed.task_id) && await containerRuns(paused.task_id), 60_000)
  t.equal((await call(client, 'send_task_control', { task_id: paused.task_id, control: 'pause' })).status, 'paused')
  const [pausedContainer] = await runContainers(paused.task_id)
  const owner = pausedContainer.Labels[LABEL.owner]
  t.teardown(async () => {
    for (const c of await engine.listContainers({ [LABEL.owner]: owner })) await engine.removeContainer(c.Id, { force: true }).catch(() => {})
  })

  proc.child.kill('SIGKILL')
  await proc.exited
  await client.close().catch(() => {})
  proc = startServer(dataDir, env)
  t.ok(await healthy(port), 'second start')
  client = (await connect(t, url)).client

  // the paused task is still paused, in the store and in the engine, and holds its slot
  t.equal((await status(client, paused.task_id)).status, 'paused')
  t.equal((await engine.inspectContainer(pausedContainer.Id)).State.Status, 'paused', 'not unpaused by the restart')
  const events = async (id: string) => (await call(client, 'get_task_history', { task_id: id }) as { events: Array<{ type: string, data: Record<string, unknown> }> }).events
  const pausedHistory = await events(paused.task_id)
  const atPause = pausedHistory.find((e) => e.type === 'paused')?.data.remaining_ms
  t.match(pausedHistory.find((e) => e.type === 'reattached'), { data: { paused: true, remaining_ms: atPause } }, 'the paused time and the downtime did not count')

  // the running one was re-armed: it ends at its timeout, and only then does a queued task start
  const timedEnd = await waitForEnd(client, timed.task_id)
  t.match(timedEnd, { status: 'timeout', reason: 'timeout' })
  for (const q of queued) t.match(await waitForEnd(client, q.task_id), { status: 'completed' })
  const views = await Promise.all([timed, ...queued].map((x) => call(client, 'get_task_status', { task_id: x.task_id })))
  const [timedView, q1, q2] = views as Array<{ started_at: string, finished_at: string }>
  t.ok(Date.parse(q1.started_at) >= Date.parse(timedView.finished_at), 'the first queued task started after the re-attached one ended')
  t.ok(Date.parse(q2.started_at) >= Date.parse(q1.finished_at), 'the second one had to wait for the first: the paused task holds the other slot')

  t.equal((await call(client, 'send_task_control', { task_id: paused.task_id, control: 'resume' })).status, 'running')
  t.equal((await engine.inspectContainer(pausedContainer.Id)).State.Status, 'running')
  t.match(await call(client, 'send_task_control', { task_id: paused.task_id, control: 'cancel' }), { status: 'cancelled' })
  proc.child.kill('SIGTERM')
  t.equal(await proc.exited, 0)
})

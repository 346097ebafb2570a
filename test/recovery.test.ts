/**
 * Restart recovery: the real service killed with SIGKILL while tasks run and wait, then started
 * again on the same data directory. Nothing is lost or stuck, and no orphan container survives.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import t from 'tap'
import { LABEL } from '../services/tasks/container-spec.js'
import { tempDir } from './helpers/app.js'
import { engine, waitFor } from './helpers/docker.js'
import { connect } from './helpers/mcp.js'
import { freePort, healthy, startServer } from './helpers/server.js'

type Task = { task_id: string, status: string, reason: string | null, output: string | null, error: string | null }

async function call (client: Client, name: string, args: Record<string, unknown>): Promise<Record<string, unknown>> {
  const res = await client.callTool({ name, arguments: args }) as CallToolResult
  if (res.isError) throw new Error(JSON.stringify(res.content))
  return res.structuredContent as Record<string, unknown>
}
const status = async (client: Client, id: string) => await call(client, 'get_task_status', { task_id: id }) as Task

t.test('SIGKILL while tasks run and wait: re-attached, failed with the reason, resumed; orphans removed', async (t) => {
  const dataDir = tempDir(t)
  const port = await freePort()
  const env = {
    MCP_PORT: String(port),
    DATA_DIR: dataDir,
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

  const survivor = await call(client, 'opencode_execute_task', { task_description: 'sleep 8 echo survived' }) as Task
  const lost = await call(client, 'opencode_execute_task', { task_description: 'sleep 60' }) as Task
  const waiting = [
    await call(client, 'opencode_execute_task', { task_description: 'echo first-in-line' }) as Task,
    await call(client, 'opencode_execute_task', { task_description: 'echo second-in-line' }) as Task
  ]
  await waitFor(t, 'two tasks running', async () => (await status(client, survivor.task_id)).status === 'running' && (await status(client, lost.task_id)).status === 'running')
  t.equal((await status(client, waiting[0].task_id)).status, 'queued')

  const [survivorContainer] = await engine.listContainers({ [LABEL.task]: survivor.task_id })
  const [lostContainer] = await engine.listContainers({ [LABEL.task]: lost.task_id })
  const owner = survivorContainer.Labels[LABEL.owner]
  t.teardown(async () => {
    for (const c of await engine.listContainers({ [LABEL.owner]: owner })) await engine.removeContainer(c.Id, { force: true }).catch(() => {})
  })

  proc.child.kill('SIGKILL')
  await proc.exited
  await client.close().catch(() => {})
  // while it is down: one task's container disappears, and a container of this owner appears with no task
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
  }, 30_000)
  t.match(await status(client, survivor.task_id), { status: 'completed', output: 'survived\n' }, 're-attached to the container that kept running')
  const history = await call(client, 'get_task_history', { task_id: survivor.task_id }) as { events: Array<{ type: string }> }
  t.same(history.events.map((e) => e.type), ['queued', 'started', 'reattached', 'completed'])
  t.match(await status(client, lost.task_id), { status: 'failed', reason: 'interrupted', error: /container is gone/ })
  for (const w of waiting) t.match(await status(client, w.task_id), { status: 'completed', output: /-in-line\n/ }, 'queued tasks resumed')

  await waitFor(t, 'orphan removed after the grace period', async () => (await engine.listContainers({ [LABEL.owner]: owner })).length === 0, 10_000)
  t.equal((await engine.listContainers({ [LABEL.owner]: 'another-service' })).length, 1, "another service's container on the same engine is left alone")

  proc.child.kill('SIGTERM')
  t.equal(await proc.exited, 0)
})

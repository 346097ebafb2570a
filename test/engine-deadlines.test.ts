/**
 * Deadlines on the engine (issue 14): a short Engine API call that the engine never answers fails
 * after DOCKER_CALL_TIMEOUT_MS, the task ends failed/engine_error and its queue slot goes to the
 * next task. Reconcile runs one at a time and leaves the helpers of live tasks alone. The engine is
 * the real one, behind a proxy that holds the chosen requests without answering them.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import t, { type Test } from 'tap'
import { DockerEngine } from '../services/docker/engine.js'
import { containerSpec, LABEL } from '../services/runner/container-spec.js'
import { listen, tempDir } from './helpers/app.js'
import { engine, waitFor } from './helpers/docker.js'
import { EngineProxy } from './helpers/engine-proxy.js'
import { connect } from './helpers/mcp.js'

const BASE_ENV = {
  RUNNER_IMAGE: 'letta-opencode-test-agent:latest',
  RUNNER_NETWORK: 'none',
  RUNNER_MEMORY_LIMIT: '64m',
  RUNNER_STOP_GRACE_S: '1',
  RUNNER_CPU_LIMIT: '0.5',
  MAX_CONCURRENT_TASKS: '1',
  // long enough for a busy engine's real answers, short enough to wait for a hung one
  DOCKER_CALL_TIMEOUT_MS: '10000',
  // this test is about the engine: a busy test machine's event loop must not shed its requests
  SHED_EVENT_LOOP_DELAY_MS: '0'
}
type Task = Record<string, unknown> & { task_id: string, status: string }

async function execute (client: Client, task: string): Promise<Task> {
  const res = await client.callTool({ name: 'opencode_execute_task', arguments: { task_description: task } }) as CallToolResult
  if (res.isError) throw new Error((res.content[0] as { text: string }).text)
  return res.structuredContent as Task
}
async function status (client: Client, id: string): Promise<Task> {
  return (await client.callTool({ name: 'get_task_status', arguments: { task_id: id } }) as CallToolResult).structuredContent as Task
}
async function ended (t: Test, client: Client, id: string): Promise<Task> {
  await waitFor(t, `task ${id} to end`, async () => !['queued', 'running'].includes((await status(client, id)).status), 120_000)
  return status(client, id)
}

async function setup (t: Test, env: Record<string, string> = {}) {
  const proxy = new EngineProxy(tempDir(t))
  await proxy.start()
  const { app, url } = await listen(t, { docker: { socketPath: proxy.socketPath }, env: { ...BASE_ENV, ...env } })
  t.teardown(() => proxy.stop())
  // the runner image check creates and starts a container of its own at start: let it finish first,
  // so that a held create or start is the task's
  await waitFor(t, 'the runner image checked', () => app.runnerImage.state.checked_at !== null, 120_000)
  const { client } = await connect(t, url)
  return { app, proxy, client }
}

for (const [call, path] of [['create', /^\/containers\/create$/], ['start', /^\/containers\/[^/]+\/start$/]] as const) {
  t.test(`a ${call} call the engine never answers fails the task (engine_error) within the deadline and frees its slot`, async (t) => {
    const { proxy, client } = await setup(t)
    proxy.hold({ method: 'POST', path, times: 1 })
    const hung = await execute(client, 'say first')
    const next = await execute(client, 'say second')
    t.equal(next.status, 'queued', 'one slot (MAX_CONCURRENT_TASKS=1): the second task waits')

    const failed = await ended(t, client, hung.task_id)
    t.match(failed, { status: 'failed', reason: 'engine_error', error: /did not answer POST \/containers\/.*within 10000 ms \(DOCKER_CALL_TIMEOUT_MS\)/ })
    t.equal(proxy.held.length, 1, `the ${call} request was held, never answered`)
    t.match(await ended(t, client, next.task_id), { status: 'completed', output: 'second\n' }, 'the slot was released: the next task ran')
    t.same(await engine.listContainers({ [LABEL.task]: hung.task_id }), [], 'no container of the failed task is left')
  })
}

t.test('long calls have no deadline: a task that runs longer than DOCKER_CALL_TIMEOUT_MS completes', async (t) => {
  const { client } = await setup(t)
  const task = await execute(client, 'sleep 12 say done')
  t.match(await ended(t, client, task.task_id), { status: 'completed', output: 'done\n' }, 'attach and wait outlived the 10000 ms deadline')
})

t.test('a short call of the client fails with engine_timeout; the client stays usable', async (t) => {
  const proxy = new EngineProxy(tempDir(t))
  await proxy.start()
  t.teardown(() => proxy.stop())
  const docker = new DockerEngine({ socketPath: proxy.socketPath }, 5000)
  proxy.hold({ method: 'GET', path: /^\/containers\/json$/, times: 1 })
  await t.rejects(docker.listContainers({ [LABEL.owner]: 'nobody' }), { code: 'engine_timeout', message: /GET \/containers\/json within 5000 ms \(DOCKER_CALL_TIMEOUT_MS\)/ })
  t.same(await docker.listContainers({ [LABEL.owner]: 'nobody' }), [], 'the next call is answered')
})

t.test('reconcile runs one at a time: a second call joins the one running', async (t) => {
  const { app, proxy } = await setup(t)
  await waitFor(t, 'the start-up reconcile to list containers', () => proxy.requests.includes('GET /containers/json'), 60_000)
  await app.tasks.reconcile()
  const lists = () => proxy.requests.filter((r) => r === 'GET /containers/json').length
  const before = lists()
  const [a, b] = await Promise.all([app.tasks.reconcile(), app.tasks.reconcile()])
  t.equal(lists() - before, 1, 'one listing for two concurrent calls')
  t.equal(a, b)
})

t.test('reconcile never removes a helper container of a live task', async (t) => {
  const { app, client } = await setup(t, { ORPHAN_GRACE_MS: '0' })
  const task = await execute(client, 'sleep 60')
  await waitFor(t, 'the task\'s container to run', async () => (await engine.listContainers({ [LABEL.task]: task.task_id })).some((c) => c.State === 'running'), 60_000)
  await app.tasks.reconcile() // the start-up run is over: the next call runs anew
  // a helper as the workspaces make them (clone, files, diff), of the live task, and one of no task
  const helper = (id: string) => containerSpec(app.config, { id, agent_id: null, argv: [], entrypoint: ['true'], role: 'helper' }, app.tasks.owner)
  const live = (await engine.createContainer(helper(task.task_id))).Id
  const orphan = (await engine.createContainer(helper(`task_orphan-${process.pid}`))).Id
  t.teardown(async () => { for (const id of [live, orphan]) await engine.removeContainer(id, { force: true }).catch(() => {}) })

  await app.tasks.reconcile()
  t.ok(await engine.inspectContainer(live), 'the live task\'s helper is still there')
  await t.rejects(engine.inspectContainer(orphan), { code: 'no_such_container' }, 'the helper of no task was removed')
  t.ok((await engine.listContainers({ [LABEL.task]: task.task_id })).some((c) => c.State === 'running'), 'the task\'s own container runs on')
  await client.callTool({ name: 'send_task_control', arguments: { task_id: task.task_id, control: 'cancel' } })
})

/**
 * The runner image contract: any image with `opencode` on its PATH runs tasks. A "foreign" image
 * (built here from the base image: no ENTRYPOINT, HOME=/tmp, no /workspace, no runner user; the
 * OpenCode binary copied from the runner image) runs a task and a follow-up turn in the same session
 * with the real OpenCode CLI; an image without `opencode` and a missing image are reported by
 * /health (degraded) and refuse tasks at once with the fix; a run that cannot find `opencode` fails
 * with the same clear error.
 */
import { execFileSync } from 'node:child_process'
import type { FastifyInstance } from 'fastify'
import t, { type Test } from 'tap'
import { containerSpec } from '../services/runner/container-spec.js'
import { TaskEngine } from '../services/tasks/engine.js'
import { SqliteTaskStore } from '../services/tasks/store.js'
import type { TaskRecord } from '../services/tasks/types.js'
import { startModelServer } from './fixtures/model-server.js'
import { build, listen, tempDir } from './helpers/app.js'
import { BASE_IMAGE, removeOwned, waitFor } from './helpers/docker.js'
import { callTool, connect, toolErrorOf, toolOk } from './helpers/mcp.js'
import { opencodeConfigDir, runnerEnv } from './helpers/opencode.js'

const FOREIGN_IMAGE = 'letta-opencode-foreign-runner:test'
const MISSING_IMAGE = 'letta-opencode-no-such-image:never'

type Task = Record<string, unknown> & { task_id: string, status: string }

const call = callTool
const ok = toolOk
const errorOf = toolErrorOf

/** The runner image's OpenCode in a bare base image, the way a user adds it to an image of their own. */
function buildForeignImage (): void {
  const dockerfile = [
    'FROM letta-opencode-runner:latest AS oc',
    `FROM ${BASE_IMAGE}`,
    'COPY --from=oc /opt/opencode /opt/opencode',
    'ENV HOME=/tmp PATH=/opt/opencode/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\',
    '    OPENCODE_DISABLE_AUTOUPDATE=1 OPENCODE_DISABLE_SHARE=1 OPENCODE_DISABLE_MODELS_FETCH=1 OPENCODE_DISABLE_LSP_DOWNLOAD=1',
    ''
  ].join('\n')
  execFileSync('docker', ['build', '-q', '-t', FOREIGN_IMAGE, '-'], { input: dockerfile, stdio: ['pipe', 'ignore', 'pipe'] })
}

const runnerOf = async (app: FastifyInstance) => (await app.health()).body.runner

t.test('the service sets the entrypoint and the XDG data home, and mounts the state volume there', async (t) => {
  const app = await build(t, { env: { RUNNER_IMAGE: BASE_IMAGE } })
  const spec = containerSpec(app.config, { id: 'task_x', agent_id: null, argv: ['run'] }, 'owner')
  t.same(spec.Entrypoint, ['opencode'])
  t.ok(spec.Env?.includes('XDG_DATA_HOME=/opencode-state'))
  t.ok(spec.HostConfig?.Mounts?.some((m) => m.Source === 'lop-state-x' && m.Target === '/opencode-state/opencode'))
  t.same(containerSpec(app.config, { id: 'task_x', agent_id: null, argv: [], entrypoint: ['git'], role: 'helper' }, 'owner').Entrypoint, ['git'], 'helpers keep their own')
})

t.test('an image without ENTRYPOINT, with HOME=/tmp and no runner user runs a task and a follow-up turn with the real OpenCode', async (t) => {
  buildForeignImage()
  const model = await startModelServer('127.0.0.1')
  t.teardown(() => model.close())
  const configDir = opencodeConfigDir(t, model.url)
  const { app, url } = await listen(t, {
    env: runnerEnv(configDir, { RUNNER_IMAGE: FOREIGN_IMAGE, SYNC_WAIT_MS: '120000' })
  })
  await waitFor(t, 'the runner image checked', async () => (await runnerOf(app)).opencode_version !== null || (await runnerOf(app)).error !== null, 120_000)
  t.match(await runnerOf(app), { image: FOREIGN_IMAGE, present: true, opencode_version: /^\d+\.\d+\.\d+/, error: null })
  t.equal((await app.health()).body.status, 'healthy')

  const { client } = await connect(t, url, { 'x-agent-id': 'agent-foreign' })
  const task = await ok(client, 'opencode_execute_task', { task_description: '[script:write-edit] create hello.txt and fix its wording', sync: true }) as Task
  t.match(task, { status: 'completed', exit_code: 0, files_changed: ['hello.txt'], turns: 1, session_id: /^ses_/ })
  t.equal((await ok(client, 'read_task_file', { task_id: task.task_id, path: 'hello.txt' })).content, 'hello from the real OpenCode\n')

  // the follow-up finds its session on the state volume although HOME is /tmp
  const follow = await ok(client, 'send_task_message', { task_id: task.task_id, message: '[script:follow-up] now append a line' })
  t.match(follow, { delivery: 'follow_up_started' })
  await waitFor(t, 'the second turn done', async () => ['completed', 'failed'].includes((await ok(client, 'get_task_status', { task_id: task.task_id })).status as string), 120_000)
  const after = await ok(client, 'get_task_status', { task_id: task.task_id })
  t.match(after, { status: 'completed', turns: 2, session_id: task.session_id, answer: 'Appended a line to notes.txt.' })
  t.equal((await ok(client, 'read_task_file', { task_id: task.task_id, path: 'notes.txt' })).content, 'second turn\n', 'written as the non-root runner user into /workspace')
})

t.test('an image without `opencode`: /health degraded, a task refused at once with the fix', async (t) => {
  const { app, url } = await listen(t, { env: { RUNNER_IMAGE: BASE_IMAGE, RUNNER_NETWORK: 'none' } })
  await waitFor(t, 'the runner image checked', async () => (await runnerOf(app)).error !== null, 120_000)
  const health = await (await fetch(new URL('/health', url))).json()
  t.match(health, {
    status: 'degraded',
    runner: { image: BASE_IMAGE, present: true, opencode_version: null, error: /has no `opencode` on its PATH.*docker build -t letta-opencode-base:bookworm runner\// }
  })
  const { client } = await connect(t, url)
  const refused = errorOf(await call(client, 'opencode_execute_task', { task_description: 'say hi', sync: true }))
  t.match(refused, { code: 'unavailable', error: /RUNNER_IMAGE letta-opencode-base:bookworm has no `opencode` on its PATH.*scripts\/runner-image\.sh/ })
  t.equal((await app.tasks.countByStatus()).queued ?? 0, 0, 'nothing was stored')
})

t.test('a missing image: /health degraded, a task refused with the build or pull hint', async (t) => {
  const { app, url } = await listen(t, { env: { RUNNER_IMAGE: MISSING_IMAGE } })
  await waitFor(t, 'the runner image checked', async () => (await runnerOf(app)).present === false, 60_000)
  t.match(await app.health(), {
    statusCode: 200,
    body: { status: 'degraded', runner: { image: MISSING_IMAGE, present: false, opencode_version: null, error: /is not on the Docker engine: build it with `docker build -t letta-opencode-no-such-image:never runner\/`.*docker pull letta-opencode-no-such-image:never/ } }
  })
  const { client } = await connect(t, url)
  t.match(errorOf(await call(client, 'opencode_execute_task', { task_description: 'say hi' })), { code: 'unavailable', error: /not on the Docker engine/ })
})

t.test('a run that cannot find `opencode` (before the image was checked) fails with the same clear error', async (t: Test) => {
  const app = await build(t, { env: { RUNNER_IMAGE: BASE_IMAGE, RUNNER_NETWORK: 'none' } })
  // an engine without the image check, as in the moment before its first answer
  const store = new SqliteTaskStore(tempDir(t, 'lop-data-'))
  const quiet = { info () {}, warn () {}, error () {} }
  const engine = new TaskEngine(store, app.docker, app.config, quiet)
  t.teardown(async () => {
    engine.close()
    await removeOwned(store.owner)
    await store.close()
  })
  const { task } = await engine.submit({ principal: 'test' }, { task_description: 'say hi' })
  let ended: TaskRecord | undefined
  await waitFor(t, 'the task ended', async () => { ended = await store.get(task.id); return ended?.status === 'failed' }, 60_000)
  t.match(ended, { status: 'failed', exit_code: 127, error: /RUNNER_IMAGE letta-opencode-base:bookworm has no `opencode` on its PATH/ })
})

t.test('while the image is unusable an idempotent retry still gets its task; a new task is refused', async (t) => {
  // a tag of the stand-in image, removed halfway: the image goes missing for real
  const tag = 'letta-opencode-retry-test:latest'
  execFileSync('docker', ['tag', 'letta-opencode-test-agent:latest', tag])
  t.teardown(() => { try { execFileSync('docker', ['rmi', tag], { stdio: 'ignore' }) } catch {} })
  const { app, url } = await listen(t, { env: { RUNNER_IMAGE: tag, RUNNER_NETWORK: 'none', RUNNER_MEMORY_LIMIT: '64m', RUNNER_STOP_GRACE_S: '1' } })
  await waitFor(t, 'the runner image checked', async () => (await runnerOf(app)).usable === true, 60_000)
  const { client } = await connect(t, url)
  const first = await ok(client, 'opencode_execute_task', { task_description: 'sleep 60', idempotency_key: 'retry-1' })
  execFileSync('docker', ['rmi', tag], { stdio: 'ignore' })
  await app.runnerImage.check()
  t.match(await runnerOf(app), { present: false, usable: false })
  t.match(await ok(client, 'opencode_execute_task', { task_description: 'sleep 60', idempotency_key: 'retry-1' }), { task_id: first.task_id, existing: true }, 'the retry got its task')
  t.match(errorOf(await call(client, 'opencode_execute_task', { task_description: 'sleep 60', idempotency_key: 'retry-2' })), { code: 'unavailable', error: /not on the Docker engine/ })
  await call(client, 'send_task_control', { task_id: first.task_id, control: 'cancel' })
})

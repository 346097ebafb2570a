/**
 * End to end with the real OpenCode CLI in the real runner image (scripts/runner-image.sh), driven
 * by the scripted model server: files written and edited for real, tool uses in the history,
 * progress notifications, tokens, follow-up turns in the same session, a stalled model, path
 * confinement of the file tools, a passed-through secret that never shows, a cloned repository
 * and its diff. Runner containers use host networking to reach the model server on loopback.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import t, { type Test } from 'tap'
import { startModelServer } from './fixtures/model-server.js'
import { listen } from './helpers/app.js'
import { waitFor } from './helpers/docker.js'
import { callTool, connect, toolErrorOf, toolOk } from './helpers/mcp.js'
import { gitServer } from './helpers/git.js'
import { opencodeConfigDir, runnerEnv } from './helpers/opencode.js'
import { settled, type TaskResult } from './helpers/tasks.js'

const SECRET = 'sk-scripted-0123456789abcdef'

type Task = Record<string, unknown> & { task_id: string, status: string }

const call = callTool
const errorOf = toolErrorOf
async function ok (client: Client, name: string, args: Record<string, unknown>): Promise<Record<string, unknown>> {
  const result = await toolOk(client, name, args)
  // a sync answer comes at SYNC_WAIT_MS at the latest: on a busy machine the end is waited for by status
  return name === 'opencode_execute_task' && args.sync ? await settled(client, result as TaskResult) : result
}

async function setup (t: Test, env: Record<string, string> = {}) {
  const model = await startModelServer('127.0.0.1')
  t.teardown(() => model.close())
  // OpenCode's global config, mounted read-only: the scripted model as an OpenAI-compatible provider
  const configDir = opencodeConfigDir(t, model.url, { scripted: 'Scripted', other: 'Other' })
  const { app, url } = await listen(t, {
    env: runnerEnv(configDir, { RUNNER_MODELS_ALLOWED: 'mock/other', RUNNER_ENV_PASSTHROUGH: 'SCRIPTED_SECRET', SCRIPTED_SECRET: SECRET, SYNC_WAIT_MS: '120000', ...env })
  })
  const { client } = await connect(t, url, { 'x-agent-id': 'agent-opencode' })
  return { app, url, client, model }
}

t.test('OpenCode writes and edits a file: files, history, progress, tokens, answer', async (t) => {
  const { client, model } = await setup(t)
  const progress: string[] = []
  const res = await client.callTool({ name: 'opencode_execute_task', arguments: { task_description: '[script:write-edit] create hello.txt and fix its wording', sync: true } }, undefined, {
    timeout: 120_000,
    onprogress: (p) => { if (p.message) progress.push(p.message) }
  }) as CallToolResult
  const task = await settled(client, res.structuredContent as TaskResult) as unknown as Task
  t.match(task, {
    status: 'completed',
    exit_code: 0,
    model: 'mock/scripted',
    answer: 'Done: wrote hello.txt and edited it.',
    files_changed: ['hello.txt'],
    turns: 1,
    session_id: /^ses_/
  })
  const tokens = task.tokens as { input: number, output: number }
  t.ok(tokens.input >= 300 && tokens.output === 30, `token totals over three steps (${JSON.stringify(tokens)})`)
  t.ok(model.requests.some((r) => r.model === 'scripted'), 'the model server was asked by OpenCode')

  const file = await ok(client, 'read_task_file', { task_id: task.task_id, path: 'hello.txt' })
  t.match(file, { path: 'hello.txt', content: 'hello from the real OpenCode\n', binary: false, encoding: 'utf8' })
  const files = await ok(client, 'get_task_files', { task_id: task.task_id })
  t.match(files, { entries: [{ path: 'hello.txt', type: 'file', size: 29 }], truncated: false })

  const history = await ok(client, 'get_task_history', { task_id: task.task_id, limit: 500 }) as { events: Array<{ type: string, data: Record<string, unknown> }> }
  const tools = history.events.filter((e) => e.type === 'tool_use').map((e) => [e.data.tool, e.data.file, e.data.status])
  t.same(tools, [['write', 'hello.txt', 'completed'], ['edit', 'hello.txt', 'completed']], 'the tool uses, in order')
  t.ok(history.events.some((e) => e.type === 'text' && e.data.text === 'Done: wrote hello.txt and edited it.'))
  t.equal(history.events.filter((e) => e.type === 'step_finish').length, 3)
  t.ok(progress.some((m) => m === 'write hello.txt') && progress.some((m) => m === 'edit hello.txt'), `progress names the tool uses (${progress.join(' | ')})`)
})

t.test('the runner image is checked: /health reports its OpenCode version and stays healthy', async (t) => {
  const { app } = await setup(t)
  const runner = async () => (await app.inject({ url: '/health' })).json() as { status: string, runner: { checked_at: string | null } }
  await waitFor(t, 'the runner image checked', async () => (await runner()).runner.checked_at !== null, 120_000)
  // the image already holds a root-owned /tmp/opencode (from its build): the check must not trip on it
  t.match(await runner(), { status: 'healthy', runner: { image: 'letta-opencode-runner:latest', present: true, opencode_version: /^\d+\.\d+\.\d+$/, error: null } })
})

t.test('a follow-up message: queued for the next turn while running, a new turn after the end, same session and workspace', async (t) => {
  const { client } = await setup(t)
  const task = await ok(client, 'opencode_execute_task', { task_description: '[script:slow-answer] think slowly' }) as Task
  await waitFor(t, 'running', async () => (await ok(client, 'get_task_status', { task_id: task.task_id })).status === 'running', 30_000)
  const queued = await ok(client, 'send_task_message', { task_id: task.task_id, message: '[script:follow-up] now append a line' })
  t.match(queued, { delivery: 'queued_for_next_turn', pending_messages: 1 })
  await waitFor(t, 'two turns done', async () => (await ok(client, 'get_task_status', { task_id: task.task_id })).status === 'completed', 90_000)
  const after = await ok(client, 'get_task_status', { task_id: task.task_id })
  t.match(after, { turns: 2, pending_messages: 0, answer: 'Appended a line to notes.txt.' })
  t.equal((await ok(client, 'read_task_file', { task_id: task.task_id, path: 'notes.txt' })).content, 'second turn\n')

  const again = await ok(client, 'send_task_message', { task_id: task.task_id, message: '[script:follow-up] once more' })
  t.match(again, { delivery: 'follow_up_started', status: 'queued' })
  await waitFor(t, 'third turn done', async () => (await ok(client, 'get_task_status', { task_id: task.task_id })).status === 'completed', 60_000)
  const third = await ok(client, 'get_task_status', { task_id: task.task_id })
  t.match(third, { turns: 3, session_id: after.session_id }, 'the same OpenCode session')
  t.equal((await ok(client, 'read_task_file', { task_id: task.task_id, path: 'notes.txt' })).content, 'second turn\nsecond turn\n', 'the same workspace')
  const history = await ok(client, 'get_task_history', { task_id: task.task_id, limit: 500 }) as { events: Array<{ type: string }> }
  t.same(history.events.map((e) => e.type).filter((x) => ['started', 'message_queued', 'turn_finished', 'turn_started', 'completed'].includes(x)),
    ['started', 'message_queued', 'turn_finished', 'turn_started', 'completed', 'message_queued', 'turn_started', 'completed'])
})

t.test('a model that stops answering ends the task as stalled', async (t) => {
  const { client } = await setup(t, { RUNNER_IDLE_TIMEOUT_MS: '4000' })
  const done = await ok(client, 'opencode_execute_task', { task_description: '[script:stall] wait forever', sync: true }) as Task
  t.match(done, { status: 'failed', reason: 'stalled', error: /no output for 4000 ms \(RUNNER_IDLE_TIMEOUT_MS\)/ })
})

t.test('file tools stay inside the workspace', async (t) => {
  const { client } = await setup(t)
  const task = await ok(client, 'opencode_execute_task', { task_description: '[script:symlinks] make links', sync: true, files: [{ path: 'docs/seed.md', content: '# seeded\n' }] }) as Task
  t.equal(task.status, 'completed')
  t.equal((await ok(client, 'read_task_file', { task_id: task.task_id, path: 'docs/seed.md' })).content, '# seeded\n', 'a seeded file')
  t.equal((await ok(client, 'read_task_file', { task_id: task.task_id, path: 'inner-link' })).content, 'inside\n', 'a link inside the workspace is followed')
  for (const [path, code, message] of [
    ['../etc/passwd', 'invalid', /contains "\.\."/],
    ['docs/../../etc/passwd', 'invalid', /contains "\.\."/],
    // a leading "/" is the workspace root (the original contract): the workspace has no etc/passwd
    ['/etc/passwd', 'not_found', /does not exist/],
    ['/../etc/passwd', 'invalid', /contains "\.\."/],
    ['passwd-link', 'invalid', /symlink to \/etc\/passwd, outside the workspace/],
    ['etc-link/passwd', 'invalid', /symlink to \/etc, outside the workspace/],
    ['missing.txt', 'not_found', /does not exist/],
    ['docs', 'invalid', /is a directory/]
  ] as const) {
    const err = errorOf(await call(client, 'read_task_file', { task_id: task.task_id, path }))
    t.match(err, { code, error: message }, `read_task_file ${path}`)
  }
  t.match(errorOf(await call(client, 'get_task_files', { task_id: task.task_id, path: '../' })), { error: /contains "\.\."/ })
  const listing = await ok(client, 'get_task_files', { task_id: task.task_id }) as { entries: Array<{ path: string, type: string, link_target?: string }> }
  t.match(listing.entries.find((e) => e.path === 'passwd-link'), { type: 'symlink', link_target: '/etc/passwd' })
  t.ok(listing.entries.some((e) => e.path === 'docs/seed.md'))
})

t.test('a passed-through secret reaches the agent and never shows in results, history or logs', async (t) => {
  const { client, url, app } = await setup(t)
  const done = await ok(client, 'opencode_execute_task', { task_description: '[script:print-env] show the key', sync: true }) as Task
  t.equal(done.status, 'completed')
  const history = JSON.stringify(await ok(client, 'get_task_history', { task_id: done.task_id, limit: 500 }))
  const logs = JSON.stringify(await ok(client, 'get_task_logs', { task_id: done.task_id, limit: 1_000_000 }))
  const httpLogs = await (await fetch(`${url}/tasks/${done.task_id}/logs`)).text()
  const status = JSON.stringify(done)
  t.match(logs, 'key=[redacted]', 'the variable was set in the container, and redacted on the way out')
  for (const [name, text] of [['history', history], ['logs', logs], ['http logs', httpLogs], ['result', status]]) {
    t.notMatch(text, SECRET, `no secret in the ${name}`)
  }
  const metrics = await app.inject({ url: '/metrics' })
  t.notMatch(metrics.body, SECRET)
})

t.test('a git repository is cloned into the workspace and the diff is returned', async (t) => {
  const repository = await gitServer(t)

  const { client } = await setup(t)
  const done = await ok(client, 'opencode_execute_task', {
    task_description: '[script:write-edit] add a greeting',
    repository: { url: repository, branch: 'main' },
    sync: true
  }) as Task
  t.match(done, { status: 'completed', has_diff: true }, String(done.error))
  t.equal((await ok(client, 'read_task_file', { task_id: done.task_id, path: 'README.md' })).content, '# demo\n', 'the clone is in the workspace')
  const diff = await ok(client, 'get_task_diff', { task_id: done.task_id })
  t.match(diff, { truncated: false, diff: /\+\+\+ b\/hello\.txt\n@@ -0,0 \+1 @@\n\+hello from the real OpenCode/ })

  const bad = errorOf(await call(client, 'opencode_execute_task', { task_description: 'x', repository: { url: 'file:///etc' } }))
  t.match(bad, { code: 'invalid', error: /repository\.url "file:\/\/\/etc" is not a network git URL/ })
  const model = errorOf(await call(client, 'opencode_execute_task', { task_description: 'x', model: 'openai/gpt-x' }))
  t.match(model, { code: 'invalid', error: /model "openai\/gpt-x" is not allowed here; choose one of mock\/scripted, mock\/other/ })
})

/**
 * Shipping the work (issue #18) with real parts: the real OpenCode CLI in the runner image, driven
 * by the scripted model, edits a cloned repository; the service pushes its change to a git server on
 * loopback (git http-backend behind basic auth) from a helper container, or hands it back as a
 * format-patch series that `git am` applies to the original commit. Runner and helper containers use
 * host networking to reach the servers on loopback.
 */
import { execFile } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import t, { type Test } from 'tap'
import { checkConfig, ConfigSchema, parseGitAuthor, parseGitCredentials, type Config } from '../services/config.js'
import { notificationText } from '../services/letta/block.js'
import { LABEL } from '../services/runner/container-spec.js'
import { branchProblem, branchUrl, classify } from '../services/runner/push.js'
import type { TaskRecord } from '../services/tasks/types.js'
import { startModelServer } from './fixtures/model-server.js'
import { build, listen, tempDir } from './helpers/app.js'
import { engine } from './helpers/docker.js'
import { pushServer, type PushServer } from './helpers/git.js'
import { callTool, connect, toolErrorOf, toolOk } from './helpers/mcp.js'
import { opencodeConfigDir, runnerEnv } from './helpers/opencode.js'
import { untilEnded, type TaskResult } from './helpers/tasks.js'

const exec = promisify(execFile)
const TOKEN = 'tok-push-0123456789abcdef'
const WRONG = 'tok-wrong-0123456789abcdef'
const ALICE = 'alice-token-0123456789'
const BOB = 'bob-token-0123456789ab'
const AUTHOR = 'Ship Bot <ship@example.test>'

type Push = { branch: string, commit: string | null, url: string | null, error: string | null, message: string | null }
type Task = TaskResult & { push: Push | null, pushed_branch: string | null }

/** The scripted OpenCode service, with credentials for `good` (right token) and `bad` (wrong token). */
async function setup (t: Test, good: PushServer, bad?: PushServer) {
  const model = await startModelServer('127.0.0.1')
  t.teardown(() => model.close())
  const credentials = [`http://pusher:${TOKEN}@${good.host}`, ...(bad ? [`http://pusher:${WRONG}@${bad.host}`] : [])].join('\n')
  const { app, url } = await listen(t, {
    env: runnerEnv(opencodeConfigDir(t, model.url), {
      MCP_AUTH_TOKENS: `alice:${ALICE},bob:${BOB}`,
      RUNNER_GIT_AUTHOR: AUTHOR,
      GIT_CREDENTIALS: credentials,
      SYNC_WAIT_MS: '1000'
    })
  })
  const { client } = await connect(t, url, { authorization: `Bearer ${ALICE}`, 'x-agent-id': 'agent-ship' })
  return { app, url, client }
}

async function submit (client: Client, args: Record<string, unknown>): Promise<string> {
  return (await toolOk(client, 'opencode_execute_task', args)).task_id as string
}

/** Clones the server's repository into a new directory (git runs asynchronously: the server is in this process). */
async function cloneOf (t: Test, server: PushServer): Promise<(...args: string[]) => Promise<string>> {
  const dir = tempDir(t, 'lop-clone-')
  await exec('git', ['clone', '-q', server.url, join(dir, 'c')])
  return async (...args) => (await exec('git', args, { cwd: join(dir, 'c'), env: { ...process.env, GIT_COMMITTER_NAME: 'c', GIT_COMMITTER_EMAIL: 'c@c' } })).stdout
}

t.test('a completed task\'s change is pushed to a new branch by the configured author; the agent never had the credential', async (t) => {
  const server = await pushServer(t, 'pusher', TOKEN)
  const { client, url } = await setup(t, server)
  const original = server.git('rev-parse', 'main').trim()
  const id = await submit(client, {
    task_description: '[script:write-edit] add a greeting',
    repository: { url: server.url, branch: 'main', push: { branch: 'opencode/greeting', commit_message: 'Add a greeting' } }
  })
  // every container of the task's turn, inspected while it exists: its environment
  const envs: string[][] = []
  const seen = new Set<string>()
  let task: Task | undefined
  for (;;) {
    for (const c of await engine.listContainers({ [LABEL.task]: id, [LABEL.role]: 'run' })) {
      if (seen.has(c.Id)) continue
      const info = await engine.inspectContainer(c.Id).catch(() => undefined)
      if (info) { seen.add(c.Id); envs.push(info.Config.Env ?? []) }
    }
    const view = (await toolOk(client, 'get_task_status', { task_id: id })) as Task
    if (!['queued', 'running'].includes(view.status)) { task = view; break }
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.match(task, { status: 'completed', pushed_branch: 'opencode/greeting', push: { branch: 'opencode/greeting', commit: /^[0-9a-f]{40}$/, url: null, error: null } }, String(task.error))
  t.ok(envs.length >= 1, 'the agent\'s container was inspected')
  for (const env of envs) {
    t.notMatch(env.join('\n'), TOKEN, 'the agent\'s container environment has no push credential')
    t.notOk(env.some((e) => e.startsWith('LOP_GIT_') || e.startsWith('GIT_CONFIG_')), 'nor the push helper\'s git settings')
  }
  // on the server: the branch, at the pushed commit, with the agent's change on top of the original commit
  t.equal(server.git('rev-parse', 'refs/heads/opencode/greeting').trim(), task.push!.commit)
  t.equal(server.git('show', 'opencode/greeting:hello.txt'), 'hello from the real OpenCode\n', 'the agent\'s change')
  t.equal(server.git('rev-parse', 'opencode/greeting^').trim(), original, 'on top of the original commit')
  t.equal(server.git('log', '-1', '--format=%an <%ae>|%cn <%ce>|%s', 'opencode/greeting').trim(), `${AUTHOR}|${AUTHOR}|Add a greeting`, 'author, committer and message')
  t.equal(server.git('rev-parse', 'main').trim(), original, 'the default branch is untouched')

  const history = await toolOk(client, 'get_task_history', { task_id: id, limit: 500 }) as { events: Array<{ type: string, message: string }> }
  t.match(history.events.find((e) => e.type === 'pushed'), { message: `pushed: opencode/greeting at ${task.push!.commit!.slice(0, 12)}` })
  t.ok(history.events.findIndex((e) => e.type === 'pushed') < history.events.findIndex((e) => e.type === 'completed'), 'pushed before the end was announced')
  const http = await (await fetch(`${url}/tasks/${id}`, { headers: { authorization: `Bearer ${ALICE}` } })).json() as Task
  t.match(http, { pushed_branch: 'opencode/greeting', push: { commit: task.push!.commit } }, 'the HTTP view carries it too')
  t.notMatch(JSON.stringify([task, history, http]), TOKEN, 'no credential in the view or the history')

  // a follow-up turn: its change is pushed on top of the branch the task made (a fast-forward, no force)
  await toolOk(client, 'send_task_message', { task_id: id, message: '[script:follow-up] append a line' })
  const second = await untilEnded(client, id) as Task
  t.match(second, { status: 'completed', turns: 2, pushed_branch: 'opencode/greeting', push: { error: null } }, String(second.error))
  t.not(second.push!.commit, task.push!.commit, 'a new commit')
  t.equal(server.git('rev-parse', 'opencode/greeting^').trim(), task.push!.commit, 'the branch moved forward by one commit')
  t.equal(server.git('show', 'opencode/greeting:notes.txt'), 'second turn\n')
})

t.test('a wrong token: push.error auth, the task completed; get_task_patch applies with git am to the original commit', async (t) => {
  const good = await pushServer(t, 'pusher', TOKEN)
  const bad = await pushServer(t, 'pusher', TOKEN)
  const { client, url } = await setup(t, good, bad)
  const id = await submit(client, {
    task_description: '[script:write-edit] add a greeting',
    repository: { url: bad.url, push: { branch: 'opencode/greeting' } }
  })
  const task = await untilEnded(client, id) as Task
  t.match(task, { status: 'completed', error: null, pushed_branch: null, push: { branch: 'opencode/greeting', commit: null, error: 'auth', message: /Authentication failed/ } }, String(task.error))
  t.notMatch(JSON.stringify(task), WRONG, 'the token is not in the message')
  t.ok(bad.refused() > 0, 'the server refused the push')
  t.equal(bad.git('branch', '--list', 'opencode/*').trim(), '', 'no branch on the server')

  // the patch instead: a format-patch series that applies to the original commit
  const patch = await toolOk(client, 'get_task_patch', { task_id: id }) as { patch: string, commits: number, truncated: boolean }
  t.match(patch, { commits: 1, truncated: false, patch: /^From [0-9a-f]{40} /, status: 'completed' })
  t.match(patch.patch, `From: ${AUTHOR}`)
  t.match(patch.patch, /Subject: \[PATCH\] \[script:write-edit\] add a greeting/)
  const git = await cloneOf(t, bad)
  const mbox = join(tempDir(t, 'lop-patch-'), 'series.mbox')
  writeFileSync(mbox, patch.patch)
  await git('am', mbox)
  t.equal(await git('log', '-1', '--format=%an <%ae>'), `${AUTHOR}\n`, 'the commit keeps the configured author')
  t.equal(await git('show', 'HEAD:hello.txt'), 'hello from the real OpenCode\n', 'the agent\'s change, applied')
  t.equal((await git('rev-parse', 'HEAD^')).trim(), bad.git('rev-parse', 'main').trim(), 'on the original commit')

  // the HTTP endpoint gives the same series; another principal's task is not found
  const res = await fetch(`${url}/tasks/${id}/patch`, { headers: { authorization: `Bearer ${ALICE}` } })
  t.equal(res.status, 200)
  // made again (the commit's time, hence its id, may differ)
  const stable = (p: string) => p.replace(/^From [0-9a-f]{40} /m, '').replace(/^Date: .*$/m, '')
  t.equal(stable((await res.json() as { patch: string }).patch), stable(patch.patch), 'the same series')
  t.equal((await fetch(`${url}/tasks/${id}/patch`, { headers: { authorization: `Bearer ${BOB}` } })).status, 404, 'bob cannot read alice\'s patch')
  const { client: bob } = await connect(t, url, { authorization: `Bearer ${BOB}` })
  t.match(toolErrorOf(await callTool(bob, 'get_task_patch', { task_id: id })), { code: 'not_found' })
})

t.test('an existing branch is not overwritten without force; the default branch is never force-pushed', async (t) => {
  const server = await pushServer(t, 'pusher', TOKEN)
  // a branch someone else pushed
  const git = await cloneOf(t, server)
  await git('-c', 'user.name=o', '-c', 'user.email=o@o', 'commit', '-q', '--allow-empty', '-m', 'theirs')
  await exec('git', ['push', '-q', server.url.replace('http://', `http://pusher:${TOKEN}@`), 'HEAD:refs/heads/taken'], { cwd: (await git('rev-parse', '--show-toplevel')).trim() })
  const taken = server.git('rev-parse', 'taken').trim()
  const main = server.git('rev-parse', 'main').trim()

  const { client } = await setup(t, server)
  const [exists, defaultForced, forced] = await Promise.all([
    { branch: 'taken' },
    { branch: 'main', force: true },
    { branch: 'taken', force: true }
  // in either order the push without force finds the branch taken (by the other push or by its owner)
  ].map((push) => submit(client, { task_description: '[script:write-edit] add a greeting', repository: { url: server.url, push } })))
  const first = await untilEnded(client, exists) as Task
  t.match(first, { status: 'completed', pushed_branch: null, push: { branch: 'taken', error: 'exists', message: /branch taken exists on the remote.*give force/ } }, String(first.error))
  const second = await untilEnded(client, defaultForced) as Task
  t.match(second, { status: 'completed', pushed_branch: null, push: { branch: 'main', error: 'default_branch', message: /main is the remote's default branch: it is never force-pushed/ } })
  t.equal(server.git('rev-parse', 'main').trim(), main, 'the default branch is untouched')
  const third = await untilEnded(client, forced) as Task
  t.match(third, { status: 'completed', pushed_branch: 'taken', push: { error: null } }, String(third.error))
  t.equal(server.git('rev-parse', 'taken').trim(), third.push!.commit, 'with force, the branch is overwritten')
  t.not(third.push!.commit, taken)
})

t.test('bad push arguments are tool errors, never a server error', async (t) => {
  const server = await pushServer(t, 'pusher', TOKEN)
  const { client } = await setup(t, server)
  const refused = async (push: Record<string, unknown>, url = server.url) => toolErrorOf(await callTool(client, 'opencode_execute_task', { task_description: 'x', repository: { url, push } }))
  t.match(await refused({ branch: 'a..b' }), { code: 'invalid', error: /repository\.push\.branch "a\.\.b" is not a branch name: it must not contain "\.\." or "\/\/"/ })
  t.match(await refused({ branch: 'feature/x.lock' }), { code: 'invalid', error: /\.lock/ })
  t.match(await refused({ branch: 'ok' }, 'http://127.0.0.1:1/other.git'), { code: 'invalid', error: /no push credential for 127\.0\.0\.1:1 \(GIT_CREDENTIALS\); leave push out and use get_task_patch/ })
  t.match(await refused({ branch: 'ok' }, 'git@example.test:o/r.git'), { code: 'invalid', error: /needs an http\(s\) repository URL/ })
  const bad = await callTool(client, 'opencode_execute_task', { task_description: 'x', repository: { url: server.url, push: { branch: 'x'.repeat(300) } } })
  t.ok(bad.isError, 'an over-long branch is refused by the schema')
})

t.test('config: GIT_CREDENTIALS and RUNNER_GIT_AUTHOR are validated, the token never echoed', async (t) => {
  t.same(parseGitCredentials(`# a comment\nhttps://${TOKEN}@git.example.test\nhttps://me:p%40ss@git.other.test:8443`), [
    { protocol: 'https:', host: 'git.example.test', username: 'x-access-token', password: TOKEN },
    { protocol: 'https:', host: 'git.other.test:8443', username: 'me', password: 'p@ss' }
  ])
  t.throws(() => parseGitCredentials(`https://git.example.test/${TOKEN}`), /GIT_CREDENTIALS entry 1 is not a credential: expected https:\/\/TOKEN@host/)
  t.throws(() => parseGitCredentials('https://a:b@h.test https://c:d@h.test'), /entry 2: a second credential for h\.test/)
  t.same(parseGitAuthor('Ship Bot <ship@example.test>'), { name: 'Ship Bot', email: 'ship@example.test' })
  t.throws(() => parseGitAuthor('ship@example.test'), /RUNNER_GIT_AUTHOR="ship@example.test" is not a git author: expected Name <email>/)
  await t.rejects(build(t, { env: { GIT_CREDENTIALS: `ftp://${TOKEN}@h.test` } }), /Invalid configuration: GIT_CREDENTIALS entry 1 is not a credential/)
  const err = await build(t, { env: { GIT_CREDENTIALS: `ftp://${TOKEN}@h.test` } }).catch((e: Error) => e.message)
  t.notMatch(err, TOKEN, 'the token is not in the error')
  await t.rejects(build(t, { env: { RUNNER_GIT_AUTHOR: 'nobody' } }), /RUNNER_GIT_AUTHOR="nobody" is not a git author/)
  const dir = tempDir(t)
  const file = join(dir, 'credentials')
  writeFileSync(file, `https://${TOKEN}@git.example.test\n`)
  const app = await build(t, { env: { GIT_CREDENTIALS_FILE: file, RUNNER_IMAGE: 'letta-opencode-test-agent:latest' } })
  t.equal(app.config.GIT_CREDENTIALS, `https://${TOKEN}@git.example.test`, 'read from GIT_CREDENTIALS_FILE')
  t.ok(ConfigSchema.properties.GIT_CREDENTIALS, 'a documented variable')
  t.doesNotThrow(() => checkConfig({ ...app.config } as Config))
})

t.test('branch names, forge URLs, failure reasons and the Letta completion message', async (t) => {
  for (const ok of ['main', 'opencode/fix-1', 'a.b/c_d']) t.equal(branchProblem(ok), null, ok)
  for (const bad of ['', '-x', 'a b', 'a..b', 'a/', '/a', 'a.', '.a', 'a/.b', 'x.lock', 'a@{1}', '@', 'a~1', 'a^', 'a:b', 'a?', 'a*', 'a[b', 'a\\b', 'a//b']) t.type(branchProblem(bad), 'string', JSON.stringify(bad))
  t.equal(branchUrl('https://github.com/o/r.git', 'opencode/x'), 'https://github.com/o/r/tree/opencode/x')
  t.equal(branchUrl('https://gitlab.com/g/s/r.git', 'b'), 'https://gitlab.com/g/s/r/-/tree/b')
  t.equal(branchUrl('http://127.0.0.1:9/r.git', 'b'), null)
  t.equal(classify("fatal: Authentication failed for 'http://h/r.git/'"), 'auth')
  t.equal(classify(' ! [remote rejected] x -> x (pre-receive hook declined)'), 'rejected')
  t.equal(classify("fatal: unable to access 'https://h/': Could not resolve host: h"), 'network')
  const task = { id: 'task_1', description: 'd', status: 'completed', started_at: 0, finished_at: 1000, error: null, turns: 1, result: null } as unknown as TaskRecord
  t.match(notificationText({ ...task, push: { branch: 'b', commit: 'c'.repeat(40), url: 'https://github.com/o/r/tree/b', error: null, message: null, at: 0 } }), `Pushed branch b (commit ${'c'.repeat(40)}): https://github.com/o/r/tree/b.`)
  t.match(notificationText({ ...task, push: { branch: 'b', commit: null, url: null, error: 'auth', message: 'Authentication failed', at: 0 } }), 'Push to branch b failed (auth): Authentication failed — get the change with get_task_patch.')
})

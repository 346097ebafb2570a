/**
 * Budgets with the real OpenCode CLI in the runner image and the scripted model (which reports
 * usage at every step; a model cost in OpenCode's config makes OpenCode report a cost too):
 * a task over max_tokens or max_steps is stopped at the step end that crossed it (reason budget,
 * the numbers in its error, its container gone); a ceiling cannot be widened; a daily agent budget
 * stops a running task and refuses the next submission with its reset time, per principal, across
 * a restart. Runner containers use host networking to reach the model server on loopback.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import Fastify from 'fastify'
import t, { type Test } from 'tap'
import configPlugin from '../plugins/config.js'
import { buildBlockValue, notificationText } from '../services/letta/block.js'
import { LABEL } from '../services/runner/container-spec.js'
import { dailyOver, DAY_MS } from '../services/tasks/budget.js'
import { SqliteTaskStore } from '../services/tasks/store.js'
import { startModelServer } from './fixtures/model-server.js'
import { build, listen, tempDir } from './helpers/app.js'
import { engine, waitFor } from './helpers/docker.js'
import { callTool, connect, toolErrorOf, toolOk } from './helpers/mcp.js'
import { opencodeConfigDir, runnerEnv } from './helpers/opencode.js'
import { untilEnded } from './helpers/tasks.js'

type Budget = { max_cost: number | null, max_tokens: number | null, max_steps: number | null, spent: { cost: number, tokens: number, steps: number } }
type Task = Record<string, unknown> & { task_id: string, status: string, reason: string | null, error: string | null, budget: Budget | null }
type History = { events: Array<{ type: string, data: Record<string, unknown> }> }

const ALICE = 'alice-token-0123456789abcdef'
const BOB = 'bob-token-0123456789abcdef0'

async function setup (t: Test, env: Record<string, string> = {}, cost = false) {
  const model = await startModelServer('127.0.0.1')
  t.teardown(() => model.close())
  // 10000 per million tokens: a step of the scripted model (~110 tokens) costs about 1.1
  const configDir = opencodeConfigDir(t, model.url, { scripted: cost ? { name: 'Scripted', cost: { input: 10_000, output: 10_000 } } : 'Scripted' })
  const base = runnerEnv(configDir, env)
  const { app, url } = await listen(t, { env: base })
  return { app, url, base }
}

const client = async (t: Test, url: string, headers: Record<string, string> = {}) => (await connect(t, url, { 'x-agent-id': 'agent-budget', ...headers })).client
const submit = async (c: Client, args: Record<string, unknown>) => await toolOk(c, 'opencode_execute_task', args) as Task
const ended = async (c: Client, id: string) => await untilEnded(c, id, 240_000) as unknown as Task
const history = async (c: Client, id: string) => await toolOk(c, 'get_task_history', { task_id: id, limit: 500 }) as History

/** The task's containers are removed once it ended. */
async function containerGone (t: Test, id: string) {
  await waitFor(t, 'the task container removed', async () => (await engine.listContainers({ [LABEL.task]: id })).length === 0, 60_000)
  t.pass('the container is gone')
}

t.test('max_tokens below what the script spends: stopped at the step end that crossed it, reason budget', async (t) => {
  const { app, url } = await setup(t, { RUNNER_MAX_TOKENS: '100000' })
  const c = await client(t, url)
  const task = await submit(c, { task_description: '[script:budget-steps] take three steps', max_tokens: 150 })
  t.match(task.budget, { max_tokens: 150, max_cost: null, max_steps: null }, 'the view shows the limit asked for')
  const done = await ended(c, task.task_id)
  t.match(done, { status: 'failed', reason: 'budget', error: /^budget: stopped after step 2: tokens \d+ > max_tokens 150/ })
  t.ok(done.budget!.spent.tokens > 150 && done.budget!.spent.steps === 2, `spent vs limits in the view (${JSON.stringify(done.budget)})`)
  const events = (await history(c, task.task_id)).events
  t.equal(events.filter((e) => e.type === 'step_finish').length, 2, 'no step finished after the one that crossed the limit')
  const types = events.map((e) => e.type)
  t.ok(types.indexOf('budget') > types.lastIndexOf('step_finish'), 'the budget stop is in the history, after the step end that crossed the limit')
  t.match(events.find((e) => e.type === 'budget')?.data, { error: /^budget: stopped after step 2/ })
  const file = await toolOk(c, 'read_task_file', { task_id: task.task_id, path: 'steps.txt' })
  t.equal(file.content, 'one\ntwo\n', 'the third step\'s tool never finished')
  await containerGone(t, task.task_id)

  // what the agent is told: the Letta block's summary and the completion message carry the numbers
  const record = (await app.tasks.store.get(task.task_id))!
  t.match(notificationText(record), /OpenCode task \S+ failed after [\d.]+ s\.\n[^]*Error: budget: stopped after step 2: tokens \d+ > max_tokens 150/)
  const block = JSON.parse(buildBlockValue(record, [], { chars: 50_000, maxEvents: 50 })) as { artifacts: Array<{ status: string, error: string }> }
  t.match(block.artifacts[0], { status: 'failed', error: /^budget: stopped after step 2/ })

  // the budget is used up: a follow-up turn is refused with the numbers
  const more = toolErrorOf(await callTool(c, 'send_task_message', { task_id: task.task_id, message: 'go on' }))
  t.match(more, { code: 'budget', error: /used up its budget: its \d+ tokens reached max_tokens 150/ })
})

t.test('max_steps: the agent that wants a step past the limit is stopped; the ceiling is the default; widening is refused', async (t) => {
  const { url } = await setup(t, { RUNNER_MAX_STEPS: '2', RUNNER_MAX_COST: '5' })
  const c = await client(t, url)
  const wider = toolErrorOf(await callTool(c, 'opencode_execute_task', { task_description: 'x', max_steps: 3 }))
  t.match(wider, { code: 'invalid', field: 'max_steps', ceiling: 2, error: /max_steps=3 is above this server's ceiling of 2 \(RUNNER_MAX_STEPS\)/ })
  const costly = toolErrorOf(await callTool(c, 'opencode_execute_task', { task_description: 'x', max_cost: 5.5 }))
  t.match(costly, { code: 'invalid', field: 'max_cost', error: /max_cost=5.5 is above this server's ceiling of 5 \(RUNNER_MAX_COST\)/ })

  const task = await submit(c, { task_description: '[script:budget-steps] take three steps' })
  t.match(task.budget, { max_steps: 2, max_cost: 5, max_tokens: null }, 'the ceilings apply when the caller asks for nothing')
  const done = await ended(c, task.task_id)
  t.match(done, { status: 'failed', reason: 'budget', error: /^budget: stopped after step 2: steps 2 of max_steps 2, and the agent wanted another/ })
  t.equal((await history(c, task.task_id)).events.filter((e) => e.type === 'step_finish').length, 2)
  await containerGone(t, task.task_id)

  // a lower limit than the ceiling is taken; a task within its budget completes as before
  const small = await submit(c, { task_description: '[script:answer] answer', max_steps: 1 })
  t.match(await ended(c, small.task_id), { status: 'completed', reason: 'exit', budget: { max_steps: 1, spent: { steps: 1 } } })
})

t.test('a follow-up turn spends the same budget: stopped in the second turn once the total crosses max_tokens', async (t) => {
  const { url } = await setup(t)
  const c = await client(t, url)
  const task = await submit(c, { task_description: '[script:answer] answer', max_tokens: 300 })
  const first = await ended(c, task.task_id)
  t.match(first, { status: 'completed', budget: { max_tokens: 300, spent: { steps: 1 } } })
  t.ok(first.budget!.spent.tokens < 300)
  t.match(await toolOk(c, 'send_task_message', { task_id: task.task_id, message: '[script:budget-steps] now take three steps' }), { delivery: 'follow_up_started' })
  const done = await ended(c, task.task_id)
  // about 110 tokens a step: the first turn's step, then the second turn's first step, then its second crosses 300
  t.match(done, { status: 'failed', reason: 'budget', turns: 2, error: /^budget: stopped after step 3: tokens \d+ > max_tokens 300/ })
  await containerGone(t, task.task_id)
})

t.test('daily agent budget: a running task that crosses it is stopped; the next submission is refused with the reset time; per principal; after a restart', async (t) => {
  const dataDir = tempDir(t, 'lop-budget-data-')
  const env = { AGENT_DAILY_COST: '2', MCP_AUTH_TOKENS: `alice:${ALICE},bob:${BOB}`, DATA_DIR: dataDir }
  const { app, url, base } = await setup(t, env, true)
  const bob = await client(t, url, { authorization: `Bearer ${BOB}` })
  const alice = await client(t, url, { authorization: `Bearer ${ALICE}` })

  // two steps of about 1.1 each: the second crosses the agent's budget of 2
  const task = await submit(bob, { task_description: '[script:budget-steps] take three steps' })
  t.equal(task.budget, null, 'no per-task budget')
  const done = await ended(bob, task.task_id)
  t.match(done, { status: 'failed', reason: 'budget', error: /^budget: stopped after step 2: the daily budget of agent agent-budget is used up: spent [\d.]+ of 2 in the last 24 h \(AGENT_DAILY_COST\)/ })
  t.ok((done.cost as number) >= 2, `OpenCode reported the cost (${String(done.cost)})`)
  await containerGone(t, task.task_id)

  const refused = toolErrorOf(await callTool(bob, 'opencode_execute_task', { task_description: '[script:answer] answer' })) as Record<string, unknown>
  t.match(refused, { code: 'budget', scope: 'agent', budget: 2, error: /^Refused: the daily budget of agent agent-budget is used up: spent [\d.]+ of 2 .* it frees up at \d{4}-\d\d-\d\dT/ })
  const resetsAt = Date.parse(refused.resets_at as string)
  t.ok(resetsAt > Date.now() + DAY_MS - 10 * 60_000 && resetsAt <= Date.now() + DAY_MS, `it resets 24 h after the spending (${String(refused.resets_at)})`)
  t.ok((refused.spent as number) >= 2)

  // another principal's spending is not this one's: alice's agent of the same id runs
  const hers = await submit(alice, { task_description: '[script:answer] answer' })
  t.match(await ended(alice, hers.task_id), { status: 'completed' })
  const list = await toolOk(alice, 'list_tasks', { cost_total: true })
  t.ok((list.cost_total as number) > 0 && (list.cost_total as number) < 2, `alice's cost total is hers alone (${String(list.cost_total)})`)

  const metrics = (await app.inject({ url: '/metrics', headers: { authorization: `Bearer ${BOB}` } })).body
  t.match(metrics, /lop_cost_total\{principal="bob",agent_id="agent-budget"\} [1-9]/, 'cost by principal and agent')
  t.match(metrics, /lop_tokens_total\{principal="alice",agent_id="agent-budget"\} [1-9]/, 'tokens by principal and agent')

  // a restart on the same data directory: the spending is in the store
  await bob.close()
  await alice.close()
  await app.close()
  const again = await build(t, { env: { ...base, ...env } })
  const res = await again.inject({ url: '/tasks?cost_total=true', headers: { authorization: `Bearer ${BOB}` } })
  t.equal(res.statusCode, 200)
  t.ok((res.json() as { cost_total: number }).cost_total >= 2, 'the HTTP list sums the cost over the filter')
  await again.listen({ host: '127.0.0.1', port: 0 })
  const address = again.server.address() as { port: number }
  const bob2 = await client(t, `http://127.0.0.1:${address.port}`, { authorization: `Bearer ${BOB}` })
  const still = toolErrorOf(await callTool(bob2, 'opencode_execute_task', { task_description: '[script:answer] answer' })) as Record<string, unknown>
  t.match(still, { code: 'budget', resets_at: refused.resets_at }, 'still refused after the restart, with the same reset time')
})

t.test('the principal budget: refused once used up, freed when the oldest spending leaves the window', async (t) => {
  const store = new SqliteTaskStore(tempDir(t))
  t.teardown(() => store.close())
  const config = { RUNNER_MAX_COST: 0, RUNNER_MAX_TOKENS: 0, RUNNER_MAX_STEPS: 0, AGENT_DAILY_COST: 0, PRINCIPAL_DAILY_COST: 3 }
  const now = Date.now()
  const spend = (step: number, at: number, cost: number, principal = 'p1') => store.addSpend({ task_id: 'task_a', step, principal, agent_id: null, at, cost, tokens: 100 })
  await spend(1, now - DAY_MS - 1000, 50) // outside the window
  await spend(2, now - 5 * 3600_000, 1)
  await spend(3, now - 3 * 3600_000, 1.5)
  await spend(3, now - 3 * 3600_000, 1.5) // the same step read again counts once
  await spend(1, now - 1000, 10, 'p2') // another principal
  t.equal(await dailyOver(config, store, 'p1', null, now), undefined, '2.5 of 3: within the budget')
  await spend(4, now - 3600_000, 1)
  t.match(await dailyOver(config, store, 'p1', null, now), { scope: 'principal', variable: 'PRINCIPAL_DAILY_COST', spent: 3.5, budget: 3, resets_at: now - 5 * 3600_000 + DAY_MS },
    'used up; free again once the oldest step (1) leaves the window: 2.5 < 3')
  t.equal(await store.deleteSpendBefore(now - DAY_MS), 1, 'retention prunes spending past the window')
})

t.test('budget variables: bounded and finite, 0 for none; a bad value names the variable and what is expected', async (t) => {
  const load = async (env: Record<string, string>) => {
    const app = Fastify({ logger: false })
    await app.register(configPlugin, { env, envFile: false })
    await app.ready()
    const config = app.config
    await app.close()
    return config
  }
  t.match(await load({}), { RUNNER_MAX_COST: 0, RUNNER_MAX_TOKENS: 0, RUNNER_MAX_STEPS: 0, AGENT_DAILY_COST: 0, PRINCIPAL_DAILY_COST: 0 })
  t.match(await load({ RUNNER_MAX_COST: '2.5', AGENT_DAILY_COST: '20', PRINCIPAL_DAILY_COST: '100', RUNNER_MAX_STEPS: '50' }), { RUNNER_MAX_COST: 2.5, AGENT_DAILY_COST: 20, PRINCIPAL_DAILY_COST: 100, RUNNER_MAX_STEPS: 50 })
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ RUNNER_MAX_COST: '-1' }, /^Invalid configuration: RUNNER_MAX_COST="-1": expected a cost from 0 to 1000000/],
    [{ RUNNER_MAX_COST: 'Infinity' }, /RUNNER_MAX_COST="Infinity": expected a cost from 0 to 1000000/],
    [{ AGENT_DAILY_COST: 'NaN' }, /AGENT_DAILY_COST="NaN": expected a cost from 0 to 1000000000/],
    [{ PRINCIPAL_DAILY_COST: '1e12' }, /PRINCIPAL_DAILY_COST="1e12": expected a cost from 0 to 1000000000/],
    [{ RUNNER_MAX_TOKENS: '1.5' }, /RUNNER_MAX_TOKENS="1.5": expected an integer from 0 to 1000000000000/],
    [{ RUNNER_MAX_STEPS: '100001' }, /RUNNER_MAX_STEPS="100001": expected an integer from 0 to 100000/]
  ]
  for (const [env, message] of cases) await t.rejects(load(env), message)
})

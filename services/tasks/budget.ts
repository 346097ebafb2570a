/**
 * Budgets: a task's own limits (max_cost, max_tokens, max_steps, under the server's RUNNER_MAX_*
 * ceilings) and the rolling 24 h budgets of each agent and principal (AGENT_DAILY_COST,
 * PRINCIPAL_DAILY_COST), read from the store's spending so they hold across restarts. The engine
 * checks them at submission and at every step end; the messages here are what callers read.
 */
import type { Config } from '../config.js'
import type { TaskStore } from './store.js'
import { TaskError, type Limits, type Spent, type TaskRecord } from './types.js'

export type BudgetConfig = Pick<Config, 'RUNNER_MAX_COST' | 'RUNNER_MAX_TOKENS' | 'RUNNER_MAX_STEPS' | 'AGENT_DAILY_COST' | 'PRINCIPAL_DAILY_COST'>

export const DAY_MS = 86_400_000

const CEILINGS = { max_cost: 'RUNNER_MAX_COST', max_tokens: 'RUNNER_MAX_TOKENS', max_steps: 'RUNNER_MAX_STEPS' } as const

/** A cost as people read it: at most 6 decimals, no trailing zeros. */
export const money = (n: number) => String(Number(n.toFixed(6)))

/**
 * The task's limits: what the caller asked for, or the server's ceiling; a caller may lower a
 * ceiling, never raise it. Null when no limit applies at all (the task runs as before budgets).
 */
export function taskLimits (config: BudgetConfig, asked: Partial<Limits>): Limits | null {
  const limits: Limits = { max_cost: null, max_tokens: null, max_steps: null }
  for (const field of Object.keys(CEILINGS) as Array<keyof Limits>) {
    const variable = CEILINGS[field]
    const ceiling = config[variable]
    const value = asked[field] ?? undefined
    if (value !== undefined && ceiling > 0 && value > ceiling) {
      throw new TaskError('invalid', `${field}=${value} is above this server's ceiling of ${ceiling} (${variable}); ask for ${ceiling} or less, or leave ${field} out to get the ceiling`, { field, ceiling })
    }
    limits[field] = value ?? (ceiling > 0 ? ceiling : null)
  }
  return limits.max_cost === null && limits.max_tokens === null && limits.max_steps === null ? null : limits
}

/** What the task spent over its finished turns (its stored result). */
export function spentOf (task: Pick<TaskRecord, 'result'>): Spent {
  const r = task.result
  return { cost: r?.cost ?? 0, tokens: (r?.tokens.input ?? 0) + (r?.tokens.output ?? 0), steps: r?.steps ?? 0 }
}

/**
 * Why a step end puts the task over its limits, or undefined. `continues`: the agent asked for
 * another step (a step that ends on the step limit with more to do is over it).
 */
export function overLimits (limits: Limits | null | undefined, spent: Spent, continues: boolean): string | undefined {
  if (!limits) return undefined
  const over: string[] = []
  if (limits.max_cost !== null && spent.cost > limits.max_cost) over.push(`cost ${money(spent.cost)} > max_cost ${money(limits.max_cost)}`)
  if (limits.max_tokens !== null && spent.tokens > limits.max_tokens) over.push(`tokens ${spent.tokens} > max_tokens ${limits.max_tokens}`)
  if (limits.max_steps !== null && (spent.steps > limits.max_steps || (spent.steps === limits.max_steps && continues))) {
    over.push(`steps ${spent.steps} of max_steps ${limits.max_steps}${continues ? ', and the agent wanted another' : ''}`)
  }
  if (over.length === 0) return undefined
  return `budget: stopped after step ${spent.steps}: ${over.join('; ')} (spent: cost ${money(spent.cost)}, ${spent.tokens} tokens, ${spent.steps} steps)`
}

/** Limits a finished turn already used up: a follow-up turn cannot start on them. */
export function exhausted (limits: Limits | null | undefined, spent: Spent): string | undefined {
  if (!limits) return undefined
  if (limits.max_cost !== null && spent.cost >= limits.max_cost) return `its cost ${money(spent.cost)} reached max_cost ${money(limits.max_cost)}`
  if (limits.max_tokens !== null && spent.tokens >= limits.max_tokens) return `its ${spent.tokens} tokens reached max_tokens ${limits.max_tokens}`
  if (limits.max_steps !== null && spent.steps >= limits.max_steps) return `its ${spent.steps} steps reached max_steps ${limits.max_steps}`
  return undefined
}

export interface DailyState { scope: 'agent' | 'principal', variable: string, who: string, spent: number, budget: number, resets_at: number }

/**
 * The first rolling daily budget the caller has used up (spent ≥ budget over the last 24 h), with
 * when it frees up again: when enough of the oldest spending leaves the window. Undefined when none is.
 */
export async function dailyOver (config: BudgetConfig, store: Pick<TaskStore, 'spending'>, principal: string, agentId: string | null, now = Date.now()): Promise<DailyState | undefined> {
  const checks: Array<[DailyState['scope'], string, number, string | undefined]> = [
    ['agent', 'AGENT_DAILY_COST', config.AGENT_DAILY_COST, agentId ?? undefined],
    ['principal', 'PRINCIPAL_DAILY_COST', config.PRINCIPAL_DAILY_COST, undefined]
  ]
  for (const [scope, variable, budget, agent] of checks) {
    if (budget <= 0 || (scope === 'agent' && agent === undefined)) continue
    const spending = await store.spending(principal, now - DAY_MS, agent)
    if (spending.cost < budget) continue
    let left = spending.cost
    let resetsAt = now + DAY_MS
    for (const step of spending.steps) {
      left -= step.cost
      resetsAt = step.at + DAY_MS
      if (left < budget) break
    }
    return { scope, variable, who: scope === 'agent' ? `agent ${agent}` : `principal ${principal}`, spent: spending.cost, budget, resets_at: resetsAt }
  }
  return undefined
}

export function dailyMessage (d: DailyState): string {
  return `the daily budget of ${d.who} is used up: spent ${money(d.spent)} of ${money(d.budget)} in the last 24 h (${d.variable}); it frees up at ${new Date(d.resets_at).toISOString()}`
}

/** The refusal of a submission (or a follow-up turn) over a daily budget: a tool error with the numbers. */
export function dailyRefusal (d: DailyState): TaskError {
  return new TaskError('budget', `Refused: ${dailyMessage(d)}; retry after that`, {
    scope: d.scope, spent: Number(d.spent.toFixed(6)), budget: d.budget, resets_at: new Date(d.resets_at).toISOString(), retry_after_s: Math.max(1, Math.ceil((d.resets_at - Date.now()) / 1000))
  })
}

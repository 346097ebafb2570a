/**
 * Letta integration through the official SDK (@letta-ai/letta-client): for each task of an agent,
 * a workspace memory block (created, attached, updated while the task runs, detached after a delay,
 * deleted with the task's workspace) and one completion message through the asynchronous message
 * API, so the service never waits on an agent step.
 *
 * It is an outbox: the task engine only marks what changed (in the store, so nothing is lost across
 * restarts); a worker writes it out, coalescing updates (at most one write per task per flush
 * interval), with the SDK's retries (backoff and jitter on 408/409/429/5xx and timeouts) and then its
 * own backoff while Letta is down. A Letta outage never fails, blocks or slows a task.
 */
import Letta, { APIError } from '@letta-ai/letta-client'
import type { Config } from '../config.js'
import type { TaskStore } from '../tasks/store.js'
import { TERMINAL, type TaskRecord } from '../tasks/types.js'
import type { LettaOutboxStore, LettaSyncRow } from './outbox-store.js'
import { BLOCK_DESCRIPTION, blockLabel, buildBlockValue, notificationRef, notificationText } from './block.js'

export type LettaConfig = Pick<Config, 'LETTA_API_URL' | 'LETTA_API_TOKEN' | 'WORKSPACE_BLOCK_LIMIT' | 'WORKSPACE_MAX_EVENTS' | 'LETTA_DETACH_DELAY_MS' |
'LETTA_FLUSH_INTERVAL_MS' | 'LETTA_TIMEOUT_MS' | 'LETTA_MAX_RETRIES' | 'LETTA_PROBE_INTERVAL_MS'>

interface Logger { info: (obj: object, msg: string) => void, warn: (obj: object, msg: string) => void }

export interface LettaState {
  configured: boolean
  reachable: boolean
  version: string | null
  last_error: string | null
  checked_at: string | null
}

/** How many history events a block write reads (the block keeps WORKSPACE_MAX_EVENTS of them). */
const EVENTS_READ = 500
const BATCH = 8
const MAX_BACKOFF_MS = 60_000

const describe = (err: unknown): string => err instanceof APIError
  ? `Letta answered ${err.status ?? 'no response'}: ${err.message}`
  : (err as Error).message

export class LettaSync {
  readonly client: Letta
  state: LettaState = { configured: true, reachable: false, version: null, last_error: 'not checked yet', checked_at: null }
  private timer?: NodeJS.Timeout
  private probeTimer?: NodeJS.Timeout
  private ticking?: Promise<void>
  private stopped = false
  private readonly changedIds = new Set<string>()
  /** What the task engine told, written to the outbox in the order told (a task's row before its end). */
  private telling: Promise<void> = Promise.resolve()

  constructor (
    /** The tasks' reads (a block shows the task and its recent events). */
    private readonly store: Pick<TaskStore, 'get' | 'events'>,
    /** The outbox: what is to be written out, per task. */
    readonly outbox: LettaOutboxStore,
    private readonly config: LettaConfig,
    private readonly log: Logger,
    private readonly onFailure: (kind: 'block' | 'notification') => void = () => {}
  ) {
    this.client = new Letta({
      baseURL: config.LETTA_API_URL,
      apiKey: config.LETTA_API_TOKEN,
      timeout: config.LETTA_TIMEOUT_MS,
      maxRetries: config.LETTA_MAX_RETRIES
    })
  }

  // --- what the task engine tells ----------------------------------------------------------------

  /**
   * Written to the outbox after what was told before; a write that fails is logged (the catch-up of
   * the next pass finds an ended task whose end the agent was not told of).
   */
  private tell (what: string, taskId: string, write: () => Promise<void>): void {
    this.telling = this.telling.then(write).catch((err: unknown) => this.log.warn({ err, taskId }, `letta outbox: ${what} not recorded; the worker catches up`))
  }

  /** A task of an agent: its block is to be made. Tasks without an agent id have no block. */
  track (task: TaskRecord): void {
    const agentId = task.agent_id
    if (!agentId) return
    this.tell('task', task.id, () => this.outbox.track(task.id, agentId))
  }

  /** Something to show changed: written out at the next flush (noted in memory: an agent's burst of events costs nothing here). */
  changed (taskId: string): void {
    this.changedIds.add(taskId)
  }

  /** The task (or a follow-up turn of it) ended: final block value, then the notification, once per end. */
  ended (task: TaskRecord): void {
    this.tell('task end', task.id, async () => {
      const row = await this.outbox.get(task.id)
      if (!row) return
      const told = row.notified_turn >= task.turns && row.notify === 'sent'
      await this.outbox.update(task.id, { dirty: 1, notify: told ? 'sent' : row.notify === 'sending' ? 'sending' : 'pending', next_attempt_at: 0 })
      this.kick().catch(() => {})
    })
  }

  pending (): Promise<number> {
    return this.outbox.pending()
  }

  // --- the worker ------------------------------------------------------------------------------

  async start (): Promise<void> {
    // a new process owes nothing to the backoff of the last one
    await this.outbox.retryNow()
    this.timer = setInterval(() => { this.kick().catch(() => {}) }, this.config.LETTA_FLUSH_INTERVAL_MS).unref()
    this.probe().catch(() => {})
    this.probeTimer = setInterval(() => { this.probe().catch(() => {}) }, this.config.LETTA_PROBE_INTERVAL_MS).unref()
  }

  async stop (): Promise<void> {
    this.stopped = true
    clearInterval(this.timer)
    clearInterval(this.probeTimer)
    await this.telling
    await this.ticking
  }

  /**
   * Runs a pass over the due rows unless one is running. Never rejects: a failed pass (the store
   * failing, say) is logged and the next one runs at the next interval.
   */
  kick (): Promise<void> {
    if (this.stopped) return Promise.resolve()
    this.ticking ??= this.tick()
      .catch((err: unknown) => this.log.warn({ err }, 'letta worker pass failed; it runs again at the next interval'))
      .finally(() => { this.ticking = undefined })
    return this.ticking
  }

  /** Writes out everything due now; resolves when done (tests and shutdown wait on it). */
  async flush (): Promise<void> {
    await this.telling
    await this.ticking
    await this.kick()
  }

  async probe (): Promise<LettaState> {
    try {
      const health = await this.client.health({ timeout: Math.min(5_000, this.config.LETTA_TIMEOUT_MS), maxRetries: 0 })
      const was = this.state.reachable
      this.state = { configured: true, reachable: true, version: health.version ?? null, last_error: null, checked_at: new Date().toISOString() }
      if (!was) {
        this.log.info({ version: health.version }, 'letta reachable')
        // Letta is back: what waited in backoff goes out now
        await this.outbox.retryNow().catch((err: unknown) => this.log.warn({ err }, 'letta outbox: backoff not reset'))
        this.kick().catch(() => {})
      }
    } catch (err) {
      const was = this.state.reachable
      this.state = { ...this.state, reachable: false, last_error: describe(err), checked_at: new Date().toISOString() }
      if (was) this.log.warn({ error: this.state.last_error }, 'letta unreachable; task updates wait in the outbox')
    }
    return this.state
  }

  private async tick (): Promise<void> {
    const changed = [...this.changedIds]
    this.changedIds.clear()
    for (const id of changed) await this.outbox.markDirty(id)
    await this.outbox.catchUp()
    const due = await this.outbox.due(Date.now(), BATCH, this.config.LETTA_DETACH_DELAY_MS)
    await Promise.all(due.map((row) => this.process(row)))
  }

  /** One task's outbox entry: the block (create, attach, update, detach, delete), then the notification, each on its own. */
  private async process (row: LettaSyncRow): Promise<void> {
    const task = await this.store.get(row.task_id)
    if (!task) return
    const failures: Array<{ step: 'block' | 'notification', message: string, unknownAgent: boolean }> = []
    try {
      if (task.workspace_removed_at) {
        if (row.block_id) await this.client.blocks.delete(row.block_id).catch((err: unknown) => { if (!(err instanceof APIError && err.status === 404)) throw err })
        await this.outbox.update(task.id, { deleted: 1, attached: 0, dirty: 0 })
        return
      }
      row = await this.syncBlock(task, row)
    } catch (err) {
      const unknownAgent = err instanceof APIError && err.status === 404 && !row.attached && row.block_id !== null
      failures.push({
        step: 'block',
        unknownAgent,
        message: unknownAgent ? `Letta agent ${row.agent_id} was not found (the block ${blockLabel(task.id)} could not be attached); the task runs on: check the agent_id` : describe(err)
      })
      // a block write that failed is owed again
      if (row.dirty) await this.outbox.update(task.id, { dirty: 1 })
    }
    // the notification does not wait for the block: an agent hears of the end even if its block is stuck
    if (row.notify === 'pending' || row.notify === 'sending') {
      try {
        await this.notify(task, row)
      } catch (err) {
        failures.push({ step: 'notification', unknownAgent: false, message: describe(err) })
      }
    }
    if (failures.length === 0) {
      if (row.error || row.attempts) await this.outbox.update(task.id, { error: null, attempts: 0, next_attempt_at: 0 })
      return
    }
    const attempts = row.attempts + 1
    // exponential backoff with jitter; an unknown agent is retried rarely
    // (whole milliseconds: the column is an integer, and PostgreSQL's BIGINT refuses a fraction)
    const delay = Math.round(failures.some((f) => f.unknownAgent) ? MAX_BACKOFF_MS * 5 : Math.min(MAX_BACKOFF_MS, 500 * 2 ** Math.min(attempts, 10)) * (0.75 + Math.random() * 0.25))
    await this.outbox.update(task.id, { error: failures.map((f) => f.message).join('; '), attempts, next_attempt_at: Date.now() + delay })
    for (const f of failures) {
      this.onFailure(f.step)
      this.log.warn({ taskId: task.id, agentId: row.agent_id, step: f.step, attempts, error: f.message }, 'letta update failed; it will be retried')
    }
  }

  /**
   * Creates, attaches, updates and (when due) detaches the task's block; the row as it now stands,
   * updated in place step by step (a failed step's caller sees what was done before it: a block made
   * in this pass whose attach fails is an unknown agent, not a generic error).
   */
  private async syncBlock (task: TaskRecord, row: LettaSyncRow): Promise<LettaSyncRow> {
    if (!row.block_id) {
      const block = await this.client.blocks.create({
        label: blockLabel(task.id),
        value: await this.value(task),
        limit: this.config.WORKSPACE_BLOCK_LIMIT,
        description: BLOCK_DESCRIPTION,
        metadata: { source: 'letta-opencode-plugin', task_id: task.id }
      })
      Object.assign(row, { block_id: block.id, dirty: 0 })
      await this.outbox.update(task.id, { block_id: block.id, dirty: 0 })
    }
    if (!row.attached && !row.detached) {
      await this.client.agents.blocks.attach(row.block_id as string, { agent_id: row.agent_id })
      await this.outbox.update(task.id, { attached: 1 })
      Object.assign(row, { attached: 1 })
    }
    if (row.dirty) {
      // cleared before the read: a change during the write marks it again
      await this.outbox.update(task.id, { dirty: 0 })
      await this.client.blocks.update(row.block_id as string, { value: await this.value(await this.store.get(task.id) as TaskRecord) })
    }
    if (row.attached && TERMINAL.has(task.status) && task.finished_at && Date.now() - task.finished_at >= this.config.LETTA_DETACH_DELAY_MS) {
      await this.client.agents.blocks.detach(row.block_id as string, { agent_id: row.agent_id })
      await this.outbox.update(task.id, { attached: 0, detached: 1 })
      Object.assign(row, { attached: 0, detached: 1 })
    }
    return row
  }

  /**
   * The completion message, exactly once: `sending` is written before the call; a restart that finds
   * `sending` first looks for the message among the agent's recent messages, and sends only if absent.
   * The call itself is not retried by the SDK (a timed-out send may have arrived).
   */
  private async notify (task: TaskRecord, row: LettaSyncRow): Promise<void> {
    const current = await this.store.get(task.id) as TaskRecord
    if (row.notify === 'sending' && await this.delivered(row.agent_id, notificationRef(current))) {
      await this.outbox.update(task.id, { notify: 'sent', notified_turn: current.turns })
      return
    }
    await this.outbox.update(task.id, { notify: 'sending' })
    await this.client.agents.messages.createAsync(row.agent_id, { messages: [{ role: 'user', content: notificationText(current) }] }, { maxRetries: 0 })
    await this.outbox.update(task.id, { notify: 'sent', notified_turn: current.turns })
    this.log.info({ taskId: task.id, agentId: row.agent_id, turn: current.turns }, 'letta notified of the task end')
  }

  /** Whether the agent's recent messages hold the notification with this reference. */
  private async delivered (agentId: string, ref: string): Promise<boolean> {
    const page = await this.client.agents.messages.list(agentId, { limit: 100, order: 'desc' })
    return page.getPaginatedItems().some((m) => JSON.stringify(m).includes(ref))
  }

  private async value (task: TaskRecord): Promise<string> {
    return buildBlockValue(task, (await this.store.events(task.id, 0, EVENTS_READ, 'desc')).reverse(), { chars: this.config.WORKSPACE_BLOCK_LIMIT, maxEvents: this.config.WORKSPACE_MAX_EVENTS })
  }
}

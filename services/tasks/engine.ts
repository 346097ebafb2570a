/**
 * The task engine: submit (validate → idempotency → store queued → semaphore), run (container
 * create → start → follow logs → wait | timeout | cancel → remove), and the reads and controls
 * scoped to the caller's principal. Every state change is written to the store before the side
 * effect that follows it, so a restart can reconcile.
 */
import { createHash, randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { mkdirSync } from 'node:fs'
import { join } from 'node:path'
import type { Config } from '../config.js'
import type { LogChunk } from '../docker/demux.js'
import type { DockerEngine } from '../docker/engine.js'
import { containerSpec, LABEL } from './container-spec.js'
import { BoundedOutput, CappedLogFile, followLog, readLogRange } from './output.js'
import { QueueFullError, Semaphore } from './semaphore.js'
import type { TaskStore } from './store.js'
import { TaskError, TERMINAL, type EndReason, type TaskEvent, type TaskRecord, type TaskStatus } from './types.js'

export type EngineConfig = Pick<Config, 'RUNNER_IMAGE' | 'RUNNER_CPU_LIMIT' | 'RUNNER_MEMORY_LIMIT' | 'RUNNER_NETWORK' | 'RUNNER_PIDS_LIMIT' |
'RUNNER_USER' | 'RUNNER_STOP_GRACE_S' | 'RUNNER_TIMEOUT_MS' | 'RUNNER_MAX_TIMEOUT_MS' | 'MAX_CONCURRENT_TASKS' | 'MAX_QUEUED_TASKS' |
'ENFORCE_IDEMPOTENCY' | 'IDEMPOTENCY_TTL_MS' | 'TASK_OUTPUT_LIMIT' | 'TASK_LOG_LIMIT' | 'DATA_DIR' | 'ORPHAN_GRACE_MS' | 'SHUTDOWN_GRACE_MS'>

export interface Logger { info: (obj: object, msg: string) => void, warn: (obj: object, msg: string) => void, error: (obj: object, msg: string) => void }

export interface SubmitArgs { task_description: string, agent_id?: string, idempotency_key?: string, timeout_ms?: number }
export interface Caller { principal: string, agentId?: string }

interface Live {
  release?: () => void
  containerId?: string
  ending?: EndReason
  timer?: NodeJS.Timeout
  /** Run time left before the timeout; the clock stops while paused. */
  remainingMs: number
  resumedAt: number
}

/** What the engine tells its listeners (metrics, Letta): each after the change is in the store. */
export interface TaskEngineEvents {
  queued: [TaskRecord]
  started: [TaskRecord]
  ended: [TaskRecord]
  orphan_removed: [containerId: string]
}

/** Read through a call: `live.ending` is set by `control()` while `run()` awaits the engine. */
const cancelled = (live: Live): boolean => live.ending === 'cancelled'

export class TaskEngine extends EventEmitter<TaskEngineEvents> {
  private readonly semaphore: Semaphore
  private readonly live = new Map<string, Live>()
  private readonly endWaiters = new Map<string, Set<(t: TaskRecord) => void>>()
  private readonly logDir: string
  private accepting = true
  /** Aborted on close: monitors stop following; their tasks stay running in the store for recovery. */
  private readonly closing = new AbortController()

  constructor (
    private readonly store: TaskStore,
    private readonly docker: DockerEngine,
    private readonly config: EngineConfig,
    private readonly log: Logger
  ) {
    super()
    this.semaphore = new Semaphore(config.MAX_CONCURRENT_TASKS, config.MAX_QUEUED_TASKS)
    this.logDir = join(config.DATA_DIR, 'logs')
    mkdirSync(this.logDir, { recursive: true })
  }

  get running (): number { return this.semaphore.running }
  countByStatus (): Partial<Record<TaskStatus, number>> { return this.store.countByStatus() }
  get draining (): boolean { return !this.accepting }
  get queued (): number { return this.semaphore.waiting }

  logPath (id: string): string {
    return join(this.logDir, `${id}.log`)
  }

  // --- submit ---------------------------------------------------------------------------------

  submit (caller: Caller, args: SubmitArgs): { task: TaskRecord, existing: boolean } {
    if (!this.accepting) throw new TaskError('draining', 'The service is shutting down and accepts no new tasks; retry against the restarted service')
    const description = args.task_description.trim()
    if (!description) throw new TaskError('invalid', 'task_description is empty: describe the development task to run')
    const timeout = args.timeout_ms ?? this.config.RUNNER_TIMEOUT_MS
    if (timeout > this.config.RUNNER_MAX_TIMEOUT_MS) {
      throw new TaskError('invalid', `timeout_ms=${timeout} is above the limit of ${this.config.RUNNER_MAX_TIMEOUT_MS} (RUNNER_MAX_TIMEOUT_MS); ask for less`)
    }
    const agentId = args.agent_id ?? caller.agentId ?? null
    const create = (): TaskRecord => ({
      id: `task_${randomUUID()}`,
      principal: caller.principal,
      agent_id: agentId,
      description,
      status: 'queued',
      timeout_ms: timeout,
      created_at: Date.now(),
      started_at: null,
      finished_at: null,
      exit_code: null,
      reason: null,
      error: null,
      output: null,
      output_truncated: false,
      output_bytes: 0,
      container_id: null,
      idempotency_key: args.idempotency_key ?? null
    })
    // a full queue refuses before anything is stored
    if (this.semaphore.running >= this.semaphore.limit && this.semaphore.waiting >= this.semaphore.maxWaiting) {
      throw this.queueFull()
    }

    let task: TaskRecord
    if (this.config.ENFORCE_IDEMPOTENCY && args.idempotency_key) {
      const argsHash = createHash('sha256').update(JSON.stringify([description, timeout])).digest('hex')
      const claim = this.store.claimIdempotent({ principal: caller.principal, agent_id: agentId ?? '', key: args.idempotency_key, args_hash: argsHash, ttlMs: this.config.IDEMPOTENCY_TTL_MS }, create)
      if (claim.existing) {
        if (claim.args_hash !== argsHash) {
          throw new TaskError('conflict', `idempotency_key "${args.idempotency_key}" was already used for different arguments (task ${claim.task.id}); use a new key for a different task`, { task_id: claim.task.id })
        }
        return { task: claim.task, existing: true }
      }
      task = claim.task
    } else {
      task = create()
      this.store.insert(task)
    }
    this.store.addEvent(task.id, 'queued', { agent_id: task.agent_id, timeout_ms: task.timeout_ms })
    this.log.info({ taskId: task.id, agentId: task.agent_id, principal: task.principal }, 'task queued')
    this.emit('queued', task)
    this.schedule(task)
    return { task, existing: false }
  }

  private queueFull (): TaskError {
    return new TaskError('queue_full', `queue full: ${this.semaphore.running} tasks running (MAX_CONCURRENT_TASKS=${this.semaphore.limit}) and ${this.semaphore.waiting} waiting (MAX_QUEUED_TASKS=${this.semaphore.maxWaiting}); retry in a minute or cancel a task`, {
      running: this.semaphore.running, queued: this.semaphore.waiting, retry_after_s: 60
    })
  }

  private schedule (task: TaskRecord): void {
    const live: Live = { remainingMs: task.timeout_ms, resumedAt: 0 }
    this.live.set(task.id, live)
    this.semaphore.acquire(task.id).then(async (release) => {
      live.release = release
      try {
        // draining: a task that has not started stays queued in the store for the next start
        if (!this.accepting) return
        await this.run(task.id, live)
      } finally {
        release()
      }
    }, (err: Error) => {
      // withdrawn (cancelled while queued) or the queue filled up between check and acquire
      if (err instanceof QueueFullError) return this.finish(task.id, { status: 'failed', reason: 'engine_error', error: err.message })
    }).catch((err: Error) => this.log.error({ taskId: task.id, err }, 'task run failed'))
  }

  // --- run ------------------------------------------------------------------------------------

  private async run (id: string, live: Live): Promise<void> {
    const task = this.store.get(id)
    if (!task || task.status !== 'queued') return
    // cancelled after the slot was granted but before the run began
    if (cancelled(live)) return this.finish(id, { status: 'cancelled', reason: 'cancelled', error: 'cancelled before it started' })
    const startedAt = Date.now()
    this.store.update(id, { status: 'running', started_at: startedAt })
    this.store.addEvent(id, 'started', {})
    this.log.info({ taskId: id, agentId: task.agent_id, principal: task.principal, queuedMs: startedAt - task.created_at }, 'task started')
    this.emit('started', { ...task, status: 'running', started_at: startedAt })
    let containerId: string
    let output: AsyncGenerator<LogChunk>
    try {
      const spec = containerSpec(this.config, { id, agent_id: task.agent_id, argv: [task.description] }, this.store.owner)
      containerId = (await this.docker.createContainer(spec, `lop-${id.slice(5)}`)).Id
      this.store.update(id, { container_id: containerId })
      live.containerId = containerId
      if (live.ending) throw new Error('cancelled before start')
      output = await this.docker.attachContainer(containerId, this.closing.signal)
      await this.docker.startContainer(containerId)
      // a cancel that came while the container was starting found nothing running to stop
      if (live.ending) this.stop(live)
    } catch (err) {
      const removal = async () => { if (live.containerId) await this.docker.removeContainer(live.containerId, { force: true }).catch(() => {}) }
      if (cancelled(live)) await this.finish(id, { status: 'cancelled', reason: 'cancelled' }, removal)
      else await this.finish(id, { status: 'failed', reason: 'engine_error', error: (err as Error).message }, removal)
      return
    }
    await this.monitor(id, containerId, live, output)
  }

  /**
   * Follows a started container to its end and records the result. `stream` is the attach stream
   * of a run; a container re-attached after a restart is read through its logs instead.
   */
  private async monitor (id: string, containerId: string, live: Live, stream?: AsyncIterable<LogChunk>): Promise<void> {
    live.resumedAt = Date.now()
    this.armTimeout(id, live)
    const output = new BoundedOutput(this.config.TASK_OUTPUT_LIMIT)
    const logFile = new CappedLogFile(this.logPath(id), this.config.TASK_LOG_LIMIT)
    let exitCode: number | null = null
    let oom = false
    let engineError: string | undefined
    try {
      const follow = (async () => {
        const chunks = stream ?? this.docker.containerLogs(containerId, { follow: true, signal: this.closing.signal })
        for await (const chunk of chunks) {
          output.push(chunk.data)
          await logFile.write(chunk.data)
        }
      })()
      const [, exit] = await Promise.all([follow, this.docker.waitContainer(containerId, this.closing.signal)])
      exitCode = exit.StatusCode
      // a successful exit needs no post-mortem; a failed one may be the OOM killer's work
      oom = exitCode !== 0 && (await this.docker.inspectContainer(containerId)).State.OOMKilled
    } catch (err) {
      engineError = (err as Error).message
    } finally {
      clearTimeout(live.timer)
      await logFile.close()
    }
    if (this.closing.signal.aborted) return
    const result = { exit_code: exitCode, output: output.text(), output_truncated: output.truncated, output_bytes: output.total }
    const reason: EndReason = live.ending ?? (oom ? 'oom' : engineError ? 'engine_error' : 'exit')
    const status: TaskStatus = reason === 'timeout'
      ? 'timeout'
      : reason === 'cancelled' ? 'cancelled' : reason === 'exit' && exitCode === 0 ? 'completed' : 'failed'
    const errors: Partial<Record<EndReason, string>> = {
      timeout: `timed out after ${this.store.get(id)?.timeout_ms} ms; the container was stopped`,
      oom: `killed for running out of memory (RUNNER_MEMORY_LIMIT=${this.config.RUNNER_MEMORY_LIMIT})`,
      engine_error: engineError ?? 'engine error',
      interrupted: `the service shut down before the task finished (SHUTDOWN_GRACE_MS=${this.config.SHUTDOWN_GRACE_MS}); its container was stopped; submit it again`,
      exit: status === 'failed' ? `exited with code ${exitCode}` : undefined
    }
    const error = errors[reason] ?? null
    // persisted first, then the container removed, then the waiters told: a sync caller sees a clean engine
    await this.finish(id, { status, reason, error, ...result }, () =>
      this.docker.removeContainer(containerId, { force: true }).catch((err: Error) => this.log.warn({ taskId: id, err }, 'container removal failed')))
  }

  private armTimeout (id: string, live: Live): void {
    clearTimeout(live.timer)
    live.timer = setTimeout(() => {
      if (live.ending) return
      live.ending = 'timeout'
      this.store.addEvent(id, 'timeout', {})
      this.stop(live)
    }, Math.max(0, live.remainingMs))
  }

  private stop (live: Live): void {
    if (!live.containerId) return
    const id = live.containerId
    // a paused container cannot take SIGTERM: resume it first
    this.docker.unpauseContainer(id).catch(() => {}).finally(() => {
      this.docker.stopContainer(id, this.config.RUNNER_STOP_GRACE_S).catch(() => this.docker.killContainer(id).catch(() => {}))
    })
  }

  private async finish (id: string, fields: Partial<TaskRecord> & { status: TaskStatus }, cleanup?: () => Promise<void>): Promise<void> {
    if (this.closing.signal.aborted) return
    const task = this.store.get(id)
    if (!task || TERMINAL.has(task.status)) return
    const finishedAt = Date.now()
    this.store.update(id, { ...fields, finished_at: finishedAt })
    this.store.addEvent(id, fields.status, { reason: fields.reason ?? null, exit_code: fields.exit_code ?? null, error: fields.error ?? null })
    this.live.delete(id)
    const done = this.store.get(id) as TaskRecord
    const duration = done.started_at ? finishedAt - done.started_at : 0
    this.log.info({ taskId: id, agentId: done.agent_id, principal: done.principal, status: done.status, reason: done.reason, durationMs: duration }, 'task ended')
    await cleanup?.()
    this.emit('ended', done)
    for (const resolve of this.endWaiters.get(id) ?? []) resolve(done)
    this.endWaiters.delete(id)
  }

  // --- reads and controls ---------------------------------------------------------------------

  /** The caller's task; another principal's task is not found. */
  get (principal: string, id: string): TaskRecord {
    const task = this.store.get(id)
    if (!task || task.principal !== principal) throw new TaskError('not_found', `No task ${id}: check the task_id (list_tasks shows yours)`)
    return task
  }

  history (principal: string, id: string, after = 0, limit = 100): { task: TaskRecord, events: TaskEvent[] } {
    const task = this.get(principal, id)
    return { task, events: this.store.events(id, after, limit) }
  }

  list (principal: string, filter: { status?: TaskStatus, agent_id?: string, limit?: number, offset?: number }) {
    return this.store.list({ principal, status: filter.status, agent_id: filter.agent_id, limit: filter.limit ?? 20, offset: filter.offset ?? 0 })
  }

  /** A byte range of the task's full log (kept on disk up to TASK_LOG_LIMIT). */
  async logs (principal: string, id: string, offset = 0, limit = 65_536): Promise<{ task: TaskRecord, data: Buffer, size: number }> {
    const task = this.get(principal, id)
    return { task, ...await readLogRange(this.logPath(id), offset, limit) }
  }

  /**
   * The task's log from `offset` to its current end; with `follow`, on as it is written, until the
   * task has ended and all of it was read.
   */
  streamLogs (principal: string, id: string, opts: { follow: boolean, offset?: number, signal: AbortSignal }): { task: TaskRecord, chunks: AsyncGenerator<Buffer> } {
    const task = this.get(principal, id)
    const ended = opts.follow ? () => TERMINAL.has((this.store.get(id) as TaskRecord).status) : () => true
    return { task, chunks: followLog(this.logPath(id), ended, opts.signal, opts.offset) }
  }

  /** Resolves with the task once it has ended, or with its current state after `ms`. */
  async waitForEnd (id: string, ms: number, signal?: AbortSignal): Promise<TaskRecord> {
    const current = this.store.get(id) as TaskRecord
    if (TERMINAL.has(current.status)) return current
    return new Promise((resolve) => {
      const set = this.endWaiters.get(id) ?? new Set()
      this.endWaiters.set(id, set)
      const done = (t: TaskRecord) => { clearTimeout(timer); set.delete(done); resolve(t) }
      const timer = setTimeout(() => done(this.store.get(id) as TaskRecord), ms)
      signal?.addEventListener('abort', () => done(this.store.get(id) as TaskRecord), { once: true })
      set.add(done)
    })
  }

  async control (principal: string, id: string, action: 'cancel' | 'pause' | 'resume'): Promise<TaskRecord> {
    const task = this.get(principal, id)
    if (TERMINAL.has(task.status)) throw new TaskError('conflict', `Task ${id} already ended (${task.status}); nothing to ${action}`)
    const live = this.live.get(id)
    if (action === 'cancel') {
      this.store.addEvent(id, 'cancel_requested', {})
      if (task.status === 'queued' && this.semaphore.withdraw(id, new Error('cancelled'))) {
        await this.finish(id, { status: 'cancelled', reason: 'cancelled', error: 'cancelled while queued' })
      } else if (live) {
        live.ending = 'cancelled'
        this.stop(live)
        return this.waitForEnd(id, (this.config.RUNNER_STOP_GRACE_S + 10) * 1000)
      }
      return this.store.get(id) as TaskRecord
    }
    if (!live?.containerId || (action === 'pause' && task.status !== 'running') || (action === 'resume' && task.status !== 'paused')) {
      throw new TaskError('conflict', `Task ${id} is ${task.status}; ${action} needs a ${action === 'pause' ? 'running' : 'paused'} task`)
    }
    if (action === 'pause') {
      await this.docker.pauseContainer(live.containerId)
      clearTimeout(live.timer)
      live.remainingMs -= Date.now() - live.resumedAt
      this.store.update(id, { status: 'paused' })
    } else {
      await this.docker.unpauseContainer(live.containerId)
      live.resumedAt = Date.now()
      this.armTimeout(id, live)
      this.store.update(id, { status: 'running' })
    }
    this.store.addEvent(id, action === 'pause' ? 'paused' : 'resumed', { remaining_ms: live.remainingMs })
    this.log.info({ taskId: id, agentId: task.agent_id, principal, remainingMs: live.remainingMs }, action === 'pause' ? 'task paused' : 'task resumed')
    return this.store.get(id) as TaskRecord
  }

  // --- lifecycle ------------------------------------------------------------------------------

  /**
   * Start-up recovery: a task that was running is re-attached if its container still runs, else
   * failed with the reason; queued tasks are queued again; labelled containers with no task are removed.
   */
  async recover (): Promise<void> {
    for (const task of this.store.withStatus('running', 'paused')) {
      const state = task.container_id ? await this.docker.inspectContainer(task.container_id).then((i) => i.State, () => undefined) : undefined
      if (state && (state.Running || state.Paused)) {
        if (state.Paused) await this.docker.unpauseContainer(task.container_id as string).catch(() => {})
        this.store.update(task.id, { status: 'running' })
        this.store.addEvent(task.id, 'reattached', {})
        const elapsed = Date.now() - (task.started_at ?? Date.now())
        const live: Live = { containerId: task.container_id as string, remainingMs: task.timeout_ms - elapsed, resumedAt: Date.now() }
        this.live.set(task.id, live)
        this.semaphore.acquire(task.id).then(async (release) => {
          live.release = release
          try { await this.monitor(task.id, task.container_id as string, live) } finally { release() }
        }).catch(() => {})
      } else {
        await this.finish(task.id, { status: 'failed', reason: 'interrupted', error: 'the service stopped while the task ran and its container is gone; submit it again' },
          async () => { if (task.container_id) await this.docker.removeContainer(task.container_id, { force: true }).catch(() => {}) })
      }
    }
    for (const task of this.store.withStatus('queued')) this.schedule(task)
    await this.reconcile()
  }

  /** Removes labelled containers that belong to no live task, once they are older than the grace period. */
  async reconcile (): Promise<number> {
    const containers = await this.docker.listContainers({ [LABEL.service]: 'letta-opencode-plugin', [LABEL.owner]: this.store.owner })
    let removed = 0
    for (const c of containers) {
      const taskId = c.Labels[LABEL.task]
      if (taskId && this.live.has(taskId)) continue
      if (Date.now() - c.Created * 1000 < this.config.ORPHAN_GRACE_MS) continue
      const gone = await this.docker.removeContainer(c.Id, { force: true }).then(() => true, () => false)
      if (!gone) continue
      removed++
      this.log.warn({ taskId, container: c.Id }, 'removed orphan task container')
      this.emit('orphan_removed', c.Id)
    }
    return removed
  }

  /**
   * Graceful drain (SIGTERM): no new task is accepted and none that waits is started (queued tasks
   * stay queued in the store and resume on the next start). Running tasks get `graceMs` to end;
   * then their containers are stopped and they are recorded as failed with reason `interrupted`.
   */
  async drain (graceMs: number): Promise<void> {
    this.accepting = false
    const running = () => [...this.live.entries()].filter(([, live]) => live.containerId)
    const ends = (ids: string[], ms: number) => Promise.all(ids.map((id) => this.waitForEnd(id, ms)))
    if (running().length === 0) return
    this.log.info({ running: running().length, graceMs }, 'draining: waiting for running tasks')
    await ends(running().map(([id]) => id), graceMs)
    const left = running()
    if (left.length === 0) return
    this.log.warn({ tasks: left.map(([id]) => id) }, 'draining: grace period over, stopping the tasks still running')
    for (const [id, live] of left) {
      live.ending = 'interrupted'
      this.store.addEvent(id, 'interrupted', { grace_ms: graceMs })
      this.stop(live)
    }
    await ends(left.map(([id]) => id), (this.config.RUNNER_STOP_GRACE_S + 10) * 1000)
  }

  /** Stops following: tasks still running stay running in the store, for recovery on the next start. */
  close (): void {
    this.accepting = false
    this.closing.abort()
    for (const live of this.live.values()) clearTimeout(live.timer)
  }
}

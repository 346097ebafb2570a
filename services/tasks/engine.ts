/**
 * The task service: submit (validate → idempotency → store queued → semaphore), the turns of a task
 * while it holds a slot (each turn's container, clocks and capture are a Run, run.ts; follow-up
 * messages continue the same OpenCode session in the same workspace), the reads and controls scoped
 * to the caller's principal, and recovery, reconcile and drain. Every state change is written to
 * the store before the side effect that follows it, so a restart can reconcile; every status write
 * goes through lifecycle.transition().
 */
import { createHash, randomUUID } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { mkdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import type { Config } from '../config.js'
import { ConfigError, parseGitAuthor, parseGitCredentials, splitList, type GitCredential } from '../config.js'
import type { LogChunk } from '../docker/demux.js'
import type { DockerEngine } from '../docker/engine.js'
import { VERSION_TIMEOUT_MS, type RunnerImageProbe } from '../runner/image.js'
import { opencodeArgv, type ParsedEvent } from '../runner/opencode.js'
import { redactFile } from '../runner/workspace.js'
import { Workspaces } from '../runner/workspaces.js'
import { parseAllowList, ruleText, widening } from '../runner/egress.js'
import { containerSpec, LABEL, SERVICE_LABEL } from '../runner/container-spec.js'
import { followLog, readLogRange } from '../runner/output.js'
import { branchProblem, credentialFor, Shipper, type PushRequest } from '../runner/push.js'
import { dailyMessage, dailyOver, dailyRefusal, DAY_MS, exhausted, overLimits, spentOf, taskLimits } from './budget.js'
import { QueueFullError, Semaphore } from './semaphore.js'
import type { ClusterQueue } from './cluster.js'
import { IllegalTransitionError, transition, turnEnd } from './lifecycle.js'
import { Run, type TurnOutcome } from './run.js'
import type { RemoteMethod, RemoteNodes } from './remote.js'
import { patiently, WriteRefusedError, type TaskStore } from './store.js'
import { TaskError, TERMINAL, type EndReason, type TaskEvent, type TaskRecord, type TaskStatus } from './types.js'

export type EngineConfig = Pick<Config, 'RUNNER_IMAGE' | 'RUNNER_CPU_LIMIT' | 'RUNNER_MEMORY_LIMIT' | 'RUNNER_NETWORK' | 'RUNNER_PIDS_LIMIT' |
'RUNNER_USER' | 'RUNNER_STOP_GRACE_S' | 'RUNNER_TIMEOUT_MS' | 'RUNNER_MAX_TIMEOUT_MS' | 'MAX_CONCURRENT_TASKS' | 'MAX_QUEUED_TASKS' |
'ENFORCE_IDEMPOTENCY' | 'IDEMPOTENCY_TTL_MS' | 'TASK_OUTPUT_LIMIT' | 'TASK_LOG_LIMIT' | 'DATA_DIR' | 'ORPHAN_GRACE_MS' | 'SHUTDOWN_GRACE_MS' |
'RUNNER_MODEL' | 'RUNNER_MODELS_ALLOWED' | 'RUNNER_OPENCODE_CONFIG_DIR' | 'RUNNER_READ_ONLY_ROOTFS' | 'RUNNER_TMPFS_SIZE' | 'RUNNER_IDLE_TIMEOUT_MS' | 'MAX_TASK_FILE_SIZE' | 'WORKSPACE_RETENTION_MS' |
'TASK_RETENTION_MS' | 'RUNNER_GIT_AUTHOR' | 'GIT_CREDENTIALS' | 'RUNNER_EGRESS' | 'RUNNER_EGRESS_ALLOW' | 'RUNNER_MAX_COST' | 'RUNNER_MAX_TOKENS' | 'RUNNER_MAX_STEPS' | 'AGENT_DAILY_COST' | 'PRINCIPAL_DAILY_COST'>

export interface Logger { info: (obj: object, msg: string) => void, warn: (obj: object, msg: string) => void, error: (obj: object, msg: string) => void }

export interface SubmitArgs {
  task_description: string
  agent_id?: string
  idempotency_key?: string
  timeout_ms?: number
  model?: string
  /** `push`: commit the changes and push them to this branch when a turn completes (RUNNER_GIT_AUTHOR, GIT_CREDENTIALS). */
  repository?: { url: string, branch?: string, push?: PushRequest }
  files?: Array<{ path: string, content: string }>
  /** The original contract's observers: recorded in the queued event and the task view. */
  observers?: string[]
  /** The task's budget: each at most the server's ceiling (RUNNER_MAX_COST, RUNNER_MAX_TOKENS, RUNNER_MAX_STEPS). */
  max_cost?: number
  max_tokens?: number
  max_steps?: number
  /** RUNNER_EGRESS=allowlist: the hosts this task may reach, a subset of RUNNER_EGRESS_ALLOW (never wider). */
  egress_allow?: string[]
}

/** The kinds of follow-up message of the original tool contract; any but `update` reaches the agent as a `[type] ` prefix. */
export const MESSAGE_TYPES = ['update', 'feedback', 'context_change', 'requirement_change', 'priority_change', 'clarification', 'correction', 'guidance', 'approval'] as const
export type MessageType = typeof MESSAGE_TYPES[number]
export interface MessageOptions { type?: MessageType, metadata?: Record<string, unknown> }
const METADATA_LIMIT = 10 * 1024
export interface Caller { principal: string, agentId?: string }

/** What the engine tells its listeners (metrics, Letta, progress): each after the change is in the store. */
export interface TaskEngineEvents {
  queued: [TaskRecord]
  started: [TaskRecord]
  /** An OpenCode event of a running task (already stored in its history). */
  event: [taskId: string, event: ParsedEvent]
  ended: [TaskRecord]
  /** Cluster mode: a task of a lost replica, ended `node_lost` by this replica's sweep (Letta is told through the outbox rows the sweep marked). */
  lost: [TaskRecord]
  orphan_removed: [containerId: string]
  /** A step's spending (at its end): cost as OpenCode reports it, tokens input + output. */
  spent: [task: Pick<TaskRecord, 'id' | 'principal' | 'agent_id'>, cost: number, tokens: number]
}

/** Read through a call: `run.ending` is set by `control()` while `run()` awaits the engine. */
const endingOf = (run: Run): EndReason | undefined => run.ending

const SEED_LIMIT = 1024 * 1024
/** How often a log follower re-reads a queued task until a replica claims it (cluster mode). */
const CLAIM_POLL_MS = 250

/** The default commit message of a task's changes: its first line, and where it came from. */
function commitMessage (task: TaskRecord): string {
  const first = task.description.split('\n')[0].trim()
  return `${first.length > 72 ? first.slice(0, 71) + '…' : first}\n\nMade by OpenCode task ${task.id} (letta-opencode-plugin).\n`
}
const EVENTS_PER_TURN = 2_000

export class TaskEngine extends EventEmitter<TaskEngineEvents> {
  private readonly semaphore: Semaphore
  /** The current turn's run of each task that holds or waits for a slot. */
  private readonly live = new Map<string, Run>()
  private readonly endWaiters = new Map<string, Set<(t: TaskRecord) => void>>()
  /** Per-task event subscribers (progress of sync calls): one map, not one engine listener per call. */
  private readonly eventSubscribers = new Map<string, Set<(event: ParsedEvent) => void>>()
  private readonly logDir: string
  private readonly modelsAllowed: Set<string>
  readonly workspaces: Workspaces
  private readonly shipper: Shipper
  /** GIT_CREDENTIALS, parsed: the hosts a push may go to. */
  private readonly credentials: GitCredential[]
  /** Values never shown: RUNNER_ENV_PASSTHROUGH's and the push credentials (GIT_CREDENTIALS). */
  private readonly secrets: string[]
  private accepting = true
  /** The reconcile that runs now, if one does. */
  private reconciling?: Promise<number>
  /** Tasks whose workspace a files/read call is reading through a helper, with how many calls. */
  private readonly reading = new Map<string, number>()
  /** Aborted on close: monitors stop following; their tasks stay running in the store for recovery. */
  private readonly closing = new AbortController()
  /**
   * Per task, the tail of its read-decide-write steps on status and pending messages (a follow-up
   * message, a turn's start, a task's end): they run one after another, as the store's reads and
   * writes are awaited and another step could otherwise come in between.
   */
  private readonly steps = new Map<string, Promise<unknown>>()
  /** Tasks made by a submit() that has not scheduled them yet: recovery leaves them to it. */
  private readonly submitting = new Set<string>()
  /** Cluster mode (PostgreSQL): the queue is the database; this replica claims while it has a free slot. */
  private cluster?: ClusterQueue
  /** The claim loop that runs now, and whether another pass was asked for meanwhile. */
  private dispatching?: Promise<void>
  private dispatchAgain = false
  /** The admission step of the submission before (cluster mode; see admission()). */
  private admitting: Promise<void> = Promise.resolve()
  /** How often a waiter re-reads a task another replica runs (the end notification's safety net). */
  private static readonly WAIT_POLL_MS = 2_000
  /** Cluster mode with CLUSTER_TOKEN: the other replicas, where node-local calls on their tasks go. */
  private remote?: RemoteNodes

  constructor (
    readonly store: TaskStore,
    private readonly docker: DockerEngine,
    private readonly config: EngineConfig,
    private readonly log: Logger,
    /** RUNNER_ENV_PASSTHROUGH values: given to runner containers, redacted from everything read back. */
    private readonly runnerEnv: Record<string, string> = {},
    /** The RUNNER_IMAGE check: a task is refused at once while the image is missing or has no `opencode`. */
    private readonly runnerImage?: Pick<RunnerImageProbe, 'refusal'>
  ) {
    super()
    this.semaphore = new Semaphore(config.MAX_CONCURRENT_TASKS, config.MAX_QUEUED_TASKS)
    this.logDir = join(config.DATA_DIR, 'logs')
    mkdirSync(this.logDir, { recursive: true })
    this.modelsAllowed = new Set([config.RUNNER_MODEL, ...splitList(config.RUNNER_MODELS_ALLOWED)].filter(Boolean))
    this.workspaces = new Workspaces(docker, config, store.owner)
    this.credentials = parseGitCredentials(config.GIT_CREDENTIALS)
    this.secrets = [...Object.values(runnerEnv), ...Shipper.secretsOf(this.credentials)]
    this.shipper = new Shipper({ author: parseGitAuthor(config.RUNNER_GIT_AUTHOR), credentials: this.credentials }, this.secrets)
  }

  get owner (): string { return this.store.owner }

  /**
   * Cluster mode: tasks are queued in the database and claimed from it by every replica (`kick()`
   * when one may be there); set before recover().
   */
  useCluster (queue: ClusterQueue): void {
    this.cluster = queue
  }

  /** Cluster mode with CLUSTER_TOKEN: node-local calls on another replica's task go to it through `remote`. */
  useRemote (remote: RemoteNodes): void {
    this.remote = remote
  }

  get clustered (): boolean { return this.cluster !== undefined }

  /** The tasks that run (or wait to start) here. */
  liveTasks (): string[] { return [...this.live.keys()] }
  get running (): number { return this.semaphore.running }
  get queued (): number { return this.semaphore.waiting }
  /**
   * The queue: the tasks waiting for a slot, here (SQLite) or in the whole cluster (what
   * MAX_QUEUED_TASKS counts), and whether a new task would be refused for it (no free slot, and as
   * many waiting as allowed).
   */
  async queueState (): Promise<{ waiting: number, full: boolean }> {
    if (!this.cluster) return { waiting: this.semaphore.waiting, full: this.semaphore.full }
    const { waiting, room } = await this.cluster.backlog()
    return { waiting, full: room === 0 && waiting >= this.config.MAX_QUEUED_TASKS }
  }

  get draining (): boolean { return !this.accepting }
  async countByStatus (): Promise<Partial<Record<TaskStatus, number>>> { return this.store.countByStatus() }
  /** The last thing a live task's agent did (for progress messages). */
  lastEvent (id: string): string | undefined { return this.live.get(id)?.lastEvent }

  /**
   * Listeners are observers (metrics, Letta, progress): one that throws or rejects is logged and the
   * engine goes on; it never fails a task or keeps a waiter waiting.
   */
  override emit<K extends keyof TaskEngineEvents> (event: K, ...args: TaskEngineEvents[K]): boolean {
    const listeners = this.rawListeners(event) as Array<(...a: unknown[]) => unknown>
    for (const listener of listeners) {
      const failed = (err: unknown) => this.log.error({ err, event }, 'a task engine listener failed; the engine goes on')
      try {
        const result = listener.apply(this, args)
        if (result instanceof Promise) result.catch(failed)
      } catch (err) {
        failed(err)
      }
    }
    return listeners.length > 0
  }

  /** Calls `fn` with each event of the task until the returned function is called. */
  subscribe (id: string, fn: (event: ParsedEvent) => void): () => void {
    const set = this.eventSubscribers.get(id) ?? new Set()
    this.eventSubscribers.set(id, set)
    set.add(fn)
    return () => {
      set.delete(fn)
      if (set.size === 0 && this.eventSubscribers.get(id) === set) this.eventSubscribers.delete(id)
    }
  }

  logPath (id: string): string {
    return join(this.logDir, `${id}.log`)
  }

  // --- submit ---------------------------------------------------------------------------------

  async submit (caller: Caller, args: SubmitArgs): Promise<{ task: TaskRecord, existing: boolean }> {
    const description = args.task_description.trim()
    if (!description) throw new TaskError('invalid', 'task_description is empty: describe the development task to run')
    const timeout = args.timeout_ms ?? this.config.RUNNER_TIMEOUT_MS
    if (timeout > this.config.RUNNER_MAX_TIMEOUT_MS) {
      throw new TaskError('invalid', `timeout_ms=${timeout} is above the limit of ${this.config.RUNNER_MAX_TIMEOUT_MS} (RUNNER_MAX_TIMEOUT_MS); ask for less`)
    }
    const model = this.checkModel(args.model)
    const repository = args.repository
      ? { url: this.workspaces.checkRepository(args.repository.url), branch: args.repository.branch ?? null, ...(args.repository.push ? { push: this.checkPush(args.repository.url, args.repository.push) } : {}) }
      : null
    const seed = args.files?.length ? this.checkSeed(args.files) : null
    const agentId = args.agent_id ?? caller.agentId ?? null
    const limits = taskLimits(this.config, args)
    const egressAllow = args.egress_allow ? this.checkEgressAllow(args.egress_allow) : null
    // read before: create() runs inside the store's idempotency claim, synchronously
    const daily = await dailyOver(this.config, this.store, caller.principal, agentId)
    // cluster mode: the cluster's queue, read in the admission step with the insert that follows
    // (under the cluster's admission lock: replicas racing never overfill it)
    let queue = { waiting: 0, full: false }
    // a new task is refused (draining, no usable runner image, a full queue) before anything is
    // stored; a retry with a known key gets its task all the same. Its slot is taken with the check
    // of the queue's room, in one synchronous step: submissions in flight cannot overfill the queue
    let made: { task: TaskRecord, slot: Promise<() => void> | undefined } | undefined
    const create = (): TaskRecord => {
      if (!this.accepting) throw new TaskError('draining', 'The service is shutting down and accepts no new tasks; retry against the restarted service')
      const refusal = this.runnerImage?.refusal
      if (refusal) throw new TaskError('unavailable', refusal)
      if (this.cluster ? queue.full : this.semaphore.full) throw this.queueFull(queue.waiting)
      if (daily) throw dailyRefusal(daily)
      const task = newTask()
      made = { task, slot: this.cluster ? undefined : this.semaphore.acquire(task.id) }
      this.submitting.add(task.id)
      return task
    }
    const newTask = (): TaskRecord => ({
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
      idempotency_key: args.idempotency_key ?? null,
      model,
      result: null,
      turns: 0,
      pending: [],
      observers: args.observers ?? [],
      repository,
      seed,
      diff: null,
      diff_truncated: false,
      workspace_removed_at: null,
      node_id: null,
      limits,
      spent: null,
      egress_allow: egressAllow
    })

    let task: TaskRecord
    const release = this.cluster ? await this.admission(this.cluster) : undefined
    try {
      if (this.cluster) queue = await this.queueState()
      if (this.config.ENFORCE_IDEMPOTENCY && args.idempotency_key) {
        const asked = args.max_cost ?? args.max_tokens ?? args.max_steps
        const argsHash = createHash('sha256').update(JSON.stringify([description, timeout, model, repository, seed, ...(asked === undefined ? [] : [limits]), ...(egressAllow ? [egressAllow] : [])])).digest('hex')
        const claim = await this.store.claimIdempotent({ principal: caller.principal, agent_id: agentId ?? '', key: args.idempotency_key, args_hash: argsHash, ttlMs: this.config.IDEMPOTENCY_TTL_MS }, create)
        if (claim.existing) {
          if (claim.args_hash !== argsHash) {
            throw new TaskError('conflict', `idempotency_key "${args.idempotency_key}" was already used for different arguments (task ${claim.task.id}); use a new key for a different task`, { task_id: claim.task.id })
          }
          if (made) this.giveBack(made.task.id, made.slot)
          return { task: claim.task, existing: true }
        }
        task = claim.task
      } else {
        task = create()
        await this.store.insert(task)
      }
      await this.store.addEvent(task.id, 'queued', { agent_id: task.agent_id, timeout_ms: task.timeout_ms, model: task.model, ...(task.observers.length ? { observers: task.observers } : {}) })
    } catch (err) {
      // a task made but not stored (or not announced), or a key's existing task: the slot taken goes back
      if (made) this.giveBack(made.task.id, made.slot)
      throw err
    } finally {
      await release?.()
    }
    this.log.info({ taskId: task.id, agentId: task.agent_id, principal: task.principal }, 'task queued')
    this.emit('queued', task)
    if (this.cluster) this.kick()
    else this.schedule(task, undefined, made?.slot)
    this.submitting.delete(task.id)
    return { task, existing: false }
  }

  /**
   * Cluster mode: a submission checks the cluster's queue and stores its task in one admission step:
   * one at a time on this replica (so it holds at most one of the pool's connections for the
   * cluster's lock), then under the cluster-wide lock (see ClusterQueue.admit). Resolves with the
   * release of both.
   */
  private async admission (cluster: ClusterQueue): Promise<() => Promise<void>> {
    const before = this.admitting
    let local = (): void => {}
    this.admitting = new Promise<void>((resolve) => { local = resolve })
    await before
    const unlock = await cluster.admit().catch((err: unknown) => { local(); throw err })
    return async () => { await unlock(); local() }
  }

  /** A slot taken for a task that will not be scheduled: withdrawn if it waits, released if it was given. */
  private giveBack (id: string, slot: Promise<() => void> | undefined): void {
    this.submitting.delete(id)
    if (!slot) return
    this.semaphore.withdraw(id, new Error('not scheduled'))
    slot.then((release) => release(), () => {})
  }

  /**
   * Runs `fn` after the task's earlier read-decide-write steps have ended (see `steps`). `fn` must
   * not wait on another step of the same task (finish() takes one).
   */
  private step<T> (id: string, fn: () => Promise<T>): Promise<T> {
    const result = (this.steps.get(id) ?? Promise.resolve()).then(fn)
    const tail = result.then(() => {}, () => {})
    this.steps.set(id, tail)
    tail.then(() => { if (this.steps.get(id) === tail) this.steps.delete(id) }, () => {})
    return result
  }

  private checkModel (model: string | undefined): string | null {
    if (model === undefined) return this.config.RUNNER_MODEL || null
    if (!this.modelsAllowed.has(model)) {
      const allowed = [...this.modelsAllowed]
      throw new TaskError('invalid', allowed.length
        ? `model "${model}" is not allowed here; choose one of ${allowed.join(', ')} (RUNNER_MODELS_ALLOWED)`
        : `model "${model}" is not allowed here: this server runs OpenCode's configured model only (set RUNNER_MODELS_ALLOWED to offer a choice)`)
    }
    return model
  }

  /** repository.push: a valid branch name, and a credential for an http(s) remote's host. */
  private checkPush (url: string, push: PushRequest): PushRequest {
    const problem = branchProblem(push.branch)
    if (problem) throw new TaskError('invalid', `repository.push.branch "${push.branch}" is not a branch name: it ${problem}`)
    if (!/^https?:\/\//.test(url)) throw new TaskError('invalid', `repository.push needs an http(s) repository URL (credentials come from GIT_CREDENTIALS); "${url}" is not one`)
    if (!credentialFor(this.credentials, url)) {
      throw new TaskError('invalid', `repository.push: the server has no push credential for ${new URL(url).host} (GIT_CREDENTIALS); leave push out and use get_task_patch`)
    }
    return { branch: push.branch, commit_message: push.commit_message ?? null, force: push.force ?? false }
  }

  /** A task's egress_allow: well-formed names within RUNNER_EGRESS_ALLOW, as rule texts. */
  private checkEgressAllow (list: string[]): string[] {
    if (this.config.RUNNER_EGRESS !== 'allowlist') {
      throw new TaskError('invalid', `egress_allow needs RUNNER_EGRESS=allowlist on the server (it is ${this.config.RUNNER_EGRESS}); leave egress_allow out`)
    }
    let rules
    try {
      rules = parseAllowList(list.join(','), 'egress_allow')
    } catch (err) {
      if (err instanceof ConfigError) throw new TaskError('invalid', err.message)
      throw err
    }
    const wider = widening(rules, parseAllowList(this.config.RUNNER_EGRESS_ALLOW))
    if (wider.length) {
      throw new TaskError('invalid', `egress_allow may only narrow the server's list: ${wider.map(ruleText).join(', ')} ${wider.length === 1 ? 'is' : 'are'} not within RUNNER_EGRESS_ALLOW (${this.config.RUNNER_EGRESS_ALLOW || 'empty'})`)
    }
    return rules.map(ruleText)
  }

  private checkSeed (files: Array<{ path: string, content: string }>): Array<{ path: string, content: string }> {
    const size = files.reduce((n, f) => n + Buffer.byteLength(f.content), 0)
    if (size > SEED_LIMIT) throw new TaskError('invalid', `files hold ${size} bytes, over the limit of ${SEED_LIMIT}; put larger inputs in a repository`)
    for (const f of files) this.workspaces.checkPath(f.path, 'files[].path')
    return files
  }

  private queueFull (clusterWaiting?: number): TaskError {
    if (this.cluster) {
      return new TaskError('queue_full', `queue full: ${this.semaphore.running} tasks running here (MAX_CONCURRENT_TASKS=${this.semaphore.limit}) and ${clusterWaiting} waiting in the cluster for a free slot (MAX_QUEUED_TASKS=${this.config.MAX_QUEUED_TASKS}); retry in a minute or cancel a task`, {
        running: this.semaphore.running, queued: clusterWaiting, retry_after_s: 60
      })
    }
    return new TaskError('queue_full', `queue full: ${this.semaphore.running} tasks running (MAX_CONCURRENT_TASKS=${this.semaphore.limit}) and ${this.semaphore.waiting} waiting (MAX_QUEUED_TASKS=${this.semaphore.maxWaiting}); retry in a minute or cancel a task`, {
      running: this.semaphore.running, queued: this.semaphore.waiting, retry_after_s: 60
    })
  }

  /**
   * Cluster mode: claims queued tasks from the database while this replica has a free slot (one
   * claim loop at a time; a kick during one makes it go round again). Called when a task may be
   * claimable: a submit or a follow-up here, another replica's notification, a slot freed, the poll.
   */
  kick (): void {
    if (!this.cluster || !this.accepting) return
    if (this.dispatching) {
      this.dispatchAgain = true
      return
    }
    this.dispatching = this.dispatch()
      .catch((err: Error) => this.log.warn({ err }, 'claiming queued tasks failed; the next notification or poll tries again'))
      .finally(() => {
        this.dispatching = undefined
        if (this.dispatchAgain) this.kick()
      })
  }

  private async dispatch (): Promise<void> {
    const cluster = this.cluster as ClusterQueue
    do {
      this.dispatchAgain = false
      while (this.accepting && this.semaphore.running < this.semaphore.limit) {
        // the slot is taken before the claim: a claimed task always has its slot here
        const release = this.semaphore.take()
        let id: string | undefined
        try {
          id = await cluster.claim()
        } finally {
          if (!id) release()
        }
        if (!id) break
        const task = await this.store.get(id).catch(() => undefined)
        if (!task) {
          release()
          continue
        }
        this.schedule(task, undefined, Promise.resolve(() => { release(); this.kick() }))
      }
    } while (this.dispatchAgain && this.accepting)
  }

  /**
   * Cluster mode: the task is no longer this replica's (another declared this one lost and took it
   * over, or it was cancelled elsewhere before it started): its container is stopped and removed.
   */
  private async letGo (id: string, why: string): Promise<void> {
    const live = this.live.get(id)
    this.live.delete(id)
    if (live) {
      this.log.warn({ taskId: id, why }, 'task no longer held by this replica: its container is stopped')
      live.ending ??= 'node_lost'
      live.stop()
      await live.remove()
    }
    // unfenced once its container is gone (no write of the stale run comes after)
    this.cluster?.release(id)
  }

  /** Cluster mode: lets go of the tasks that run here but are not this replica's any more (see letGo). */
  async letGoOf (ids: string[], why: string): Promise<void> {
    await Promise.all(ids.map((id) => this.letGo(id, why)))
  }

  /** Cluster mode: tasks this replica's sweep ended `node_lost` (for the listeners that count ends). */
  async lostElsewhere (ids: string[]): Promise<void> {
    for (const id of ids) {
      const task = await this.store.get(id)
      if (task) this.emit('lost', task)
    }
  }

  /** A task's status changed on another replica (its notification): its waiters here re-read it. */
  async taskChanged (id: string): Promise<void> {
    const waiters = this.endWaiters.get(id)
    // a task this replica runs wakes its waiters itself, once its end is recorded and its container removed
    if (!waiters?.size || this.live.has(id)) return
    const task = await this.store.get(id)
    if (!task || !TERMINAL.has(task.status)) return
    for (const resolve of waiters) resolve(task)
    this.endWaiters.delete(id)
  }

  /**
   * `attached`: a container that still runs from before a restart; it takes its slot at once.
   * `reserved`: the slot the task took when it was made (submit, a follow-up message).
   */
  private schedule (task: TaskRecord, attached?: { containerId: string, remainingMs: number, paused: boolean, exited: boolean }, reserved?: Promise<() => void>): void {
    const live = this.newRun(task.id, attached
      ? { remainingMs: attached.remainingMs, containerId: attached.containerId, paused: attached.paused, exited: attached.exited }
      : { remainingMs: task.timeout_ms })
    this.live.set(task.id, live)
    const slot = attached ? Promise.resolve(this.semaphore.take()) : reserved ?? this.semaphore.acquire(task.id)
    slot.then(async (release) => {
      try {
        // draining: a task that has not started stays queued in the store for the next start
        // (cluster mode: for another replica to claim)
        if (!this.accepting && !attached) {
          if (this.cluster) {
            this.live.delete(task.id)
            await this.cluster.unclaim(task.id)
          }
          return
        }
        // its store calls wait out a database outage (PostgreSQL): the container runs on meanwhile
        await patiently(() => this.clusterRun(task.id, live, attached !== undefined))
      } finally {
        release()
      }
    }, (err: Error) => {
      // withdrawn (cancelled while queued) or the queue filled up between check and acquire
      if (err instanceof QueueFullError) return this.finish(task.id, { status: 'failed', reason: 'engine_error', error: err.message })
    }).catch((err: Error) => this.log.error({ taskId: task.id, err }, 'task run failed'))
  }

  // --- run ------------------------------------------------------------------------------------

  /**
   * run(), and in cluster mode what follows a write this replica's claim no longer allows (fencing:
   * the task was taken over, or cancelled elsewhere before it started): its container goes.
   */
  private async clusterRun (id: string, live: Run, attached: boolean): Promise<void> {
    if (!this.cluster) return this.run(id, live, attached)
    try {
      await this.run(id, live, attached)
    } catch (err) {
      if (!(err instanceof WriteRefusedError || err instanceof IllegalTransitionError)) throw err
      await this.letGo(id, err.message)
      return
    }
    // ended elsewhere meanwhile (node_lost): nothing was recorded here, the container is still ours to remove
    if (this.live.has(id) && !this.closing.signal.aborted && this.accepting && TERMINAL.has(await this.store.status(id) as TaskStatus)) {
      await this.letGo(id, 'the task ended on another replica')
    }
  }

  private newRun (id: string, init: ConstructorParameters<typeof Run>[1]): Run {
    return new Run({
      docker: this.docker,
      config: this.config,
      signal: this.closing.signal,
      onEnding: (reason, detail) => this.store.addEvent(id, reason, detail ? { error: detail } : {})
        .then(() => {}, (err: Error) => this.log.error({ taskId: id, err }, 'the ending of a task could not be recorded')),
      onRemoveFailed: (err) => this.log.warn({ taskId: id, err }, 'container removal failed')
    }, init)
  }

  /**
   * Runs the task's turns while it holds a slot: the task itself, then each follow-up message that
   * arrived meanwhile. `attached` is a container still running from before a restart.
   */
  private async run (id: string, live: Run, attached: boolean): Promise<void> {
    let task = await this.store.get(id)
    if (!task || (task.status !== 'queued' && !attached)) return
    if (endingOf(live) === 'cancelled') {
      await this.finish(id, { status: 'cancelled', reason: 'cancelled', error: 'cancelled before it started' })
      return
    }
    for (;;) {
      let outcome: TurnOutcome
      if (attached) {
        outcome = await this.monitor(id, live, live.reattach())
        attached = false
      } else {
        const stream = await this.startTurn(task, live)
        if (!stream) return
        outcome = await this.monitor(id, live, stream)
      }
      if (this.closing.signal.aborted) return
      // a follow-up message continues the session when the turn ended well; one that arrives while
      // the end is being recorded (the diff) is caught by endTask and continues it all the same
      if (!await this.continues(id, live, outcome) && await this.endTask(id, live, outcome)) return
      await live.remove()
      task = await this.store.get(id) as TaskRecord
      await this.store.addEvent(id, 'turn_finished', { turn: task.turns, exit_code: 0 })
      await transition(this.store, id, 'queued', { output: outcome.capture.output.text() })
      task = await this.store.get(id) as TaskRecord
      // the next turn's run: a cancel that came meanwhile carries over
      live = live.next(task.timeout_ms)
      this.live.set(id, live)
    }
  }

  /** Whether the turn ended well and a follow-up message waits (decided within a step of the task, see endTask). */
  private async continues (id: string, live: Run, outcome: TurnOutcome): Promise<boolean> {
    const pending = (await this.store.get(id) as TaskRecord).pending
    return outcome.reason === 'exit' && outcome.exitCode === 0 && pending.length > 0 && !live.ending && this.accepting && !this.closing.signal.aborted
  }

  /** One turn's container: volumes and inputs on the first turn, then create → attach → start. */
  private async startTurn (queued: TaskRecord, live: Run): Promise<AsyncIterable<LogChunk> | undefined> {
    const id = queued.id
    // the pending messages read and the one this turn takes written in one step: a message sent meanwhile waits
    const start = await this.step(id, async () => {
      const task = await this.store.get(id) as TaskRecord
      const turn = task.turns + 1
      // a budget used up before the turn starts (the last turn's steps, the agent's day): no container
      const used = exhausted(task.limits, spentOf(task))
      const daily = await dailyOver(this.config, this.store, task.principal, task.agent_id)
      const startedAt = Date.now()
      if (used ?? daily) return { task, turn, startedAt, refused: used ? `budget: turn ${turn} was not started: ${used}` : `budget: turn ${turn} was not started: ${dailyMessage(daily!)}` }
      await transition(this.store, id, 'running', {
        turns: turn,
        pending: turn === 1 ? task.pending : task.pending.slice(1),
        ...(turn === 1 ? { started_at: startedAt } : {})
      })
      return { task, turn, startedAt, refused: undefined }
    })
    const { task, turn, startedAt } = start
    if (start.refused) {
      await this.finish(id, { status: 'failed', reason: 'budget', error: start.refused })
      return undefined
    }
    const prompt = turn === 1 ? task.description : task.pending[0]
    await this.store.addEvent(id, turn === 1 ? 'started' : 'turn_started', turn === 1 ? {} : { turn, message: prompt })
    this.log.info({ taskId: id, agentId: task.agent_id, principal: task.principal, turn, queuedMs: startedAt - task.created_at }, turn === 1 ? 'task started' : 'task turn started')
    if (turn === 1) this.emit('started', { ...task, status: 'running', started_at: startedAt, turns: 1 })
    try {
      // a follow-up turn or a task queued before a restart meets the same check as a new submission
      const refusal = this.runnerImage?.refusal
      if (refusal) throw new Error(refusal)
      if (turn === 1) await this.workspaces.prepare(task)
      const spec = containerSpec(this.config, {
        id,
        agent_id: task.agent_id,
        argv: opencodeArgv({ task: prompt, model: task.model, session: turn > 1 ? task.result?.session_id : null }),
        env: Object.entries(this.runnerEnv).map(([k, v]) => `${k}=${v}`)
      }, this.store.owner)
      return await live.start(spec, `lop-${id.slice(5)}-${turn}`, (containerId) => this.store.update(id, { container_id: containerId }), async (containerId) => {
        await this.workspaces.own(containerId)
        if (turn === 1 && task.seed) await this.workspaces.seed(containerId, task.seed)
      })
    } catch (err) {
      const removal = () => live.remove()
      const ending = endingOf(live)
      if (ending === 'cancelled') await this.finish(id, { status: 'cancelled', reason: 'cancelled' }, removal)
      else if (ending) await this.finish(id, { status: ending === 'timeout' ? 'timeout' : 'failed', reason: ending, error: live.endingDetail ?? `ended (${ending}) before its container started` }, removal)
      else await this.finish(id, { status: 'failed', reason: 'engine_error', error: (err as Error).message }, removal)
      return undefined
    }
  }

  /** Follows the run's started container to its end: its events stored and told, its result stored. */
  private async monitor (id: string, live: Run, stream: AsyncIterable<LogChunk>): Promise<TurnOutcome> {
    const task = await this.store.get(id) as TaskRecord
    // the timeout clock runs from here (unless the task is paused); kept in the store for a restart
    if (live.startClock()) await this.store.update(id, { remaining_ms: live.remainingMs, resumed_at: live.resumedAt })
    let stored = 0
    // what the task spent: its finished turns, then this turn's steps as they end
    const spent = spentOf(task)
    const budgeted = task.limits != null || this.config.AGENT_DAILY_COST > 0 || this.config.PRINCIPAL_DAILY_COST > 0
    const stepEnded = async (e: ParsedEvent) => {
      // what the agent's output says is counted only as a finite, non-negative number
      const count = (n: unknown) => (typeof n === 'number' && Number.isFinite(n) && n > 0 ? n : 0)
      const reported = e.data.tokens as { input?: unknown, output?: unknown }
      const tokens = count(reported.input) + count(reported.output)
      const cost = count(e.data.cost)
      spent.tokens += tokens
      spent.cost += cost
      await this.store.update(id, { spent: { ...spent } })
      await this.store.addSpend({ task_id: id, step: spent.steps, principal: task.principal, agent_id: task.agent_id, at: Date.now(), cost, tokens })
      this.emit('spent', task, cost, tokens)
      if (!budgeted || live.ending) return
      const over = overLimits(task.limits, spent, e.data.reason !== 'stop')
      const daily = over ? undefined : await dailyOver(this.config, this.store, task.principal, task.agent_id)
      if (!over && !daily) return
      const error = over ?? `budget: stopped after step ${spent.steps}: ${dailyMessage(daily!)}`
      this.log.warn({ taskId: id, agentId: task.agent_id, principal: task.principal, spent }, 'task over its budget: stopping it')
      live.end('budget', error)
    }
    const record = async (events: ParsedEvent[]) => {
      if (events.length === 0) return
      const room = Math.max(0, EVENTS_PER_TURN - stored)
      stored += events.length
      await this.store.addEvents(id, events.slice(0, room))
      // spending and budgets after the events are in the history (a budget stop comes after its step end)
      for (const e of events) {
        if (e.type === 'step_start') spent.steps = Number(e.data.step) || spent.steps + 1
        else if (e.type === 'step_finish') await stepEnded(e)
      }
      live.lastEvent = events[events.length - 1].summary
      const subscribers = this.eventSubscribers.get(id)
      for (const e of events) {
        this.emit('event', id, e)
        for (const fn of subscribers ?? []) {
          try { fn(e) } catch (err) { this.log.error({ taskId: id, err }, 'a task event subscriber failed') }
        }
      }
    }
    const outcome = await live.watch(stream, {
      outputLimit: this.config.TASK_OUTPUT_LIMIT,
      logPath: this.logPath(id),
      logLimit: this.config.TASK_LOG_LIMIT,
      secrets: this.secrets,
      previous: task.result,
      append: task.turns > 1
    }, record)
    if (stored > EVENTS_PER_TURN) await this.store.addEvent(id, 'events_dropped', { dropped: stored - EVENTS_PER_TURN })
    await this.store.update(id, { result: outcome.capture.reader.result })
    return outcome
  }

  /**
   * Records the task's end: status, result, diff; then removes the container and tells the waiters.
   * False (nothing recorded) when a follow-up message arrived meanwhile: the task goes on with it.
   * Messages still waiting after a turn that did not end well are not run: the task's history says
   * so (`messages_dropped`) and its error tells the caller to send them again.
   */
  private async endTask (id: string, live: Run, outcome: TurnOutcome): Promise<boolean> {
    const { reason, exitCode, capture } = outcome
    const task = await this.store.get(id) as TaskRecord
    const { status, error } = turnEnd(outcome, task.timeout_ms, this.config)
    const diff = status !== 'cancelled' ? await this.workspaces.diff(task, (s) => capture.redact(s)).catch(() => null) : null
    if (status === 'completed') await this.ship(task)
    // the check and the terminal write are one step of the task: message() cannot slip in between
    return this.finish(id, {
      status,
      reason,
      error,
      exit_code: exitCode,
      output: capture.output.text(),
      output_truncated: capture.output.truncated,
      output_bytes: capture.output.total,
      ...(diff ? { diff: diff.text, diff_truncated: diff.truncated } : {})
    }, () => live.remove(), () => this.continues(id, live, outcome))
  }

  /**
   * repository.push: a completed turn's changes committed and pushed, before the end is announced
   * (the view, the tool result and Letta carry it). A failure is the push's own (`push.error`),
   * never the task's.
   */
  private async ship (task: TaskRecord): Promise<void> {
    const request = task.repository?.push
    if (!request) return
    const message = request.commit_message ?? commitMessage(task)
    const push = await this.shipper.push(this.workspaces.scriptRunner(task), task.repository!.url, request, message, task.push ?? null)
    await this.store.update(task.id, { push })
    await this.store.addEvent(task.id, push.error ? 'push_failed' : 'pushed', push.error ? { branch: push.branch, error: push.error, message: push.message } : { branch: push.branch, commit: push.commit, url: push.url })
    this.log.info({ taskId: task.id, branch: push.branch, commit: push.commit, error: push.error }, push.error ? 'push failed' : 'changes pushed')
  }

  /**
   * Records the task's end (in a step of the task), then runs `cleanup` and tells the listeners and
   * waiters. `unless`, checked within the step: nothing is recorded when it holds (false returned).
   */
  private async finish (id: string, fields: Partial<TaskRecord> & { status: TaskStatus }, cleanup?: () => Promise<void>, unless?: () => Promise<boolean>, from?: TaskStatus): Promise<boolean> {
    const ended = await this.step(id, async () => (unless && await unless()) ? false : this.recordEnd(id, fields, from))
    if (ended === false) return false
    if (!ended) return true
    const { done, finishedAt } = ended
    const duration = done.started_at ? finishedAt - done.started_at : 0
    this.log.info({ taskId: id, agentId: done.agent_id, principal: done.principal, status: done.status, reason: done.reason, durationMs: duration, turns: done.turns }, 'task ended')
    try {
      await cleanup?.()
    } finally {
      this.emit('ended', done)
      for (const resolve of this.endWaiters.get(id) ?? []) resolve(done)
      this.endWaiters.delete(id)
    }
    return true
  }

  /** The terminal write of finish(): undefined when there is nothing to record (closing, or the task already ended). */
  private async recordEnd (id: string, fields: Partial<TaskRecord> & { status: TaskStatus }, from?: TaskStatus): Promise<{ done: TaskRecord, finishedAt: number } | undefined> {
    if (this.closing.signal.aborted) return undefined
    const task = await this.store.get(id)
    if (!task || TERMINAL.has(task.status)) return undefined
    if (from && task.status !== from) throw new WriteRefusedError(`task ${id} is ${task.status}, no longer ${from}`)
    const finishedAt = Date.now()
    // follow-up messages still waiting are not run by an ended task: say so, whichever way it ended
    const dropped = task.pending
    if (dropped.length > 0) {
      const why = fields.status === 'completed' ? 'the service was shutting down' : `the task ended ${fields.status}`
      const note = `${dropped.length} follow-up message(s) were not run because ${why}: send them again with send_task_message`
      fields = { ...fields, pending: [], error: fields.error ? `${fields.error}; ${note}` : note }
      await this.store.addEvent(id, 'messages_dropped', { messages: dropped, reason: fields.status })
      this.log.warn({ taskId: id, dropped: dropped.length, status: fields.status }, 'follow-up messages not run: the task ended')
    }
    const { status, ...rest } = fields
    await transition(this.store, id, status, { ...rest, finished_at: finishedAt }, from)
    await this.store.addEvent(id, fields.status, { reason: fields.reason ?? null, exit_code: fields.exit_code ?? null, error: fields.error ?? null })
    this.live.delete(id)
    return { done: await this.store.get(id) as TaskRecord, finishedAt }
  }

  // --- reads and controls ---------------------------------------------------------------------

  /** The caller's task; another principal's task is not found. */
  async get (principal: string, id: string): Promise<TaskRecord> {
    const task = await this.store.get(id)
    if (!task || task.principal !== principal) throw new TaskError('not_found', `No task ${id}: check the task_id (list_tasks shows yours)`)
    return task
  }

  /** Events after sequence number `after`, skipping `offset` of them; `total` counts all after `after`. */
  async history (principal: string, id: string, after = 0, limit = 100, offset = 0): Promise<{ task: TaskRecord, events: TaskEvent[], total: number }> {
    const task = await this.get(principal, id)
    return { task, events: await this.store.events(id, after, limit, 'asc', offset), total: await this.store.eventCount(id, after) }
  }

  /** The task's last `n` events, oldest first. */
  async recentEvents (principal: string, id: string, n: number): Promise<TaskEvent[]> {
    await this.get(principal, id)
    return (await this.store.events(id, 0, n, 'desc')).reverse()
  }

  /** A page of the caller's tasks; with `cost_total`, what all the tasks the filter selects spent. */
  async list (principal: string, filter: { status?: TaskStatus, agent_id?: string, limit?: number, offset?: number, cost_total?: boolean }): Promise<{ tasks: TaskRecord[], total: number, cost_total?: number }> {
    const page = await this.store.list({ principal, status: filter.status, agent_id: filter.agent_id, limit: filter.limit ?? 20, offset: filter.offset ?? 0 })
    return filter.cost_total ? { ...page, cost_total: await this.store.costTotal({ principal, status: filter.status, agent_id: filter.agent_id }) } : page
  }

  /** A byte range of the task's full log (kept on disk up to TASK_LOG_LIMIT). */
  async logs (principal: string, id: string, offset = 0, limit = 65_536): Promise<{ task: TaskRecord, data: Buffer, size: number }> {
    const task = await this.get(principal, id)
    const remote = this.elsewhere(task, 'logs', principal, [id, offset, limit])
    if (remote) return await remote as { task: TaskRecord, data: Buffer, size: number }
    return { task, ...await readLogRange(this.logPath(id), offset, limit) }
  }

  /**
   * The task's log from `offset` to its current end; with `follow`, on as it is written, until the
   * task has ended and all of it was read.
   */
  async streamLogs (principal: string, id: string, opts: { follow: boolean, offset?: number, signal: AbortSignal }): Promise<{ task: TaskRecord, chunks: AsyncGenerator<Buffer> }> {
    let task = await this.get(principal, id)
    // cluster mode: a task no replica has claimed yet has no log anywhere; a follower waits for its replica
    if (this.cluster && opts.follow && task.status === 'queued' && !task.node_id) task = await this.claimedOrEnded(id, opts.signal)
    const node = this.nodeOf(task)
    if (node) return { task, chunks: await this.remoteNodes(task, node).streamLogs(node, principal, id, opts) }
    const ended = opts.follow ? async () => TERMINAL.has(await this.store.status(id) as TaskStatus) : async () => true
    return { task, chunks: followLog(this.logPath(id), ended, opts.signal, opts.offset) }
  }

  /** The task once a replica has claimed it (or it ended unclaimed, or the caller went away). */
  private async claimedOrEnded (id: string, signal: AbortSignal): Promise<TaskRecord> {
    for (;;) {
      const task = await this.store.get(id) as TaskRecord
      if (task.node_id || task.status !== 'queued' || signal.aborted) return task
      await sleep(CLAIM_POLL_MS, undefined, { signal }).catch(() => {})
    }
  }

  /** Files of the task's workspace, during the run (its container) and after (a helper container). */
  async files (principal: string, id: string, path: string, limit: number) {
    const task = await this.get(principal, id)
    const remote = this.elsewhere(task, 'files', principal, [id, path, limit])
    if (remote) return await remote as Awaited<ReturnType<Workspaces['list']>>
    return this.whileReading(id, () => this.workspaces.list(task, this.live.get(id)?.containerId, path, limit))
  }

  /** A workspace file, with the passed-through secrets redacted like every other output. */
  async readFile (principal: string, id: string, path: string) {
    const task = await this.get(principal, id)
    const remote = this.elsewhere(task, 'readFile', principal, [id, path])
    if (remote) return await remote as Awaited<ReturnType<Workspaces['read']>>
    const file = await this.whileReading(id, () => this.workspaces.read(task, this.live.get(id)?.containerId, path))
    return redactFile(file, this.secrets)
  }

  /**
   * The task's changes since the original commit as a `git format-patch` series (committed in a
   * helper container when needed; the remote is not touched), capped at PATCH_LIMIT.
   */
  async patch (principal: string, id: string): Promise<{ task: TaskRecord, patch: string, truncated: boolean, commits: number }> {
    const task = await this.get(principal, id)
    const remote = this.elsewhere(task, 'patch', principal, [id])
    if (remote) return await remote as Awaited<ReturnType<TaskEngine['patch']>>
    if (!task.repository) throw new TaskError('conflict', `Task ${id} has no cloned repository: its files are read with get_task_files and read_task_file`)
    if (!TERMINAL.has(task.status)) throw new TaskError('conflict', `Task ${id} is ${task.status}; the patch is made once it has ended`)
    const message = task.repository.push?.commit_message ?? commitMessage(task)
    const made = await this.whileReading(id, () => this.shipper.patch(this.workspaces.scriptRunner(task), message)).catch((err: Error) => {
      // the engine's own errors as they are; a git failure in the helper is the workspace's state, not a server error
      if (err instanceof TaskError || err.name === 'DockerError') throw err
      throw new TaskError('conflict', err.message)
    })
    return { task, ...made }
  }

  /** The replica that runs or ran the task, when it is another one (cluster mode). */
  private nodeOf (task: TaskRecord): string | undefined {
    return task.node_id && task.node_id !== this.owner ? task.node_id : undefined
  }

  /** The other replicas, or a 409 naming the task's replica when CLUSTER_TOKEN is not set. */
  private remoteNodes (task: TaskRecord, node: string) {
    const remote = this.remote
    if (!remote) {
      throw new TaskError('conflict', `Task ${task.id} runs on replica ${node}: its workspace, log and container are there, and this replica forwards nothing without CLUSTER_TOKEN; set CLUSTER_TOKEN on every replica, or call replica ${node}`, { node_id: node })
    }
    return remote
  }

  /** `method` called on the replica that runs the task, when it is another one; undefined: the call is this replica's. */
  private elsewhere (task: TaskRecord, method: RemoteMethod, principal: string, args: unknown[]): Promise<unknown> | undefined {
    const node = this.nodeOf(task)
    return node ? this.remoteNodes(task, node).call(node, method, principal, args) : undefined
  }

  /** Marks the task's workspace as being read (its helper container is not an orphan meanwhile). */
  private async whileReading<T> (id: string, fn: () => Promise<T>): Promise<T> {
    this.reading.set(id, (this.reading.get(id) ?? 0) + 1)
    try {
      return await fn()
    } finally {
      const n = (this.reading.get(id) ?? 1) - 1
      if (n > 0) this.reading.set(id, n)
      else this.reading.delete(id)
    }
  }

  /**
   * A follow-up message: to a running (or queued) task it waits for the current turn to end and
   * becomes the next turn; to an ended task it starts a follow-up turn in the same workspace and
   * OpenCode session. A `type` other than `update` is given to the agent as a `[type] ` prefix of
   * the turn's prompt; type and metadata are kept in the `message_queued` event.
   */
  async message (principal: string, id: string, text: string, opts: MessageOptions = {}): Promise<{ task: TaskRecord, delivery: 'queued_for_next_turn' | 'follow_up_started', message_id: string, timestamp: number }> {
    if (!this.accepting) throw new TaskError('draining', 'The service is shutting down and accepts no new turns; send the message again after the restart')
    const message = text.trim()
    if (!message) throw new TaskError('invalid', 'message is empty: say what the agent should do next')
    const type = opts.type ?? 'update'
    const metadataSize = opts.metadata ? Buffer.byteLength(JSON.stringify(opts.metadata)) : 0
    if (metadataSize > METADATA_LIMIT) throw new TaskError('invalid', `metadata is ${metadataSize} bytes as JSON, over the limit of ${METADATA_LIMIT}; send less metadata (put long text in the message)`)
    // the replica that runs the task holds its turns and workspace: the message is its to take (a task
    // running here is known without a read, so messages enter its step in the order they came)
    const remote = this.cluster && !this.live.has(id) && this.elsewhere(await this.get(principal, id), 'message', principal, [id, text, opts])
    if (remote) return await remote as Awaited<ReturnType<TaskEngine['message']>>
    const prompt = type === 'update' ? message : `[${type}] ${message}`
    const note = { message, message_type: type, ...(opts.metadata ? { metadata: opts.metadata } : {}), message_id: `msg_${randomUUID()}` }
    // read, decided and written in one step of the task: two messages, or a message and a turn's
    // start or end, do not overwrite each other's pending list
    return this.step(id, async () => {
      const task = await this.get(principal, id)
      if (task.status === 'cancelled') throw new TaskError('conflict', `Task ${id} was cancelled; submit a new task instead`)
      if (task.workspace_removed_at) throw new TaskError('conflict', `Task ${id}'s workspace was removed after WORKSPACE_RETENTION_MS; submit a new task instead`)
      if (!TERMINAL.has(task.status)) {
        await this.store.update(id, { pending: [...task.pending, prompt] })
        const event = await this.store.addEvent(id, 'message_queued', { ...note, position: task.pending.length + 1 })
        return { task: await this.store.get(id) as TaskRecord, delivery: 'queued_for_next_turn' as const, message_id: note.message_id, timestamp: event.at }
      }
      const used = exhausted(task.limits, spentOf(task))
      if (used) throw new TaskError('budget', `Task ${id} has used up its budget: ${used}; submit a new task (with a larger budget) instead`, { spent: spentOf(task), limits: task.limits })
      const daily = await dailyOver(this.config, this.store, principal, task.agent_id)
      if (daily) throw dailyRefusal(daily)
      if (!task.result?.session_id) throw new TaskError('conflict', `Task ${id} has no OpenCode session to continue (it ended ${task.reason ?? task.status} before the agent started); submit a new task instead`)
      // the slot is taken with the check of the queue's room (see submit); cluster mode: the check and
      // the write in the admission step, and the task's node (its workspace) claims the turn
      const release = this.cluster ? await this.admission(this.cluster) : undefined
      let slot: Promise<() => void> | undefined
      let event: TaskEvent
      let queued: TaskRecord
      try {
        const queue = await this.queueState()
        if (queue.full) throw this.queueFull(queue.waiting)
        slot = this.cluster ? undefined : this.semaphore.acquire(id)
        await transition(this.store, id, 'queued', { pending: [prompt], finished_at: null, exit_code: null, reason: null, error: null })
        event = await this.store.addEvent(id, 'message_queued', { ...note, position: 1 })
        queued = await this.store.get(id) as TaskRecord
      } catch (err) {
        this.giveBack(id, slot)
        throw err
      } finally {
        await release?.()
      }
      if (this.cluster) this.kick()
      else this.schedule(queued, undefined, slot)
      return { task: queued, delivery: 'follow_up_started' as const, message_id: note.message_id, timestamp: event.at }
    })
  }

  /** Resolves with the task once it has ended, or with its current state after `ms`. */
  async waitForEnd (id: string, ms: number, signal?: AbortSignal): Promise<TaskRecord> {
    // the waiter is registered before the store is read: an end that comes meanwhile is not missed
    return new Promise((resolve, reject) => {
      const set = this.endWaiters.get(id) ?? new Set()
      this.endWaiters.set(id, set)
      const done = (t: TaskRecord) => { clearTimeout(timer); clearInterval(poll); set.delete(done); resolve(t) }
      const fail = (err: unknown) => { clearTimeout(timer); clearInterval(poll); set.delete(done); reject(err) }
      const current = () => { this.store.get(id).then((t) => done(t as TaskRecord), fail) }
      const timer = setTimeout(current, ms)
      // cluster mode: another replica may end it; its notification wakes this waiter (taskChanged), the poll is the safety net
      const poll = this.cluster ? setInterval(() => { this.taskChanged(id).catch(() => {}) }, TaskEngine.WAIT_POLL_MS) : undefined
      signal?.addEventListener('abort', current, { once: true })
      set.add(done)
      this.store.get(id).then((t) => { if (TERMINAL.has((t as TaskRecord).status)) done(t as TaskRecord) }, fail)
    })
  }

  /** `reason` (the caller's words, optional) is kept in the event of the control. */
  async control (principal: string, id: string, action: 'cancel' | 'pause' | 'resume', reason?: string): Promise<TaskRecord> {
    const task = await this.get(principal, id)
    // its slot, its run and its container are on the replica that runs it
    const remote = this.elsewhere(task, 'control', principal, [id, action, reason])
    if (remote) return await remote as TaskRecord
    const why = reason ? { reason } : {}
    if (TERMINAL.has(task.status)) throw new TaskError('conflict', `Task ${id} already ended (${task.status}); nothing to ${action}`)
    if (action === 'cancel') {
      await this.store.addEvent(id, 'cancel_requested', why)
      // the run as it is once the request is recorded (its turn may have started or ended meanwhile)
      const live = this.live.get(id)
      if (task.status === 'queued' && this.semaphore.withdraw(id, new Error('cancelled'))) {
        await this.finish(id, { status: 'cancelled', reason: 'cancelled', error: 'cancelled while queued' })
      } else if (this.cluster && task.status === 'queued' && !live) {
        // cluster mode: queued in the database (perhaps claimed by a replica that has not started
        // it): cancelled only if still queued (compare and set); its claimer drops it
        const cancelled = await this.finish(id, { status: 'cancelled', reason: 'cancelled', error: 'cancelled while queued' }, undefined, undefined, 'queued')
          .catch((err: unknown) => { if (err instanceof WriteRefusedError || err instanceof IllegalTransitionError) return false; throw err })
        if (!cancelled) throw new TaskError('conflict', `Task ${id} started meanwhile on replica ${(await this.store.get(id))?.node_id ?? 'unknown'}; cancel it again`)
      } else if (live) {
        live.ending = 'cancelled'
        live.stop()
        return this.waitForEnd(id, (this.config.RUNNER_STOP_GRACE_S + 10) * 1000)
      }
      return await this.store.get(id) as TaskRecord
    }
    const live = this.live.get(id)
    // a task marked running whose container is still being created: wait for it (bounded)
    if (live && task.status === 'running') await live.containerStarted(15_000)
    if (!live?.containerId || !live.started || (action === 'pause' && task.status !== 'running') || (action === 'resume' && task.status !== 'paused')) {
      throw new TaskError('conflict', `Task ${id} is ${task.status}; ${action} needs a ${action === 'pause' ? 'running' : 'paused'} task`)
    }
    if (action === 'pause') {
      await live.pause()
      await transition(this.store, id, 'paused', { remaining_ms: live.remainingMs, resumed_at: null })
    } else {
      await live.resume()
      await transition(this.store, id, 'running', { remaining_ms: live.remainingMs, resumed_at: live.resumedAt })
    }
    await this.store.addEvent(id, action === 'pause' ? 'paused' : 'resumed', { remaining_ms: live.remainingMs, ...why })
    this.log.info({ taskId: id, agentId: task.agent_id, principal, remainingMs: live.remainingMs }, action === 'pause' ? 'task paused' : 'task resumed')
    return await this.store.get(id) as TaskRecord
  }

  // --- lifecycle ------------------------------------------------------------------------------

  /**
   * Start-up recovery: a task that was running is re-attached if its container still runs (a paused
   * one stays paused), else failed with the reason; then queued tasks are queued again; labelled
   * containers with no task are removed. Re-attached containers take their slots first (over
   * MAX_CONCURRENT_TASKS if the limit was lowered), with their timeout clock re-armed from the
   * stored run time left: paused time does not count, the time a container ran while the service
   * was down does.
   */
  async recover (): Promise<void> {
    // a task submitted meanwhile is scheduled by submit() alone (see below)
    // cluster mode: this replica's tasks only (their containers are on its engine); the queue is claimed, not recovered
    const mine = (tasks: TaskRecord[]) => this.cluster ? tasks.filter((t) => t.node_id === this.owner) : tasks
    const interrupted = mine(await this.store.withStatus('running', 'paused'))
    const queued = this.cluster ? [] : await this.store.withStatus('queued')
    const states = await Promise.all(interrupted.map((task) => task.container_id
      ? this.docker.inspectContainer(task.container_id).then((i) => i.State, () => undefined)
      : undefined))
    const gone: TaskRecord[] = []
    for (const [i, task] of interrupted.entries()) {
      const state = states[i]
      // a container that ended while the service was down is re-attached too: its log and exit code are read back
      const exited = state?.Status === 'exited'
      if (!state || !(state.Running || state.Paused || exited)) {
        gone.push(task)
        continue
      }
      // the stored status decides: a pause the store never recorded is undone
      const paused = state.Paused && task.status === 'paused'
      if (state.Paused && !paused) await this.docker.unpauseContainer(task.container_id as string).catch(() => {})
      const left = task.remaining_ms ?? task.timeout_ms
      const since = task.remaining_ms == null ? task.started_at : task.resumed_at
      const remainingMs = paused ? left : left - (since ? Date.now() - since : 0)
      await transition(this.store, task.id, paused ? 'paused' : 'running', { remaining_ms: remainingMs, resumed_at: paused ? null : Date.now() })
      await this.store.addEvent(task.id, 'reattached', { paused, remaining_ms: remainingMs, ...(exited ? { exited: true } : {}) })
      this.schedule(task, { containerId: task.container_id as string, remainingMs, paused, exited })
    }
    // one that a submit() or a follow-up message scheduled meanwhile (or is about to) is its own
    for (const task of queued) if (!this.live.has(task.id) && !this.submitting.has(task.id)) this.schedule(task)
    for (const task of gone) {
      await this.finish(task.id, { status: 'failed', reason: 'interrupted', error: 'the service stopped while the task ran and its container is gone; submit it again' },
        async () => { if (task.container_id) await this.docker.removeContainer(task.container_id, { force: true }).catch(() => {}) })
    }
    this.kick()
    // orphans and expired workspaces: not on the start-up path (a busy engine must not delay it)
    this.reconcile().catch((err: Error) => this.log.warn({ err }, 'reconcile failed; it runs again at the next interval'))
  }

  /**
   * Removes this owner's labelled containers that belong to no live task, once they are older than
   * the grace period, workspaces past their retention (or of no task), and ended tasks past
   * TASK_RETENTION_MS. One runs at a time: a call while one runs joins it.
   */
  reconcile (): Promise<number> {
    this.reconciling ??= this.reconcileOnce().finally(() => { this.reconciling = undefined })
    return this.reconciling
  }

  private async reconcileOnce (): Promise<number> {
    await this.retain()
    const containers = await this.docker.listContainers({ [LABEL.service]: SERVICE_LABEL, [LABEL.owner]: this.store.owner })
    let removed = 0
    for (const c of containers) {
      const taskId = c.Labels[LABEL.task]
      // a live task's containers, its helpers (clone, files, diff) included, are its own to remove
      if (taskId && (this.live.has(taskId) || this.reading.has(taskId))) continue
      // the runner image check removes its own container; one is an orphan only past the check's limit
      const grace = c.Labels[LABEL.role] === 'probe' ? Math.max(this.config.ORPHAN_GRACE_MS, VERSION_TIMEOUT_MS) : this.config.ORPHAN_GRACE_MS
      if (Date.now() - c.Created * 1000 < grace) continue
      const gone = await this.docker.removeContainer(c.Id, { force: true }).then(() => true, () => false)
      if (!gone) continue
      removed++
      this.log.warn({ taskId, container: c.Id }, 'removed orphan task container')
      this.emit('orphan_removed', c.Id)
    }
    await this.workspaces.expire(async (taskId) => {
      const task = await this.store.get(taskId)
      return task && { ended: TERMINAL.has(task.status), finished_at: task.finished_at, workspace_removed_at: task.workspace_removed_at }
    }, async (taskId) => {
      await this.store.update(taskId, { workspace_removed_at: Date.now() })
      this.log.info({ taskId }, 'workspace removed after its retention period')
    })
    return removed
  }

  /**
   * Retention: ended tasks finished more than TASK_RETENTION_MS ago are deleted with their events,
   * idempotency keys and Letta outbox rows (the store) and their log file; expired idempotency keys
   * are deleted too.
   */
  async retain (now = Date.now()): Promise<number> {
    await this.store.deleteExpiredKeys(now - this.config.IDEMPOTENCY_TTL_MS)
    await this.store.deleteSpendBefore(now - DAY_MS)
    if (this.config.TASK_RETENTION_MS === 0) return 0
    // a task outlives its workspace (its removal is recorded on the task, and then its Letta block goes)
    const ids = await this.store.deleteEnded(now - Math.max(this.config.TASK_RETENTION_MS, this.config.WORKSPACE_RETENTION_MS))
    for (const id of ids) rmSync(this.logPath(id), { force: true })
    if (ids.length) this.log.info({ tasks: ids.length }, 'ended tasks deleted after TASK_RETENTION_MS')
    return ids.length
  }

  /**
   * Graceful drain (SIGTERM): no new task is accepted and none that waits is started (queued tasks
   * stay queued in the store and resume on the next start). Running tasks get `graceMs` to end;
   * then their containers are stopped and they are recorded as failed with reason `interrupted`.
   */
  async drain (graceMs: number): Promise<void> {
    this.accepting = false
    // running: started turns, with or without their container yet (queued tasks stay queued; paused
    // ones stay paused, in the store and the engine, for the next start to take up)
    const running = async () => {
      const live = [...this.live.entries()]
      const statuses = await Promise.all(live.map(([id]) => this.store.status(id)))
      return live.filter((_, i) => statuses[i] === 'running')
    }
    const ends = (ids: string[], ms: number) => Promise.all(ids.map((id) => this.waitForEnd(id, ms)))
    const first = await running()
    if (first.length === 0) return
    this.log.info({ running: first.length, graceMs }, 'draining: waiting for running tasks')
    await ends(first.map(([id]) => id), graceMs)
    const left = await running()
    if (left.length === 0) return
    this.log.warn({ tasks: left.map(([id]) => id) }, 'draining: grace period over, stopping the tasks still running')
    for (const [, live] of left) live.end('interrupted')
    await ends(left.map(([id]) => id), (this.config.RUNNER_STOP_GRACE_S + 10) * 1000)
  }

  /** Stops following: tasks still running stay running in the store, for recovery on the next start. */
  close (): void {
    this.accepting = false
    this.closing.abort()
    for (const live of this.live.values()) live.clearTimers()
  }
}

/**
 * One turn's run: its container (create → attach → start → wait → remove), its clocks (the timeout
 * with the run time left, which stops while paused; the idle watchdog) and its capture (output,
 * log, events). The task service (engine.ts) creates one per turn, reads its outcome and does every
 * store write itself: a run only tells it, through its hooks, what happened.
 */
import { setTimeout as sleep } from 'node:timers/promises'
import type { LogChunk } from '../docker/demux.js'
import type { ContainerCreateSpec, DockerEngine } from '../docker/engine.js'
import { TurnCapture } from '../runner/capture.js'
import type { ParsedEvent, RunResult } from '../runner/opencode.js'
import type { EndReason } from './types.js'

export interface RunDeps {
  docker: DockerEngine
  config: { RUNNER_STOP_GRACE_S: number, RUNNER_IDLE_TIMEOUT_MS: number }
  /** Aborted when the service closes: the run stops following (its container runs on, for recovery). */
  signal: AbortSignal
  /** A watchdog or the drain ends the run: called once; the container is stopped once it resolves (it must not reject). */
  onEnding: (reason: EndReason, detail?: string) => Promise<void>
  /** The container could not be removed (logged; the reconcile removes it later). */
  onRemoveFailed: (err: Error) => void
}

export interface TurnOutcome { reason: EndReason, exitCode: number | null, engineError?: string, capture: TurnCapture, /** Why it ended, in words (a budget's numbers). */ detail?: string }

export interface CaptureOptions { outputLimit: number, logPath: string, logLimit: number, secrets: string[], previous?: RunResult | null, append: boolean }

export class Run {
  containerId?: string
  /** The container was started (a created container cannot be paused). */
  started: boolean
  /** Why the run is ending, once something ended it (a cancel, a watchdog, the drain). */
  ending?: EndReason
  /** The ending in words, when its ender gave them (a budget's numbers). */
  endingDetail?: string
  /** Run time left in this turn before the timeout; the clock stops while paused. */
  remainingMs: number
  resumedAt = 0
  /** The last thing the agent did, for progress messages. */
  lastEvent?: string
  /** Paused: no timeout or idle clock runs. */
  paused: boolean
  /** Re-attached to a container that ended while the service was down: only its log and exit code are read. */
  exited: boolean
  private timer?: NodeJS.Timeout
  private idle?: NodeJS.Timeout

  constructor (private readonly deps: RunDeps, init: { remainingMs: number, containerId?: string, paused?: boolean, exited?: boolean, ending?: EndReason, lastEvent?: string }) {
    this.remainingMs = init.remainingMs
    this.containerId = init.containerId
    this.started = init.containerId !== undefined
    this.paused = init.paused ?? false
    this.exited = init.exited ?? false
    this.ending = init.ending
    this.lastEvent = init.lastEvent
  }

  /** The next turn's run of the same task: an ending (a cancel that came between the turns) carries over. */
  next (remainingMs: number): Run {
    return new Run(this.deps, { remainingMs, ending: this.ending, lastEvent: this.lastEvent })
  }

  /**
   * create → `prepare` (inputs into the created container) → attach → start. `created` is told the
   * container's id (and awaited) before anything else is done with it. Throws when ended meanwhile.
   */
  async start (spec: ContainerCreateSpec, name: string, created: (containerId: string) => Promise<void>, prepare: (containerId: string) => Promise<void>): Promise<AsyncIterable<LogChunk>> {
    const { docker, signal } = this.deps
    const containerId = (await docker.createContainer(spec, name)).Id
    // known to the run first: a stop or a removal finds it even if the store write fails
    this.containerId = containerId
    await created(containerId)
    if (this.ending) throw new Error('cancelled before start')
    await prepare(containerId)
    const stream = await docker.attachContainer(containerId, signal)
    await docker.startContainer(containerId)
    this.started = true
    // a cancel that came while the container was starting found nothing running to stop
    if (this.ending) this.stop()
    return stream
  }

  /** The log of a re-attached container, from its start, followed. */
  reattach (): AsyncIterable<LogChunk> {
    return this.deps.docker.containerLogs(this.containerId as string, { follow: true, signal: this.deps.signal })
  }

  /** The timeout clock runs from here, unless paused or exited: true when it was armed (the caller stores it). */
  startClock (): boolean {
    if (this.paused || this.exited) return false
    this.resumedAt = Date.now()
    this.armTimeout()
    this.armIdle()
    return true
  }

  /** Follows the started container to its end: output, log and events (given to `record`, awaited), under the watchdogs. */
  async watch (stream: AsyncIterable<LogChunk>, capture: CaptureOptions, record: (events: ParsedEvent[]) => Promise<void>): Promise<TurnOutcome> {
    const { docker, signal } = this.deps
    const turn = new TurnCapture(capture)
    let exitCode: number | null = null
    let engineError: string | undefined
    let oom = false
    try {
      const follow = (async () => {
        for await (const chunk of stream) {
          this.armIdle()
          await record(await turn.push(chunk.data))
        }
        await record(await turn.end())
      })()
      const [, exit] = await Promise.all([follow, docker.waitContainer(this.containerId as string, signal)])
      exitCode = exit.StatusCode
      // a successful exit needs no post-mortem; a failed one may be the OOM killer's work
      oom = exitCode !== 0 && (await docker.inspectContainer(this.containerId as string)).State.OOMKilled
    } catch (err) {
      engineError = turn.redact((err as Error).message)
    } finally {
      this.clearTimers()
    }
    this.exited = false
    const reason: EndReason = this.ending ?? (oom ? 'oom' : engineError ? 'engine_error' : 'exit')
    return { reason, exitCode, engineError, capture: turn, ...(this.endingDetail ? { detail: this.endingDetail } : {}) }
  }

  async pause (): Promise<void> {
    await this.deps.docker.pauseContainer(this.containerId as string)
    this.paused = true
    this.clearTimers()
    this.remainingMs -= Date.now() - this.resumedAt
  }

  async resume (): Promise<void> {
    await this.deps.docker.unpauseContainer(this.containerId as string)
    this.paused = false
    this.resumedAt = Date.now()
    this.armTimeout()
    this.armIdle()
  }

  /** Ends the run for `reason` (the first reason wins): told to the hook, then the container is stopped. */
  end (reason: EndReason, detail?: string): void {
    if (this.ending) return
    this.ending = reason
    this.endingDetail = detail
    // the reason is recorded before the container is stopped (its end is recorded after it)
    this.deps.onEnding(reason, detail).then(() => this.stop(), () => this.stop())
  }

  /** Stops the container, if there is one (a paused one is resumed first: it cannot take SIGTERM). */
  stop (): void {
    if (!this.containerId) return
    const id = this.containerId
    const { docker, config } = this.deps
    docker.unpauseContainer(id).catch(() => {}).finally(() => {
      docker.stopContainer(id, config.RUNNER_STOP_GRACE_S).catch(() => docker.killContainer(id).catch(() => {}))
    })
  }

  async remove (): Promise<void> {
    if (!this.containerId) return
    await this.deps.docker.removeContainer(this.containerId, { force: true }).catch((err: Error) => this.deps.onRemoveFailed(err))
    this.containerId = undefined
    this.started = false
  }

  /** Resolves once the container was started (or the run is ending), at most after `ms`. */
  async containerStarted (ms: number): Promise<void> {
    const until = Date.now() + ms
    while (!this.started && !this.ending && Date.now() < until) await sleep(50)
  }

  clearTimers (): void {
    clearTimeout(this.timer)
    clearTimeout(this.idle)
  }

  private armTimeout (): void {
    clearTimeout(this.timer)
    this.timer = setTimeout(() => this.end('timeout'), Math.max(0, this.remainingMs))
  }

  /** The stall watchdog: a turn that prints nothing for RUNNER_IDLE_TIMEOUT_MS is stopped. */
  private armIdle (): void {
    clearTimeout(this.idle)
    if (this.deps.config.RUNNER_IDLE_TIMEOUT_MS > 0 && !this.paused) this.idle = setTimeout(() => this.end('stalled'), this.deps.config.RUNNER_IDLE_TIMEOUT_MS)
  }
}

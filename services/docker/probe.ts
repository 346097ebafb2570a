/**
 * A cached view of the Docker engine's reachability, refreshed in the background so that a
 * health request never waits on an engine round trip.
 */
import type { DockerEngine } from './engine.js'
import { mapDockerError, type DockerErrorCode } from './errors.js'

export interface EngineState {
  reachable: boolean
  version: string | null
  api_version: string | null
  last_error: string | null
  last_error_code: DockerErrorCode | null
  checked_at: string | null
}

export type EngineStateListener = (state: EngineState, previous: EngineState) => void

export class EngineProbe {
  state: EngineState = { reachable: false, version: null, api_version: null, last_error: 'not checked yet', last_error_code: null, checked_at: null }
  private timer: NodeJS.Timeout | undefined
  private inflight: Promise<EngineState> | undefined

  constructor (
    private readonly engine: DockerEngine,
    private readonly intervalMs: number,
    private readonly onChange: EngineStateListener = () => {}
  ) {}

  /** Probes once (so the first report is real), then keeps probing every interval. */
  async start (): Promise<EngineState> {
    const state = await this.check()
    this.timer ??= setInterval(() => { this.check().catch(() => {}) }, this.intervalMs).unref()
    return state
  }

  stop (): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  /** One probe: ping, plus the version after (re)connecting. Concurrent callers share it. */
  check (): Promise<EngineState> {
    this.inflight ??= this.probe().finally(() => { this.inflight = undefined })
    return this.inflight
  }

  private async probe (): Promise<EngineState> {
    const previous = this.state
    const signal = AbortSignal.timeout(Math.min(this.intervalMs, 2_000))
    let next: EngineState
    try {
      await this.engine.ping(signal)
      const version = previous.reachable && previous.version ? null : await this.engine.version(signal)
      next = {
        reachable: true,
        version: version?.Version ?? previous.version,
        api_version: version?.ApiVersion ?? previous.api_version,
        last_error: null,
        last_error_code: null,
        checked_at: new Date().toISOString()
      }
    } catch (err) {
      const mapped = mapDockerError(err, 'GET /_ping')
      next = { ...previous, reachable: false, last_error: mapped.message, last_error_code: mapped.code, checked_at: new Date().toISOString() }
    }
    this.state = next
    if (next.reachable !== previous.reachable || next.last_error_code !== previous.last_error_code) this.onChange(next, previous)
    return next
  }
}

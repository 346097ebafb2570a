/**
 * The runner image check: RUNNER_IMAGE is inspected once at start and then on the engine probe's
 * cadence, and whenever its id changes the OpenCode version is learnt by running `opencode --version`
 * once in a hardened, network-less, labelled short-lived container (cached per image id and user). /health
 * reports the state; the task engine reads it to refuse a task at once when the image is missing or
 * has no `opencode` on its PATH, instead of failing it in a container.
 */
import type { Config } from '../config.js'
import type { DockerEngine } from '../docker/engine.js'
import { LABEL, READ_ONLY_ENV, readOnlyRoot, SERVICE_LABEL } from './container-spec.js'

export interface RunnerImageState {
  image: string
  /** null until the first check answered (or while the engine cannot be reached before it did). */
  present: boolean | null
  opencode_version: string | null
  /** false: tasks are refused (the image is missing or has no `opencode`); null until checked. */
  usable: boolean | null
  error: string | null
  checked_at: string | null
}

type ImageConfig = Pick<Config, 'RUNNER_IMAGE' | 'RUNNER_USER' | 'RUNNER_PIDS_LIMIT'> & Partial<Pick<Config, 'RUNNER_READ_ONLY_ROOTFS'>>

/** The longest the version check's container may live (reconcile leaves it alone that long). */
export const VERSION_TIMEOUT_MS = 60_000

const buildHint = (image: string) =>
  `build it with \`docker build -t ${image} runner/\` (scripts/runner-image.sh builds it from a local base image) or pull it with \`docker pull ${image}\`, or set RUNNER_IMAGE to an image that has it`

export const missingImage = (image: string) => `RUNNER_IMAGE ${image} is not on the Docker engine: ${buildHint(image)}`

export const noOpencode = (image: string) =>
  `RUNNER_IMAGE ${image} has no \`opencode\` on its PATH (a runner image must contain the OpenCode CLI; see "Runner image contract" in the README): ${buildHint(image)}`

/** tini's message (the runner runs with Init) or the engine's, when the entrypoint cannot be found. */
export const OPENCODE_NOT_FOUND = /exec opencode failed|opencode: not found|"opencode": executable file not found/

/** `retry`: a failure that may pass (a busy engine), checked again next time instead of cached. */
interface Version { version: string | null, error: string | null, usable: boolean, retry?: boolean }

/** By image id and user, for the process: an image's `opencode --version` does not change. */
const versions = new Map<string, Version>()

export class RunnerImageProbe {
  state: RunnerImageState
  private timer: NodeJS.Timeout | undefined
  private inflight: Promise<RunnerImageState> | undefined

  constructor (
    private readonly docker: DockerEngine,
    private readonly config: ImageConfig,
    private readonly owner: string,
    private readonly intervalMs: number,
    private readonly onChange: (state: RunnerImageState) => void = () => {}
  ) {
    this.state = { image: config.RUNNER_IMAGE, present: null, opencode_version: null, usable: null, error: null, checked_at: null }
  }

  /** Why a new task cannot run in RUNNER_IMAGE (missing, or no `opencode`), or null. */
  get refusal (): string | null {
    return this.state.usable === false ? this.state.error : null
  }

  /** Checks now and then every interval; not awaited, so a busy engine does not delay the start. */
  start (): void {
    this.check().catch(() => {})
    this.timer ??= setInterval(() => { this.check().catch(() => {}) }, this.intervalMs).unref()
  }

  stop (): void {
    clearInterval(this.timer)
    this.timer = undefined
  }

  /** One check; concurrent callers share it. */
  check (): Promise<RunnerImageState> {
    this.inflight ??= this.probe().finally(() => { this.inflight = undefined })
    return this.inflight
  }

  private async probe (): Promise<RunnerImageState> {
    const image = this.config.RUNNER_IMAGE
    const previous = this.state
    let next: RunnerImageState
    try {
      const info = await this.docker.inspectImage(image, AbortSignal.timeout(Math.max(this.intervalMs, 2_000)))
      if (!info) {
        next = { image, present: false, opencode_version: null, usable: false, error: missingImage(image), checked_at: new Date().toISOString() }
      } else {
        const key = `${info.Id} ${this.config.RUNNER_USER} ${this.config.RUNNER_READ_ONLY_ROOTFS !== false}`
        let v = versions.get(key)
        if (!v) {
          v = await this.version()
          if (!v.retry) versions.set(key, v)
        }
        next = { image, present: true, opencode_version: v.version, usable: v.usable, error: v.error, checked_at: new Date().toISOString() }
      }
    } catch {
      // the engine cannot be reached: the engine probe reports that; what was known stays
      return this.state
    }
    this.state = next
    if (next.present !== previous.present || next.error !== previous.error || next.opencode_version !== previous.opencode_version) this.onChange(next)
    return next
  }

  /**
   * `opencode --version` in the image: no network, every capability dropped, removed afterwards, and
   * a read-only root like the runs' (RUNNER_READ_ONLY_ROOTFS) with a small tmpfs at /tmp.
   * OpenCode makes its data directory at start: a fresh one under /tmp (an image may already hold a root-owned /tmp/opencode). */
  private async version (): Promise<Version> {
    const image = this.config.RUNNER_IMAGE
    const { Id } = await this.docker.createContainer({
      Image: image,
      Entrypoint: ['opencode'],
      Cmd: ['--version'],
      Env: ['XDG_DATA_HOME=/tmp/opencode-version-check', ...READ_ONLY_ENV, 'OPENCODE_DISABLE_AUTOUPDATE=1'],
      User: this.config.RUNNER_USER,
      Labels: { [LABEL.service]: SERVICE_LABEL, [LABEL.owner]: this.owner, [LABEL.task]: '', [LABEL.role]: 'probe' },
      HostConfig: {
        NetworkMode: 'none',
        CapDrop: ['ALL'],
        SecurityOpt: ['no-new-privileges:true'],
        Privileged: false,
        Init: true,
        PidsLimit: this.config.RUNNER_PIDS_LIMIT,
        Memory: 512 * 1024 * 1024,
        AutoRemove: false,
        ...(this.config.RUNNER_READ_ONLY_ROOTFS === false ? {} : readOnlyRoot(64 * 1024 * 1024))
      }
    })
    const signal = AbortSignal.timeout(VERSION_TIMEOUT_MS)
    try {
      let output = ''
      let exitCode: number
      try {
        await this.docker.startContainer(Id)
        exitCode = (await this.docker.waitContainer(Id, signal)).StatusCode
        for await (const c of this.docker.containerLogs(Id, { signal })) output += c.data.toString('utf8')
      } catch (err) {
        // without an init the engine itself refuses to start a missing entrypoint
        if (OPENCODE_NOT_FOUND.test((err as Error).message)) return { version: null, error: noOpencode(image), usable: false }
        throw err
      }
      if (exitCode === 0) {
        const version = output.trim().split('\n').pop()?.trim().slice(0, 100) || null
        return { version, error: null, usable: true }
      }
      if (exitCode === 127 && OPENCODE_NOT_FOUND.test(output)) return { version: null, error: noOpencode(image), usable: false }
      // tasks may still run; checked again next time (a killed or starved check is no verdict on the image)
      return { version: null, error: `\`opencode --version\` in RUNNER_IMAGE ${image} exited with code ${exitCode}: ${output.trim().slice(-300)}`, usable: true, retry: true }
    } catch (err) {
      return { version: null, error: `\`opencode --version\` in RUNNER_IMAGE ${image} could not run: ${(err as Error).message}`, usable: true, retry: true }
    } finally {
      await this.docker.removeContainer(Id, { force: true }).catch(() => {})
    }
  }
}

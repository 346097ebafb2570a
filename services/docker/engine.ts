/**
 * A small typed Docker Engine API client on docker-modem. It covers what the service needs and
 * nothing else; every error is mapped once by mapDockerError. The connection follows Docker's own
 * conventions (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), which docker-modem reads, unless
 * options are given.
 */
import type { IncomingMessage } from 'node:http'
import type { Readable } from 'node:stream'
import Modem from 'docker-modem'
import { demuxDockerStream, type LogChunk } from './demux.js'
import { deadlineError, DockerError, mapDockerError } from './errors.js'

export type Labels = Record<string, string>

export interface EngineVersion { Version: string, ApiVersion: string, MinAPIVersion?: string, Os: string, Arch: string, KernelVersion?: string }

/** The subset of the Engine API's container create body that the service sets. */
export interface ContainerCreateSpec {
  Image: string
  Cmd?: string[]
  Entrypoint?: string[] | null
  Env?: string[]
  User?: string
  WorkingDir?: string
  Labels?: Labels
  Tty?: false
  OpenStdin?: boolean
  AttachStdout?: boolean
  AttachStderr?: boolean
  NetworkDisabled?: boolean
  StopSignal?: string
  StopTimeout?: number
  HostConfig?: {
    NanoCpus?: number
    Memory?: number
    MemorySwap?: number
    PidsLimit?: number
    CapDrop?: string[]
    CapAdd?: string[]
    SecurityOpt?: string[]
    Privileged?: false
    ReadonlyRootfs?: boolean
    Init?: boolean
    NetworkMode?: string
    AutoRemove?: boolean
    Binds?: string[]
    Mounts?: Array<{ Type: 'volume' | 'bind' | 'tmpfs', Source?: string, Target: string, ReadOnly?: boolean, TmpfsOptions?: { SizeBytes?: number, Mode?: number }, VolumeOptions?: { Labels?: Labels } }>
    Tmpfs?: Record<string, string>
    Ulimits?: Array<{ Name: string, Soft: number, Hard: number }>
    LogConfig?: { Type: string, Config?: Record<string, string> }
  }
}

export interface ContainerState {
  Status: 'created' | 'running' | 'paused' | 'restarting' | 'removing' | 'exited' | 'dead'
  Running: boolean
  Paused: boolean
  OOMKilled: boolean
  ExitCode: number
  Error: string
  StartedAt: string
  FinishedAt: string
}

export interface ContainerInspect {
  Id: string
  Name: string
  Created: string
  State: ContainerState
  Config: { Image: string, Labels: Labels | null, Cmd: string[] | null, User: string, Env: string[] | null }
  HostConfig: Required<Pick<NonNullable<ContainerCreateSpec['HostConfig']>, 'NanoCpus' | 'Memory' | 'MemorySwap' | 'CapDrop' | 'SecurityOpt' | 'Privileged' | 'NetworkMode'>> & { PidsLimit: number | null, Init: boolean | null, ReadonlyRootfs: boolean, Tmpfs?: Record<string, string> | null, Mounts?: NonNullable<ContainerCreateSpec['HostConfig']>['Mounts'] | null }
}

export interface NetworkInspect {
  Id: string
  Name: string
  Internal: boolean
  Labels: Labels | null
  IPAM: { Config: Array<{ Subnet?: string, Gateway?: string }> | null }
  /** Containers attached, by id: their names and addresses (`172.18.0.2/16`). */
  Containers: Record<string, { Name: string, IPv4Address: string }> | null
}

export interface ImageInspect { Id: string, Config: { Entrypoint: string[] | null, Cmd: string[] | null, User: string, Env: string[] | null, WorkingDir: string } | null }

export interface ContainerSummary { Id: string, Names: string[], Image: string, Labels: Labels, State: string, Status: string, Created: number }

export interface WaitResult { StatusCode: number, Error?: { Message: string } | null }

export interface LogOptions { follow?: boolean, since?: number, tail?: number | 'all', timestamps?: boolean, signal?: AbortSignal }

interface RequestOptions {
  query?: Record<string, unknown>
  body?: unknown
  ok: number[]
  stream?: boolean
  file?: Readable | Buffer
  signal?: AbortSignal
  /**
   * How long the engine may take to answer, in ms: by default the client's call timeout; long calls
   * (attach, wait, followed logs) pass `false` and stay cancellable by their signal only.
   */
  deadline?: number | false
}

/** Turns `{ a: 'b', c: true }` into the Engine API's label filter `["a=b", "c"]`. */
function labelFilter (labels: Record<string, string | true>): string[] {
  return Object.entries(labels).map(([k, v]) => (v === true ? k : `${k}=${v}`))
}

export class DockerEngine {
  readonly modem: Modem

  /**
   * `callTimeoutMs` (DOCKER_CALL_TIMEOUT_MS) bounds every short call: docker-modem has no timeout,
   * and a hung engine call would otherwise hold its caller (and a task's queue slot) forever.
   */
  constructor (options?: Modem.ConstructorOptions, readonly callTimeoutMs = 30_000) {
    this.modem = new Modem(options)
  }

  private request<T> (method: string, path: string, opts: RequestOptions): Promise<T> {
    const statusCodes: Record<number, boolean> = {}
    for (const code of opts.ok) statusCodes[code] = true
    const query = opts.query ? Object.fromEntries(Object.entries(opts.query).filter(([, v]) => v !== undefined)) : undefined
    const hasQuery = query !== undefined && Object.keys(query).length > 0
    // docker-modem sends `_body` as JSON (an empty object sends no body) and `_query` as the query string
    const options = method === 'POST' || method === 'PUT'
      ? { ...(hasQuery ? { _query: query } : {}), _body: opts.body ?? {} }
      : query
    const deadlineMs = opts.deadline ?? this.callTimeoutMs
    // the deadline covers the call until the engine's answer (for streams: its headers), not a stream's body
    const deadline = deadlineMs === false ? undefined : new AbortController()
    const timer = deadline ? setTimeout(() => deadline.abort(), deadlineMs as number) : undefined
    const signal = deadline ? (opts.signal ? AbortSignal.any([opts.signal, deadline.signal]) : deadline.signal) : opts.signal
    return new Promise<T>((resolve, reject) => {
      this.modem.dial({
        path: hasQuery ? `${path}?` : path,
        method,
        options,
        statusCodes,
        isStream: opts.stream ?? false,
        file: opts.file as never,
        abortSignal: signal
      }, (err, data) => {
        clearTimeout(timer)
        if (err && deadline?.signal.aborted && !opts.signal?.aborted) reject(deadlineError(`${method} ${path}`, deadlineMs as number, err))
        else if (err) reject(mapDockerError(err, `${method} ${path}`))
        else resolve(data as T)
      })
    })
  }

  // --- engine -------------------------------------------------------------------------------

  async ping (signal?: AbortSignal): Promise<void> {
    await this.request('GET', '/_ping', { ok: [200], signal })
  }

  version (signal?: AbortSignal): Promise<EngineVersion> {
    return this.request('GET', '/version', { ok: [200], signal })
  }

  info (): Promise<Record<string, unknown>> {
    return this.request('GET', '/info', { ok: [200] })
  }

  async imageExists (image: string): Promise<boolean> {
    try {
      await this.request('GET', `/images/${encodeURIComponent(image)}/json`, { ok: [200] })
      return true
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) return false
      throw err
    }
  }

  /** An image's id and config (GET /images/{name}/json); null when the engine does not have it. */
  async inspectImage (image: string, signal?: AbortSignal): Promise<ImageInspect | null> {
    try {
      return await this.request<ImageInspect>('GET', `/images/${encodeURIComponent(image)}/json`, { ok: [200], signal })
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) return null
      throw err
    }
  }

  // --- containers ---------------------------------------------------------------------------

  createContainer (spec: ContainerCreateSpec, name?: string): Promise<{ Id: string, Warnings: string[] }> {
    return this.request('POST', '/containers/create', { query: { name }, body: spec, ok: [201] })
  }

  async startContainer (id: string): Promise<void> {
    await this.request('POST', `/containers/${id}/start`, { ok: [204, 304] })
  }

  /** Resolves when the container stops (`condition=not-running`), with its exit code. */
  waitContainer (id: string, signal?: AbortSignal): Promise<WaitResult> {
    return this.request('POST', `/containers/${id}/wait`, { query: { condition: 'not-running' }, ok: [200], signal, deadline: false })
  }

  /** Stops with the container's stop signal, then SIGKILL after `timeoutSec`. */
  async stopContainer (id: string, timeoutSec = 10): Promise<void> {
    // the engine answers after the grace period (and the kill that may follow it)
    await this.request('POST', `/containers/${id}/stop`, { query: { t: timeoutSec }, ok: [204, 304], deadline: this.callTimeoutMs + timeoutSec * 1000 })
  }

  async killContainer (id: string, signal = 'SIGKILL'): Promise<void> {
    await this.request('POST', `/containers/${id}/kill`, { query: { signal }, ok: [204] })
  }

  async pauseContainer (id: string): Promise<void> {
    await this.request('POST', `/containers/${id}/pause`, { ok: [204] })
  }

  async unpauseContainer (id: string): Promise<void> {
    await this.request('POST', `/containers/${id}/unpause`, { ok: [204] })
  }

  async removeContainer (id: string, opts: { force?: boolean, volumes?: boolean } = {}): Promise<void> {
    await this.request('DELETE', `/containers/${id}`, { query: { force: opts.force ?? false, v: opts.volumes ?? false }, ok: [204] })
  }

  inspectContainer (id: string): Promise<ContainerInspect> {
    return this.request('GET', `/containers/${id}/json`, { ok: [200] })
  }

  /** One sample of a running container's resource use (processes and memory). */
  async containerStats (id: string): Promise<{ pids: number, memoryBytes: number }> {
    const s = await this.request<{ pids_stats?: { current?: number }, memory_stats?: { usage?: number } }>('GET', `/containers/${id}/stats`, { query: { stream: false }, ok: [200] })
    return { pids: s.pids_stats?.current ?? 0, memoryBytes: s.memory_stats?.usage ?? 0 }
  }

  listContainers (labels: Record<string, string | true>, all = true): Promise<ContainerSummary[]> {
    return this.request('GET', '/containers/json', {
      query: { all, filters: { label: labelFilter(labels) } },
      ok: [200]
    })
  }

  /** stdout and stderr of a (non-TTY) container, demultiplexed; followed live with `follow`. */
  async * containerLogs (id: string, opts: LogOptions = {}): AsyncGenerator<LogChunk> {
    const res = await this.request<IncomingMessage>('GET', `/containers/${id}/logs`, {
      query: { stdout: true, stderr: true, follow: opts.follow ?? false, since: opts.since, tail: opts.tail, timestamps: opts.timestamps },
      ok: [200],
      stream: true,
      signal: opts.signal,
      ...(opts.follow ? { deadline: false as const } : {})
    })
    try {
      yield * demuxDockerStream(res)
    } finally {
      res.destroy()
    }
  }

  /**
   * Attaches to stdout and stderr of a created container before it starts: nothing is missed, the
   * engine's log rotation does not apply, and a slow reader holds the container's writes back
   * (backpressure) instead of growing a buffer. The stream ends when the container stops.
   */
  async attachContainer (id: string, signal?: AbortSignal): Promise<AsyncGenerator<LogChunk>> {
    const res = await this.request<IncomingMessage>('POST', `/containers/${id}/attach`, {
      query: { stream: true, stdout: true, stderr: true },
      ok: [101, 200],
      stream: true,
      signal,
      deadline: false
    })
    return (async function * () {
      try {
        yield * demuxDockerStream(res)
      } finally {
        res.destroy()
      }
    })()
  }

  /**
   * The engine's stat of a path in a container (name, size, mode, mtime, linkTarget), from the
   * X-Docker-Container-Path-Stat header of the archive endpoint; the body is not read.
   */
  async statPath (id: string, path: string): Promise<{ name: string, size: number, mode: number, mtime: string, linkTarget: string }> {
    const res = await this.request<IncomingMessage>('HEAD', `/containers/${id}/archive`, { query: { path }, ok: [200], stream: true })
    res.destroy()
    const header = res.headers['x-docker-container-path-stat']
    if (typeof header !== 'string') throw new DockerError('engine_error', `the engine sent no path stat for ${path}`)
    return JSON.parse(Buffer.from(header, 'base64').toString('utf8'))
  }

  /** A tar stream of `path` inside the container (works on stopped containers too). */
  getArchive (id: string, path: string): Promise<IncomingMessage> {
    return this.request('GET', `/containers/${id}/archive`, { query: { path }, ok: [200], stream: true })
  }

  /** Extracts a tar archive into `path` inside the container. */
  async putArchive (id: string, path: string, tar: Readable | Buffer): Promise<void> {
    await this.request('PUT', `/containers/${id}/archive`, { query: { path }, file: tar, ok: [200] })
  }

  // --- volumes ------------------------------------------------------------------------------

  createVolume (name: string, labels: Labels): Promise<{ Name: string, Mountpoint: string }> {
    return this.request('POST', '/volumes/create', { body: { Name: name, Labels: labels }, ok: [201] })
  }

  // --- networks -----------------------------------------------------------------------------

  async createNetwork (spec: { Name: string, Internal?: boolean, Labels?: Labels }): Promise<{ Id: string }> {
    return this.request('POST', '/networks/create', { body: { Driver: 'bridge', ...spec }, ok: [201] })
  }

  /** null when there is no such network. */
  async inspectNetwork (name: string): Promise<NetworkInspect | null> {
    try {
      return await this.request<NetworkInspect>('GET', `/networks/${encodeURIComponent(name)}`, { ok: [200] })
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) return null
      throw err
    }
  }

  /** Attaches a running container to a network (the service's own, in the Compose stack). */
  async connectNetwork (network: string, container: string): Promise<void> {
    await this.request('POST', `/networks/${encodeURIComponent(network)}/connect`, { body: { Container: container }, ok: [200] })
  }

  async disconnectNetwork (network: string, container: string): Promise<void> {
    await this.request('POST', `/networks/${encodeURIComponent(network)}/disconnect`, { body: { Container: container, Force: true }, ok: [200, 404] })
  }

  async removeNetwork (name: string): Promise<void> {
    await this.request('DELETE', `/networks/${encodeURIComponent(name)}`, { ok: [204, 404] })
  }

  async removeVolume (name: string, force = false): Promise<void> {
    await this.request('DELETE', `/volumes/${encodeURIComponent(name)}`, { query: { force }, ok: [204] })
  }

  async listVolumes (labels: Record<string, string | true>): Promise<Array<{ Name: string, Labels: Labels | null, CreatedAt?: string }>> {
    const res = await this.request<{ Volumes: Array<{ Name: string, Labels: Labels | null, CreatedAt?: string }> | null }>('GET', '/volumes', {
      query: { filters: { label: labelFilter(labels) } },
      ok: [200]
    })
    return res.Volumes ?? []
  }
}

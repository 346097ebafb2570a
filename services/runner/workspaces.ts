/**
 * The workspaces of tasks, through the Engine API only: volumes created and labelled per task,
 * inputs (a git repository cloned, files seeded), file listing and reading during and after a run,
 * the git diff at the end, and removal after WORKSPACE_RETENTION_MS.
 */
import type { Config } from '../config.js'
import type { DockerEngine } from '../docker/engine.js'
import { containerSpec, LABEL, SERVICE_LABEL } from './container-spec.js'
import { TaskError } from '../errors.js'
import { confine, listFiles, mountPointsArchive, readFile, seedArchive, WorkspaceError, workspaceVolume, type FileEntry } from './workspace.js'

type WorkspaceConfig = Pick<Config, 'RUNNER_IMAGE' | 'RUNNER_CPU_LIMIT' | 'RUNNER_MEMORY_LIMIT' | 'RUNNER_NETWORK' | 'RUNNER_PIDS_LIMIT' |
'RUNNER_USER' | 'RUNNER_STOP_GRACE_S' | 'TASK_LOG_LIMIT' | 'RUNNER_OPENCODE_CONFIG_DIR' | 'RUNNER_READ_ONLY_ROOTFS' | 'RUNNER_TMPFS_SIZE' | 'MAX_TASK_FILE_SIZE' | 'WORKSPACE_RETENTION_MS' | 'ORPHAN_GRACE_MS'>

/** What the workspaces need of a task (the tasks layer's record has these fields). */
export interface WorkspaceTask {
  id: string
  agent_id: string | null
  repository: { url: string, branch: string | null } | null
  /** Turns started so far: 0 while the workspace does not exist yet. */
  turns: number
  workspace_removed_at: number | null
}

/** What expiry needs of a task: whether it ended, and when. */
export interface WorkspaceRetention { ended: boolean, finished_at: number | null, workspace_removed_at: number | null }

const DIFF_LIMIT = 256 * 1024
const HELPER_TIMEOUT_MS = 120_000
const REPOSITORY_URL = /^(https?:\/\/[^\s]+|ssh:\/\/[^\s]+|git@[A-Za-z0-9.-]+:[^\s]+)$/

/** Workspace errors as the task errors the tools and routes answer with. */
function asTaskError (err: unknown): never {
  if (err instanceof WorkspaceError) {
    throw new TaskError(err.code === 'not_found' ? 'not_found' : 'invalid', err.message, { code_detail: err.code })
  }
  throw err
}

export class Workspaces {
  /** The volume sets whose mount points were given to RUNNER_USER (read-only roots only). */
  private readonly owned = new Set<string>()

  constructor (private readonly docker: DockerEngine, private readonly config: WorkspaceConfig, private readonly owner: string) {}

  checkRepository (url: string): string {
    if (!REPOSITORY_URL.test(url)) throw new TaskError('invalid', `repository.url "${url}" is not a network git URL; use https://…, ssh://… or git@host:path`)
    return url
  }

  checkPath (path: string, field: string): void {
    try {
      confine(path, field)
    } catch (err) {
      asTaskError(err)
    }
  }

  /**
   * First turn: the repository, cloned by a helper container (whose mounts make the task's labelled
   * volumes; without a repository the turn's own container makes them).
   */
  async prepare (task: WorkspaceTask): Promise<void> {
    if (task.repository) {
      const { url, branch } = task.repository
      const clone = await this.helper(task, ['git'], ['clone', '--single-branch', ...(branch ? ['--branch', branch] : []), '--', url, '/workspace'], true)
      if (clone.exitCode !== 0) throw new Error(`git clone of ${url}${branch ? ` (branch ${branch})` : ''} failed: ${clone.output.trim().slice(-500)}`)
    }
  }

  async seed (containerId: string, files: Array<{ path: string, content: string }>): Promise<void> {
    const [uid, gid] = this.config.RUNNER_USER.split(':').map(Number)
    await this.docker.putArchive(containerId, '/workspace', seedArchive(files, uid, gid))
  }

  /**
   * Before start: the mount points of a created container owned by RUNNER_USER (see mountPointsArchive).
   * A read-only root refuses an archive outside its volumes, and an archive into a volume leaves the
   * volume's own directory as it is: the archive goes through a throwaway container (never started,
   * writable root, no network) with the same volumes, whose directories keep the owner afterwards.
   */
  async own (containerId: string): Promise<void> {
    const [uid, gid] = this.config.RUNNER_USER.split(':').map(Number)
    if (!this.config.RUNNER_READ_ONLY_ROOTFS) {
      await this.docker.putArchive(containerId, '/', mountPointsArchive(uid, gid))
      return
    }
    const info = await this.docker.inspectContainer(containerId)
    const volumes = (info.HostConfig.Mounts ?? []).filter((m) => m.Type === 'volume' && !m.ReadOnly)
    // a volume keeps its owner: later turns (in this process) skip the extra container
    const key = volumes.map((v) => v.Source).sort().join(' ')
    if (this.owned.has(key)) return
    const { Id } = await this.docker.createContainer({
      Image: info.Config.Image,
      Entrypoint: ['true'],
      Cmd: [],
      User: this.config.RUNNER_USER,
      Labels: { ...(info.Config.Labels ?? {}), [LABEL.role]: 'helper' },
      HostConfig: { NetworkMode: 'none', CapDrop: ['ALL'], SecurityOpt: ['no-new-privileges:true'], Privileged: false, Mounts: volumes }
    })
    try {
      await this.docker.putArchive(Id, '/', mountPointsArchive(uid, gid))
      if (this.owned.size > 10_000) this.owned.clear()
      this.owned.add(key)
    } finally {
      await this.docker.removeContainer(Id, { force: true }).catch(() => {})
    }
  }

  /** The changes made to a cloned repository (untracked files included), capped; null for other workspaces. */
  async diff (task: WorkspaceTask, redact: (s: string) => string): Promise<{ text: string, truncated: boolean } | null> {
    if (!task.repository) return null
    const run = await this.helper(task, ['sh', '-c'], ['cd /workspace && git add --intent-to-add --all && git --no-pager diff HEAD'], false)
    if (run.exitCode !== 0) return null
    const text = redact(run.output)
    return text.length > DIFF_LIMIT ? { text: text.slice(0, DIFF_LIMIT) + `\n[diff truncated at ${DIFF_LIMIT} bytes]\n`, truncated: true } : { text, truncated: false }
  }

  async list (task: WorkspaceTask, running: string | undefined, path: string, limit: number): Promise<{ entries: FileEntry[], truncated: boolean }> {
    return this.withContainer(task, running, (id) => listFiles(this.docker, id, path, limit))
  }

  async read (task: WorkspaceTask, running: string | undefined, path: string) {
    return this.withContainer(task, running, (id) => readFile(this.docker, id, path, this.config.MAX_TASK_FILE_SIZE))
  }

  /** Removes workspaces past their retention, and those of no task once older than the grace period. */
  async expire (taskOf: (id: string) => Promise<WorkspaceRetention | undefined>, onRemoved: (taskId: string) => Promise<void>): Promise<void> {
    const volumes = await this.docker.listVolumes({ [LABEL.service]: SERVICE_LABEL, [LABEL.owner]: this.owner })
    const now = Date.now()
    for (const v of volumes) {
      const taskId = v.Labels?.[LABEL.task] ?? ''
      const task = await taskOf(taskId)
      const created = v.CreatedAt ? Date.parse(v.CreatedAt) : 0
      const expired = task
        ? task.ended && (task.finished_at ?? now) + this.config.WORKSPACE_RETENTION_MS <= now
        : now - created >= this.config.ORPHAN_GRACE_MS
      if (!expired) continue
      const gone = await this.docker.removeVolume(v.Name, true).then(() => true, () => false)
      if (gone && task && !task.workspace_removed_at && v.Name === workspaceVolume(taskId)) await onRemoved(taskId)
    }
  }

  /** Runs `fn` with a container that has the workspace mounted: the task's own while it runs, else a helper. */
  private async withContainer<T> (task: WorkspaceTask, running: string | undefined, fn: (containerId: string) => Promise<T>): Promise<T> {
    if (task.workspace_removed_at) throw new TaskError('conflict', `Task ${task.id}'s workspace was removed after WORKSPACE_RETENTION_MS (${this.config.WORKSPACE_RETENTION_MS} ms)`)
    if (task.turns === 0) throw new TaskError('conflict', `Task ${task.id} has not started yet; its workspace does not exist until it does`)
    if (running) {
      try {
        return await fn(running)
      } catch (err) {
        // the run may have ended meanwhile: read through a helper instead
        if ((err as { code?: string }).code !== 'no_such_container') asTaskError(err)
      }
    }
    const { Id } = await this.docker.createContainer(this.spec(task, ['true'], [], false))
    try {
      return await fn(Id)
    } catch (err) {
      return asTaskError(err)
    } finally {
      await this.docker.removeContainer(Id, { force: true }).catch(() => {})
    }
  }

  private spec (task: WorkspaceTask, entrypoint: string[], argv: string[], network: boolean) {
    const spec = containerSpec(this.config, { id: task.id, agent_id: task.agent_id, argv, entrypoint, role: 'helper' }, this.owner)
    if (!network && spec.HostConfig) spec.HostConfig.NetworkMode = 'none'
    return spec
  }

  /** A short-lived helper container on the task's volumes: started, awaited, its output read, removed. */
  private async helper (task: WorkspaceTask, entrypoint: string[], argv: string[], network: boolean): Promise<{ exitCode: number, output: string }> {
    const { Id } = await this.docker.createContainer(this.spec(task, entrypoint, argv, network))
    const timeout = AbortSignal.timeout(HELPER_TIMEOUT_MS)
    try {
      await this.own(Id)
      await this.docker.startContainer(Id)
      const exit = await this.docker.waitContainer(Id, timeout)
      let output = ''
      for await (const c of this.docker.containerLogs(Id, { signal: timeout })) output += c.data.toString('utf8')
      return { exitCode: exit.StatusCode, output }
    } finally {
      await this.docker.removeContainer(Id, { force: true }).catch(() => {})
    }
  }
}

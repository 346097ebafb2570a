/**
 * The runner container spec. The service alone decides it: resource limits from config, every
 * privilege dropped, the task's workspace and OpenCode state volumes, the passed-through variables,
 * labels for reconciliation (the owner label names the data directory that owns the container),
 * and the command as an argv array (the task one element of it, never a shell). The entrypoint is
 * always set (`opencode` for a turn): an image's own ENTRYPOINT, wrapper or not, is not used.
 */
import type { Config } from '../config.js'
import { parseByteSize } from '../config.js'
import type { ContainerCreateSpec } from '../docker/engine.js'
import { OPENCODE_DATA_HOME, OPENCODE_STATE_DIR, stateVolume, WORKSPACE_DIR, workspaceVolume } from './workspace.js'

export const LABEL = {
  service: 'letta-opencode-plugin.service',
  task: 'letta-opencode-plugin.task-id',
  agent: 'letta-opencode-plugin.agent-id',
  owner: 'letta-opencode-plugin.owner',
  role: 'letta-opencode-plugin.role'
} as const

export const SERVICE_LABEL = 'letta-opencode-plugin'
/** Where RUNNER_OPENCODE_CONFIG_DIR is mounted, read-only. OpenCode writes into its own config
 * directory (~/.config/opencode), so the file is named with OPENCODE_CONFIG instead. */
const OPENCODE_CONFIG_DIR = '/etc/opencode'

export type RunnerConfig = Pick<Config, 'RUNNER_IMAGE' | 'RUNNER_CPU_LIMIT' | 'RUNNER_MEMORY_LIMIT' | 'RUNNER_NETWORK' | 'RUNNER_PIDS_LIMIT' |
'RUNNER_USER' | 'RUNNER_STOP_GRACE_S' | 'TASK_LOG_LIMIT' | 'RUNNER_OPENCODE_CONFIG_DIR' | 'RUNNER_READ_ONLY_ROOTFS' | 'RUNNER_TMPFS_SIZE'> &
Partial<Pick<Config, 'RUNNER_EGRESS'>> & {
  /** RUNNER_EGRESS=allowlist: the internal network and the proxy variables, set once the proxy listens. */
  egress?: { network: string, env: string[] }
}

/** The network a runner joins and the variables that go with it (RUNNER_EGRESS). */
export function networkOf (config: RunnerConfig): { mode: string, env: string[] } {
  if (config.RUNNER_EGRESS === 'none') return { mode: 'none', env: [] }
  if (config.RUNNER_EGRESS === 'allowlist') {
    if (!config.egress) throw new Error('RUNNER_EGRESS=allowlist but the egress proxy is not running')
    return { mode: config.egress.network, env: config.egress.env }
  }
  return { mode: config.RUNNER_NETWORK, env: [] }
}

export interface RunnerTask {
  id: string
  agent_id: string | null
  argv: string[]
  /** NAME=value entries (RUNNER_ENV_PASSTHROUGH). */
  env?: string[]
  /** `run`: a turn of the agent; `helper`: a short-lived container for files, clone or diff. */
  role?: 'run' | 'helper'
  /** `opencode` unless given: the service starts OpenCode itself, whatever the image's ENTRYPOINT. */
  entrypoint?: string[]
}

export function labelsOf (task: Pick<RunnerTask, 'id' | 'agent_id' | 'role'>, owner: string): Record<string, string> {
  return { [LABEL.service]: SERVICE_LABEL, [LABEL.task]: task.id, [LABEL.agent]: task.agent_id ?? '', [LABEL.owner]: owner, [LABEL.role]: task.role ?? 'run' }
}

/**
 * A read-only root (CIS Docker Benchmark 5.12): only the volumes and a size-limited tmpfs at /tmp are
 * writable. OpenCode writes under $HOME (~/.cache, ~/.local/state, and ~/.config/opencode, where it
 * puts a .gitignore and its plugin dependencies): the XDG variables send all three to the tmpfs,
 * whatever the image's HOME and user (the runner image's is /home/runner). Its data home is the state
 * volume already. An image's own ~/.config/opencode is not read then: RUNNER_OPENCODE_CONFIG_DIR is
 * how configuration reaches a run.
 */
export const READ_ONLY_ENV = ['XDG_CONFIG_HOME=/tmp/.config', 'XDG_CACHE_HOME=/tmp/.cache', 'XDG_STATE_HOME=/tmp/.local/state']

export function readOnlyRoot (sizeBytes: number): { ReadonlyRootfs: true, Tmpfs: Record<string, string> } {
  return { ReadonlyRootfs: true, Tmpfs: { '/tmp': `rw,nosuid,nodev,size=${sizeBytes},mode=1777` } }
}

export function containerSpec (config: RunnerConfig, task: RunnerTask, owner: string): ContainerCreateSpec {
  const memory = parseByteSize(config.RUNNER_MEMORY_LIMIT)
  const network = networkOf(config)
  return {
    Image: config.RUNNER_IMAGE,
    Cmd: task.argv,
    Entrypoint: task.entrypoint ?? ['opencode'],
    Env: [
      ...(task.env ?? []),
      ...network.env,
      `XDG_DATA_HOME=${OPENCODE_DATA_HOME}`,
      ...(config.RUNNER_READ_ONLY_ROOTFS ? READ_ONLY_ENV : []),
      ...(config.RUNNER_OPENCODE_CONFIG_DIR ? [`OPENCODE_CONFIG=${OPENCODE_CONFIG_DIR}/opencode.json`] : [])
    ],
    User: config.RUNNER_USER,
    WorkingDir: WORKSPACE_DIR,
    Tty: false,
    OpenStdin: false,
    AttachStdout: true,
    AttachStderr: true,
    StopTimeout: config.RUNNER_STOP_GRACE_S,
    Labels: labelsOf(task, owner),
    HostConfig: {
      NanoCpus: Math.round(config.RUNNER_CPU_LIMIT * 1e9),
      Memory: memory,
      MemorySwap: memory,
      PidsLimit: config.RUNNER_PIDS_LIMIT,
      CapDrop: ['ALL'],
      SecurityOpt: ['no-new-privileges:true'],
      Privileged: false,
      Init: true,
      NetworkMode: network.mode,
      AutoRemove: false,
      ...(config.RUNNER_READ_ONLY_ROOTFS ? readOnlyRoot(parseByteSize(config.RUNNER_TMPFS_SIZE)) : {}),
      // the task's volumes are made by the first container that mounts them, labelled for reconciliation
      Mounts: [
        { Type: 'volume', Source: workspaceVolume(task.id), Target: WORKSPACE_DIR, VolumeOptions: { Labels: labelsOf({ id: task.id, agent_id: task.agent_id }, owner) } },
        { Type: 'volume', Source: stateVolume(task.id), Target: OPENCODE_STATE_DIR, VolumeOptions: { Labels: labelsOf({ id: task.id, agent_id: task.agent_id }, owner) } },
        // a host directory (absolute path) or a named volume with opencode.json, read-only
        ...(config.RUNNER_OPENCODE_CONFIG_DIR
          ? [{ Type: (config.RUNNER_OPENCODE_CONFIG_DIR.startsWith('/') ? 'bind' : 'volume') as 'bind' | 'volume', Source: config.RUNNER_OPENCODE_CONFIG_DIR, Target: OPENCODE_CONFIG_DIR, ReadOnly: true }]
          : [])
      ],
      // the service reads a run through attach; the engine's log is what a restarted service re-reads,
      // so it holds as much as the service keeps (TASK_LOG_LIMIT), and goes with the container
      LogConfig: { Type: 'json-file', Config: { 'max-size': String(Math.max(config.TASK_LOG_LIMIT, 1024 * 1024)), 'max-file': '1' } }
    }
  }
}

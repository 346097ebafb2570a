/**
 * The runner container spec. The service alone decides it: resource limits from config, every
 * privilege dropped, labels for reconciliation (the owner label names the data directory that owns the container), the task as one argv element (never a shell).
 */
import type { Config } from '../config.js'
import { parseByteSize } from '../config.js'
import type { ContainerCreateSpec } from '../docker/engine.js'

export const LABEL = {
  service: 'letta-opencode-plugin.service',
  task: 'letta-opencode-plugin.task-id',
  agent: 'letta-opencode-plugin.agent-id',
  owner: 'letta-opencode-plugin.owner'
} as const

export type RunnerConfig = Pick<Config, 'RUNNER_IMAGE' | 'RUNNER_CPU_LIMIT' | 'RUNNER_MEMORY_LIMIT' | 'RUNNER_NETWORK' | 'RUNNER_PIDS_LIMIT' | 'RUNNER_USER' | 'RUNNER_STOP_GRACE_S' | 'TASK_LOG_LIMIT'>

export function containerSpec (config: RunnerConfig, task: { id: string, agent_id: string | null, argv: string[] }, owner: string): ContainerCreateSpec {
  const memory = parseByteSize(config.RUNNER_MEMORY_LIMIT)
  return {
    Image: config.RUNNER_IMAGE,
    Cmd: task.argv,
    User: config.RUNNER_USER,
    Tty: false,
    OpenStdin: false,
    AttachStdout: true,
    AttachStderr: true,
    StopTimeout: config.RUNNER_STOP_GRACE_S,
    Labels: {
      [LABEL.service]: 'letta-opencode-plugin',
      [LABEL.task]: task.id,
      [LABEL.agent]: task.agent_id ?? '',
      [LABEL.owner]: owner
    },
    HostConfig: {
      NanoCpus: Math.round(config.RUNNER_CPU_LIMIT * 1e9),
      Memory: memory,
      MemorySwap: memory,
      PidsLimit: config.RUNNER_PIDS_LIMIT,
      CapDrop: ['ALL'],
      SecurityOpt: ['no-new-privileges:true'],
      Privileged: false,
      Init: true,
      NetworkMode: config.RUNNER_NETWORK,
      AutoRemove: false,
      // the service reads a run through attach; the engine's log is what a restarted service re-reads,
      // so it holds as much as the service keeps (TASK_LOG_LIMIT), and goes with the container
      LogConfig: { Type: 'json-file', Config: { 'max-size': String(Math.max(config.TASK_LOG_LIMIT, 1024 * 1024)), 'max-file': '1' } }
    }
  }
}

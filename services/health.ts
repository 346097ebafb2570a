/**
 * The /health report: the deployment guide's fields, plus the engine state and version. One schema
 * (zod, as the MCP SDK wants it) serves the `health` tool's outputSchema and the route's response schema.
 */
import * as z from 'zod'
import type { EngineState } from './docker/probe.js'
import type { RunnerImageState } from './runner/image.js'

export const SERVICE_NAME = 'letta-opencode-plugin'
export const HEALTH_PROTOCOL_VERSION = '2025-06-18'

export const HealthReportSchema = z.object({
  status: z.enum(['healthy', 'degraded', 'unhealthy', 'draining']),
  service: z.string(),
  version: z.string(),
  transport: z.literal('streamable_http'),
  protocol_version: z.string(),
  protocol_versions: z.array(z.string()),
  sessions: z.number().int(),
  uptime: z.number(),
  timestamp: z.string(),
  security: z.object({ origin_validation: z.boolean(), localhost_binding: z.boolean(), authentication: z.boolean() }),
  letta: z.object({
    configured: z.boolean(),
    reachable: z.boolean().nullable().describe('null when Letta is not configured'),
    version: z.string().nullable(),
    last_error: z.string().nullable(),
    checked_at: z.string().nullable(),
    pending: z.number().int().describe('Block writes and notifications waiting to go out')
  }),
  load: z.object({
    shedding: z.boolean().describe('True while requests other than /health and /metrics are refused with 503'),
    event_loop_delay_ms: z.number(),
    heap_used_bytes: z.number()
  }),
  tasks: z.object({
    running: z.number().int(),
    queued: z.number().int(),
    max_concurrent: z.number().int(),
    max_queued: z.number().int(),
    accepting: z.boolean()
  }),
  runner: z.object({
    image: z.string().describe('RUNNER_IMAGE'),
    present: z.boolean().nullable().describe('Whether the engine has the image; null until checked'),
    opencode_version: z.string().nullable().describe('`opencode --version` in the image, when known'),
    usable: z.boolean().nullable().describe('false while tasks are refused (the image is missing or has no `opencode`); null until checked'),
    error: z.string().nullable().describe('Why tasks cannot run in the image (missing, no `opencode` on its PATH), with the fix'),
    checked_at: z.string().nullable()
  }),
  store: z.object({
    backend: z.enum(['sqlite', 'postgres']).describe('postgres: DATABASE_URL (cluster mode)'),
    reachable: z.boolean().describe('false when the last read of the store failed (the report is then unhealthy)'),
    last_error: z.string().nullable()
  }),
  docker: z.object({
    reachable: z.boolean(),
    version: z.string().nullable(),
    api_version: z.string().nullable(),
    last_error: z.string().nullable(),
    checked_at: z.string().nullable()
  })
})

export type HealthReport = z.infer<typeof HealthReportSchema>

export interface HealthInputs {
  version: string
  engine: EngineState
  sessions: number
  security: HealthReport['security']
  protocolVersions: readonly string[]
  tasks: HealthReport['tasks']
  load: HealthReport['load']
  letta: HealthReport['letta']
  runner: RunnerImageState
  store: HealthReport['store']
  /** A new task would be refused for the queue (no free slot, as many waiting as allowed): here, or in the cluster. */
  queueFull: boolean
}

/** The store's error for operators: its code and first line, bounded (a driver's message names the host, never a password). */
export function storeErrorText (err: unknown): string {
  const e = err as { code?: unknown, message?: unknown }
  const message = typeof e?.message === 'string' ? e.message.split('\n')[0] : String(err)
  return (typeof e?.code === 'string' && !message.includes(e.code) ? `${e.code}: ${message}` : message).slice(0, 300)
}

export function healthReport (inputs: HealthInputs): HealthReport {
  const { engine, tasks, load, letta, runner } = inputs
  // draining: shutting down; unhealthy: no engine or no store; degraded: up, but shedding load, refusing new tasks
  // (full queue, or a runner image that is missing or has no `opencode`), or without Letta (updates
  // wait in the outbox)
  const runnerUnusable = runner.usable === false
  const queueFull = inputs.queueFull
  const status = !tasks.accepting
    ? 'draining'
    : !engine.reachable || !inputs.store.reachable ? 'unhealthy' : load.shedding || queueFull || runnerUnusable || (letta.configured && !letta.reachable) ? 'degraded' : 'healthy'
  return {
    status,
    service: SERVICE_NAME,
    version: inputs.version,
    transport: 'streamable_http',
    protocol_version: HEALTH_PROTOCOL_VERSION,
    protocol_versions: [...inputs.protocolVersions],
    sessions: inputs.sessions,
    uptime: Math.round(process.uptime() * 100) / 100,
    timestamp: new Date().toISOString(),
    security: inputs.security,
    load,
    tasks,
    letta,
    runner: { ...runner },
    store: inputs.store,
    docker: {
      reachable: engine.reachable,
      version: engine.version,
      api_version: engine.api_version,
      last_error: engine.last_error,
      checked_at: engine.checked_at
    }
  }
}

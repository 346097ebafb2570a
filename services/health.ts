/** The /health report: the deployment guide's fields, plus the engine state and version. */
import type { EngineState } from './docker/probe.js'

export const SERVICE_NAME = 'letta-opencode-plugin'
export const HEALTH_PROTOCOL_VERSION = '2025-06-18'

export type HealthStatus = 'healthy' | 'degraded' | 'unhealthy'

export interface HealthInputs {
  version: string
  engine: EngineState
  sessions: number
  security: { origin_validation: boolean, localhost_binding: boolean, authentication: boolean }
  protocolVersions: readonly string[]
}

export function healthReport (inputs: HealthInputs) {
  const { engine } = inputs
  const status: HealthStatus = engine.reachable ? 'healthy' : 'unhealthy'
  return {
    status,
    service: SERVICE_NAME,
    version: inputs.version,
    transport: 'streamable_http' as const,
    protocol_version: HEALTH_PROTOCOL_VERSION,
    protocol_versions: [...inputs.protocolVersions],
    sessions: inputs.sessions,
    uptime: Math.round(process.uptime() * 100) / 100,
    timestamp: new Date().toISOString(),
    security: inputs.security,
    docker: {
      reachable: engine.reachable,
      version: engine.version,
      api_version: engine.api_version,
      last_error: engine.last_error,
      checked_at: engine.checked_at
    }
  }
}

/**
 * Builds the McpServer of one session and registers the tools on it. Tools read what they need
 * from `ToolDeps` (plain functions and services, no Fastify), so each is one obvious call.
 */
import { McpServer, SUPPORTED_PROTOCOL_VERSIONS, type CallToolResult } from '@modelcontextprotocol/server'
import * as z from 'zod'
import { HealthReportSchema, SERVICE_NAME, type HealthReport } from '../health.js'
import { callerOf, jsonResult } from './results.js'
import { installTasks, registerTaskTools, type TaskToolDeps } from './task-tools.js'
import { taskCapabilities, type Era } from './tasks-protocol.js'

export interface ToolDeps extends TaskToolDeps {
  version: string
  /** The same report as GET /health. */
  health: () => Promise<HealthReport>
  /** Told of every tool call when it ends: metrics and the call's log line. */
  onToolCall?: (call: ToolCall) => void
}

/** One tool call as it ended: `error` is a tool error result, `exception` a handler that threw. */
export interface ToolCall {
  tool: string
  principal: string
  outcome: 'ok' | 'error' | 'exception'
  durationMs: number
}

/** The protocol versions served on /mcp: 2026-07-28 (stateless) and the 2025 era's (sessions). */
export const PROTOCOL_VERSIONS: readonly string[] = ['2026-07-28', ...SUPPORTED_PROTOCOL_VERSIONS]

/** Built once for every session. */
const PingOutput = z.object({
  pong: z.literal(true),
  timestamp: z.string(),
  principal: z.string(),
  agent_id: z.string().nullable(),
  session_id: z.string().nullable()
})
const NoInput = z.object({})

/** Wraps every tool this server registers so `onToolCall` hears of each call: outcome and duration. */
function countToolCalls (server: McpServer, principal: string, onToolCall: ToolDeps['onToolCall']): void {
  if (!onToolCall) return
  const register = server.registerTool.bind(server)
  type Handler = (...args: unknown[]) => Promise<CallToolResult>
  server.registerTool = ((tool: string, config: object, handler: Handler) => register(tool, config, async (...args: unknown[]) => {
    const start = performance.now()
    const ended = (outcome: ToolCall['outcome']) => onToolCall({ tool, principal, outcome, durationMs: Math.round((performance.now() - start) * 1000) / 1000 })
    try {
      const result = await handler(...args)
      ended(result.isError ? 'error' : 'ok')
      return result
    } catch (err) {
      ended('exception')
      throw err
    }
  })) as typeof server.registerTool
}

/**
 * The McpServer of one legacy session, or of one modern (2026-07-28) request: the same tools in
 * both eras, the era's form of Tasks.
 */
export function createMcpServer (deps: ToolDeps, principal: string, era: Era = 'legacy'): McpServer {
  const server = new McpServer(
    { name: SERVICE_NAME, version: deps.version },
    {
      // tools: registered with the first tool, after Tasks are installed
      capabilities: { logging: {}, ...taskCapabilities(era) },
      instructions: 'Delegate development tasks to OpenCode running in an isolated container. ' +
        'Use opencode_execute_task to start one, get_task_status / get_task_history to follow it.'
    }
  )

  installTasks(server, deps, principal, era)
  countToolCalls(server, principal, deps.onToolCall)

  server.registerTool('ping', {
    title: 'Ping',
    description: 'Checks that the server answers; echoes who the server thinks is calling.',
    inputSchema: NoInput,
    outputSchema: PingOutput,
    annotations: { readOnlyHint: true, openWorldHint: false }
  }, async (_args, ctx) => {
    const caller = callerOf(principal, ctx)
    return jsonResult({ pong: true as const, timestamp: new Date().toISOString(), principal: caller.principal, agent_id: caller.agentId ?? null, session_id: caller.sessionId ?? null })
  })

  server.registerTool('health', {
    title: 'Service health',
    description: 'The service health report: status, Docker engine reachability, sessions, uptime and security settings (the same as GET /health).',
    inputSchema: NoInput,
    outputSchema: HealthReportSchema,
    annotations: { readOnlyHint: true, openWorldHint: false }
  }, async (_args, ctx) => {
    const report = await deps.health()
    if (report.status !== 'healthy') await ctx.mcpReq.log('warning', { status: report.status }, 'health')
    return jsonResult(report)
  })

  registerTaskTools(server, deps, principal)
  return server
}

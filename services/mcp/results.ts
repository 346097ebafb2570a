/** What every tool returns and knows of its caller, in one place for the tool modules. */
import type { CallToolResult, ServerContext } from '@modelcontextprotocol/server'
import { AGENT_ID_PATTERN } from '../security.js'

/** What every tool knows about its caller. */
export interface Caller {
  principal: string
  sessionId: string | undefined
  agentId: string | undefined
}

/** A tool result: structured content plus the same JSON as text, for clients that read only text. */
export function jsonResult<T extends Record<string, unknown>> (data: T, isError = false): CallToolResult {
  return { content: [{ type: 'text', text: JSON.stringify(data) }], structuredContent: data, ...(isError ? { isError: true } : {}) }
}

/** A tool error: `isError` with a message that names the field and the fix. */
export function toolError (message: string, details: Record<string, unknown> = {}): CallToolResult {
  return { content: [{ type: 'text', text: JSON.stringify({ error: message, ...details }) }], isError: true }
}

/** The caller of one tool call: principal of the session (or request), agent id from the x-agent-id header. */
export function callerOf (principal: string, ctx: ServerContext): Caller {
  const header = ctx.http?.req?.headers.get('x-agent-id')
  const agentId = typeof header === 'string' && AGENT_ID_PATTERN.test(header) ? header : undefined
  return { principal, sessionId: ctx.sessionId, agentId }
}

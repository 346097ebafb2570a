/**
 * MCP session registry plugin: decorates `mcpSessions`, starts the TTL sweep, and closes every
 * session (and so every open SSE stream) in preClose, which server.close() would otherwise wait on.
 */
import fp from 'fastify-plugin'
import { createMcpServer } from '../services/mcp/server.js'
import { SessionRegistry } from '../services/mcp/sessions.js'
import { SERVICE_VERSION } from '../services/meta.js'

declare module 'fastify' {
  interface FastifyInstance {
    mcpSessions: SessionRegistry
  }
}

export default fp(async (fastify) => {
  const deps = {
    version: SERVICE_VERSION,
    health: () => fastify.health().body,
    tasks: fastify.tasks,
    asyncEnabled: fastify.config.ENABLE_ASYNC_EXECUTE,
    syncWaitMs: fastify.config.SYNC_WAIT_MS,
    onToolCall: (tool: string, outcome: 'ok' | 'error' | 'exception') => fastify.metrics.toolCall(tool, outcome)
  }
  const registry = new SessionRegistry({
    ttlMs: fastify.config.MCP_SESSION_TTL_MS,
    maxSessions: fastify.config.MCP_MAX_SESSIONS,
    createServer: (principal) => createMcpServer(deps, principal),
    onEvict: (s, reason) => fastify.log.info({ session: s.id, principal: s.principal, reason }, 'mcp session closed')
  })
  fastify.decorate('mcpSessions', registry)
  fastify.addHook('onReady', async () => registry.start())
  fastify.addHook('preClose', async () => registry.closeAll('shutdown'))
}, { name: 'mcp-sessions', dependencies: ['config', 'tasks', 'metrics'], fastify: '5.x' })

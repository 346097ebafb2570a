/**
 * MCP plugin, both protocol eras. Legacy (2025): decorates `mcpSessions`, starts the TTL sweep, and
 * closes every session (and so every open SSE stream) in preClose, which server.close() would
 * otherwise wait on. Modern (2026-07-28): decorates `mcpModern`, the SDK's stateless handler, which
 * builds the same tools per request for the principal the route authenticated.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { toNodeHandler } from '@modelcontextprotocol/node'
import { createMcpHandler } from '@modelcontextprotocol/server'
import fp from 'fastify-plugin'
import { createMcpServer, type ToolCall } from '../services/mcp/server.js'
import { SessionRegistry } from '../services/mcp/sessions.js'
import { SERVICE_VERSION } from '../services/meta.js'

declare module 'fastify' {
  interface FastifyInstance {
    mcpSessions: SessionRegistry
    /** Serves one modern-era request as `principal`. */
    mcpModern: (principal: string, req: IncomingMessage, res: ServerResponse, body: unknown) => Promise<void>
  }
}

export default fp(async (fastify) => {
  const deps = {
    version: SERVICE_VERSION,
    health: async () => (await fastify.health()).body,
    tasks: fastify.tasks,
    asyncEnabled: fastify.config.ENABLE_ASYNC_EXECUTE,
    syncWaitMs: fastify.config.SYNC_WAIT_MS,
    retentionMs: fastify.config.TASK_RETENTION_MS,
    onToolCall: (call: ToolCall) => {
      fastify.metrics.toolCall(call.tool, call.outcome)
      fastify.log.info(call, 'mcp tool call')
    }
  }
  const registry = new SessionRegistry({
    ttlMs: fastify.config.MCP_SESSION_TTL_MS,
    maxSessions: fastify.config.MCP_MAX_SESSIONS,
    createServer: (principal) => createMcpServer(deps, principal),
    onEvict: (s, reason) => fastify.log.info({ session: s.id, principal: s.principal, reason }, 'mcp session closed'),
    node: fastify.tasks.clustered ? fastify.tasks.owner : undefined
  })
  const modern = createMcpHandler(({ authInfo }) => createMcpServer(deps, authInfo?.clientId ?? '', 'modern'), {
    legacy: 'reject',
    onerror: (err) => fastify.log.debug({ err }, 'mcp modern request refused')
  })
  const serveModern = toNodeHandler(modern)
  fastify.decorate('mcpSessions', registry)
  fastify.decorate('mcpModern', async (principal: string, req: IncomingMessage, res: ServerResponse, body: unknown) => {
    // the principal rides as the SDK's auth info (never the token itself)
    await serveModern(Object.assign(req, { auth: { token: '', clientId: principal, scopes: [] } }), res, body)
  })
  fastify.addHook('onReady', async () => registry.start())
  fastify.addHook('preClose', async () => { await Promise.all([registry.closeAll('shutdown'), modern.close()]) })
}, { name: 'mcp-sessions', dependencies: ['config', 'tasks', 'metrics', 'cluster'], fastify: '5.x' })

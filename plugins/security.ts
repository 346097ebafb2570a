/**
 * Security plugin: the request guard (Host, Origin, bearer token) as a decorator, and the
 * `requireCaller` onRequest hook that protected routes opt into. It sets `request.principal`
 * (task scoping) and `request.agentId` (the validated x-agent-id header, if any).
 */
import type { FastifyReply, FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { isLoopbackHost } from '../services/config.js'
import { AGENT_ID_PATTERN, RequestGuard } from '../services/security.js'

declare module 'fastify' {
  interface FastifyInstance {
    guard: RequestGuard
    requireCaller: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
    /** What /health reports under `security`: the truth about the running configuration. */
    securityReport: () => { origin_validation: boolean, localhost_binding: boolean, authentication: boolean }
  }
  interface FastifyRequest {
    principal: string
    agentId: string | undefined
  }
}

export default fp(async (fastify) => {
  const guard = new RequestGuard(fastify.config)
  const localhostBinding = isLoopbackHost(fastify.config.MCP_HOST)
  fastify.decorate('guard', guard)
  fastify.decorate('securityReport', () => ({ origin_validation: true, localhost_binding: localhostBinding, authentication: guard.authEnabled }))
  fastify.decorateRequest('principal', '')
  fastify.decorateRequest('agentId', undefined)

  fastify.decorate('requireCaller', async (request: FastifyRequest, reply: FastifyReply) => {
    const result = guard.check({ host: request.headers.host, origin: request.headers.origin, authorization: request.headers.authorization })
    if (!result.ok) {
      if (result.authenticate) reply.header('www-authenticate', result.authenticate)
      request.log.warn({ status: result.status, host: request.headers.host, origin: request.headers.origin }, 'request refused: ' + result.message)
      throw fastify.httpErrors.createError(result.status, result.message)
    }
    request.principal = result.principal
    const agentId = request.headers['x-agent-id']
    if (agentId !== undefined) {
      if (typeof agentId !== 'string' || !AGENT_ID_PATTERN.test(agentId)) {
        throw fastify.httpErrors.badRequest('x-agent-id header is malformed: expected 1-128 characters of letters, digits, . _ : - (a Letta agent id such as agent-123e4567-e89b-12d3-a456-426614174000)')
      }
      request.agentId = agentId
    }
  })
}, { name: 'security', dependencies: ['config', '@fastify/sensible'], fastify: '5.x' })

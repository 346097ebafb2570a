/**
 * POST, GET and DELETE /mcp: MCP over streamable HTTP, both protocol eras on one endpoint.
 *
 * Each request is classified the way the SDK's own entry classifies it (headers and body, no web
 * Request built): 2026-07-28 requests go to the SDK's stateless handler (`mcpModern`), 2025-era
 * requests to their session. For the legacy era the registry owns sessions; this module picks the
 * session for a request (or opens one on initialize), answers the spec's status codes for what the
 * SDK transport cannot know (unknown session 404, missing session 400, batches, malformed JSON),
 * then hands the raw request to the session's transport. Auth, Origin/Host checks, principal
 * scoping and load shedding run before either era is chosen.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { FastifyError, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { classifyInboundRequest, isInitializeRequest, SUPPORTED_PROTOCOL_VERSIONS } from '@modelcontextprotocol/server'
import type { NodeStreamableHTTPServerTransport as StreamableHTTPServerTransport } from '@modelcontextprotocol/node'
import { sessionNode, TOKEN_HEADER } from '../services/cluster/forward.js'
import { SessionCapacityError, type Session } from '../services/mcp/sessions.js'

/** JSON-RPC error codes used at the HTTP layer. */
const RPC = { parseError: -32700, invalidRequest: -32600, internal: -32603, server: -32000, sessionNotFound: -32001 } as const

function rpcError (status: number, code: number, message: string) {
  return Object.assign(new Error(message), { statusCode: status, rpcCode: code })
}

function rpcCodeOf (err: FastifyError & { rpcCode?: number }, status: number): number {
  if (err.rpcCode !== undefined) return err.rpcCode
  if (err instanceof SyntaxError || err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY') return RPC.parseError
  return status >= 500 ? RPC.internal : RPC.server
}

/**
 * Media types are case-insensitive, the SDK transport's Accept check is not (`TEXT/EVENT-STREAM`
 * would be a 406): the Accept header is handed over lower-cased, in the parsed headers and in the
 * raw list the transport reads.
 */
function lowerCaseAccept (raw: IncomingMessage): void {
  const accept = raw.headers.accept
  if (accept === undefined || accept === accept.toLowerCase()) return
  raw.headers.accept = accept.toLowerCase()
  for (let i = 0; i < raw.rawHeaders.length; i += 2) {
    if (raw.rawHeaders[i].toLowerCase() === 'accept') raw.rawHeaders[i + 1] = raw.rawHeaders[i + 1].toLowerCase()
  }
}

/**
 * The SDK's streamed replies set `Connection: keep-alive`, which in Node overrides the client's
 * `Connection: close`: for such a client every Connection header the reply gets says close, so the
 * reply says it and Node closes the socket after it.
 */
function honourConnectionClose (request: FastifyRequest, res: ServerResponse): void {
  if (!/(^|,)\s*close\s*(,|$)/i.test(request.headers.connection ?? '')) return
  for (const method of ['setHeader', 'appendHeader'] as const) {
    const original = res[method] as (name: string, value: unknown) => ServerResponse
    res[method] = function (this: ServerResponse, name: string, value: unknown) {
      return original.call(this, name, name.toLowerCase() === 'connection' ? 'close' : value)
    } as never
  }
  // set now, so a later writeHead(status, headers) goes through setHeader for every header
  res.setHeader('connection', 'close')
}

const header = (request: FastifyRequest, name: string): string | undefined => {
  const value = request.headers[name]
  return Array.isArray(value) ? value[0] : value
}

/** A 2026-07-28 request (or one the modern handler must refuse), by the SDK's classification. */
function isModern (request: FastifyRequest): boolean {
  if (request.method !== 'POST') {
    // GET and DELETE belong to legacy sessions; without one, a modern version header gets the modern answer
    const version = header(request, 'mcp-protocol-version')
    return header(request, 'mcp-session-id') === undefined && version !== undefined && !SUPPORTED_PROTOCOL_VERSIONS.includes(version)
  }
  return classifyInboundRequest({
    httpMethod: 'POST',
    protocolVersionHeader: header(request, 'mcp-protocol-version'),
    mcpMethodHeader: header(request, 'mcp-method'),
    mcpNameHeader: header(request, 'mcp-name'),
    body: request.body
  }).kind !== 'legacy'
}

const route: FastifyPluginAsync = async (fastify) => {
  const registry = fastify.mcpSessions

  // Errors on /mcp are JSON-RPC error objects with the HTTP status the spec asks for.
  fastify.setErrorHandler((err: FastifyError & { rpcCode?: number }, request, reply) => {
    const status = err.statusCode && err.statusCode >= 400 ? err.statusCode : 500
    if (status >= 500) request.log.error({ err }, 'mcp request failed')
    const message = status >= 500 && status !== 503 ? 'Internal error' : err.message
    return reply.code(status).send({ jsonrpc: '2.0', error: { code: rpcCodeOf(err, status), message }, id: null })
  })
  // a request another replica forwards (a session held here) carries the cluster token and the caller's principal
  const forwarded = (request: FastifyRequest) => request.headers[TOKEN_HEADER] !== undefined
  fastify.addHook('onRequest', async (request, reply) => forwarded(request) ? fastify.clusterCaller(request) : fastify.requireCaller(request, reply))

  /**
   * The caller's live session named by the Mcp-Session-Id header, or the spec's 400/404. Cluster
   * mode: the node id of a session another live replica holds (the request is forwarded there); one
   * of a lost replica is unknown (the client initializes again).
   */
  async function sessionOf (request: FastifyRequest): Promise<Session | string> {
    const id = request.headers['mcp-session-id']
    if (typeof id !== 'string' || id === '') {
      throw rpcError(400, RPC.server, 'Bad Request: Mcp-Session-Id header is required (send initialize first to open a session)')
    }
    const session = registry.get(id)
    const node = session ? undefined : sessionNode(id)
    // forwarded once at most: a forwarded request is served by the replica it reached
    if (node && node !== fastify.tasks.owner && fastify.cluster && !forwarded(request) && await fastify.cluster.live(node)) return node
    // another principal's session is as good as unknown
    if (!session || session.principal !== request.principal) throw rpcError(404, RPC.sessionNotFound, 'Session not found: it expired or was closed; initialize a new session')
    return session
  }

  /** A legacy request of a session another replica holds, forwarded to it as this caller. */
  async function forward (request: FastifyRequest, reply: FastifyReply, node: string) {
    const cluster = fastify.cluster!
    reply.hijack()
    try {
      await cluster.proxySession(node, request.principal, request.raw, reply.raw, request.body)
    } catch (err) {
      request.log.warn({ err, node }, 'mcp session not forwarded')
      if (!reply.raw.headersSent) {
        reply.raw.writeHead(503, { 'content-type': 'application/json', 'retry-after': '5' })
        reply.raw.end(JSON.stringify({ jsonrpc: '2.0', error: { code: RPC.server, message: (err as Error).message }, id: null }))
      } else {
        reply.raw.end()
      }
    }
  }

  /** A legacy request to its session, here or on the replica that holds it. */
  async function serveSession (request: FastifyRequest, reply: FastifyReply) {
    const session = await sessionOf(request)
    if (typeof session === 'string') return forward(request, reply, session)
    return dispatch(request, reply, session.transport, session)
  }

  /** Hands the request to the SDK; after hijack, failures are still answered. */
  async function hijack (request: FastifyRequest, reply: FastifyReply, serve: () => Promise<void>) {
    lowerCaseAccept(request.raw)
    honourConnectionClose(request, reply.raw)
    reply.hijack()
    try {
      await serve()
    } catch (err) {
      request.log.error({ err }, 'mcp transport failed')
      if (!reply.raw.headersSent) {
        reply.raw.writeHead(500, { 'content-type': 'application/json' })
        reply.raw.end(JSON.stringify({ jsonrpc: '2.0', error: { code: RPC.internal, message: 'Internal error' }, id: null }))
      } else {
        reply.raw.end()
      }
    }
  }

  /** A legacy request to its session's transport. */
  async function dispatch (request: FastifyRequest, reply: FastifyReply, transport: StreamableHTTPServerTransport, session?: Session) {
    // in-flight calls pin a session (no eviction mid-call); an open GET stream alone does not
    const release = session && request.method === 'POST' ? registry.hold(session) : undefined
    if (release) reply.raw.once('close', release)
    await hijack(request, reply, () => transport.handleRequest(request.raw, reply.raw, request.body))
  }

  /** A modern request: stateless, served for the authenticated principal. */
  async function dispatchModern (request: FastifyRequest, reply: FastifyReply) {
    await hijack(request, reply, () => fastify.mcpModern(request.principal, request.raw, reply.raw, request.body))
  }

  fastify.post('/mcp', { bodyLimit: fastify.config.MCP_BODY_LIMIT }, async (request, reply) => {
    const body = request.body
    if (Array.isArray(body)) {
      throw rpcError(400, RPC.invalidRequest, 'Invalid Request: JSON-RPC batches are not supported (removed in MCP 2025-06-18); send one message per request')
    }
    if (body === null || typeof body !== 'object') {
      throw rpcError(400, RPC.invalidRequest, 'Invalid Request: the body must be one JSON-RPC message object')
    }
    if (isModern(request)) return dispatchModern(request, reply)
    if (request.headers['mcp-session-id'] !== undefined || !isInitializeRequest(body)) return serveSession(request, reply)
    let opened
    try {
      opened = await registry.open(request.principal)
    } catch (err) {
      if (err instanceof SessionCapacityError) {
        reply.header('retry-after', '5')
        throw rpcError(503, RPC.server, err.message)
      }
      throw err
    }
    await dispatch(request, reply, opened.transport)
    // an initialize that failed never registered a session: release its slot and what was built for it
    if (opened.transport.sessionId === undefined) await opened.discard()
  })

  fastify.get('/mcp', async (request, reply) => {
    if (isModern(request)) return dispatchModern(request, reply)
    return serveSession(request, reply)
  })

  fastify.delete('/mcp', async (request, reply) => {
    if (isModern(request)) return dispatchModern(request, reply)
    return serveSession(request, reply)
  })

  fastify.route({
    method: ['PUT', 'PATCH'],
    url: '/mcp',
    handler: async (_request, reply) => {
      reply.header('allow', 'GET, POST, DELETE')
      throw rpcError(405, RPC.server, 'Method not allowed: use POST, GET or DELETE')
    }
  })
}

export default route

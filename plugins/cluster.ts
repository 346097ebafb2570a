/**
 * Cluster plugin (DATABASE_URL): the engine records each task's replica; with CLUSTER_TOKEN,
 * node-local calls on another replica's task and legacy MCP sessions of another replica are
 * forwarded to it (`cluster`, services/cluster/forward.ts), and `clusterCaller` authenticates the
 * requests other replicas forward here. With SQLite nothing changes.
 */
import type { FastifyRequest } from 'fastify'
import fp from 'fastify-plugin'
import { ClusterForward, pgNodes, PRINCIPAL_HEADER, TOKEN_HEADER, tokenMatches } from '../services/cluster/forward.js'
import { PgTaskStore } from '../services/tasks/pg-store.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** Forwarding to the other replicas: cluster mode with CLUSTER_TOKEN only. */
    cluster: ClusterForward | undefined
    /** Authenticates a request another replica forwarded (the cluster token) and takes the principal it carries. */
    clusterCaller: (request: FastifyRequest) => Promise<void>
  }
}

export default fp(async (fastify) => {
  const token = fastify.config.CLUSTER_TOKEN
  const store = fastify.taskStore
  let forward: ClusterForward | undefined
  if (store instanceof PgTaskStore) {
    forward = token ? new ClusterForward(pgNodes(store.pool), token) : undefined
    if (forward) fastify.tasks.useRemote(forward)
  }
  fastify.decorate('cluster', forward)
  fastify.decorate('clusterCaller', async (request: FastifyRequest) => {
    const given = request.headers[TOKEN_HEADER]
    if (!forward || given === undefined) {
      throw fastify.httpErrors.unauthorized(`this is the replicas' internal API: it needs the ${TOKEN_HEADER} header with CLUSTER_TOKEN (an MCP token is not accepted)`)
    }
    if (!tokenMatches(given, token)) throw fastify.httpErrors.forbidden(`${TOKEN_HEADER} is not this cluster's CLUSTER_TOKEN: give every replica the same one`)
    const principal = request.headers[PRINCIPAL_HEADER]
    if (typeof principal !== 'string' || principal === '' || principal.length > 200) {
      throw fastify.httpErrors.badRequest(`${PRINCIPAL_HEADER} is missing or malformed: a forwarded request names the caller's principal`)
    }
    request.principal = principal
  })
}, { name: 'cluster', dependencies: ['config', 'tasks', '@fastify/sensible'], fastify: '5.x' })

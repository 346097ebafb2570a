/**
 * Docker plugin: the Engine API client and the cached engine probe that /health reads.
 */
import type Modem from 'docker-modem'
import fp from 'fastify-plugin'
import { DockerEngine } from '../services/docker/engine.js'
import { EngineProbe } from '../services/docker/probe.js'

declare module 'fastify' {
  interface FastifyInstance {
    docker: DockerEngine
    engineProbe: EngineProbe
  }
}

export interface DockerPluginOptions {
  /** docker-modem options; by default DOCKER_HOST, DOCKER_TLS_VERIFY and DOCKER_CERT_PATH apply. */
  docker?: Modem.ConstructorOptions
}

export default fp<DockerPluginOptions>(async (fastify, opts) => {
  const engine = new DockerEngine(opts.docker, fastify.config.DOCKER_CALL_TIMEOUT_MS)
  const probe = new EngineProbe(engine, fastify.config.DOCKER_PROBE_INTERVAL_MS, (state) => {
    if (state.reachable) fastify.log.info({ engine: state.version, api: state.api_version }, 'docker engine reachable')
    else fastify.log.error({ code: state.last_error_code }, state.last_error ?? 'docker engine unreachable')
  })
  fastify.decorate('docker', engine)
  fastify.decorate('engineProbe', probe)
  fastify.addHook('onReady', async () => { await probe.start() })
  fastify.addHook('onClose', async () => probe.stop())
}, { name: 'docker', dependencies: ['config'], fastify: '5.x' })

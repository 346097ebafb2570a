/**
 * Load shedding with @fastify/under-pressure: past SHED_EVENT_LOOP_DELAY_MS of event-loop delay or
 * SHED_HEAP_USED_BYTES of heap (sampled every half second, so a check costs nothing), requests get
 * 503 with Retry-After instead of a slow death. 0 turns a check off. Routes opt out with
 * `config: NOT_SHED` (/health and /metrics: an overload is no reason to restart the container, and
 * the time to look at it).
 */
import underPressure from '@fastify/under-pressure'
import fp from 'fastify-plugin'

const RETRY_AFTER_S = 5

/** Route config for routes that answer under pressure too (under-pressure calls it, and goes on). */
export const NOT_SHED = { pressureHandler: () => undefined }

class OverloadedError extends Error {
  override name = 'ServiceUnavailable'
  readonly statusCode = 503
  constructor () {
    super(`The service is overloaded; retry in ${RETRY_AFTER_S} s`)
  }
}

export default fp(async (fastify) => {
  await fastify.register(underPressure, {
    maxEventLoopDelay: fastify.config.SHED_EVENT_LOOP_DELAY_MS,
    maxHeapUsedBytes: fastify.config.SHED_HEAP_USED_BYTES,
    sampleInterval: 500,
    retryAfter: RETRY_AFTER_S,
    customError: OverloadedError
  })
}, { name: 'load-shedding', dependencies: ['config'], fastify: '5.x' })

/**
 * Entry point: builds Fastify (logger, timeouts), registers the app, listens, and shuts down
 * gracefully on SIGTERM/SIGINT with close-with-grace.
 */
import closeWithGrace from 'close-with-grace'
import Fastify from 'fastify'
import app, { serverOptions } from './app.js'
import { ConfigError, readEnvSources } from './services/config.js'
import { loggerOptions } from './services/logging.js'

async function main (): Promise<void> {
  let env: Record<string, string>
  try {
    env = readEnvSources(process.env)
  } catch (err) {
    console.error((err as Error).message)
    process.exit(1)
  }
  // close runs the drain in a preClose hook: avvio's timeout and close-with-grace must outlast it.
  // Read from the raw values (Fastify needs it before the config plugin); a bad value stops start-up anyway.
  const number = (value: string | undefined, fallback: number) => (value === undefined || Number.isNaN(Number(value)) ? fallback : Number(value))
  const drainMs = number(env.SHUTDOWN_GRACE_MS, 20_000) + number(env.RUNNER_STOP_GRACE_S, 10) * 1000 + 15_000
  const fastify = Fastify({
    ...serverOptions(),
    logger: loggerOptions(env),
    pluginTimeout: Math.max(10_000, drainMs)
  })
  try {
    await fastify.register(app, { env, envFile: false })
    await fastify.ready()
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message)
      process.exit(1)
    }
    throw err
  }

  // a backstop: a promise rejection nobody handled is a bug to log, not a reason to stop every task
  // (close-with-grace would shut the service down on it; it still does on an uncaught exception)
  process.on('unhandledRejection', (reason) => fastify.log.error({ err: reason }, 'unhandled promise rejection; the service goes on'))
  closeWithGrace({ delay: drainMs, logger: fastify.log, skip: ['unhandledRejection'] }, async ({ signal, err }) => {
    if (err) fastify.log.error({ err }, 'shutting down after an error')
    else fastify.log.info({ signal }, 'shutting down')
    await fastify.close()
  })

  await fastify.listen({ host: fastify.config.MCP_HOST, port: fastify.config.MCP_PORT })
}

await main()

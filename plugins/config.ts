/**
 * Config plugin: validates the environment once with @fastify/env against the TypeBox schema in
 * services/config.ts and decorates `fastify.config`. A bad value fails start-up with one line per
 * variable naming the value and what is expected.
 */
import fastifyEnv from '@fastify/env'
import fp from 'fastify-plugin'
import { checkConfig, ConfigError, ConfigSchema, formatConfigErrors, passthroughEnv, readEnvSources, type Config } from '../services/config.js'

declare module 'fastify' {
  interface FastifyInstance {
    config: Config
    /** RUNNER_ENV_PASSTHROUGH's values, for runner containers only: never logged, redacted from output. */
    runnerEnv: Record<string, string>
  }
}

export interface ConfigPluginOptions {
  /** Variables to read instead of process.env (tests, or a caller that already merged them). */
  env?: NodeJS.ProcessEnv
  /** The .env file to overlay, or false for none. Default `.env` in the working directory. */
  envFile?: string | false
}

export default fp<ConfigPluginOptions>(async (fastify, opts) => {
  const source = readEnvSources(opts.env ?? process.env, opts.envFile ?? '.env')
  try {
    await fastify.register(fastifyEnv, { schema: structuredClone(ConfigSchema), data: source, env: false, dotenv: false })
  } catch (err) {
    const errors = (err as { errors?: Parameters<typeof formatConfigErrors>[0] }).errors
    if (errors) throw new ConfigError(formatConfigErrors(errors, source))
    throw err
  }
  checkConfig(fastify.config)
  fastify.decorate('runnerEnv', passthroughEnv(fastify.config, source))
}, { name: 'config', fastify: '5.x' })

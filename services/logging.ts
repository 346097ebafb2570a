/** Logger options shared by the server and the tests. */
import { SECRET_VARIABLES } from './config.js'

/** Pino options: JSON by default, pretty with DEBUG=true or on a terminal; secrets redacted. */
export function loggerOptions (env: Record<string, string | undefined>, isTTY = Boolean(process.stdout.isTTY)): Record<string, unknown> {
  const debug = env.DEBUG === 'true'
  const levels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']
  const level = env.LOG_LEVEL && levels.includes(env.LOG_LEVEL) ? env.LOG_LEVEL : debug ? 'debug' : 'info'
  return {
    level,
    redact: {
      paths: ['req.headers.authorization', 'req.headers.cookie', 'headers.authorization', 'req.headers["x-cluster-token"]', 'headers["x-cluster-token"]', ...SECRET_VARIABLES.map((s) => `config.${s}`)],
      censor: '[redacted]'
    },
    ...(debug || isTTY ? { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:standard', ignore: 'pid,hostname' } } } : {})
  }
}

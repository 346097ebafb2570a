/** Engine errors, mapped once: every caller sees one of these codes and a message that names the fix. */

export type DockerErrorCode =
  | 'no_such_image'
  | 'no_such_container'
  | 'no_such_volume'
  | 'conflict'
  | 'bad_request'
  | 'engine_unavailable'
  | 'permission_denied'
  | 'engine_error'
  | 'engine_timeout'

export class DockerError extends Error {
  override name = 'DockerError'
  constructor (
    readonly code: DockerErrorCode,
    message: string,
    readonly statusCode?: number,
    options?: ErrorOptions
  ) {
    super(message, options)
  }
}

const UNREACHABLE = new Set(['ECONNREFUSED', 'ENOENT', 'ECONNRESET', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE', 'EAI_AGAIN', 'ENOTFOUND', 'ABORT_ERR'])

interface ModemError extends Error { statusCode?: number, json?: unknown, code?: string, address?: string }

function engineMessage (err: ModemError): string {
  const json = err.json as { message?: unknown } | string | Buffer | undefined | null
  if (json && typeof json === 'object' && !Buffer.isBuffer(json) && typeof json.message === 'string') return json.message
  if (typeof json === 'string' && json) return json.trim()
  if (Buffer.isBuffer(json) && json.length) return json.toString('utf8').trim()
  return err.message
}

/** Maps a docker-modem error (HTTP status or socket error) to a DockerError. */
export function mapDockerError (err: unknown, endpoint: string): DockerError {
  if (err instanceof DockerError) return err
  const e = err as ModemError
  if (e.statusCode !== undefined) {
    const msg = engineMessage(e)
    switch (e.statusCode) {
      case 404:
        if (/no such image|pull access denied|repository .* not found/i.test(msg)) {
          return new DockerError('no_such_image', `${msg}: build or load the image on the engine first (docker images lists what is there)`, 404, { cause: err })
        }
        if (/volume/i.test(msg)) return new DockerError('no_such_volume', msg, 404, { cause: err })
        return new DockerError('no_such_container', msg, 404, { cause: err })
      case 409: return new DockerError('conflict', msg, 409, { cause: err })
      case 400: return new DockerError('bad_request', msg, 400, { cause: err })
      default: return new DockerError('engine_error', `Docker engine error on ${endpoint} (HTTP ${e.statusCode}): ${msg}`, e.statusCode, { cause: err })
    }
  }
  if (e.code === 'EACCES' || e.code === 'EPERM') {
    return new DockerError('permission_denied',
      `Permission denied on the Docker socket${e.address ? ` ${e.address}` : ''}: run the service as a member of the socket's group ` +
      '(compose: set DOCKER_GID to the output of `stat -c %g /var/run/docker.sock` in .env; host: add the user to that group)', undefined, { cause: err })
  }
  if ((e.code && UNREACHABLE.has(e.code)) || e.name === 'AbortError' || e.name === 'TimeoutError') {
    return new DockerError('engine_unavailable',
      `Docker engine unreachable (${e.code ?? e.name}${e.address ? ` at ${e.address}` : ''}): start the engine or check DOCKER_HOST`, undefined, { cause: err })
  }
  return new DockerError('engine_error', `Docker engine error on ${endpoint}: ${e.message}`, undefined, { cause: err })
}

/** A call the engine did not answer within DOCKER_CALL_TIMEOUT_MS. */
export function deadlineError (endpoint: string, ms: number, cause: unknown): DockerError {
  return new DockerError('engine_timeout',
    `Docker engine did not answer ${endpoint} within ${ms} ms (DOCKER_CALL_TIMEOUT_MS): the engine is hung or overloaded; ` +
    'check `docker info` and the engine\'s logs, or raise DOCKER_CALL_TIMEOUT_MS', undefined, { cause })
}

/**
 * Configuration: one TypeBox schema (validated by @fastify/env in plugins/config.ts),
 * the type derived from it, and the plain helpers around it. No Fastify import here.
 */
import { readFileSync } from 'node:fs'
import { resolve } from 'node:path'
import { parseEnv } from 'node:util'
import { Type, type Static } from 'typebox'

const Bool = (def: boolean, description: string) => Type.Boolean({ default: def, description })
const Int = (def: number, minimum: number, maximum: number, description: string) =>
  Type.Integer({ default: def, minimum, maximum, description })
const Str = (def: string, description: string, extra: Record<string, unknown> = {}) =>
  Type.String({ default: def, description, ...extra })

/** A byte size the way Docker writes one: 512m, 2g, 1048576. */
const BYTE_SIZE = '^[0-9]+(\\.[0-9]+)?[bkmgBKMG]?$'

export const ConfigSchema = Type.Object({
  // Letta
  LETTA_API_URL: Str('', 'an http(s) URL such as https://letta.example.com, or empty to disable Letta', { pattern: '^(https?://[^\\s]+)?$' }),
  LETTA_API_TOKEN: Str('', 'the Letta API token (or LETTA_API_TOKEN_FILE)'),
  WORKSPACE_BLOCK_LIMIT: Int(50_000, 1_000, 1_000_000, 'characters from 1000 to 1000000 (the most a workspace memory block holds)'),
  WORKSPACE_MAX_EVENTS: Int(50, 1, 1_000, 'an integer from 1 to 1000 (events kept in a workspace memory block)'),
  LETTA_DETACH_DELAY_MS: Int(600_000, 0, 30 * 86_400_000, 'milliseconds from 0 to 2592000000 (how long a finished task\'s block stays attached to the agent)'),
  LETTA_FLUSH_INTERVAL_MS: Int(2_000, 100, 600_000, 'milliseconds from 100 to 600000 (block updates are coalesced over this interval)'),
  LETTA_TIMEOUT_MS: Int(10_000, 500, 300_000, 'milliseconds from 500 to 300000 (per Letta request)'),
  LETTA_MAX_RETRIES: Int(3, 0, 10, 'an integer from 0 to 10 (retries with backoff and jitter on 408, 409, 429, 5xx and timeouts)'),
  LETTA_PROBE_INTERVAL_MS: Int(30_000, 1_000, 3_600_000, 'milliseconds from 1000 to 3600000'),

  // Runner containers
  RUNNER_IMAGE: Str('letta-opencode-runner:latest', 'a Docker image reference such as letta-opencode-runner:latest', { pattern: '^[a-zA-Z0-9][a-zA-Z0-9._/:@-]*$' }),
  RUNNER_CPU_LIMIT: Type.Number({ default: 2.0, exclusiveMinimum: 0, maximum: 256, description: 'a number of CPUs greater than 0, such as 0.5 or 2.0' }),
  RUNNER_MEMORY_LIMIT: Str('2g', 'a size of at least 6m such as 512m or 2g (b, k, m, g suffixes)', { pattern: BYTE_SIZE }),
  RUNNER_TIMEOUT_MS: Int(300_000, 1_000, 86_400_000, 'milliseconds from 1000 to 86400000'),

  RUNNER_MAX_TIMEOUT_MS: Int(3_600_000, 1_000, 86_400_000, 'milliseconds from 1000 to 86400000 (the most a task may ask for)'),
  RUNNER_NETWORK: Str('bridge', 'bridge, none, host or the name of an existing Docker network', { pattern: '^[a-zA-Z0-9][a-zA-Z0-9_.-]*$' }),
  RUNNER_EGRESS: Type.Union([Type.Literal('open'), Type.Literal('none'), Type.Literal('allowlist')], {
    default: 'open', description: 'open (RUNNER_NETWORK as it is), none (no network) or allowlist (only RUNNER_EGRESS_ALLOW, through the service\'s proxy)'
  }),
  RUNNER_EGRESS_ALLOW: Str('', 'a comma list of host names such as api.anthropic.com,*.githubusercontent.com, each optionally with :port (else 443 and 80)'),
  RUNNER_EGRESS_SERVICE_CONTAINER: Str('', 'empty (found: the container the service runs in, if any), the service\'s own container id or name, or host (the service runs on the host)', { pattern: '^([a-zA-Z0-9][a-zA-Z0-9_.-]*)?$' }),
  RUNNER_EGRESS_HOST_MAP: Str('', 'for tests only: a JSON file of host name → address the egress proxy uses instead of DNS, or empty'),
  RUNNER_PIDS_LIMIT: Int(512, 16, 65_536, 'an integer from 16 to 65536'),
  RUNNER_READ_ONLY_ROOTFS: Bool(true, 'true or false (false: the runner\'s root filesystem is writable, for images that need it)'),
  RUNNER_TMPFS_SIZE: Str('512m', 'a size from 1m to 16g such as 256m or 1g (the tmpfs at /tmp of a read-only runner, which holds OpenCode\'s caches too; counts against RUNNER_MEMORY_LIMIT)', { pattern: BYTE_SIZE }),
  RUNNER_USER: Str('1000:1000', 'a non-root uid:gid such as 1000:1000', { pattern: '^[1-9][0-9]*:[1-9][0-9]*$' }),
  RUNNER_STOP_GRACE_S: Int(10, 0, 300, 'seconds from 0 to 300 between SIGTERM and SIGKILL'),
  RUNNER_MODEL: Str('', 'a provider/model such as anthropic/claude-sonnet-4-5, or empty for the model OpenCode is configured with', { pattern: '^([A-Za-z0-9._-]+/[A-Za-z0-9._:/@-]+)?$' }),
  RUNNER_MODELS_ALLOWED: Str('', 'a comma list of provider/model a task may ask for; empty means only RUNNER_MODEL'),
  RUNNER_ENV_PASSTHROUGH: Str('', 'a comma list of variable names passed to runner containers, such as ANTHROPIC_API_KEY,OPENAI_API_KEY', { pattern: '^([A-Za-z_][A-Za-z0-9_]*(\\s*,\\s*[A-Za-z_][A-Za-z0-9_]*)*)?$' }),
  RUNNER_OPENCODE_CONFIG_DIR: Str('', 'a host directory or Docker volume holding opencode.json, mounted read-only in runner containers, or empty'),
  // Pushing results (repository.push): the author of the commits, and the push credentials by host
  RUNNER_GIT_AUTHOR: Str('letta-opencode-plugin <letta-opencode-plugin@localhost>', 'a git author as Name <email>, such as OpenCode Bot <bot@example.com> (of the commits a push makes)'),
  GIT_CREDENTIALS: Str('', 'lines of https://TOKEN@host or https://user:token@host (a git credential-store file), or GIT_CREDENTIALS_FILE; only the line of the remote\'s host is given to the push helper'),
  // Budgets (0: none): a task's ceilings (a caller may ask for less, never more), and rolling 24 h budgets
  RUNNER_MAX_COST: Type.Number({ default: 0, minimum: 0, maximum: 1_000_000, description: 'a cost from 0 to 1000000 in the currency OpenCode reports, such as 2.5 (the most a task may spend; 0: no ceiling)' }),
  RUNNER_MAX_TOKENS: Int(0, 0, 1_000_000_000_000, 'an integer from 0 to 1000000000000 (input + output tokens a task may use; 0: no ceiling)'),
  RUNNER_MAX_STEPS: Int(0, 0, 100_000, 'an integer from 0 to 100000 (model steps a task may take over all its turns; 0: no ceiling)'),
  AGENT_DAILY_COST: Type.Number({ default: 0, minimum: 0, maximum: 1_000_000_000, description: 'a cost from 0 to 1000000000, such as 20 (what one agent_id of a principal may spend in 24 h; 0: no budget)' }),
  PRINCIPAL_DAILY_COST: Type.Number({ default: 0, minimum: 0, maximum: 1_000_000_000, description: 'a cost from 0 to 1000000000, such as 100 (what one principal may spend in 24 h; 0: no budget)' }),
  RUNNER_IDLE_TIMEOUT_MS: Int(600_000, 0, 86_400_000, 'milliseconds from 0 to 86400000 (a task that prints nothing this long ends as stalled; 0 turns it off)'),
  MAX_TASK_FILE_SIZE: Int(1024 * 1024, 1024, 64 * 1024 * 1024, 'bytes from 1024 to 67108864 (the largest file read_task_file returns)'),
  WORKSPACE_RETENTION_MS: Int(7 * 86_400_000, 0, 365 * 86_400_000, 'milliseconds from 0 to 31536000000 (how long a finished task\'s workspace is kept)'),
  TASK_OUTPUT_LIMIT: Int(65_536, 1_024, 16 * 1024 * 1024, 'bytes from 1024 to 16777216 (head and tail of the output kept in results)'),
  TASK_LOG_LIMIT: Int(100 * 1024 * 1024, 0, 10 * 1024 ** 3, 'bytes from 0 to 10737418240 (full log kept on disk per task)'),

  // Task queue
  MAX_CONCURRENT_TASKS: Int(3, 1, 64, 'an integer from 1 to 64'),
  MAX_QUEUED_TASKS: Int(100, 0, 100_000, 'an integer from 0 to 100000'),
  SYNC_WAIT_MS: Int(50_000, 100, 3_600_000, 'milliseconds from 100 to 3600000 (keep under the client\'s tool timeout, 60 s for Letta)'),
  IDEMPOTENCY_TTL_MS: Int(86_400_000, 1_000, 30 * 86_400_000, 'milliseconds from 1000 to 2592000000'),
  TASK_RETENTION_MS: Int(30 * 86_400_000, 0, 3650 * 86_400_000, 'milliseconds from 0 to 315360000000 (ended tasks older than this are deleted with their events and logs; 0 keeps them forever)'),
  ORPHAN_GRACE_MS: Int(60_000, 0, 86_400_000, 'milliseconds from 0 to 86400000'),
  RECONCILE_INTERVAL_MS: Int(60_000, 1_000, 86_400_000, 'milliseconds from 1000 to 86400000'),

  // Server
  MCP_PORT: Int(3500, 0, 65535, 'a TCP port from 0 to 65535'),
  MCP_HOST: Str('127.0.0.1', 'an address to bind, such as 127.0.0.1 or 0.0.0.0', { minLength: 1 }),
  DATA_DIR: Str('./data', 'a writable directory for the task store and logs', { minLength: 1 }),
  SHUTDOWN_GRACE_MS: Int(20_000, 0, 3_600_000, 'milliseconds from 0 to 3600000 (how long running tasks may finish on SIGTERM)'),
  // Task store: SQLite in DATA_DIR (empty), or PostgreSQL (cluster mode)
  DATABASE_URL: Str('', 'a postgres:// or postgresql:// URL such as postgres://user:password@db:5432/lop (or DATABASE_URL_FILE), or empty for SQLite in DATA_DIR', { pattern: '^(postgres(ql)?://\\S+)?$' }),
  DATABASE_POOL_SIZE: Int(10, 1, 200, 'an integer from 1 to 200 (PostgreSQL connections per replica)'),
  // Cluster mode (DATABASE_URL): this replica's address for the others, the cluster secret, liveness and the cluster-wide limit
  NODE_URL: Str('', 'an http:// or https:// URL where the other replicas reach this one, such as http://10.0.0.5:3500, or empty for http://127.0.0.1:MCP_PORT', { pattern: '^(https?://\\S+)?$' }),
  CLUSTER_TOKEN: Str('', 'a secret of at least 32 characters shared by the replicas (or CLUSTER_TOKEN_FILE), or empty to forward nothing between replicas', { pattern: '^(\\S{32,})?$' }),
  NODE_LEASE_MS: Int(15_000, 1_000, 600_000, 'milliseconds from 1000 to 600000 (a replica whose heartbeat is older is lost)'),
  NODE_HEARTBEAT_MS: Int(3_000, 100, 300_000, 'milliseconds from 100 to 300000, under NODE_LEASE_MS / 2'),
  CLUSTER_MAX_CONCURRENT_TASKS: Int(0, 0, 100_000, 'an integer from 0 to 100000 (tasks running at once in the whole cluster; 0: only MAX_CONCURRENT_TASKS per replica)'),

  // Operations
  METRICS_TOKEN: Str('', 'a token of at least 16 characters for GET /metrics (or METRICS_TOKEN_FILE), or empty to use the MCP authentication', { pattern: '^(\\S{16,})?$' }),
  SHED_EVENT_LOOP_DELAY_MS: Int(1_000, 0, 60_000, 'milliseconds from 0 to 60000 (0 turns event-loop load shedding off)'),
  SHED_HEAP_USED_BYTES: Int(0, 0, 64 * 1024 ** 3, 'bytes from 0 to 68719476736 (0 turns heap load shedding off)'),

  // Feature flags and logging
  DEBUG: Bool(false, 'true or false'),
  ENABLE_ASYNC_EXECUTE: Bool(true, 'true or false'),
  ENFORCE_IDEMPOTENCY: Bool(true, 'true or false'),
  LOG_LEVEL: Type.Union(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'].map((l) => Type.Literal(l)), {
    default: 'info', description: 'one of fatal, error, warn, info, debug, trace, silent'
  }),

  // Docker engine probe (the connection itself follows DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH)
  DOCKER_PROBE_INTERVAL_MS: Int(5_000, 200, 600_000, 'milliseconds from 200 to 600000'),
  DOCKER_CALL_TIMEOUT_MS: Int(30_000, 1_000, 600_000, 'milliseconds from 1000 to 600000 (the most a short Engine API call may take: create, start, inspect, stop, remove, archive)'),

  // MCP endpoint
  MCP_SESSION_TTL_MS: Int(1_800_000, 1_000, 86_400_000, 'milliseconds from 1000 to 86400000'),
  MCP_MAX_SESSIONS: Int(1_000, 1, 100_000, 'an integer from 1 to 100000'),
  MCP_BODY_LIMIT: Int(4 * 1024 * 1024, 1024, 64 * 1024 * 1024, 'bytes from 1024 to 67108864'),
  MCP_ALLOWED_HOSTS: Str('', 'a comma list of host names (optionally host:port), exact match; empty means loopback names only'),
  MCP_ALLOWED_ORIGINS: Str('', 'a comma list of origins such as https://app.example.com, exact match; empty means loopback origins only'),
  MCP_AUTH_TOKENS: Str('', 'a comma list of principal:token entries, tokens of at least 16 characters (or MCP_AUTH_TOKENS_FILE)'),
  MCP_ALLOW_UNAUTHENTICATED: Bool(false, 'true or false')
})

export type Config = Static<typeof ConfigSchema>

/** Variables that may come from a file (`NAME_FILE`, Docker secrets) and are never logged. */
export const SECRET_VARIABLES = ['LETTA_API_TOKEN', 'MCP_AUTH_TOKENS', 'METRICS_TOKEN', 'DATABASE_URL', 'GIT_CREDENTIALS', 'CLUSTER_TOKEN'] as const

export class ConfigError extends Error {
  override name = 'ConfigError'
}

/**
 * The raw variables the service is configured from: `.env` (when present) overlaid by the process
 * environment, with `NAME_FILE` secrets read from their files.
 */
export function readEnvSources (env: NodeJS.ProcessEnv, envFile: string | false = '.env'): Record<string, string> {
  const merged: Record<string, string> = {}
  if (envFile) {
    try {
      Object.assign(merged, parseEnv(readFileSync(resolve(envFile), 'utf8')))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
    }
  }
  for (const [k, v] of Object.entries(env)) if (v !== undefined) merged[k] = v

  for (const name of SECRET_VARIABLES) {
    const file = merged[`${name}_FILE`]
    if (!file) continue
    if (merged[name]) {
      throw new ConfigError(`Invalid configuration: both ${name} and ${name}_FILE are set; expected only one of them`)
    }
    try {
      merged[name] = readFileSync(file, 'utf8').trim()
    } catch (err) {
      throw new ConfigError(`Invalid configuration: ${name}_FILE="${file}" cannot be read (${(err as NodeJS.ErrnoException).code}); expected a readable file holding the secret`)
    }
    // read: the result holds the value only, so reading it again (server.ts, then the config plugin) agrees
    delete merged[`${name}_FILE`]
  }
  return merged
}

interface AjvLikeError { instancePath: string, keyword: string, params: Record<string, unknown>, message?: string }

/** One line per bad variable: the variable, its value and what is expected. Secrets are not echoed. */
export function formatConfigErrors (errors: AjvLikeError[], source: Record<string, string>): string {
  const lines = new Map<string, string>()
  for (const e of errors) {
    const name = e.instancePath.replace(/^\//, '') || String(e.params.additionalProperty ?? e.params.missingProperty ?? '')
    if (lines.has(name)) continue
    const schema = (ConfigSchema.properties as Record<string, { description?: string }>)[name]
    const shown = (SECRET_VARIABLES as readonly string[]).includes(name) ? '<redacted>' : JSON.stringify(source[name] ?? '')
    lines.set(name, `${name}=${shown}: expected ${schema?.description ?? e.message ?? 'a valid value'}`)
  }
  return `Invalid configuration: ${[...lines.values()].join('; ')}`
}

/** A database URL without its password (for a log line): postgres://user:***@host:5432/db. */
export function redactUrl (url: string): string {
  try {
    const u = new URL(url)
    if (u.password) u.password = '***'
    return u.toString()
  } catch {
    return '<unparsable URL>'
  }
}

const UNITS: Record<string, number> = { b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 }

/** Parses a Docker-style size (`512m`, `2g`, `1048576`) into bytes. */
export function parseByteSize (value: string): number {
  const m = /^([0-9]+(?:\.[0-9]+)?)([bkmg]?)$/i.exec(value.trim())
  if (!m) throw new ConfigError(`"${value}" is not a size; expected a number with an optional b, k, m or g suffix`)
  return Math.floor(Number(m[1]) * UNITS[(m[2] || 'b').toLowerCase()])
}

export interface AuthToken { principal: string, token: string }

const PRINCIPAL = /^[A-Za-z0-9._-]{1,64}$/

/** Parses `MCP_AUTH_TOKENS` (`principal:token,principal:token`). */
export function parseAuthTokens (value: string): AuthToken[] {
  const entries = value.split(',').map((s) => s.trim()).filter(Boolean)
  return entries.map((entry, i) => {
    const at = entry.indexOf(':')
    const principal = at > 0 ? entry.slice(0, at) : ''
    const token = at > 0 ? entry.slice(at + 1) : ''
    if (!PRINCIPAL.test(principal) || token.length < 16) {
      throw new ConfigError(`Invalid configuration: MCP_AUTH_TOKENS entry ${i + 1} is malformed; expected principal:token with a principal of letters, digits, . _ - and a token of at least 16 characters (generate one with: openssl rand -hex 32)`)
    }
    return { principal, token }
  })
}

/** A push credential: the protocol and host (with its port) it is for, and what git is given. */
export interface GitCredential { protocol: 'https:' | 'http:', host: string, username: string, password: string }

/** The user name given with a bare token (`https://TOKEN@host`): forges take any name with a token. */
export const TOKEN_USERNAME = 'x-access-token'

/**
 * Parses GIT_CREDENTIALS: one URL a line (blank lines and # comments skipped; spaces or commas also separate them), as a git
 * credential-store file has them, percent-encoded. A bare token is the password of TOKEN_USERNAME.
 * Errors name the entry by its number, never its content.
 */
export function parseGitCredentials (value: string, field = 'GIT_CREDENTIALS'): GitCredential[] {
  // one a line in a file; spaces or commas between them in a variable
  const lines = value.split(/\r?\n/).filter((l) => !l.trim().startsWith('#')).flatMap((l) => l.split(/[\s,]+/)).filter(Boolean)
  const out: GitCredential[] = []
  for (const [i, line] of lines.entries()) {
    let url: URL | undefined
    try { url = new URL(line) } catch {}
    const bad = !url || (url.protocol !== 'https:' && url.protocol !== 'http:') || !url.username || !url.hostname ||
      (url.pathname !== '/' && url.pathname !== '') || url.search || url.hash
    if (bad) throw new ConfigError(`${field} entry ${i + 1} is not a credential: expected https://TOKEN@host or https://user:token@host (optionally host:port), one a line (or separated by spaces or commas)`)
    const u = url as URL
    const decode = (s: string) => { try { return decodeURIComponent(s) } catch { return s } }
    const token = !u.password
    if (out.some((c) => c.protocol === u.protocol && c.host === u.host)) throw new ConfigError(`${field} entry ${i + 1}: a second credential for ${u.host}; give one per host`)
    out.push({ protocol: u.protocol as GitCredential['protocol'], host: u.host, username: token ? TOKEN_USERNAME : decode(u.username), password: decode(token ? u.username : u.password) })
  }
  return out
}

/** Parses RUNNER_GIT_AUTHOR (`Name <email>`). */
export function parseGitAuthor (value: string): { name: string, email: string } {
  const m = /^([^<>\n]*[^<>\s])\s*<([^<>\s@]+@[^<>\s@]+)>$/.exec(value.trim())
  if (!m) throw new ConfigError(`RUNNER_GIT_AUTHOR="${value}" is not a git author: expected Name <email>, such as OpenCode Bot <bot@example.com>`)
  return { name: m[1].trim(), email: m[2] }
}

/** Checks RUNNER_EGRESS_ALLOW's entries: host names (`*.` wildcards) with an optional :port, no IP addresses. */
function parseEgressAllow (value: string): void {
  for (const entry of splitList(value)) {
    const m = /^(\*\.)?([a-z0-9-]+(\.[a-z0-9-]+)*)(?::(\d{1,5}))?$/i.exec(entry)
    if (!m || /^[0-9.]+$/.test(m[2]) || (m[4] !== undefined && (Number(m[4]) < 1 || Number(m[4]) > 65535))) {
      throw new ConfigError(`RUNNER_EGRESS_ALLOW entry "${entry}" is not a host name: expected a name such as api.anthropic.com or *.example.com, optionally with :port (1 to 65535); IP addresses are not accepted`)
    }
  }
}

/** Comma list → trimmed, non-empty items. */
export function splitList (value: string): string[] {
  return value.split(',').map((s) => s.trim()).filter(Boolean)
}

const LOOPBACK_NAMES = new Set(['localhost', '127.0.0.1', '::1', '[::1]'])

/** True for addresses that only the local machine can reach. */
export function isLoopbackHost (host: string): boolean {
  return LOOPBACK_NAMES.has(host) || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)
}

/** Where the other replicas reach this one (NODE_URL, or loopback on MCP_PORT), without a trailing slash. */
export function nodeUrl (config: Pick<Config, 'NODE_URL' | 'MCP_PORT'>): string {
  return (config.NODE_URL || `http://127.0.0.1:${config.MCP_PORT}`).replace(/\/+$/, '')
}

/** Checks that need more than one variable or a parse; run after schema validation. */
export function checkConfig (config: Config): void {
  // the schema's bounds do not hold for a coerced "Infinity": every number must be finite
  for (const [name, schema] of Object.entries(ConfigSchema.properties) as Array<[keyof Config, { type?: string, description?: string }]>) {
    if ((schema.type === 'number' || schema.type === 'integer') && !Number.isFinite(config[name])) {
      throw new ConfigError(`Invalid configuration: ${name}="${String(config[name])}": expected ${schema.description ?? 'a finite number'}`)
    }
  }
  let memory: number
  try {
    memory = parseByteSize(config.RUNNER_MEMORY_LIMIT)
  } catch {
    memory = 0
  }
  if (memory < 6 * 1024 ** 2) {
    throw new ConfigError(`Invalid configuration: RUNNER_MEMORY_LIMIT="${config.RUNNER_MEMORY_LIMIT}": expected a size of at least 6m (Docker's minimum), such as 512m or 2g`)
  }
  const tmpfs = (() => { try { return parseByteSize(config.RUNNER_TMPFS_SIZE) } catch { return 0 } })()
  if (tmpfs < 1024 ** 2 || tmpfs > 16 * 1024 ** 3) {
    throw new ConfigError(`Invalid configuration: RUNNER_TMPFS_SIZE="${config.RUNNER_TMPFS_SIZE}": expected a size from 1m to 16g, such as 256m or 1g`)
  }
  try {
    parseEgressAllow(config.RUNNER_EGRESS_ALLOW)
  } catch (err) {
    throw new ConfigError(`Invalid configuration: ${(err as Error).message}`)
  }
  try {
    parseGitCredentials(config.GIT_CREDENTIALS)
    parseGitAuthor(config.RUNNER_GIT_AUTHOR)
  } catch (err) {
    throw new ConfigError(`Invalid configuration: ${(err as Error).message}`)
  }
  if (Boolean(config.LETTA_API_URL) !== Boolean(config.LETTA_API_TOKEN)) {
    const missing = config.LETTA_API_URL ? 'LETTA_API_TOKEN (or LETTA_API_TOKEN_FILE)' : 'LETTA_API_URL'
    throw new ConfigError(`Invalid configuration: Letta needs both LETTA_API_URL and LETTA_API_TOKEN; set ${missing}, or leave both empty to run without Letta`)
  }
  const leaked = splitList(config.RUNNER_ENV_PASSTHROUGH).filter((name) => (SECRET_VARIABLES as readonly string[]).includes(name) || name.endsWith('_FILE'))
  if (leaked.length) {
    throw new ConfigError(`Invalid configuration: RUNNER_ENV_PASSTHROUGH names ${leaked.join(', ')}, a secret of the service itself; pass only the model providers' variables, such as ANTHROPIC_API_KEY`)
  }
  if (config.NODE_HEARTBEAT_MS * 2 >= config.NODE_LEASE_MS) {
    throw new ConfigError(`Invalid configuration: NODE_HEARTBEAT_MS=${config.NODE_HEARTBEAT_MS} must be under NODE_LEASE_MS / 2 (NODE_LEASE_MS=${config.NODE_LEASE_MS}): a replica gets at least two heartbeats in before it is declared lost`)
  }
  const tokens = parseAuthTokens(config.MCP_AUTH_TOKENS)
  if (config.CLUSTER_TOKEN && !config.DATABASE_URL) {
    throw new ConfigError('Invalid configuration: CLUSTER_TOKEN is for cluster mode, which needs DATABASE_URL (PostgreSQL); set DATABASE_URL or leave CLUSTER_TOKEN empty')
  }
  if (config.CLUSTER_TOKEN && tokens.some((t) => t.token === config.CLUSTER_TOKEN)) {
    throw new ConfigError('Invalid configuration: CLUSTER_TOKEN is also an MCP_AUTH_TOKENS token; the replicas\' secret must be a token of its own (generate one with: openssl rand -hex 32)')
  }
  if (tokens.length === 0 && !isLoopbackHost(config.MCP_HOST) && !config.MCP_ALLOW_UNAUTHENTICATED) {
    throw new ConfigError(`Refusing to listen on ${config.MCP_HOST} without authentication: set MCP_AUTH_TOKENS=principal:token (generate a token with: openssl rand -hex 32), or bind MCP_HOST=127.0.0.1, or set MCP_ALLOW_UNAUTHENTICATED=true to accept unauthenticated clients on purpose`)
  }
}

/**
 * The variables passed through to runner containers (RUNNER_ENV_PASSTHROUGH), read from the same
 * sources as the config (environment over .env; NAME_FILE too). Unset names are left out.
 */
export function passthroughEnv (config: Pick<Config, 'RUNNER_ENV_PASSTHROUGH'>, source: Record<string, string>): Record<string, string> {
  const env: Record<string, string> = {}
  for (const name of splitList(config.RUNNER_ENV_PASSTHROUGH)) {
    const file = source[`${name}_FILE`]
    const value = source[name] ?? (file ? readFileSync(file, 'utf8').trim() : undefined)
    if (value) env[name] = value
  }
  return env
}

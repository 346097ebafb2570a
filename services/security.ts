/**
 * Request guard for the MCP and task endpoints: exact-match Host and Origin checks (DNS rebinding
 * protection) and bearer-token authentication in constant time. Plain functions of header values.
 */
import { createHash, timingSafeEqual } from 'node:crypto'
import { isLoopbackHost, parseAuthTokens, splitList, type Config } from './config.js'

/** The principal of every caller when no token is configured (loopback or explicitly open). */
export const ANONYMOUS_PRINCIPAL = 'local'

/** Letta agent ids look like `agent-<uuid>`; other clients may use any short id of the same alphabet. */
export const AGENT_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/

export type GuardResult =
  | { ok: true, principal: string }
  | { ok: false, status: 401 | 403, message: string, authenticate?: string }

const sha256 = (s: string) => createHash('sha256').update(s).digest()

/** `host[:port]` → lower-cased host name (IPv6 kept in brackets) and port. */
function splitHostPort (value: string): { host: string, port: string } {
  const v = value.trim().toLowerCase()
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(v)
  return m ? { host: m[1], port: m[2] ?? '' } : { host: v, port: '' }
}

export class RequestGuard {
  private readonly hosts: string[]
  private readonly origins: string[]
  private readonly tokens: Array<{ principal: string, digest: Buffer }>
  private readonly metricsDigest: Buffer | undefined

  constructor (config: Pick<Config, 'MCP_ALLOWED_HOSTS' | 'MCP_ALLOWED_ORIGINS' | 'MCP_AUTH_TOKENS' | 'METRICS_TOKEN'>) {
    this.metricsDigest = config.METRICS_TOKEN ? sha256(config.METRICS_TOKEN) : undefined
    this.hosts = splitList(config.MCP_ALLOWED_HOSTS).map((h) => h.toLowerCase())
    this.origins = splitList(config.MCP_ALLOWED_ORIGINS).map((o) => o.toLowerCase().replace(/\/+$/, ''))
    this.tokens = parseAuthTokens(config.MCP_AUTH_TOKENS).map((t) => ({ principal: t.principal, digest: sha256(t.token) }))
  }

  get authEnabled (): boolean {
    return this.tokens.length > 0
  }

  /** Host header: an allowed entry with a port must match host:port; one without matches any port. */
  hostAllowed (hostHeader: string | undefined): boolean {
    if (!hostHeader) return false
    const { host, port } = splitHostPort(hostHeader)
    if (this.hosts.length === 0) return isLoopbackHost(host)
    return this.hosts.some((entry) => {
      const allowed = splitHostPort(entry)
      return allowed.host === host && (allowed.port === '' || allowed.port === port)
    })
  }

  /** Origin header: absent is fine (not a browser); present must match exactly. */
  originAllowed (origin: string | undefined): boolean {
    if (origin === undefined) return true
    const o = origin.trim().toLowerCase()
    if (this.origins.length > 0) return this.origins.includes(o)
    let url: URL
    try {
      url = new URL(o)
    } catch {
      return false
    }
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.origin === o && isLoopbackHost(url.hostname)
  }

  /** The principal a bearer token names, compared in constant time against every configured token. */
  authenticate (authorization: string | undefined): GuardResult {
    if (!this.authEnabled) return { ok: true, principal: ANONYMOUS_PRINCIPAL }
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '')
    if (!m) {
      return { ok: false, status: 401, message: 'Missing bearer token: send Authorization: Bearer <token> (a token from MCP_AUTH_TOKENS)', authenticate: 'Bearer realm="letta-opencode-plugin"' }
    }
    const digest = sha256(m[1])
    let principal: string | undefined
    for (const t of this.tokens) {
      if (timingSafeEqual(t.digest, digest) && principal === undefined) principal = t.principal
    }
    if (principal === undefined) {
      return { ok: false, status: 401, message: 'Invalid bearer token', authenticate: 'Bearer realm="letta-opencode-plugin", error="invalid_token"' }
    }
    return { ok: true, principal }
  }

  get metricsTokenSet (): boolean {
    return this.metricsDigest !== undefined
  }

  /** GET /metrics with METRICS_TOKEN set: that bearer token and nothing else (a scraper is not a browser). */
  checkMetrics (authorization: string | undefined): GuardResult {
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '')
    if (this.metricsDigest && m && timingSafeEqual(this.metricsDigest, sha256(m[1]))) return { ok: true, principal: 'metrics' }
    return { ok: false, status: 401, message: 'GET /metrics needs Authorization: Bearer <METRICS_TOKEN>', authenticate: 'Bearer realm="letta-opencode-plugin-metrics"' }
  }

  /** All checks in spec order: Host, Origin, then the token. */
  check (headers: { host?: string, origin?: string, authorization?: string }): GuardResult {
    if (!this.hostAllowed(headers.host)) {
      return { ok: false, status: 403, message: `Host header ${JSON.stringify(headers.host ?? '')} is not allowed; add it to MCP_ALLOWED_HOSTS` }
    }
    if (!this.originAllowed(headers.origin)) {
      return { ok: false, status: 403, message: `Origin ${JSON.stringify(headers.origin)} is not allowed; add it to MCP_ALLOWED_ORIGINS` }
    }
    return this.authenticate(headers.authorization)
  }
}

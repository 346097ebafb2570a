import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import Fastify from 'fastify'
import t from 'tap'
import configPlugin from '../plugins/config.js'
import { ConfigError, parseAuthTokens, parseByteSize, readEnvSources, nodeUrl, redactUrl } from '../services/config.js'
import { loggerOptions } from '../services/logging.js'
import { tempDir } from './helpers/app.js'

async function loadConfig (env: Record<string, string>, envFile: string | false = false) {
  const app = Fastify({ logger: false })
  await app.register(configPlugin, { env, envFile })
  await app.ready()
  const config = app.config
  await app.close()
  return config
}

t.test('defaults are the deployment guide\'s', async (t) => {
  const c = await loadConfig({})
  t.match(c, {
    LETTA_API_URL: '',
    LETTA_API_TOKEN: '',
    RUNNER_CPU_LIMIT: 2,
    RUNNER_MEMORY_LIMIT: '2g',
    RUNNER_TIMEOUT_MS: 300000,
    MAX_CONCURRENT_TASKS: 3,
    MCP_PORT: 3500,
    MCP_HOST: '127.0.0.1',
    DEBUG: false,
    ENABLE_ASYNC_EXECUTE: true,
    ENFORCE_IDEMPOTENCY: true,
    DATA_DIR: './data'
  })
})

t.test('values are coerced from strings', async (t) => {
  const c = await loadConfig({ RUNNER_CPU_LIMIT: '0.5', MAX_CONCURRENT_TASKS: '7', DEBUG: 'true', ENFORCE_IDEMPOTENCY: 'false', MCP_PORT: '0' })
  t.equal(c.RUNNER_CPU_LIMIT, 0.5)
  t.equal(c.MAX_CONCURRENT_TASKS, 7)
  t.equal(c.DEBUG, true)
  t.equal(c.ENFORCE_IDEMPOTENCY, false)
  t.equal(c.MCP_PORT, 0)
})

t.test('a bad value stops start-up with one line naming the variable, the value and what is expected', async (t) => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ RUNNER_MEMORY_LIMIT: 'lots' }, /^Invalid configuration: RUNNER_MEMORY_LIMIT="lots": expected a size of at least 6m/],
    [{ RUNNER_MEMORY_LIMIT: '1m' }, /RUNNER_MEMORY_LIMIT="1m": expected a size of at least 6m/],
    [{ MAX_CONCURRENT_TASKS: '0' }, /^Invalid configuration: MAX_CONCURRENT_TASKS="0": expected an integer from 1 to 64$/],
    [{ MCP_PORT: '70000' }, /^Invalid configuration: MCP_PORT="70000": expected a TCP port from 0 to 65535$/],
    [{ RUNNER_CPU_LIMIT: '-1' }, /^Invalid configuration: RUNNER_CPU_LIMIT="-1": expected a number of CPUs greater than 0/],
    [{ RUNNER_TIMEOUT_MS: 'soon' }, /RUNNER_TIMEOUT_MS="soon": expected milliseconds/],
    [{ DEBUG: 'maybe' }, /DEBUG="maybe": expected true or false/],
    [{ LOG_LEVEL: 'loud' }, /LOG_LEVEL="loud": expected one of fatal/],
    [{ LETTA_API_URL: 'letta.example.com', LETTA_API_TOKEN: 'x' }, /LETTA_API_URL="letta.example.com": expected an http\(s\) URL/]
  ]
  for (const [env, message] of cases) {
    const err = await loadConfig(env).then(() => undefined, (e: Error) => e)
    t.ok(err instanceof ConfigError, `${Object.keys(env).join()} is refused`)
    t.match(err?.message, message)
    t.notMatch(err?.message, /\n/, 'one line')
  }
})

t.test('several bad values are all named', async (t) => {
  const err = await loadConfig({ MCP_PORT: '-5', MAX_CONCURRENT_TASKS: 'many' }).catch((e: Error) => e)
  t.match(String(err), /MCP_PORT="-5".*MAX_CONCURRENT_TASKS="many"|MAX_CONCURRENT_TASKS="many".*MCP_PORT="-5"/)
})

t.test('secrets are read from NAME_FILE and never echoed in errors', async (t) => {
  const dir = tempDir(t)
  const file = join(dir, 'token')
  writeFileSync(file, 'letta-secret-token\n')
  const c = await loadConfig({ LETTA_API_URL: 'http://127.0.0.1:1', LETTA_API_TOKEN_FILE: file })
  t.equal(c.LETTA_API_TOKEN, 'letta-secret-token', 'trimmed file content')

  const missing = await loadConfig({ LETTA_API_TOKEN_FILE: join(dir, 'nope') }).catch((e: Error) => e)
  t.match(String(missing), /LETTA_API_TOKEN_FILE=".*nope" cannot be read \(ENOENT\)/)

  const both = await loadConfig({ LETTA_API_TOKEN: 'a', LETTA_API_TOKEN_FILE: file }).catch((e: Error) => e)
  t.match(String(both), /both LETTA_API_TOKEN and LETTA_API_TOKEN_FILE are set/)

  writeFileSync(file, 'ops:short')
  const bad = await loadConfig({ MCP_AUTH_TOKENS_FILE: file }).catch((e: Error) => e)
  t.match(String(bad), /MCP_AUTH_TOKENS entry 1 is malformed/)
  t.notMatch(String(bad), /short/, 'the secret is not in the message')
})

t.test('a .env file is read when present, and the environment wins over it', async (t) => {
  const dir = tempDir(t)
  const envFile = join(dir, '.env')
  writeFileSync(envFile, 'MAX_CONCURRENT_TASKS=5\nRUNNER_MEMORY_LIMIT=512m\n')
  const c = await loadConfig({ RUNNER_MEMORY_LIMIT: '1g' }, envFile)
  t.equal(c.MAX_CONCURRENT_TASKS, 5)
  t.equal(c.RUNNER_MEMORY_LIMIT, '1g')
  t.same(readEnvSources({}, join(dir, 'absent')), {}, 'no .env is needed')
})

t.test('Letta needs both its URL and its token', async (t) => {
  await t.rejects(loadConfig({ LETTA_API_URL: 'https://letta.example.com' }), /set LETTA_API_TOKEN \(or LETTA_API_TOKEN_FILE\)/)
  await t.rejects(loadConfig({ LETTA_API_TOKEN: 'tok' }), /set LETTA_API_URL/)
})

t.test('binding a non-loopback address needs a token or an explicit opt-out', async (t) => {
  await t.rejects(loadConfig({ MCP_HOST: '0.0.0.0' }), /Refusing to listen on 0\.0\.0\.0 without authentication: set MCP_AUTH_TOKENS/)
  const open = await loadConfig({ MCP_HOST: '0.0.0.0', MCP_ALLOW_UNAUTHENTICATED: 'true' })
  t.equal(open.MCP_HOST, '0.0.0.0')
  const authed = await loadConfig({ MCP_HOST: '0.0.0.0', MCP_AUTH_TOKENS: 'letta:0123456789abcdef0123' })
  t.equal(authed.MCP_AUTH_TOKENS, 'letta:0123456789abcdef0123')
  await loadConfig({ MCP_HOST: '127.0.0.2' })
  t.pass('any 127/8 address counts as loopback')
})

t.test('byte sizes and token lists parse', async (t) => {
  t.equal(parseByteSize('2g'), 2 * 1024 ** 3)
  t.equal(parseByteSize('512M'), 512 * 1024 ** 2)
  t.equal(parseByteSize('1.5k'), 1536)
  t.equal(parseByteSize('100'), 100)
  t.throws(() => parseByteSize('2 gigs'), ConfigError)
  t.same(parseAuthTokens(' a:0123456789abcdef , b.c:fedcba9876543210:x '), [
    { principal: 'a', token: '0123456789abcdef' },
    { principal: 'b.c', token: 'fedcba9876543210:x' }
  ])
  t.throws(() => parseAuthTokens('no-colon-here-0123456789'), /entry 1 is malformed/)
})

t.test('the task store: DATABASE_URL (or its file) picks PostgreSQL, only postgres URLs, never echoed; DATABASE_POOL_SIZE bounded', async (t) => {
  const c = await loadConfig({})
  t.same([c.DATABASE_URL, c.DATABASE_POOL_SIZE], ['', 10], 'empty: SQLite in DATA_DIR; a pool of 10')
  for (const url of ['postgres://u:pw@db:5432/lop', 'postgresql://u@db/lop?sslmode=require']) {
    t.equal((await loadConfig({ DATABASE_URL: url })).DATABASE_URL, url)
  }
  for (const url of ['mysql://u:s3cret@db/lop', 'u:s3cret@db:5432/lop', 'postgres:// u:s3cret@db', 'postgres://']) {
    const err = await loadConfig({ DATABASE_URL: url }).catch((e: Error) => e)
    t.ok(err instanceof ConfigError, `${url} is refused`)
    t.match(String(err), /DATABASE_URL=<redacted>: expected a postgres:\/\/ or postgresql:\/\/ URL/)
    t.notMatch(String(err), /s3cret/, 'the URL (and its password) is not in the message')
  }

  const dir = tempDir(t)
  const file = join(dir, 'database-url')
  writeFileSync(file, 'postgres://u:from-file@db/lop\n')
  t.equal((await loadConfig({ DATABASE_URL_FILE: file })).DATABASE_URL, 'postgres://u:from-file@db/lop')
  await t.rejects(loadConfig({ DATABASE_URL: 'postgres://x@db/lop', DATABASE_URL_FILE: file }), /both DATABASE_URL and DATABASE_URL_FILE are set/)
  await t.rejects(loadConfig({ RUNNER_ENV_PASSTHROUGH: 'DATABASE_URL' }), /RUNNER_ENV_PASSTHROUGH names DATABASE_URL, a secret of the service itself/)

  t.equal((await loadConfig({ DATABASE_POOL_SIZE: '25' })).DATABASE_POOL_SIZE, 25)
  for (const size of ['0', '201', 'lots']) {
    await t.rejects(loadConfig({ DATABASE_POOL_SIZE: size }), new RegExp(`DATABASE_POOL_SIZE="${size}": expected an integer from 1 to 200`))
  }

  t.equal(redactUrl('postgres://lop:s3cret@db:5432/lop'), 'postgres://lop:***@db:5432/lop', 'a log line shows the URL without its password')
  t.equal(redactUrl('postgres://lop@db/lop'), 'postgres://lop@db/lop')
  t.ok((loggerOptions({}).redact as { paths: string[] }).paths.includes('config.DATABASE_URL'), 'the logger redacts it')
})

t.test('cluster forwarding: NODE_URL an http(s) URL, CLUSTER_TOKEN (or its file) a long secret of its own, needing DATABASE_URL, never echoed', async (t) => {
  const db = 'postgres://u:p@db/lop'
  const token = 'k'.repeat(32)
  const c = await loadConfig({})
  t.same([c.NODE_URL, c.CLUSTER_TOKEN], ['', ''], 'empty: loopback on MCP_PORT, no forwarding')
  t.equal(nodeUrl({ NODE_URL: '', MCP_PORT: 3600 }), 'http://127.0.0.1:3600')
  t.equal(nodeUrl({ NODE_URL: 'https://r1.internal:3500/', MCP_PORT: 3600 }), 'https://r1.internal:3500')
  await t.rejects(loadConfig({ NODE_URL: 'ftp://r1' }), /NODE_URL="ftp:\/\/r1": expected an http:\/\/ or https:\/\/ URL/)
  t.equal((await loadConfig({ DATABASE_URL: db, CLUSTER_TOKEN: token })).CLUSTER_TOKEN, token)
  const short = await loadConfig({ DATABASE_URL: db, CLUSTER_TOKEN: 'short-secret' }).catch((e: Error) => e)
  t.match(String(short), /CLUSTER_TOKEN=<redacted>: expected a secret of at least 32 characters/)
  t.notMatch(String(short), /short-secret/, 'the value is not echoed')
  await t.rejects(loadConfig({ CLUSTER_TOKEN: token }), /CLUSTER_TOKEN is for cluster mode, which needs DATABASE_URL/)
  await t.rejects(loadConfig({ DATABASE_URL: db, CLUSTER_TOKEN: token, MCP_AUTH_TOKENS: `alice:${token}` }), /CLUSTER_TOKEN is also an MCP_AUTH_TOKENS token/)
  const file = join(tempDir(t), 'cluster-token')
  writeFileSync(file, `${token}\n`)
  t.equal((await loadConfig({ DATABASE_URL: db, CLUSTER_TOKEN_FILE: file })).CLUSTER_TOKEN, token, 'from a file (Docker secret)')
  t.ok((loggerOptions({}).redact as { paths: string[] }).paths.includes('config.CLUSTER_TOKEN'), 'the logger redacts it')
})

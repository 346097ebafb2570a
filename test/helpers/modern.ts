/** Modern-era (2026-07-28) test helpers: the SDK v2 client, and raw requests with the era's headers and envelope. */
import { Client as ClientV2, StreamableHTTPClientTransport as TransportV2 } from '@modelcontextprotocol/client'
import type { Test } from 'tap'

export const MODERN = '2026-07-28'
/** Two principals and their tokens. */
export const ALICE = 'alice-token-0123456789'
export const BOB = 'bob-token-0123456789ab'
export const TOKENS = { MCP_AUTH_TOKENS: `alice:${ALICE},bob:${BOB}` }
/** The stand-in agent image, small limits. */
export const AGENT_ENV = { RUNNER_IMAGE: 'letta-opencode-test-agent:latest', RUNNER_NETWORK: 'none', RUNNER_MEMORY_LIMIT: '64m', RUNNER_STOP_GRACE_S: '1', RUNNER_CPU_LIMIT: '0.5' }
export const bearer = (token: string) => ({ authorization: `Bearer ${token}` })

/** A v2 client in auto mode (probes server/discover, falls back to initialize). */
export async function connectV2 (t: Test, url: string, headers: Record<string, string> = {}, mode: 'auto' | 'legacy' = 'auto') {
  const client = new ClientV2({ name: 'eras-test', version: '1.0.0' }, { versionNegotiation: { mode } })
  const transport = new TransportV2(new URL('/mcp', url), { requestInit: { headers } })
  await client.connect(transport)
  t.teardown(() => client.close())
  return { client, transport }
}

/** The `_meta` envelope a 2026-07-28 request carries. */
export const envelope = (capabilities: Record<string, unknown> = {}) => ({
  'io.modelcontextprotocol/protocolVersion': MODERN,
  'io.modelcontextprotocol/clientInfo': { name: 'raw', version: '1' },
  'io.modelcontextprotocol/clientCapabilities': capabilities
})

/** A raw modern request: the required headers derived from the body unless given. */
export async function modern (url: string, method: string, params: Record<string, unknown> = {}, headers: Record<string, string> = {}, capabilities: Record<string, unknown> = {}) {
  const name = method === 'tools/call' ? params.name : typeof params.taskId === 'string' ? params.taskId : undefined
  const res = await fetch(new URL('/mcp', url), {
    method: 'POST',
    headers: {
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      'mcp-protocol-version': MODERN,
      'mcp-method': method,
      ...(typeof name === 'string' ? { 'mcp-name': name } : {}),
      ...headers
    },
    body: JSON.stringify({ jsonrpc: '2.0', id: 7, method, params: { ...params, _meta: envelope(capabilities) } })
  })
  const text = await res.text()
  const json = (res.headers.get('content-type') ?? '').includes('text/event-stream')
    ? JSON.parse(text.split('\n').filter((l) => l.startsWith('data:')).at(-1)!.slice(5))
    : JSON.parse(text)
  return { status: res.status, json, headers: res.headers }
}

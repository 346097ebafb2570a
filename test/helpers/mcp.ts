/** MCP helpers: the real SDK client over real HTTP, and raw JSON-RPC posts for status-code checks. */
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import { request } from 'node:http'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import type { Test } from 'tap'

export async function connect (t: Test, url: string, headers: Record<string, string> = {}): Promise<{ client: Client, transport: StreamableHTTPClientTransport }> {
  const client = new Client({ name: 'letta-opencode-plugin-tests', version: '1.0.0' })
  const transport = new StreamableHTTPClientTransport(new URL('/mcp', url), { requestInit: { headers } })
  await client.connect(transport)
  t.teardown(() => client.close())
  return { client, transport }
}

export const INITIALIZE = {
  jsonrpc: '2.0',
  id: 1,
  method: 'initialize',
  params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'raw', version: '1' } }
}

/** A raw POST /mcp with the headers a streamable HTTP client sends. */
export function post (url: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(new URL('/mcp', url), {
    method: 'POST',
    headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body)
  })
}

/** Opens a session with a raw initialize; returns its id. */
export async function openSession (url: string, headers: Record<string, string> = {}): Promise<string> {
  const res = await post(url, INITIALIZE, headers)
  await res.body?.cancel()
  const id = res.headers.get('mcp-session-id')
  if (!id) throw new Error(`initialize failed: HTTP ${res.status}`)
  return id
}

/** A POST /mcp through node:http, which sends the Host header given (fetch always derives it from the URL). */
export function rawPost (url: string, body: unknown, headers: Record<string, string>): Promise<{ status: number, body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(new URL('/mcp', url), {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...headers }
    }, (res) => {
      let text = ''
      res.on('data', (d) => { text += d })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }))
    })
    req.on('error', reject)
    req.end(JSON.stringify(body))
  })
}

/** A tool call through the SDK client, with room for a sync call that waits up to SYNC_WAIT_MS. */
export async function callTool (client: Client, name: string, args: Record<string, unknown>): Promise<CallToolResult> {
  return await client.callTool({ name, arguments: args }, undefined, { timeout: 120_000 }) as CallToolResult
}

/** A tool call that must succeed: its structured result. */
export async function toolOk (client: Client, name: string, args: Record<string, unknown>): Promise<Record<string, unknown>> {
  const res = await callTool(client, name, args)
  if (res.isError) throw new Error(`${name}: ${(res.content[0] as { text: string }).text}`)
  return res.structuredContent as Record<string, unknown>
}

/** The JSON of a tool error, or undefined when the call succeeded. */
export const toolErrorOf = (res: CallToolResult) => (res.isError ? JSON.parse((res.content[0] as { text: string }).text) as { error: string, code: string } : undefined)

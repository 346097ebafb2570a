/**
 * CPU profile of the service under MCP `ping` load (issue #20): the app in this process, autocannon
 * in a child process, 8 sessions (legacy) or stateless requests (modern) as fast as they go; the
 * profiler runs only while the load does (not during start-up).
 * Run: node --import tsx bench/profile.ts [legacy|modern] [seconds] [out.cpuprofile]
 * then: node bench/profile-report.mjs out.cpuprofile
 */
import { fork } from 'node:child_process'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { Session } from 'node:inspector/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import autocannon from 'autocannon'
import Fastify from 'fastify'
import app, { serverOptions } from '../app.js'
import { INITIALIZE } from '../test/helpers/mcp.js'

const HEADERS = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }
const MODERN = '2026-07-28'
const envelope = { 'io.modelcontextprotocol/protocolVersion': MODERN, 'io.modelcontextprotocol/clientInfo': { name: 'bench', version: '1.0.0' }, 'io.modelcontextprotocol/clientCapabilities': {} }

if (process.argv[2] === 'load') {
  // the child: load only
  const [url, era, seconds, sessions] = process.argv.slice(3)
  const ids = sessions ? sessions.split(',') : []
  let next = 0
  const result = await autocannon(era === 'modern'
    ? { url, duration: Number(seconds), connections: 16, method: 'POST', headers: { ...HEADERS, 'mcp-protocol-version': MODERN, 'mcp-method': 'tools/call', 'mcp-name': 'ping' }, body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'ping', arguments: {}, _meta: envelope } }) }
    : {
        url,
        duration: Number(seconds),
        connections: 16,
        method: 'POST',
        body: JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'ping', arguments: {} } }),
        setupClient: (client) => { client.setHeaders({ ...HEADERS, 'mcp-protocol-version': '2025-06-18', 'mcp-session-id': ids[next++ % ids.length] }) }
      })
  console.log(`${era}: ${result.requests.average} req/s, p99 ${result.latency.p99} ms, errors ${result.errors + result.non2xx}`)
} else {
  const era = process.argv[2] === 'modern' ? 'modern' : 'legacy'
  const seconds = process.argv[3] ?? '10'
  const dataDir = mkdtempSync(join(tmpdir(), 'lop-prof-'))
  const service = Fastify({ ...serverOptions(), logger: { level: 'info', stream: { write: () => {} } } })
  await service.register(app, { env: { DATA_DIR: dataDir, SHED_EVENT_LOOP_DELAY_MS: '0' }, envFile: false })
  await service.listen({ host: '127.0.0.1', port: 0 })
  const url = `http://127.0.0.1:${(service.server.address() as { port: number }).port}/mcp`
  const ids: string[] = []
  const sessions = era === 'legacy' ? 8 : 0
  for (let i = 0; i < sessions; i++) {
    const res = await fetch(url, { method: 'POST', headers: HEADERS, body: JSON.stringify(INITIALIZE) })
    await res.text()
    const id = res.headers.get('mcp-session-id') as string
    await (await fetch(url, { method: 'POST', headers: { ...HEADERS, 'mcp-session-id': id, 'mcp-protocol-version': '2025-06-18' }, body: JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }) })).text()
    ids.push(id)
  }
  const inspector = new Session()
  inspector.connect()
  await inspector.post('Profiler.enable')
  await inspector.post('Profiler.start')
  const child = fork(new URL(import.meta.url).pathname, ['load', url, era, seconds, ids.join(',')], { execArgv: ['--import', 'tsx'] })
  await new Promise((resolve) => child.once('exit', resolve))
  const { profile } = await inspector.post('Profiler.stop')
  const out = process.argv[4] ?? `${era}.cpuprofile`
  writeFileSync(out, JSON.stringify(profile))
  console.log(`profile: ${out}`)
  await service.close()
  rmSync(dataDir, { recursive: true, force: true })
}

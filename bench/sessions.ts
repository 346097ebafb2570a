/**
 * Sessions benchmark (issue: MCP sessions): 1,000 sessions opened over real HTTP and abandoned.
 * Reports heap per idle session (target ≤ 100 KB) and the heap after TTL eviction as a ratio of
 * the baseline measured in the same process before any session (target ≤ 1.10).
 * Run: node --expose-gc --import tsx bench/sessions.ts [sessions]
 */
import { setTimeout as sleep } from 'node:timers/promises'
import Fastify from 'fastify'
import app from '../app.js'
import { INITIALIZE } from '../test/helpers/mcp.js'

const SESSIONS = Number(process.argv[2] ?? 1000)
const TTL_MS = 15_000
const ROUNDS = 3

const gc = (globalThis as { gc?: () => void }).gc
if (!gc) throw new Error('run with node --expose-gc')

async function heap (): Promise<number> {
  for (let i = 0; i < 4; i++) { gc!(); await sleep(50) }
  return process.memoryUsage().heapUsed
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

export async function runSessionsBench () {
  const fastify = Fastify({ logger: false })
  await fastify.register(app, { env: { MCP_SESSION_TTL_MS: String(TTL_MS), MCP_MAX_SESSIONS: String(SESSIONS * 2), DATA_DIR: '/tmp/lop-bench' }, envFile: false })
  await fastify.listen({ host: '127.0.0.1', port: 0 })
  const { port } = fastify.server.address() as { port: number }
  const url = `http://127.0.0.1:${port}/mcp`
  const open = async () => {
    const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify(INITIALIZE) })
    await res.text()
    if (!res.headers.get('mcp-session-id')) throw new Error(`initialize failed: ${res.status}`)
  }
  // warm up code paths, then let the warm-up session expire
  await open()
  while (fastify.mcpSessions.size > 0) await sleep(200)

  const perSession: number[] = []
  const afterRatio: number[] = []
  for (let round = 0; round < ROUNDS; round++) {
    const baseline = await heap()
    for (let i = 0; i < SESSIONS; i += 50) await Promise.all(Array.from({ length: Math.min(50, SESSIONS - i) }, open))
    const loaded = await heap()
    if (fastify.mcpSessions.size !== SESSIONS) throw new Error(`expected ${SESSIONS} sessions, got ${fastify.mcpSessions.size}`)
    perSession.push((loaded - baseline) / SESSIONS)
    while (fastify.mcpSessions.size > 0) await sleep(250)
    afterRatio.push((await heap()) / baseline)
  }
  await fastify.close()
  const kb = median(perSession) / 1024
  const ratio = median(afterRatio)
  return [
    { benchmark: `sessions: heap per idle session (${SESSIONS})`, value: `${kb.toFixed(1)} KB`, target: '≤ 100 KB', met: kb <= 100 },
    { benchmark: 'sessions: heap after TTL eviction / baseline', value: `${ratio.toFixed(3)}x`, target: '≤ 1.10x', met: ratio <= 1.1 }
  ]
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const rows = await runSessionsBench()
  console.table(rows)
}

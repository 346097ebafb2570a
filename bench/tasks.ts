/**
 * Task benchmarks (issue: task engine), each against the raw Engine API in the same script:
 * - dispatch: a sync task's latency (MCP tools/call over HTTP → result) against the raw lifecycle of
 *   the same container (create, start, wait, logs, remove); target ≤ 1.05x.
 * - queue: 100 short tasks at concurrency N against the raw lifecycle run by N workers; target ≥ 0.9x
 *   throughput.
 * Rounds alternate raw and service so drift in the engine's speed hits both alike; medians reported.
 * Run: node --import tsx bench/tasks.ts
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import Fastify from 'fastify'
import app from '../app.js'
import { DockerEngine } from '../services/docker/engine.js'
import { stateVolume, workspaceVolume } from '../services/runner/workspace.js'
import { containerSpec, LABEL } from '../services/runner/container-spec.js'

const IMAGE = process.env.BENCH_IMAGE ?? 'letta-opencode-test-agent:latest'
const CONCURRENCY = 3
const QUEUE_TASKS = 100
const DISPATCH_ROUNDS = 15
const ENV = { RUNNER_IMAGE: IMAGE, RUNNER_NETWORK: 'none', RUNNER_MEMORY_LIMIT: '64m', RUNNER_CPU_LIMIT: '0.5', MAX_CONCURRENT_TASKS: String(CONCURRENCY), MAX_QUEUED_TASKS: '200' }

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

export async function runTasksBench () {
  const dataDir = mkdtempSync(join(tmpdir(), 'lop-bench-'))
  const fastify = Fastify({ logger: false })
  await fastify.register(app, { env: { ...ENV, DATA_DIR: dataDir }, envFile: false })
  await fastify.listen({ host: '127.0.0.1', port: 0 })
  const { port } = fastify.server.address() as { port: number }
  const client = new Client({ name: 'bench', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(`http://127.0.0.1:${port}/mcp`)))

  // the raw side builds the very same container spec the service does
  const engine = new DockerEngine()
  const config = fastify.config
  let n = 0
  const rawIds: string[] = []
  const raw = async (text: string) => {
    const id = `task_bench-raw-${process.pid}-${n++}`
    rawIds.push(id)
    const { Id } = await engine.createContainer(containerSpec(config, { id, agent_id: null, argv: [text] }, 'bench-raw'))
    await engine.startContainer(Id)
    await engine.waitContainer(Id)
    let out = ''
    for await (const c of engine.containerLogs(Id)) out += c.data.toString()
    await engine.removeContainer(Id, { force: true })
    if (out !== 'hi\n') throw new Error(`raw output: ${out}`)
  }
  const service = async (text: string, sync: boolean) => {
    const res = await client.callTool({ name: 'opencode_execute_task', arguments: { task_description: text, sync } }) as CallToolResult
    const task = res.structuredContent as { task_id: string, status: string, output: string }
    if (res.isError || (sync && task.output !== 'hi\n')) throw new Error(`service result: ${JSON.stringify(res)}`)
    return task.task_id
  }
  const timed = async (fn: () => Promise<unknown>) => { const t0 = performance.now(); await fn(); return performance.now() - t0 }

  // warm-up: image layers, code paths, the engine's caches
  for (let i = 0; i < 3; i++) { await raw('say hi'); await service('say hi', true) }

  const rawMs: number[] = []
  const serviceMs: number[] = []
  for (let i = 0; i < DISPATCH_ROUNDS; i++) {
    rawMs.push(await timed(() => raw('say hi')))
    serviceMs.push(await timed(() => service('say hi', true)))
  }
  const dispatch = median(serviceMs) / median(rawMs)

  const rawQueue = () => timed(async () => {
    let next = 0
    await Promise.all(Array.from({ length: CONCURRENCY }, async () => { while (next++ < QUEUE_TASKS) await raw('say hi') }))
  })
  const serviceQueue = () => timed(async () => {
    const ids = await Promise.all(Array.from({ length: QUEUE_TASKS }, () => service('say hi', false)))
    const ended = await Promise.all(ids.map((id) => fastify.tasks.waitForEnd(id, 600_000)))
    const bad = ended.filter((t) => t.status !== 'completed')
    if (bad.length) throw new Error(`${bad.length} queued tasks did not complete`)
  })
  const rawQ: number[] = []
  const serviceQ: number[] = []
  for (let i = 0; i < 3; i++) {
    rawQ.push(await rawQueue())
    serviceQ.push(await serviceQueue())
  }
  // throughput ratio = time ratio inverted
  const queue = median(rawQ) / median(serviceQ)

  await client.close()
  const owner = fastify.tasks.owner
  await fastify.close()
  rmSync(dataDir, { recursive: true, force: true })
  // the workspaces both sides made (the raw side's volumes are created with its containers)
  for (const id of rawIds) for (const v of [workspaceVolume(id), stateVolume(id)]) await engine.removeVolume(v, true).catch(() => {})
  for (const v of await engine.listVolumes({ [LABEL.owner]: owner })) await engine.removeVolume(v.Name, true).catch(() => {})
  return [
    { benchmark: `dispatch: sync task latency / raw lifecycle (median of ${DISPATCH_ROUNDS}: ${median(serviceMs).toFixed(0)} ms vs ${median(rawMs).toFixed(0)} ms)`, value: `${dispatch.toFixed(3)}x`, target: '≤ 1.05x', met: dispatch <= 1.05 },
    { benchmark: `queue: ${QUEUE_TASKS} tasks at concurrency ${CONCURRENCY}, throughput / raw (${(QUEUE_TASKS / median(serviceQ) * 1000).toFixed(1)} vs ${(QUEUE_TASKS / median(rawQ) * 1000).toFixed(1)} tasks/s)`, value: `${queue.toFixed(3)}x`, target: '≥ 0.9x', met: queue >= 0.9 }
  ]
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.table(await runTasksBench())
}

/**
 * List benchmark (issue 14, retention): `list_tasks` over MCP against a store of 100,000 ended tasks
 * of one principal, each with output, seed files and a diff. Target: under 50 ms per call (median).
 * Baseline in the same script: the same tasks in the table layout lists read before (output, seed and
 * diff inside each row) with the query used before (every column of every listed row).
 * Run: node --import tsx bench/list.ts
 */
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import Fastify from 'fastify'
import app from '../app.js'
import { ANONYMOUS_PRINCIPAL } from '../services/security.js'
import { SqliteTaskStore } from '../services/tasks/store.js'

const TASKS = 100_000
const ROUNDS = 50
const OUTPUT = 'o'.repeat(8 * 1024)
const DIFF = 'd'.repeat(4 * 1024)
const SEED = JSON.stringify([{ path: 'input.txt', content: 's'.repeat(2 * 1024) }])

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
async function timed (fn: () => unknown): Promise<number> {
  const t0 = performance.now()
  await fn()
  return performance.now() - t0
}

/** 100,000 ended tasks, inserted in one transaction. */
function populate (dataDir: string): void {
  const store = new SqliteTaskStore(dataDir)
  const insert = store.db.prepare(`INSERT INTO tasks (id, principal, agent_id, description, status, timeout_ms, created_at, started_at, finished_at,
    exit_code, reason, output_bytes, result, turns, pending, has_diff) VALUES (?, ?, 'agent-bench', ?, 'completed', 300000, ?, ?, ?, 0, 'exit', ?, ?, 1, '[]', 1)`)
  const content = store.db.prepare('INSERT INTO task_content (task_id, output, seed, diff) VALUES (?, ?, ?, ?)')
  const result = JSON.stringify({ answer: 'done', files_changed: ['input.txt'], tokens: { input: 1, output: 1, reasoning: 0, cache_read: 0, cache_write: 0 }, cost: 0, session_id: 'ses_bench' })
  const start = Date.now() - TASKS * 1000
  store.db.transaction(() => {
    for (let i = 0; i < TASKS; i++) {
      const at = start + i * 1000
      insert.run(`task_bench-${i}`, ANONYMOUS_PRINCIPAL, `benchmark task ${i}`, at, at, at + 500, OUTPUT.length, result)
      content.run(`task_bench-${i}`, OUTPUT, SEED, DIFF)
    }
  })()
  store.close()
}

export async function runListBench () {
  const dataDir = mkdtempSync(join(tmpdir(), 'lop-bench-list-'))
  populate(dataDir)
  // no reconcile during the run; retention off, so the store keeps its 100,000 tasks
  const fastify = Fastify({ logger: false })
  await fastify.register(app, { env: { DATA_DIR: dataDir, TASK_RETENTION_MS: '0', RECONCILE_INTERVAL_MS: '86400000', SHED_EVENT_LOOP_DELAY_MS: '0' }, envFile: false })
  await fastify.listen({ host: '127.0.0.1', port: 0 })
  const { port } = fastify.server.address() as { port: number }
  const client = new Client({ name: 'bench', version: '1' })
  await client.connect(new StreamableHTTPClientTransport(new URL(`http://127.0.0.1:${port}/mcp`)))

  const list = async (args: Record<string, unknown>) => {
    const res = await client.callTool({ name: 'list_tasks', arguments: args }) as CallToolResult
    const body = res.structuredContent as { total: number, tasks: unknown[] }
    if (res.isError || body.total !== TASKS) throw new Error(`list_tasks: ${JSON.stringify(res).slice(0, 300)}`)
  }
  const store = fastify.taskStore as SqliteTaskStore
  // the baseline: the same tasks in the layout and with the queries used before (the large columns
  // inside each row, before the columns added later; every column of the listed rows read)
  store.db.exec(`CREATE TABLE old_tasks AS SELECT t.id, t.principal, t.agent_id, t.description, t.status, t.timeout_ms, t.created_at, t.started_at,
    t.finished_at, t.exit_code, t.reason, t.error, c.output, t.output_truncated, t.output_bytes, t.container_id, t.idempotency_key, t.model, t.result,
    t.turns, t.pending, t.repository, c.seed, c.diff, t.diff_truncated, t.workspace_removed_at FROM tasks t JOIN task_content c ON c.task_id = t.id ORDER BY t.rowid;
    CREATE INDEX old_tasks_principal_created ON old_tasks (principal, created_at DESC);`)
  const before = store.db.prepare(`SELECT t.*, l.block_id AS letta_block_id FROM old_tasks t LEFT JOIN letta_sync l ON l.task_id = t.id
    WHERE t.principal = @principal ORDER BY t.created_at DESC, t.id LIMIT @limit OFFSET @offset`)
  const count = store.db.prepare('SELECT COUNT(*) AS n FROM old_tasks t WHERE t.principal = @principal')
  const oldQuery = (limit: number) => { before.all({ principal: ANONYMOUS_PRINCIPAL, limit, offset: 0 }); count.get({ principal: ANONYMOUS_PRINCIPAL }) }
  const newQuery = (limit: number) => store.list({ principal: ANONYMOUS_PRINCIPAL, limit, offset: 0 })

  for (let i = 0; i < 5; i++) { await list({}); oldQuery(200); await newQuery(200) }
  const mcp20: number[] = []
  const mcp200: number[] = []
  const deep: number[] = []
  const oldMs: number[] = []
  const newMs: number[] = []
  for (let i = 0; i < ROUNDS; i++) {
    mcp20.push(await timed(() => list({})))
    mcp200.push(await timed(() => list({ limit: 200 })))
    deep.push(await timed(() => list({ limit: 20, offset: TASKS - 20 })))
    oldMs.push(await timed(() => oldQuery(200)))
    newMs.push(await timed(() => newQuery(200)))
  }

  await client.close()
  await fastify.close()
  rmSync(dataDir, { recursive: true, force: true })
  const ratio = median(newMs) / median(oldMs)
  return [
    { benchmark: `list_tasks over MCP, ${TASKS.toLocaleString('en')} tasks, default page of 20 (median of ${ROUNDS})`, value: `${median(mcp20).toFixed(1)} ms`, target: '< 50 ms', met: median(mcp20) < 50 },
    { benchmark: `list_tasks over MCP, ${TASKS.toLocaleString('en')} tasks, page of 200`, value: `${median(mcp200).toFixed(1)} ms`, target: '< 50 ms', met: median(mcp200) < 50 },
    { benchmark: `list_tasks over MCP, ${TASKS.toLocaleString('en')} tasks, last page (offset ${TASKS - 20})`, value: `${median(deep).toFixed(1)} ms`, target: '< 50 ms', met: median(deep) < 50 },
    { benchmark: `store list of 200 rows + count: listed columns / every column (${median(newMs).toFixed(1)} ms vs ${median(oldMs).toFixed(1)} ms)`, value: `${ratio.toFixed(3)}x`, target: '< 1x', met: ratio < 1 }
  ]
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.table(await runListBench())
}

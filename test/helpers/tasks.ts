/**
 * Waiting for a task's end by its status, with a generous bound: a sync call answers after at most
 * SYNC_WAIT_MS, and on a busy machine a task may still run then. Tests never depend on that speed.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'

const TERMINAL = ['completed', 'failed', 'timeout', 'cancelled']

export type TaskResult = Record<string, unknown> & { task_id: string, status: string }

/** Polls get_task_status until the task has ended (at most `timeoutMs`); its final view. */
export async function untilEnded (client: Client, id: string, timeoutMs = 300_000): Promise<TaskResult> {
  const until = Date.now() + timeoutMs
  for (;;) {
    const res = await client.callTool({ name: 'get_task_status', arguments: { task_id: id } }) as CallToolResult
    const view = res.structuredContent as TaskResult
    if (res.isError) throw new Error(JSON.stringify(res.content))
    if (TERMINAL.includes(view.status) || Date.now() > until) return view
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

/** A sync call's answer, or, when it came back before the end (SYNC_WAIT_MS), the task's final view. */
export async function settled (client: Client, result: TaskResult, timeoutMs?: number): Promise<TaskResult> {
  if (TERMINAL.includes(result.status)) return result
  const view = await untilEnded(client, result.task_id, timeoutMs)
  return 'existing' in result ? { ...view, existing: result.existing } : view
}

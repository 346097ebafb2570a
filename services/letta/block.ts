/**
 * The workspace memory block a Letta agent reads: label `opencode_workspace_<task_id>`, a JSON value
 * (DESIGN.md §2: version, task_id, agent_id, status, created_at, updated_at, events[], artifacts[],
 * metadata) that never exceeds WORKSPACE_BLOCK_LIMIT characters: older events go first, then long
 * artifacts are shortened, and every trim is marked in `metadata`.
 */
import type { TaskEvent, TaskRecord } from '../tasks/types.js'
import { TERMINAL } from '../tasks/types.js'
import { eventSummary, oneLine } from '../tasks/view.js'

export const blockLabel = (taskId: string) => `opencode_workspace_${taskId}`

export const BLOCK_DESCRIPTION = 'Live workspace of an OpenCode development task you delegated (letta-opencode-plugin). ' +
  'The value is JSON: `status` (queued, running, paused, completed, failed, timeout, cancelled), `events` (the latest steps ' +
  'of the coding agent, oldest first), `artifacts` (a `summary` when the task ends) and `metadata`. It is updated while the ' +
  'task runs; do not edit it. For the full result call get_task_status with the task_id; get_task_history, get_task_files, ' +
  'read_task_file and get_task_diff give the details.'

export interface BlockEvent { at: string, type: string, summary: string }
export interface BlockArtifact { type: 'summary', status: string, answer: string | null, error: string | null, files_changed: string[], truncated?: boolean }

const iso = (ms: number) => new Date(ms).toISOString()

/** A history event as one short line for the block (the full event stays in get_task_history). */
export function blockEvent (e: TaskEvent): BlockEvent | null {
  if (e.type === 'step_start' || e.type === 'step_finish' || e.type === 'events_dropped') return null
  return { at: iso(e.at), type: e.type, summary: oneLine(eventSummary(e)) }
}

export function buildBlockValue (task: TaskRecord, events: TaskEvent[], limits: { chars: number, maxEvents: number }): string {
  const all = events.map(blockEvent).filter((e): e is BlockEvent => e !== null)
  let kept = all.slice(-limits.maxEvents)
  const artifacts: BlockArtifact[] = TERMINAL.has(task.status)
    ? [{ type: 'summary', status: task.status, answer: task.result?.answer ?? null, error: task.error, files_changed: task.result?.files_changed ?? [] }]
    : []
  const value = (trimmedArtifacts: boolean) => JSON.stringify({
    version: 1,
    task_id: task.id,
    agent_id: task.agent_id,
    status: task.status,
    created_at: iso(task.created_at),
    updated_at: iso(Date.now()),
    events: kept,
    artifacts,
    metadata: {
      description: task.description.length > 500 ? task.description.slice(0, 500) + '…' : task.description,
      model: task.model,
      turns: task.turns,
      tokens: task.result?.tokens ?? null,
      duration_ms: task.started_at && task.finished_at ? task.finished_at - task.started_at : null,
      events_total: all.length,
      events_trimmed: all.length - kept.length,
      artifacts_trimmed: trimmedArtifacts,
      full_result: `get_task_status {"task_id":"${task.id}"}`
    }
  })
  let text = value(false)
  const shorten = (a: BlockArtifact, field: 'answer' | 'error', max: number) => {
    const current = a[field]
    if (current && current.length > max) {
      a[field] = current.slice(0, Math.max(0, max - 12)) + '… [trimmed]'
      a.truncated = true
    }
  }
  // over the limit: first a long result gets at most half the block (its start), long file lists 20 entries
  if (text.length > limits.chars) {
    for (const a of artifacts) {
      shorten(a, 'answer', Math.floor(limits.chars / 2))
      shorten(a, 'error', Math.floor(limits.chars / 8))
      if (a.files_changed.length > 20) { a.files_changed = [...a.files_changed.slice(0, 20), `… ${a.files_changed.length - 20} more`]; a.truncated = true }
    }
    text = value(artifacts.some((a) => a.truncated))
  }
  // then the oldest events go
  while (text.length > limits.chars && kept.length > 0) {
    kept = kept.slice(Math.max(1, Math.ceil(kept.length / 4)))
    text = value(artifacts.some((a) => a.truncated))
  }
  // then the result shrinks to what is left
  for (const a of artifacts) {
    for (const field of ['answer', 'error'] as const) {
      if (text.length > limits.chars) {
        shorten(a, field, Math.max(200, (a[field]?.length ?? 0) - (text.length - limits.chars)))
        text = value(true)
      }
    }
  }
  if (text.length > limits.chars) {
    // still over (a tiny limit): the bare minimum, which always fits the schema's 1,000-character floor
    artifacts.length = 0
    kept = []
    text = value(true)
  }
  return text
}

/** The reference a notification carries, so a restarted service can tell whether it arrived. */
export const notificationRef = (task: TaskRecord) => `[ref ${task.id}#${task.turns}]`

/** The completion message: written for an agent to act on. */
export function notificationText (task: TaskRecord): string {
  const secs = task.started_at && task.finished_at ? ((task.finished_at - task.started_at) / 1000).toFixed(1) : '0'
  const answer = task.result?.answer
  const lines = [
    `[letta-opencode-plugin] OpenCode task ${task.id} ${task.status} after ${secs} s.`,
    `Task: ${task.description.length > 300 ? task.description.slice(0, 300) + '…' : task.description}`,
    answer ? `Summary: ${answer.length > 1_500 ? answer.slice(0, 1_500) + '…' : answer}` : null,
    task.error ? `Error: ${task.error}` : null,
    task.result?.files_changed.length ? `Files changed: ${task.result.files_changed.slice(0, 20).join(', ')}` : null,
    task.push
      ? task.push.error
        ? `Push to branch ${task.push.branch} failed (${task.push.error}): ${task.push.message ?? ''} — get the change with get_task_patch.`
        : `Pushed branch ${task.push.branch} (commit ${task.push.commit})${task.push.url ? `: ${task.push.url}` : ''}.`
      : null,
    `Full result: call get_task_status with task_id "${task.id}"; get_task_history, get_task_files, read_task_file and get_task_diff give the details. ` +
      `Follow up with send_task_message. Its memory block is ${blockLabel(task.id)}.`,
    notificationRef(task)
  ]
  return lines.filter(Boolean).join('\n')
}

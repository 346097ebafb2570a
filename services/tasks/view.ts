/**
 * The public view of a task: what every task tool and HTTP endpoint returns. One TypeBox schema;
 * the HTTP routes use it as their response schema, the MCP tools as their output schema.
 */
import { Type, type Static, type TSchema } from 'typebox'
import { spentOf } from './budget.js'
import { TASK_STATUSES, type TaskEvent, type TaskRecord } from './types.js'

const Nullable = <T extends TSchema>(schema: T) => Type.Union([schema, Type.Null()])

export const TaskStatusSchema = Type.Enum(TASK_STATUSES)

export const TaskViewSchema = Type.Object({
  task_id: Type.String({ description: 'The task id (task_<uuid>)' }),
  status: TaskStatusSchema,
  agent_id: Nullable(Type.String()),
  task_description: Type.String(),
  timeout_ms: Type.Integer(),
  created_at: Type.String({ format: 'date-time' }),
  started_at: Nullable(Type.String({ format: 'date-time' })),
  finished_at: Nullable(Type.String({ format: 'date-time' })),
  duration_ms: Nullable(Type.Integer({ description: 'Run time, once ended' })),
  exit_code: Nullable(Type.Integer()),
  reason: Nullable(Type.String({ description: 'Why it ended: exit, timeout, cancelled, oom, engine_error, interrupted, stalled, budget' })),
  error: Nullable(Type.String()),
  output: Nullable(Type.String({ description: 'Head and tail of the output when it is longer than TASK_OUTPUT_LIMIT' })),
  output_truncated: Type.Boolean(),
  output_bytes: Type.Integer(),
  model: Nullable(Type.String({ description: 'provider/model, or null for OpenCode\'s configured default' })),
  answer: Nullable(Type.String({ description: 'The agent\'s final answer (its last text)' })),
  files_changed: Type.Array(Type.String(), { description: 'Workspace files the agent wrote or edited' }),
  tokens: Type.Object({ input: Type.Integer(), output: Type.Integer(), reasoning: Type.Integer(), cache_read: Type.Integer(), cache_write: Type.Integer() }),
  cost: Type.Number({ description: 'Model cost as OpenCode reports it' }),
  session_id: Nullable(Type.String({ description: 'The OpenCode session, continued by send_task_message' })),
  turns: Type.Integer({ description: 'Turns run: the task, then each follow-up message' }),
  pending_messages: Type.Integer({ description: 'Follow-up messages waiting for the next turn' }),
  has_diff: Type.Boolean({ description: 'True when the workspace is a git repository and get_task_diff has its changes' }),
  workspace_available: Type.Boolean({ description: 'False once the workspace was removed after WORKSPACE_RETENTION_MS' }),
  observers: Type.Array(Type.String(), { description: 'The observers given at submit (recorded; nothing is sent to them)' }),
  budget: Nullable(Type.Object({
    max_cost: Nullable(Type.Number()),
    max_tokens: Nullable(Type.Integer()),
    max_steps: Nullable(Type.Integer()),
    spent: Type.Object({ cost: Type.Number(), tokens: Type.Integer({ description: 'input + output' }), steps: Type.Integer() })
  }, { description: 'The task\'s limits (null: none) and what it spent so far over all its turns; null when the task has no budget' })),
  egress_allow: Nullable(Type.Array(Type.String(), { description: 'The task\'s own egress allow-list (a subset of RUNNER_EGRESS_ALLOW); null: the server\'s list' })),
  push: Nullable(Type.Object({
    branch: Type.String(),
    commit: Nullable(Type.String({ description: 'The commit on the branch' })),
    url: Nullable(Type.String({ description: 'The branch on the forge\'s web UI, when it can be derived from the remote' })),
    error: Nullable(Type.String({ description: 'Why the push failed: auth, rejected, exists, default_branch, network, no_changes, error (the task is not failed by it)' })),
    message: Nullable(Type.String()),
    at: Type.String({ format: 'date-time' })
  }, { description: 'repository.push: the last push of the task\'s changes (made when a turn completes); null before one or without push' })),
  pushed_branch: Nullable(Type.String({ description: 'The branch the changes were pushed to (push.branch when push.error is null)' })),
  egress: Nullable(Type.Object({
    bytes_out: Type.Integer({ description: 'Bytes sent to allowed hosts (headers and TLS included)' }),
    bytes_in: Type.Integer({ description: 'Bytes received from them' }),
    connections: Type.Integer({ description: 'Allowed connections (closed ones; counted when they close)' }),
    denied: Type.Integer({ description: 'Refused attempts' }),
    hosts: Type.Record(Type.String(), Type.Integer(), { description: 'Allowed connections by host:port' })
  }, { description: 'What the task sent and received through the egress proxy (RUNNER_EGRESS=allowlist), written every few seconds; null: nothing yet' })),
  workspace_block_id: Nullable(Type.String({ description: 'The Letta workspace block id (letta.block_id), null until it exists or without Letta' })),
  letta: Nullable(Type.Object({
    block_id: Nullable(Type.String()),
    block_label: Type.String({ description: 'opencode_workspace_<task_id>' }),
    attached: Type.Boolean(),
    notified: Type.Boolean({ description: 'The agent was sent the completion message' }),
    error: Nullable(Type.String({ description: 'The last Letta error (an unknown agent, an outage); the task is not affected' }))
  }, { description: 'The Letta workspace block of the task, when Letta is configured and the task has an agent_id' }))
})
export type TaskView = Static<typeof TaskViewSchema>

export const TaskListSchema = Type.Object({
  tasks: Type.Array(TaskViewSchema),
  total: Type.Integer(),
  cost_total: Type.Optional(Type.Number({ description: 'With cost_total=true: what all the tasks the filter selects spent (every page)' }))
})

export const TaskEventSchema = Type.Object({
  seq: Type.Integer(),
  at: Type.String({ format: 'date-time' }),
  type: Type.String(),
  data: Type.Record(Type.String(), Type.Unknown()),
  timestamp: Type.Integer({ description: 'When, in milliseconds since the epoch (the original contract\'s field; `at` is the same as ISO 8601)' }),
  message: Type.String({ description: 'The event as one human-readable line' })
})

/** An event as the original tool contract gave it: `{timestamp, type, message}`. */
export const RecentEventSchema = Type.Object({ timestamp: Type.Integer(), type: Type.String(), message: Type.String() })

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString())

export function taskView (t: TaskRecord): TaskView {
  return {
    task_id: t.id,
    status: t.status,
    agent_id: t.agent_id,
    task_description: t.description,
    timeout_ms: t.timeout_ms,
    created_at: new Date(t.created_at).toISOString(),
    started_at: iso(t.started_at),
    finished_at: iso(t.finished_at),
    duration_ms: t.started_at && t.finished_at ? t.finished_at - t.started_at : null,
    exit_code: t.exit_code,
    reason: t.reason,
    error: t.error,
    output: t.output,
    output_truncated: t.output_truncated,
    output_bytes: t.output_bytes,
    model: t.model,
    answer: t.result?.answer ?? null,
    files_changed: t.result?.files_changed ?? [],
    tokens: t.result?.tokens ?? { input: 0, output: 0, reasoning: 0, cache_read: 0, cache_write: 0 },
    cost: t.result?.cost ?? 0,
    session_id: t.result?.session_id ?? null,
    turns: t.turns,
    pending_messages: t.pending.length,
    has_diff: t.diff !== null,
    workspace_available: t.turns > 0 && t.workspace_removed_at === null,
    observers: t.observers ?? [],
    budget: t.limits ? { ...t.limits, spent: t.spent ?? spentOf(t) } : null,
    egress_allow: t.egress_allow ?? null,
    push: t.push ? { ...t.push, at: new Date(t.push.at).toISOString() } : null,
    pushed_branch: t.push && !t.push.error ? t.push.branch : null,
    egress: t.egress ?? null,
    workspace_block_id: t.letta?.block_id ?? null,
    letta: t.letta ? { ...t.letta, block_label: `opencode_workspace_${t.id}` } : null
  }
}

/** What an event says, in words: the tool and its file or command, the agent's text, else the type and its reason, error or message. */
export function eventSummary (e: TaskEvent): string {
  const d = e.data
  if (e.type === 'tool_use') return `${d.tool} ${d.file ?? d.command ?? d.title ?? ''}`.trim()
  if (e.type === 'text') return String(d.text ?? '')
  if (e.type === 'step_start') return `step ${d.step ?? ''}`.trim()
  if (e.type === 'events_dropped') return `events_dropped: ${d.dropped} agent events of this turn were not stored`
  if (e.type === 'message_queued' && d.message_type) return `message_queued (${d.message_type}): ${d.message}`
  if (e.type === 'pushed') return `pushed: ${d.branch} at ${String(d.commit).slice(0, 12)}`
  if (e.type === 'push_failed') return `push_failed (${d.error}): ${d.message ?? d.branch}`
  if (e.type === 'egress_denied') return `egress_denied: ${d.host}:${d.port} (${d.reason})`
  return [e.type, d.reason, d.error, d.message].filter(Boolean).join(': ')
}

/** The summary as one line of at most 300 characters. */
export const oneLine = (s: string) => { const line = s.replace(/\s+/g, ' ').trim(); return line.length > 300 ? line.slice(0, 300) + '…' : line }

export const eventView = (e: TaskEvent): Static<typeof TaskEventSchema> => ({
  seq: e.seq, at: new Date(e.at).toISOString(), type: e.type, data: e.data, timestamp: e.at, message: oneLine(eventSummary(e))
})

export const recentEventView = (e: TaskEvent): Static<typeof RecentEventSchema> => ({ timestamp: e.at, type: e.type, message: oneLine(eventSummary(e)) })

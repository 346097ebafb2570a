/**
 * The public view of a task: what every task tool and HTTP endpoint returns. One TypeBox schema;
 * the HTTP routes use it as their response schema, the MCP tools as their output schema.
 */
import { Type, type Static } from 'typebox'
import { TASK_STATUSES, type TaskEvent, type TaskRecord } from './types.js'

const Nullable = <T extends ReturnType<typeof Type.String> | ReturnType<typeof Type.Integer>>(schema: T) => Type.Union([schema, Type.Null()])

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
  reason: Nullable(Type.String({ description: 'Why it ended: exit, timeout, cancelled, oom, engine_error, interrupted, stalled' })),
  error: Nullable(Type.String()),
  output: Nullable(Type.String({ description: 'Head and tail of the output when it is longer than TASK_OUTPUT_LIMIT' })),
  output_truncated: Type.Boolean(),
  output_bytes: Type.Integer()
})
export type TaskView = Static<typeof TaskViewSchema>

export const TaskListSchema = Type.Object({ tasks: Type.Array(TaskViewSchema), total: Type.Integer() })

export const TaskEventSchema = Type.Object({
  seq: Type.Integer(),
  at: Type.String({ format: 'date-time' }),
  type: Type.String(),
  data: Type.Record(Type.String(), Type.Unknown())
})

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
    output_bytes: t.output_bytes
  }
}

export const eventView = (e: TaskEvent): Static<typeof TaskEventSchema> => ({ seq: e.seq, at: new Date(e.at).toISOString(), type: e.type, data: e.data })

/**
 * Prometheus metrics (prom-client) in a registry of their own: task states, queue, containers,
 * durations and outcomes, MCP sessions and tool calls, Letta failures, the engine probe, orphans,
 * and the default process metrics. Gauges read their sources when scraped; counters and
 * histograms are fed by the calls below.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client'
import { TASK_STATUSES, type TaskRecord, type TaskStatus } from './tasks/types.js'

export interface MetricSources {
  taskCounts: () => Promise<Partial<Record<TaskStatus, number>>>
  queued: () => Promise<number>
  running: () => number
  sessions: () => number
  engineUp: () => boolean
  draining: () => boolean
}

/** The outcome of an ended task, as operators count them. */
export function outcomeOf (task: TaskRecord): string {
  if (task.reason === 'exit') return task.status === 'completed' ? 'completed' : 'failed'
  return task.reason ?? task.status
}

export class Metrics {
  readonly registry = new Registry()
  private readonly toolCalls: Counter<'tool' | 'outcome'>
  private readonly outcomes: Counter<'outcome'>
  private readonly duration: Histogram<'outcome'>
  private readonly queueWait: Histogram
  private readonly lettaFailures: Counter<'kind'>
  private readonly orphans: Counter
  private readonly cost: Counter<'principal' | 'agent_id'>
  private readonly tokens: Counter<'principal' | 'agent_id'>
  private readonly egressDenials: Counter<'reason'>
  private readonly egressAllows: Counter<'rule'>
  private readonly egressByteCount: Counter<'direction'>
  /** Read when scraped. */
  readonly gauges: Gauge[]

  constructor (sources: MetricSources) {
    const registers = [this.registry]
    collectDefaultMetrics({ register: this.registry, prefix: 'lop_' })
    // a source that fails (the store does not answer) keeps the gauge's last value: a scrape never fails for it (/health says why)
    const gauge = (name: string, help: string, read: () => number | Promise<number>) =>
      new Gauge({ name, help, registers, async collect () { await Promise.resolve().then(read).then((n) => this.set(n), () => {}) } })
    this.gauges = [
      new Gauge({
        name: 'lop_tasks',
        help: 'Tasks in the store by state',
        labelNames: ['state'],
        registers,
        async collect () {
          const counts = await sources.taskCounts().catch(() => undefined)
          if (counts) for (const state of TASK_STATUSES) this.set({ state }, counts[state] ?? 0)
        }
      }),
      gauge('lop_queue_depth', 'Tasks waiting for a slot (in cluster mode: in the whole cluster)', sources.queued),
      gauge('lop_running_containers', 'Task containers running (slots in use)', sources.running),
      gauge('lop_mcp_sessions', 'Open MCP sessions', sources.sessions),
      gauge('lop_docker_engine_up', '1 when the last engine probe succeeded', () => (sources.engineUp() ? 1 : 0)),
      gauge('lop_draining', '1 while the service drains for shutdown', () => (sources.draining() ? 1 : 0))
    ]
    this.queueWait = new Histogram({
      name: 'lop_queue_wait_seconds',
      help: 'Time from submission to start',
      buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900],
      registers
    })
    this.duration = new Histogram({
      name: 'lop_task_duration_seconds',
      help: 'Run time of ended tasks, by outcome',
      labelNames: ['outcome'],
      buckets: [0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600],
      registers
    })
    this.outcomes = new Counter({
      name: 'lop_task_outcomes_total',
      help: 'Ended tasks by outcome (completed, failed, timeout, cancelled, oom, stalled, interrupted, engine_error, budget, node_lost)',
      labelNames: ['outcome'],
      registers
    })
    this.toolCalls = new Counter({ name: 'lop_mcp_tool_calls_total', help: 'MCP tool calls by tool and outcome (ok, error, exception)', labelNames: ['tool', 'outcome'], registers })
    this.lettaFailures = new Counter({ name: 'lop_letta_failures_total', help: 'Failed Letta calls by kind (block, notification), after retries', labelNames: ['kind'], registers })
    this.egressDenials = new Counter({ name: 'lop_egress_denied_total', help: 'Runner connections refused by the egress proxy, by reason (not_allowed, not_allowed_for_task, ip_address, bad_request)', labelNames: ['reason'], registers })
    this.egressAllows = new Counter({ name: 'lop_egress_allowed_total', help: 'Runner connections let through by the egress proxy, by the RUNNER_EGRESS_ALLOW entry that allowed them', labelNames: ['rule'], registers })
    this.egressByteCount = new Counter({ name: 'lop_egress_bytes_total', help: 'Bytes runners exchanged with allowed hosts through the egress proxy, by direction (out: sent, in: received), counted when a connection closes', labelNames: ['direction'], registers })
    this.orphans = new Counter({ name: 'lop_orphans_removed_total', help: 'Labelled task containers removed by reconciliation', registers })
    this.cost = new Counter({ name: 'lop_cost_total', help: 'Model cost spent by tasks (as OpenCode reports it), by principal and agent_id', labelNames: ['principal', 'agent_id'], registers })
    this.tokens = new Counter({ name: 'lop_tokens_total', help: 'Model tokens (input + output) used by tasks, by principal and agent_id', labelNames: ['principal', 'agent_id'], registers })
  }

  taskStarted (task: TaskRecord): void {
    if (task.started_at) this.queueWait.observe((task.started_at - task.created_at) / 1000)
  }

  taskEnded (task: TaskRecord): void {
    const outcome = outcomeOf(task)
    this.outcomes.inc({ outcome })
    if (task.started_at && task.finished_at) this.duration.observe({ outcome }, (task.finished_at - task.started_at) / 1000)
  }

  /** A step's spending (each step end of a task). */
  spent (task: Pick<TaskRecord, 'principal' | 'agent_id'>, cost: number, tokens: number): void {
    const labels = { principal: task.principal, agent_id: task.agent_id ?? '' }
    this.cost.inc(labels, cost)
    this.tokens.inc(labels, tokens)
  }

  toolCall (tool: string, outcome: 'ok' | 'error' | 'exception'): void {
    this.toolCalls.inc({ tool, outcome })
  }

  lettaFailure (kind: 'block' | 'notification'): void {
    this.lettaFailures.inc({ kind })
  }

  egressDenied (reason: string): void {
    this.egressDenials.inc({ reason })
  }

  egressAllowed (rule: string): void {
    this.egressAllows.inc({ rule })
  }

  egressBytes (out: number, inbound: number): void {
    this.egressByteCount.inc({ direction: 'out' }, out)
    this.egressByteCount.inc({ direction: 'in' }, inbound)
  }

  orphanRemoved (): void {
    this.orphans.inc()
  }

  text (): Promise<string> {
    return this.registry.metrics()
  }

  get contentType (): string {
    return this.registry.contentType
  }
}

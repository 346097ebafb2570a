/**
 * OpenCode in the runner: the command line, and the reader of its JSON event stream
 * (`opencode run --format json`: one event per line: step_start, tool_use, text, step_finish with
 * tokens and cost, error). Each line becomes a task event (or null for noise) and feeds the result:
 * the final answer, the files changed, token totals, cost and the session id.
 */

/** The runner container's command (the service sets the entrypoint `opencode`); the task is one argv element. */
export function opencodeArgv (opts: { task: string, model?: string | null, session?: string | null }): string[] {
  return ['run', '--format', 'json', '--auto', ...(opts.model ? ['--model', opts.model] : []), ...(opts.session ? ['--session', opts.session] : []), '--', opts.task]
}

export interface Tokens { input: number, output: number, reasoning: number, cache_read: number, cache_write: number }

export interface RunResult {
  answer: string | null
  files_changed: string[]
  tokens: Tokens
  cost: number
  session_id: string | null
  steps: number
  tool_calls: number
}

export const emptyResult = (): RunResult => ({
  answer: null, files_changed: [], tokens: { input: 0, output: 0, reasoning: 0, cache_read: 0, cache_write: 0 }, cost: 0, session_id: null, steps: 0, tool_calls: 0
})

export interface ParsedEvent { type: string, data: Record<string, unknown>, summary: string }

const TEXT_CAP = 2_000
const ANSWER_CHARS = 100_000
const cap = (s: string, n = TEXT_CAP) => (s.length > n ? `${s.slice(0, n)}… [${s.length - n} more characters]` : s)
const WORKSPACE = '/workspace/'
const relative = (p: string) => (p.startsWith(WORKSPACE) ? p.slice(WORKSPACE.length) : p)

interface RawEvent {
  type?: string
  sessionID?: string
  part?: {
    type?: string
    tool?: string
    text?: string
    reason?: string
    tokens?: { input?: number, output?: number, reasoning?: number, cache?: { read?: number, write?: number } }
    cost?: number
    state?: { status?: string, title?: string, input?: Record<string, unknown>, output?: unknown, error?: unknown }
  }
  error?: unknown
}

/** Accumulates a run's result from its events; one instance per container run (turn). */
export class OpenCodeReader {
  readonly result: RunResult
  /** Text parts of the current step: the last step's text is the final answer. */
  private stepText: string[] = []
  private stepChars = 0

  /** Makes `result.answer` the text of the latest step that had text (at step ends and at the end). */
  settle (): RunResult {
    const text = this.stepText.join('\n').trim()
    if (text) this.result.answer = text
    return this.result
  }

  constructor (previous?: RunResult) {
    this.result = previous ? structuredClone(previous) : emptyResult()
  }

  /** A line of the container's stdout: a task event, or null when it is not an OpenCode event. */
  line (line: string): ParsedEvent | null {
    if (!line.startsWith('{')) return null
    let e: RawEvent
    try {
      e = JSON.parse(line) as RawEvent
    } catch {
      return null
    }
    if (typeof e.type !== 'string') return null
    if (e.sessionID) this.result.session_id = e.sessionID
    const part = e.part ?? {}
    switch (e.type) {
      case 'step_start':
        this.settle()
        this.stepText = []
        this.stepChars = 0
        this.result.steps++
        return { type: 'step_start', data: { step: this.result.steps }, summary: `step ${this.result.steps}` }
      case 'text': {
        const text = part.text ?? ''
        this.stepText.push(text)
        this.stepChars += text.length
        // the answer is the step's last ANSWER_CHARS; older text of a very long step is let go
        while (this.stepChars > ANSWER_CHARS && this.stepText.length > 1) this.stepChars -= (this.stepText.shift() as string).length
        return { type: 'text', data: { text: cap(text) }, summary: cap(text.replace(/\s+/g, ' '), 120) }
      }
      case 'tool_use': {
        const state = part.state ?? {}
        const input = state.input ?? {}
        const file = typeof input.filePath === 'string' ? relative(input.filePath) : undefined
        if (file && ['write', 'edit', 'patch', 'multiedit'].includes(part.tool ?? '') && state.status === 'completed' && !this.result.files_changed.includes(file)) {
          this.result.files_changed.push(file)
        }
        this.result.tool_calls++
        const detail = file ?? (typeof input.command === 'string' ? cap(input.command, 200) : state.title ?? '')
        return {
          type: 'tool_use',
          data: { tool: part.tool ?? 'unknown', status: state.status ?? null, title: state.title ? relative(state.title) : null, ...(file ? { file } : {}), ...(typeof input.command === 'string' ? { command: cap(input.command, 500) } : {}), ...(state.error ? { error: cap(String(state.error)) } : {}) },
          summary: `${part.tool ?? 'tool'} ${detail}`.trim()
        }
      }
      case 'step_finish': {
        this.settle()
        const t = part.tokens ?? {}
        const tokens = { input: t.input ?? 0, output: t.output ?? 0, reasoning: t.reasoning ?? 0, cache_read: t.cache?.read ?? 0, cache_write: t.cache?.write ?? 0 }
        for (const k of Object.keys(tokens) as Array<keyof Tokens>) this.result.tokens[k] += tokens[k]
        this.result.cost += part.cost ?? 0
        return { type: 'step_finish', data: { reason: part.reason ?? null, tokens, cost: part.cost ?? 0 }, summary: `step finished (${part.reason ?? 'done'})` }
      }
      case 'error':
        return { type: 'agent_error', data: { error: cap(typeof e.error === 'string' ? e.error : JSON.stringify(e.error ?? part)) }, summary: 'error' }
      default:
        return { type: e.type, data: {}, summary: e.type }
    }
  }
}

/**
 * Splits a byte stream into lines with bounded memory. A line longer than `maxLine` is skipped up to
 * its newline (it cannot be read as an event; it stays in the log), so a huge unbroken output never
 * turns into huge strings.
 */
export class LineSplitter {
  private pending: Buffer[] = []
  private pendingBytes = 0
  private skipping = false

  constructor (private readonly maxLine = 1024 * 1024) {}

  push (chunk: Buffer): string[] {
    const lines: string[] = []
    let start = 0
    for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, start)) {
      const piece = chunk.subarray(start, i)
      if (!this.skipping && this.pendingBytes + piece.length <= this.maxLine) lines.push(Buffer.concat([...this.pending, piece]).toString('utf8'))
      this.reset()
      start = i + 1
    }
    const rest = chunk.subarray(start)
    if (this.skipping || rest.length === 0) return lines
    if (this.pendingBytes + rest.length > this.maxLine) {
      this.reset()
      this.skipping = true
    } else {
      this.pending.push(Buffer.from(rest))
      this.pendingBytes += rest.length
    }
    return lines
  }

  /** The last line, when the stream ended without a newline. */
  end (): string[] {
    const last = !this.skipping && this.pendingBytes ? [Buffer.concat(this.pending).toString('utf8')] : []
    this.reset()
    return last
  }

  private reset (): void {
    this.pending = []
    this.pendingBytes = 0
    this.skipping = false
  }
}

/**
 * The dashboard: a task list that updates live, a task page (status, answer, live log, timeline,
 * files, diff, controls) and a health page. Plain DOM: every text from the service (descriptions,
 * output, file names and contents, agent text) goes in as a text node, never as HTML. The bearer
 * token lives in this tab's sessionStorage and is sent as the Authorization header of each call.
 */

// --- DOM helpers ---------------------------------------------------------------------------------

type Child = Node | string | number | null | undefined | false
type Attrs = Record<string, string | number | boolean | ((e: Event) => void) | undefined>

/** An element; string children become text nodes; `on*` attributes become listeners. */
function h<K extends keyof HTMLElementTagNameMap> (tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag)
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue
    if (typeof value === 'function') el.addEventListener(name.slice(2), value)
    else if (name === 'class') el.className = String(value)
    else el.setAttribute(name, value === true ? '' : String(value))
  }
  append(el, ...children)
  return el
}

function append (el: Node, ...children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue
    el.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)))
  }
}

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T
const main = () => $('main')
function show (...children: Child[]): void {
  main().replaceChildren()
  append(main(), ...children)
}

// --- API -----------------------------------------------------------------------------------------

const TOKEN_KEY = 'lop.token'
const token = () => sessionStorage.getItem(TOKEN_KEY)

class ApiError extends Error {
  constructor (readonly status: number, message: string) { super(message) }
}

function headers (json = false): Headers {
  const hs = new Headers()
  const t = token()
  if (t) hs.set('authorization', `Bearer ${t}`)
  if (json) hs.set('content-type', 'application/json')
  return hs
}

async function request (path: string, init: RequestInit = {}): Promise<Response> {
  let res: Response
  try {
    res = await fetch(path, { ...init, headers: headers(init.body !== undefined) })
  } catch (err) {
    if ((err as Error).name === 'AbortError') throw err
    throw new ApiError(0, 'The service cannot be reached: is it running?')
  }
  if (!res.ok) {
    const body = await res.json().catch(() => ({})) as { message?: string }
    throw new ApiError(res.status, body.message ?? res.statusText)
  }
  return res
}

async function api<T> (path: string, init: RequestInit = {}): Promise<T> {
  return await (await request(path, init)).json() as T
}

const post = <T>(path: string, body: unknown = {}) => api<T>(path, { method: 'POST', body: JSON.stringify(body) })

interface Tokens { input: number, output: number, reasoning: number, cache_read: number, cache_write: number }
interface Task {
  task_id: string
  status: string
  agent_id: string | null
  task_description: string
  created_at: string
  started_at: string | null
  finished_at: string | null
  duration_ms: number | null
  exit_code: number | null
  reason: string | null
  error: string | null
  model: string | null
  answer: string | null
  tokens: Tokens
  cost: number
  turns: number
  pending_messages: number
  has_diff: boolean
  workspace_available: boolean
  files_changed: string[]
  letta: { block_id: string | null, block_label: string, attached: boolean, notified: boolean, error: string | null } | null
}
interface TaskEvent { seq: number, at: string, type: string, message: string }
interface FileEntry { path: string, type: 'file' | 'directory' | 'symlink', size: number, modified: string, link_target?: string }

const TERMINAL = new Set(['completed', 'failed', 'timeout', 'cancelled'])
const STATUSES = ['queued', 'running', 'paused', 'completed', 'failed', 'timeout', 'cancelled']

// --- formatting ----------------------------------------------------------------------------------

const pad = (n: number) => String(n).padStart(2, '0')
function when (iso: string | null): string {
  if (!iso) return '—'
  const d = new Date(iso)
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
}
function duration (t: Task): string {
  const ms = t.duration_ms ?? (t.started_at && !TERMINAL.has(t.status) ? Date.now() - Date.parse(t.started_at) : null)
  if (ms === null) return '—'
  const s = Math.round(ms / 1000)
  return s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`
}
const firstLine = (s: string) => { const line = s.split('\n', 1)[0]; return line.length > 120 ? line.slice(0, 120) + '…' : line }
const tokensOf = (t: Task) => t.tokens.input + t.tokens.output + t.tokens.reasoning
const cost = (n: number) => (n === 0 ? '—' : `$${n.toFixed(4)}`)
const badge = (status: string) => h('span', { class: `badge s-${status}`, 'data-status': status }, status)
const bytes = (n: number) => (n < 1024 ? `${n} B` : n < 1024 ** 2 ? `${(n / 1024).toFixed(1)} KB` : `${(n / 1024 ** 2).toFixed(1)} MB`)

function errorBox (err: unknown, what: string): HTMLElement {
  const e = err instanceof ApiError ? err : new ApiError(0, String((err as Error)?.message ?? err))
  const text = e.status === 0 ? e.message : e.status === 503 ? `The service is unavailable: ${e.message}` : `${what}: ${e.message}`
  return h('p', { class: 'error', role: 'alert' }, text)
}

// --- live stream of task changes (SSE over fetch: EventSource cannot send the bearer header) -----

/** Calls `onTask` with each `task` event of GET /tasks/events; reconnects; `onOpen` after each (re)connect. */
function taskEvents (onTask: (task: Task) => void, onOpen: () => void, signal: AbortSignal): void {
  const live = $('live')
  const run = async () => {
    while (!signal.aborted) {
      try {
        const res = await request('/tasks/events', { signal })
        live.textContent = '● live'
        live.className = 'live on'
        onOpen()
        const reader = (res.body as ReadableStream<Uint8Array>).getReader()
        const decoder = new TextDecoder()
        let buffer = ''
        for (;;) {
          const { value, done } = await reader.read()
          if (done) break
          buffer += decoder.decode(value, { stream: true })
          let end: number
          while ((end = buffer.indexOf('\n\n')) >= 0) {
            const block = buffer.slice(0, end)
            buffer = buffer.slice(end + 2)
            const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n')
            if (/^event: ?task$/m.test(block) && data) onTask(JSON.parse(data) as Task)
          }
        }
      } catch (err) {
        if (signal.aborted) return
        if (err instanceof ApiError && err.status === 401) return signIn('Your token was refused: sign in again.')
      }
      live.textContent = '○ reconnecting'
      live.className = 'live off'
      await new Promise((resolve) => setTimeout(resolve, 2_000))
    }
  }
  run().catch(() => {})
}

// --- sign-in -------------------------------------------------------------------------------------

function signIn (message?: string): void {
  sessionStorage.removeItem(TOKEN_KEY)
  $('sign-out').hidden = true
  const input = h('input', { id: 'token', type: 'password', name: 'token', autocomplete: 'current-password', required: true, minlength: 16, maxlength: 4096 })
  const status = h('p', { class: 'error', role: 'alert' }, message ?? '')
  const form = h('form', { class: 'card signin', 'aria-labelledby': 'signin-title' },
    h('h1', { id: 'signin-title' }, 'Sign in'),
    h('p', { class: 'muted' }, 'Paste a bearer token from MCP_AUTH_TOKENS. It is kept in this tab only (session storage) and sent as the Authorization header.'),
    h('label', { for: 'token' }, 'Token'), input,
    h('button', { type: 'submit' }, 'Sign in'), status)
  form.addEventListener('submit', (e) => {
    e.preventDefault()
    sessionStorage.setItem(TOKEN_KEY, input.value.trim())
    api('/tasks?limit=1').then(() => { route() }, (err: unknown) => {
      sessionStorage.removeItem(TOKEN_KEY)
      status.textContent = err instanceof ApiError && (err.status === 401 || err.status === 403) ? 'That token was refused.' : (err as Error).message
    })
  })
  show(form)
  input.focus()
}

// --- task list -----------------------------------------------------------------------------------

const PAGE = 50

function listPage (signal: AbortSignal): void {
  const params = new URLSearchParams(location.search)
  const state = { status: params.get('status') ?? '', agent: params.get('agent') ?? '', page: Math.max(0, Number(params.get('page')) || 0) }
  const statusSelect = h('select', { id: 'f-status', name: 'status' }, h('option', { value: '' }, 'all'), ...STATUSES.map((s) => h('option', { value: s }, s)))
  statusSelect.value = state.status
  const agentInput = h('input', { id: 'f-agent', name: 'agent', placeholder: 'agent id', value: state.agent, pattern: '[A-Za-z0-9._:\\-]{1,128}', maxlength: 128 })
  const body = h('tbody')
  const summary = h('p', { class: 'muted', id: 'list-summary', role: 'status' })
  const prev = h('button', { type: 'button', id: 'prev' }, '← Newer')
  const next = h('button', { type: 'button', id: 'next' }, 'Older →')
  const problem = h('div')
  const table = h('table', { class: 'tasks' },
    h('thead', {}, h('tr', {}, ...['Status', 'Task', 'Agent', 'Model', 'Started', 'Duration', 'Tokens', 'Cost'].map((c) => h('th', { scope: 'col' }, c)))),
    body)
  const filters = h('form', { class: 'filters', role: 'search' },
    h('label', { for: 'f-status' }, 'Status'), statusSelect,
    h('label', { for: 'f-agent' }, 'Agent'), agentInput,
    h('button', { type: 'submit' }, 'Filter'))
  show(h('h1', {}, 'Tasks'), filters, problem, summary, h('div', { class: 'scroll' }, table), h('div', { class: 'pager' }, prev, next))

  const sync = () => {
    const q = new URLSearchParams()
    if (state.status) q.set('status', state.status)
    if (state.agent) q.set('agent', state.agent)
    if (state.page) q.set('page', String(state.page))
    history.replaceState(null, '', `/ui${q.size ? `?${q}` : ''}`)
  }
  let first = true
  const load = async () => {
    const q = new URLSearchParams({ limit: String(PAGE), offset: String(state.page * PAGE) })
    if (state.status) q.set('status', state.status)
    if (state.agent) q.set('agent_id', state.agent)
    try {
      const { tasks, total } = await api<{ tasks: Task[], total: number }>(`/tasks?${q}`)
      problem.replaceChildren()
      body.replaceChildren(...tasks.map(row))
      if (tasks.length === 0) body.append(h('tr', {}, h('td', { colspan: 8, class: 'empty' }, state.status || state.agent ? 'No task matches these filters.' : 'No tasks yet. Tasks submitted over MCP appear here as they are queued.')))
      summary.textContent = total === 0 ? '' : `${state.page * PAGE + 1}–${state.page * PAGE + tasks.length} of ${total} tasks`
      prev.disabled = state.page === 0
      next.disabled = (state.page + 1) * PAGE >= total
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) return signIn('Your token was refused: sign in again.')
      problem.replaceChildren(errorBox(err, 'The task list could not be read'))
    }
    if (first) {
      first = false
      performance.mark('list-ready')
    }
  }
  let timer: ReturnType<typeof setTimeout> | undefined
  /** Re-reads the page at most every 300 ms while events arrive. */
  const soon = () => { timer ??= setTimeout(() => { timer = undefined; load().catch(() => {}) }, 300) }
  filters.addEventListener('submit', (e) => {
    e.preventDefault()
    if (!agentInput.checkValidity()) return agentInput.reportValidity()
    Object.assign(state, { status: statusSelect.value, agent: agentInput.value.trim(), page: 0 })
    sync()
    load().catch(() => {})
  })
  statusSelect.addEventListener('change', () => filters.requestSubmit())
  prev.addEventListener('click', () => { state.page--; sync(); load().catch(() => {}) })
  next.addEventListener('click', () => { state.page++; sync(); load().catch(() => {}) })
  load().catch(() => {})
  taskEvents(soon, soon, signal)
}

function row (t: Task): HTMLTableRowElement {
  return h('tr', { 'data-task-id': t.task_id },
    h('td', { 'data-label': 'Status' }, badge(t.status)),
    h('td', { class: 'desc', 'data-label': 'Task' }, h('a', { href: `/ui/tasks/${encodeURIComponent(t.task_id)}` }, firstLine(t.task_description) || t.task_id)),
    h('td', { 'data-label': 'Agent' }, t.agent_id ?? '—'),
    h('td', { 'data-label': 'Model' }, t.model ?? 'default'),
    h('td', { 'data-label': 'Started' }, when(t.started_at)),
    h('td', { 'data-label': 'Duration' }, duration(t)),
    h('td', { 'data-label': 'Tokens', class: 'num' }, tokensOf(t) ? tokensOf(t).toLocaleString() : '—'),
    h('td', { 'data-label': 'Cost', class: 'num' }, cost(t.cost)))
}

// --- task page -----------------------------------------------------------------------------------

/** Escape sequences (colours, cursor moves, titles) are stripped: the log is shown as plain text. */
// eslint-disable-next-line no-control-regex
const ANSI = /\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g
// eslint-disable-next-line no-control-regex
const PARTIAL_ANSI = /\x1b(?:\[[0-?]*[ -/]*|\][^\x07\x1b]*)?$/
/** Characters of log kept on the page; older text is dropped from the view (the full log stays on the server). */
const LOG_KEEP = 200_000

class LiveLog {
  readonly el = h('pre', { id: 'log', class: 'log', tabindex: 0, 'aria-label': 'Task log', 'aria-live': 'off' })
  readonly note = h('p', { class: 'muted', id: 'log-note' })
  private offset = 0
  private following = false
  private pending: string[] = []
  private carry = ''
  private kept = 0
  private trimmed = false
  private stick = true
  private frame = 0

  constructor (private readonly id: string, private readonly signal: AbortSignal) {
    this.el.addEventListener('scroll', () => {
      this.stick = this.el.scrollTop + this.el.clientHeight >= this.el.scrollHeight - 16
    })
  }

  /** Follows the log from where it was read up to (again after a follow-up turn starts). */
  follow (): void {
    if (this.following || this.signal.aborted) return
    this.following = true
    this.el.dataset.state = 'following'
    this.note.textContent = 'Following the log…'
    this.read().catch(() => {}).finally(() => {
      this.following = false
      // read to the end: the last text is on the page after the next frame
      requestAnimationFrame(() => { if (!this.following) this.el.dataset.state = 'done' })
      if (!this.signal.aborted) this.note.textContent = this.trimmed ? 'Earlier output is not shown here (the page keeps the last 200,000 characters).' : ''
    })
  }

  private async read (): Promise<void> {
    const res = await request(`/tasks/${encodeURIComponent(this.id)}/logs?follow=true&offset=${this.offset}`, { signal: this.signal })
    const reader = (res.body as ReadableStream<Uint8Array>).getReader()
    const decoder = new TextDecoder()
    for (;;) {
      const { value, done } = await reader.read()
      if (done) break
      this.offset += value.byteLength
      this.push(decoder.decode(value, { stream: true }))
    }
  }

  /** Text is added once per animation frame, however fast it arrives. */
  private push (text: string): void {
    this.pending.push(text)
    this.frame ||= requestAnimationFrame(() => this.flush())
  }

  private flush (): void {
    this.frame = 0
    let text = this.carry + this.pending.join('')
    this.pending = []
    const partial = PARTIAL_ANSI.exec(text)
    this.carry = partial ? partial[0] : ''
    if (partial) text = text.slice(0, partial.index)
    text = text.replace(ANSI, '')
    if (text.length > LOG_KEEP) {
      text = text.slice(-LOG_KEEP)
      this.el.replaceChildren()
      this.kept = 0
      this.trimmed = true
    }
    if (!text) return
    this.el.append(text)
    this.kept += text.length
    while (this.kept > LOG_KEEP && this.el.firstChild) {
      this.kept -= (this.el.firstChild.textContent ?? '').length
      this.el.firstChild.remove()
      this.trimmed = true
    }
    if (this.stick) this.el.scrollTop = this.el.scrollHeight
  }
}

function section (title: string, id: string, ...children: Child[]): HTMLElement {
  return h('section', { class: 'card', 'aria-labelledby': `${id}-title`, id }, h('h2', { id: `${id}-title` }, title), ...children)
}

function taskPage (id: string, signal: AbortSignal): void {
  const path = `/tasks/${encodeURIComponent(id)}`
  const log = new LiveLog(id, signal)
  const head = h('div', { class: 'task-head' })
  const facts = h('dl', { class: 'facts' })
  const answer = h('pre', { id: 'answer', class: 'answer' })
  const actionsNote = h('p', { class: 'muted', role: 'status', id: 'action-note' })
  const cancel = h('button', { type: 'button', id: 'cancel', class: 'danger' }, 'Cancel…')
  const pause = h('button', { type: 'button', id: 'pause' }, 'Pause')
  const resume = h('button', { type: 'button', id: 'resume' }, 'Resume')
  const message = h('textarea', { id: 'message', name: 'message', rows: 2, maxlength: 100_000, required: true, placeholder: 'What should the agent do next?' })
  const messageForm = h('form', { class: 'message' }, h('label', { for: 'message' }, 'Follow-up message'), message, h('button', { type: 'submit', id: 'send' }, 'Send'))
  const timeline = h('ol', { class: 'timeline', id: 'timeline' })
  const tree = h('ul', { class: 'tree', id: 'files' })
  const viewer = h('div', { class: 'viewer', id: 'viewer' })
  const diff = h('div', { id: 'diff' })
  const confirm = h('dialog', { id: 'confirm-cancel', 'aria-labelledby': 'confirm-title' },
    h('form', { method: 'dialog' },
      h('h2', { id: 'confirm-title' }, 'Cancel this task?'),
      h('p', {}, 'Its container is stopped; the task ends cancelled. This cannot be undone.'),
      h('div', { class: 'row' }, h('button', { value: 'no', id: 'confirm-no', autofocus: true }, 'Keep it running'), h('button', { value: 'yes', class: 'danger', id: 'confirm-yes' }, 'Cancel the task'))))

  let task: Task | undefined
  let lastSeq = 0
  let filesLoaded = false
  let diffShown = false

  const act = async (what: string, fn: () => Promise<unknown>) => {
    actionsNote.textContent = `${what}…`
    try {
      await fn()
      actionsNote.textContent = `${what}: done.`
    } catch (err) {
      actionsNote.textContent = `${what} failed: ${(err as Error).message}`
    }
    await refresh()
  }
  cancel.addEventListener('click', () => confirm.showModal())
  confirm.addEventListener('close', () => {
    if (confirm.returnValue === 'yes') act('Cancel', () => post(`${path}/cancel`)).catch(() => {})
  })
  pause.addEventListener('click', () => { act('Pause', () => post(`${path}/pause`)).catch(() => {}) })
  resume.addEventListener('click', () => { act('Resume', () => post(`${path}/resume`)).catch(() => {}) })
  messageForm.addEventListener('submit', (e) => {
    e.preventDefault()
    const text = message.value.trim()
    if (!text) return
    act('Send', async () => {
      const r = await post<{ delivery: string }>(`${path}/messages`, { message: text })
      message.value = ''
      actionsNote.textContent = r.delivery === 'follow_up_started' ? 'A follow-up turn started.' : 'Queued for the next turn.'
    }).then(() => log.follow(), () => {})
  })

  const renderHead = (t: Task) => {
    head.replaceChildren(h('h1', { id: 'task-title' }, firstLine(t.task_description) || t.task_id), badge(t.status))
    const rows: Array<[string, Child]> = [
      ['Task id', h('code', {}, t.task_id)], ['Agent', t.agent_id ?? '—'], ['Model', t.model ?? 'default'],
      ['Created', when(t.created_at)], ['Started', when(t.started_at)], ['Finished', when(t.finished_at)],
      ['Duration', duration(t)], ['Turns', String(t.turns)], ['Exit code', t.exit_code === null ? '—' : String(t.exit_code)],
      ['Reason', t.reason ?? '—'], ['Tokens', `${t.tokens.input.toLocaleString()} in / ${t.tokens.output.toLocaleString()} out`], ['Cost', cost(t.cost)],
      ['Letta block', t.letta ? `${t.letta.block_label} · ${t.letta.attached ? 'attached' : 'not attached'} · ${t.letta.notified ? 'agent notified' : 'not notified'}${t.letta.error ? ` · error: ${t.letta.error}` : ''}` : '—']
    ]
    if (t.error) rows.push(['Error', t.error])
    if (t.pending_messages) rows.push(['Pending messages', String(t.pending_messages)])
    facts.replaceChildren(...rows.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]))
    answer.textContent = t.answer ?? (TERMINAL.has(t.status) ? '(no answer)' : '(not yet)')
    const ended = TERMINAL.has(t.status)
    cancel.disabled = ended
    pause.disabled = t.status !== 'running'
    resume.disabled = t.status !== 'paused'
    document.title = `${t.status} · ${firstLine(t.task_description)} · letta-opencode`
  }

  const loadTimeline = async () => {
    const { events } = await api<{ events: TaskEvent[] }>(`${path}/events?after=${lastSeq}&limit=1000`)
    for (const e of events) {
      // two reads may overlap (a poll and a state change): each event is shown once
      if (e.seq <= lastSeq) continue
      lastSeq = e.seq
      timeline.append(h('li', { 'data-type': e.type }, h('time', { datetime: e.at }, when(e.at)), h('span', { class: 'etype' }, e.type), h('span', { class: 'emsg' }, e.message === e.type ? '' : e.message)))
    }
  }

  const loadFiles = async () => {
    try {
      const { entries, truncated } = await api<{ entries: FileEntry[], truncated: boolean }>(`${path}/files`)
      filesLoaded = true
      const sorted = [...entries].sort((a, b) => a.path.localeCompare(b.path))
      tree.replaceChildren(...sorted.map((e) => {
        const depth = e.path.split('/').length - 1
        const name = e.path.split('/').pop() ?? e.path
        const item = e.type === 'directory'
          ? h('span', { class: 'dir' }, `${name}/`)
          : h('button', { type: 'button', class: 'file link', 'data-path': e.path, onclick: () => { openFile(e).catch(() => {}) } }, name)
        const li = h('li', {}, item, e.type === 'file' ? h('span', { class: 'muted' }, ` ${bytes(e.size)}`) : null)
        li.style.paddingLeft = `${depth * 1.2}em`
        return li
      }))
      if (entries.length === 0) tree.append(h('li', { class: 'muted' }, 'The workspace is empty.'))
      if (truncated) tree.append(h('li', { class: 'muted' }, 'More files than shown.'))
    } catch (err) {
      tree.replaceChildren(h('li', {}, errorBox(err, 'The files could not be listed')))
    }
  }

  const openFile = async (e: FileEntry) => {
    viewer.replaceChildren(h('p', { class: 'muted' }, `Reading ${e.path}…`))
    try {
      const f = await api<{ path: string, size: number, binary: boolean, content: string }>(`${path}/file?path=${encodeURIComponent(e.path)}`)
      const title = h('h3', { id: 'viewer-title' }, f.path)
      if (f.binary) return viewer.replaceChildren(title, h('p', { id: 'viewer-binary' }, `Binary file, ${bytes(f.size)} (not shown)`))
      const lines = f.content.split('\n')
      if (lines.at(-1) === '') lines.pop()
      viewer.replaceChildren(title, h('ol', { class: 'code', 'aria-label': `Contents of ${f.path}` }, ...lines.map((l) => h('li', {}, l))))
    } catch (err) {
      viewer.replaceChildren(errorBox(err, `${e.path} could not be read`))
    }
  }

  const loadDiff = async () => {
    const d = await api<{ diff: string | null, truncated: boolean }>(`${path}/diff`)
    diffShown = true
    if (d.diff === null) return diff.replaceChildren(h('p', { class: 'muted' }, 'No diff: the workspace is not a cloned repository.'))
    if (d.diff === '') return diff.replaceChildren(h('p', { class: 'muted' }, 'No changes.'))
    const pre = h('pre', { class: 'diff', tabindex: 0, 'aria-label': 'Diff' })
    for (const line of d.diff.split('\n')) {
      const kind = line.startsWith('+++') || line.startsWith('---') || line.startsWith('diff ') || line.startsWith('index ') ? 'meta' : line.startsWith('@@') ? 'hunk' : line.startsWith('+') ? 'add' : line.startsWith('-') ? 'del' : 'ctx'
      pre.append(h('span', { class: `d-${kind}` }, line || ' '))
    }
    diff.replaceChildren(pre)
    if (d.truncated) diff.append(h('p', { class: 'muted' }, 'The diff was truncated.'))
  }

  const refresh = async () => {
    try {
      task = await api<Task>(path)
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) {
        return show(h('section', { class: 'card', id: 'not-found' }, h('h1', {}, 'Task not found'),
          h('p', {}, 'No task with this id is yours: check the link, or sign in with the token that submitted it.'),
          h('p', {}, h('a', { href: '/ui' }, '← All tasks'))))
      }
      if (err instanceof ApiError && err.status === 401) return signIn('Your token was refused: sign in again.')
      actionsNote.replaceChildren(errorBox(err, 'The task could not be read'))
      return
    }
    renderHead(task)
    await loadTimeline().catch(() => {})
    if (!TERMINAL.has(task.status)) log.follow()
    if (task.workspace_available && !filesLoaded && TERMINAL.has(task.status)) await loadFiles()
    if (TERMINAL.has(task.status) && !diffShown) {
      if (task.has_diff) await loadDiff().catch(() => {})
      else diff.replaceChildren(h('p', { class: 'muted' }, 'No diff: the workspace is not a cloned repository (the files are above).'))
    }
  }

  show(h('p', {}, h('a', { href: '/ui' }, '← All tasks')), head,
    section('Status', 'status', facts, h('div', { class: 'row actions' }, cancel, pause, resume), actionsNote, messageForm),
    section('Answer', 'answer-section', answer),
    section('Log', 'log-section', log.el, log.note),
    section('Timeline', 'timeline-section', timeline),
    section('Files', 'files-section', h('button', { type: 'button', id: 'load-files', onclick: () => { loadFiles().catch(() => {}) } }, 'Refresh files'), h('div', { class: 'files' }, tree, viewer)),
    section('Diff', 'diff-section', diff), confirm)
  diff.append(h('p', { class: 'muted' }, 'The diff of a cloned repository appears when the task ends.'))

  refresh().then(() => { if (task) log.follow() }).catch(() => {})
  // the list stream says when this task changes state; a poll picks up pause, resume and its events
  taskEvents((t) => { if (t.task_id === id) refresh().catch(() => {}) }, () => {}, signal)
  const poll = setInterval(() => { if (task && !TERMINAL.has(task.status)) refresh().catch(() => {}) }, 2_000)
  signal.addEventListener('abort', () => clearInterval(poll))
}

// --- health page ---------------------------------------------------------------------------------

function flatten (value: unknown, prefix = ''): Array<[string, string]> {
  if (value === null || typeof value !== 'object') return [[prefix, value === null ? '—' : String(value)]]
  if (Array.isArray(value)) return [[prefix, value.map((v) => (typeof v === 'object' ? JSON.stringify(v) : String(v))).join(', ') || '—']]
  return Object.entries(value as Record<string, unknown>).flatMap(([k, v]) => flatten(v, prefix ? `${prefix}.${k}` : k))
}

function healthPage (signal: AbortSignal): void {
  const out = h('div', { id: 'health' })
  const stamp = h('p', { class: 'muted', role: 'status' })
  show(h('h1', {}, 'Health'), stamp, out)
  const load = async () => {
    let body: Record<string, unknown>
    try {
      const res = await fetch('/health', { headers: headers(), signal })
      body = await res.json() as Record<string, unknown>
    } catch (err) {
      if (signal.aborted) return
      out.replaceChildren(errorBox(new ApiError(0, 'The service cannot be reached: is it running?'), 'Health'))
      return
    }
    const cards: HTMLElement[] = [h('section', { class: 'card', id: 'h-overall' }, h('h2', {}, 'Overall'), badge(String(body.status ?? 'unknown')))]
    const scalars = Object.entries(body).filter(([k, v]) => k !== 'status' && (v === null || typeof v !== 'object'))
    if (scalars.length) cards.push(section('Service', 'h-service', h('dl', { class: 'facts' }, ...scalars.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))]))))
    for (const [k, v] of Object.entries(body)) {
      if (v === null || typeof v !== 'object' || Array.isArray(v)) continue
      const status = (v as { status?: unknown }).status
      cards.push(section(k, `h-${k}`, typeof status === 'string' ? badge(status) : null,
        h('dl', { class: 'facts' }, ...flatten(v).filter(([key]) => key !== 'status').flatMap(([key, val]) => [h('dt', {}, key), h('dd', {}, val)]))))
    }
    out.replaceChildren(...cards)
    stamp.textContent = `Updated ${when(new Date().toISOString())}; refreshed every 5 s.`
  }
  load().catch(() => {})
  const timer = setInterval(() => { load().catch(() => {}) }, 5_000)
  signal.addEventListener('abort', () => clearInterval(timer))
}

// --- routing -------------------------------------------------------------------------------------

let current: AbortController | undefined

async function route (): Promise<void> {
  current?.abort()
  current = new AbortController()
  const signal = current.signal
  const path = location.pathname.replace(/\/+$/, '')
  for (const a of document.querySelectorAll('nav a')) a.removeAttribute('aria-current')
  if (path === '/ui/health') {
    $('nav-health').setAttribute('aria-current', 'page')
    return healthPage(signal)
  }
  // auth off (loopback) answers without a token; with auth on, no token or a wrong one is a 401
  try {
    await api('/tasks?limit=1')
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return signIn(token() ? 'Your token was refused: sign in again.' : undefined)
    show(errorBox(err, 'The service refused the dashboard'))
    return
  }
  $('sign-out').hidden = !token()
  const task = /^\/ui\/tasks\/([^/]+)$/.exec(path)
  if (task) return taskPage(decodeURIComponent(task[1]), signal)
  $('nav-tasks').setAttribute('aria-current', 'page')
  listPage(signal)
}

$('sign-out').addEventListener('click', () => {
  current?.abort()
  signIn()
})
route().catch((err: unknown) => show(errorBox(err, 'The dashboard failed')))

/**
 * Task workspaces: a Docker volume per task mounted at /workspace (and one for OpenCode's session
 * state), kept after the run for WORKSPACE_RETENTION_MS. Files are listed and read through the
 * Engine API's archive endpoint on a container that has the volume mounted, so this works when the
 * service itself runs in a container with only the Docker socket: no host path is shared.
 * Paths are confined to the workspace: absolute paths, `..` and symlinks that lead outside are refused.
 */
import { posix } from 'node:path'
import type { Readable } from 'node:stream'
import { extract, pack } from 'tar-stream'
import type { DockerEngine } from '../docker/engine.js'
import { Redactor } from './redact.js'

export const WORKSPACE_DIR = '/workspace'
/** OpenCode keeps its sessions in $XDG_DATA_HOME/opencode: the service sets XDG_DATA_HOME to
 * OPENCODE_DATA_HOME and mounts the task's state volume at OPENCODE_STATE_DIR, whatever the image's
 * HOME and user (the volume holds what ~/.local/share/opencode held, so older volumes still fit). */
export const OPENCODE_DATA_HOME = '/opencode-state'
export const OPENCODE_STATE_DIR = `${OPENCODE_DATA_HOME}/opencode`

export const workspaceVolume = (taskId: string) => `lop-ws-${taskId.replace(/^task_/, '')}`
export const stateVolume = (taskId: string) => `lop-state-${taskId.replace(/^task_/, '')}`

export class WorkspaceError extends Error {
  override name = 'WorkspaceError'
  constructor (readonly code: 'invalid_path' | 'outside' | 'not_found' | 'too_large' | 'not_a_file', message: string) {
    super(message)
  }
}

export interface FileEntry { path: string, type: 'file' | 'directory' | 'symlink', size: number, modified: string, link_target?: string }

/**
 * A path given by a caller, relative to the workspace, as an absolute path inside it. Absolute
 * paths and `..` segments are refused whatever they resolve to: there is no reason to send them.
 */
export function confine (path: string, field = 'path'): string {
  if (path.includes('\0')) throw new WorkspaceError('invalid_path', `${field} contains a NUL byte`)
  if (posix.isAbsolute(path) || path.startsWith('~')) {
    throw new WorkspaceError('invalid_path', `${field} "${path}" is absolute; give a path relative to the workspace, such as src/index.ts`)
  }
  if (path.split(/[\\/]+/).includes('..')) {
    throw new WorkspaceError('outside', `${field} "${path}" contains "..": paths must stay inside the workspace`)
  }
  return posix.join(WORKSPACE_DIR, posix.normalize(path || '.'))
}

const inside = (abs: string) => abs === WORKSPACE_DIR || abs.startsWith(WORKSPACE_DIR + '/')
const rel = (abs: string) => posix.relative(WORKSPACE_DIR, abs) || '.'

interface PathStat { name: string, size: number, mode: number, mtime: string, linkTarget: string }
const SYMLINK = 0o1000000000 // Go's os.ModeSymlink, as the engine reports it
const DIR = 0x80000000 // os.ModeDir

/** Docker's path stat (HEAD /containers/{id}/archive): the X-Docker-Container-Path-Stat header. */
async function stat (docker: DockerEngine, container: string, abs: string): Promise<PathStat | null> {
  try {
    return await docker.statPath(container, abs) as PathStat
  } catch (err) {
    if ((err as { statusCode?: number }).statusCode === 404) return null
    throw err
  }
}

/**
 * Resolves symlinks component by component, each within the workspace; a link that leads outside
 * is refused. Returns the final absolute path and its stat.
 */
async function resolve (docker: DockerEngine, container: string, abs: string, field: string): Promise<{ abs: string, stat: PathStat }> {
  let current = WORKSPACE_DIR
  const parts = posix.relative(WORKSPACE_DIR, abs).split('/').filter(Boolean)
  let hops = 0
  while (parts.length) {
    const next = posix.join(current, parts.shift() as string)
    const s = await stat(docker, container, next)
    if (!s) throw new WorkspaceError('not_found', `${field} "${rel(abs)}" does not exist in the workspace (get_task_files lists what does)`)
    if ((s.mode & SYMLINK) !== 0) {
      if (++hops > 20) throw new WorkspaceError('outside', `${field} "${rel(abs)}" goes through too many symlinks`)
      const target = posix.resolve(posix.dirname(next), s.linkTarget)
      if (!inside(target)) throw new WorkspaceError('outside', `${field} "${rel(abs)}" is a symlink to ${s.linkTarget}, outside the workspace; only files inside it can be read`)
      parts.unshift(...posix.relative(WORKSPACE_DIR, target).split('/').filter(Boolean))
      current = WORKSPACE_DIR
      continue
    }
    current = next
  }
  const final = await stat(docker, container, current)
  if (!final) throw new WorkspaceError('not_found', `${field} "${rel(abs)}" does not exist in the workspace`)
  return { abs: current, stat: final }
}

/** Lists a directory of the workspace (recursively, up to `limit` entries); skips .git internals. */
export async function listFiles (docker: DockerEngine, container: string, path: string, limit: number): Promise<{ entries: FileEntry[], truncated: boolean }> {
  const { abs, stat: s } = await resolve(docker, container, confine(path), 'path')
  if ((s.mode & DIR) === 0) throw new WorkspaceError('not_a_file', `path "${path}" is a file, not a directory; read it with read_task_file`)
  const tar = await docker.getArchive(container, abs)
  const entries: FileEntry[] = []
  let truncated = false
  const base = posix.basename(abs)
  await walk(tar, async (header, body) => {
    body.resume()
    // entries are named from the archived directory's own name
    const name = header.name.replace(/\/$/, '')
    const relPath = name === base ? '' : name.slice(base.length + 1)
    if (!relPath || relPath === '.git' || relPath.startsWith('.git/')) return true
    if (entries.length >= limit) { truncated = true; return false }
    const type = header.type === 'directory' ? 'directory' : header.type === 'symlink' ? 'symlink' : 'file'
    entries.push({
      path: posix.join(posix.relative(WORKSPACE_DIR, abs), relPath),
      type,
      size: header.size ?? 0,
      modified: (header.mtime ?? new Date(0)).toISOString(),
      ...(type === 'symlink' ? { link_target: header.linkname ?? '' } : {})
    })
    return true
  })
  return { entries, truncated }
}

/** Reads one file of the workspace: text as UTF-8, binary (a NUL in the first 8 KB) as base64. */
export async function readFile (docker: DockerEngine, container: string, path: string, maxSize: number): Promise<{ path: string, size: number, binary: boolean, encoding: 'utf8' | 'base64', content: string }> {
  const { abs, stat: s } = await resolve(docker, container, confine(path), 'path')
  if ((s.mode & DIR) !== 0) throw new WorkspaceError('not_a_file', `path "${path}" is a directory; list it with get_task_files`)
  if (s.size > maxSize) throw new WorkspaceError('too_large', `path "${path}" is ${s.size} bytes, over MAX_TASK_FILE_SIZE=${maxSize}; read it from the task's logs or ask the agent for a summary`)
  const tooLarge = (size: number | string) => new WorkspaceError('too_large', `path "${path}" is ${size} bytes, over MAX_TASK_FILE_SIZE=${maxSize}; read it from the task's logs or ask the agent for a summary`)
  const tar = await docker.getArchive(container, abs)
  let data: Buffer | undefined
  // the file may have grown since the stat: the read itself stops at maxSize
  await walk(tar, async (header, body) => {
    if (header.type !== 'file') { body.resume(); return true }
    if ((header.size ?? 0) > maxSize) throw tooLarge(header.size as number)
    const chunks: Buffer[] = []
    let size = 0
    for await (const c of body) {
      size += (c as Buffer).length
      if (size > maxSize) throw tooLarge(`more than ${maxSize}`)
      chunks.push(c as Buffer)
    }
    data = Buffer.concat(chunks)
    return false
  })
  if (!data) throw new WorkspaceError('not_a_file', `path "${path}" is not a regular file`)
  const binary = data.subarray(0, 8192).includes(0)
  return { path: rel(abs), size: data.length, binary, encoding: binary ? 'base64' : 'utf8', content: data.toString(binary ? 'base64' : 'utf8') }
}

/**
 * A file as read_task_file returns it, with secret values (RUNNER_ENV_PASSTHROUGH) replaced: text
 * as text, binary content decoded, redacted as bytes and encoded again.
 */
export function redactFile<F extends { size: number, encoding: 'utf8' | 'base64', content: string }> (file: F, secrets: string[]): F {
  const redactor = new Redactor(secrets)
  if (!redactor.active) return file
  if (file.encoding === 'utf8') return { ...file, content: redactor.text(file.content) }
  const data = Buffer.concat([redactor.push(Buffer.from(file.content, 'base64')), redactor.end()])
  return { ...file, content: data.toString('base64') }
}

/** Files to seed a workspace with, as a tar stream owned by the runner user. */
export function seedArchive (files: Array<{ path: string, content: string }>, uid: number, gid: number): Readable {
  const tar = pack()
  for (const f of files) {
    const name = posix.relative(WORKSPACE_DIR, confine(f.path, 'files[].path'))
    tar.entry({ name, mode: 0o644, uid, gid }, f.content)
  }
  tar.finalize()
  // tar-stream's streams are streamx streams, which Node's stream APIs accept
  return tar as unknown as Readable
}

/**
 * The mount points (workspace, OpenCode state) as directories owned by the runner user, to extract
 * at "/" of a created container: the engine gives an existing directory the entry's owner and mode,
 * so volumes mounted where the image has no directory (root-owned then) become writable by a
 * non-root RUNNER_USER, with no binary needed in the image.
 */
export function mountPointsArchive (uid: number, gid: number): Readable {
  const tar = pack()
  for (const dir of [WORKSPACE_DIR, OPENCODE_DATA_HOME, OPENCODE_STATE_DIR]) {
    tar.entry({ name: `${dir.slice(1)}/`, type: 'directory', mode: 0o755, uid, gid })
  }
  tar.finalize()
  return tar as unknown as Readable
}

type Header = { name: string, type?: string | null, size?: number | null, mtime?: Date, linkname?: string | null }

/** Walks a tar stream; `onEntry` returns false to stop early (the stream is then destroyed). */
async function walk (tar: Readable, onEntry: (header: Header, body: Readable) => Promise<boolean>): Promise<void> {
  const ex = extract()
  tar.pipe(ex as unknown as NodeJS.WritableStream)
  try {
    for await (const entry of ex) {
      const go = await onEntry(entry.header as Header, entry as unknown as Readable)
      if (!go) break
    }
  } finally {
    tar.destroy()
    ex.destroy()
  }
}

/** Test git repositories: served read-only over git's dumb HTTP protocol, or over the smart protocol (git http-backend) with basic auth for pushes, on loopback. */
import { execFileSync, spawn } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { createServer } from 'node:http'
import { join } from 'node:path'
import type { Test } from 'tap'
import { tempDir } from './app.js'

/** The URL of a bare repository (branch main, README.md "# demo"), served until the test ends. */
export async function gitServer (t: Test): Promise<string> {
  const root = tempDir(t, 'lop-git-')
  const work = join(root, 'work')
  mkdirSync(work)
  const git = (...args: string[]) => execFileSync('git', args, { cwd: work, env: { ...process.env, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@t', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@t' } })
  git('init', '-q', '-b', 'main')
  writeFileSync(join(work, 'README.md'), '# demo\n')
  git('add', '.')
  git('commit', '-q', '-m', 'initial')
  execFileSync('git', ['clone', '-q', '--bare', work, join(root, 'repo.git')])
  execFileSync('git', ['update-server-info'], { cwd: join(root, 'repo.git') })
  const server = createServer((req, res) => {
    readFile(join(root, decodeURIComponent((req.url ?? '/').split('?')[0]))).then((data) => res.end(data), () => res.writeHead(404).end())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => server.close())
  return `http://127.0.0.1:${(server.address() as { port: number }).port}/repo.git`
}

export interface PushServer {
  /** The repository's URL (no credentials in it). */
  url: string
  /** `host:port`, for GIT_CREDENTIALS lines. */
  host: string
  /** git in the bare repository the server serves. */
  git: (...args: string[]) => string
  /** Requests that were refused for want of the right credential. */
  refused: () => number
}

/**
 * A bare repository (branch main, README.md "# demo") served by git's smart HTTP protocol through
 * `git http-backend` (CGI) on loopback: reads are anonymous, pushes need HTTP basic auth with
 * `username:password` (401 otherwise).
 */
export async function pushServer (t: Test, username: string, password: string): Promise<PushServer> {
  const root = tempDir(t, 'lop-git-push-')
  const work = join(root, 'work')
  mkdirSync(work)
  const env = { ...process.env, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@t', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@t' }
  const inWork = (...args: string[]) => execFileSync('git', args, { cwd: work, env })
  inWork('init', '-q', '-b', 'main')
  writeFileSync(join(work, 'README.md'), '# demo\n')
  inWork('add', '.')
  inWork('commit', '-q', '-m', 'initial')
  const bare = join(root, 'repo.git')
  execFileSync('git', ['clone', '-q', '--bare', work, bare])
  execFileSync('git', ['config', 'http.receivepack', 'true'], { cwd: bare })
  let refused = 0
  const expected = `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`
  const server = createServer((req, res) => {
    const [path, query = ''] = (req.url ?? '/').split('?')
    const pushing = query.includes('service=git-receive-pack') || path.endsWith('/git-receive-pack')
    if (pushing && req.headers.authorization !== expected) {
      refused++
      req.resume()
      res.writeHead(401, { 'www-authenticate': 'Basic realm="git"' }).end('unauthorized\n')
      return
    }
    const cgi = spawn('git', ['http-backend'], {
      env: {
        ...process.env,
        GIT_PROJECT_ROOT: root,
        GIT_HTTP_EXPORT_ALL: '1',
        PATH_INFO: decodeURIComponent(path),
        QUERY_STRING: query,
        REQUEST_METHOD: req.method ?? 'GET',
        CONTENT_TYPE: req.headers['content-type'] ?? '',
        ...(req.headers['content-length'] ? { CONTENT_LENGTH: req.headers['content-length'] } : {}),
        ...(req.headers['content-encoding'] ? { HTTP_CONTENT_ENCODING: req.headers['content-encoding'] } : {}),
        ...(req.headers['git-protocol'] ? { GIT_PROTOCOL: String(req.headers['git-protocol']) } : {}),
        REMOTE_ADDR: '127.0.0.1',
        ...(pushing ? { REMOTE_USER: username } : {})
      }
    })
    req.pipe(cgi.stdin)
    let head = Buffer.alloc(0)
    let headersDone = false
    cgi.stdout.on('data', (chunk: Buffer) => {
      if (headersDone) { res.write(chunk); return }
      head = Buffer.concat([head, chunk])
      const end = head.indexOf('\r\n\r\n')
      if (end === -1) return
      headersDone = true
      let status = 200
      for (const line of head.subarray(0, end).toString('latin1').split('\r\n')) {
        const at = line.indexOf(':')
        const name = line.slice(0, at).trim()
        const value = line.slice(at + 1).trim()
        if (name.toLowerCase() === 'status') status = Number.parseInt(value, 10)
        else res.setHeader(name, value)
      }
      res.writeHead(status)
      res.write(head.subarray(end + 4))
    })
    cgi.stdout.on('end', () => res.end())
    cgi.on('error', () => res.writeHead(500).end())
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => server.close())
  const host = `127.0.0.1:${(server.address() as { port: number }).port}`
  return {
    url: `http://${host}/repo.git`,
    host,
    git: (...args: string[]) => execFileSync('git', args, { cwd: bare, env, encoding: 'utf8' }),
    refused: () => refused
  }
}

/** Test git repositories: a one-commit repository served read-only over git's dumb HTTP protocol on loopback. */
import { execFileSync } from 'node:child_process'
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

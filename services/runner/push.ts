/**
 * Shipping a task's work (issue #18): the workspace's changes committed (author RUNNER_GIT_AUTHOR)
 * and pushed to a branch of the cloned remote, or handed back as a `git format-patch` series. Both
 * run in short-lived helper containers on the task's volumes (the runner's hardening and labels);
 * the push credential is given to the push helper alone, in its environment, and only the line of
 * GIT_CREDENTIALS whose host is the remote's. The agent's container never has it.
 *
 * The commit never touches the workspace: it is made with a temporary index (`commit-tree`), its
 * parent the workspace's HEAD (or the task's last pushed commit, so a follow-up turn's push is a
 * fast-forward of the branch it made). The original commit is refs/letta-opencode/base, set at clone.
 */
import type { GitCredential } from '../config.js'
import { Redactor } from './redact.js'

export const BASE_REF = 'refs/letta-opencode/base'
export const PATCH_LIMIT = 1024 * 1024

export interface PushRequest { branch: string, commit_message?: string | null, force?: boolean }
export type PushErrorCode = 'auth' | 'rejected' | 'exists' | 'default_branch' | 'network' | 'no_changes' | 'error'
/** A push's outcome, stored with the task and shown in its view. */
export interface PushResult {
  branch: string
  /** The commit on the branch (null when nothing was pushed). */
  commit: string | null
  /** The branch on the forge's web UI, when it can be derived from the remote. */
  url: string | null
  error: PushErrorCode | null
  message: string | null
  at: number
}

/** A helper container on the task's volumes: `sh -c script` with the arguments, its output and exit code. */
export type HelperRun = (script: string, args: string[], opts: { network: boolean, env?: string[] }) => Promise<{ exitCode: number, output: string }>

/**
 * A branch name as `git check-ref-format --branch` takes it: null when it is one, else why not.
 */
export function branchProblem (name: string): string | null {
  if (!name || name.length > 200) return 'must have 1 to 200 characters'
  if (name.startsWith('-')) return 'must not start with "-"'
  if (name === '@' || name.includes('@{')) return 'must not be "@" or contain "@{"'
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x20\x7f~^:?*[\\]/.test(name)) return 'must not contain spaces, control characters or any of ~ ^ : ? * [ \\'
  if (name.includes('..') || name.includes('//')) return 'must not contain ".." or "//"'
  if (name.startsWith('/') || name.endsWith('/') || name.endsWith('.')) return 'must not start or end with "/" or end with "."'
  if (name.split('/').some((part) => part.startsWith('.') || part.endsWith('.lock'))) return 'no part may start with "." or end with ".lock"'
  return null
}

/** The credential of the remote's protocol and host, if GIT_CREDENTIALS has one. */
export function credentialFor (credentials: GitCredential[], remote: string): GitCredential | undefined {
  const url = parseUrl(remote)
  return url ? credentials.find((c) => c.protocol === url.protocol && c.host === url.host) : undefined
}

const parseUrl = (s: string): URL | undefined => { try { return new URL(s) } catch { return undefined } }

/** The branch's page on the well-known forges (GitHub, GitLab, Bitbucket); null elsewhere. */
export function branchUrl (remote: string, branch: string): string | null {
  const url = parseUrl(remote)
  if (!url || url.protocol !== 'https:') return null
  const base = `https://${url.host}${url.pathname.replace(/\/+$/, '').replace(/\.git$/, '')}`
  const ref = branch.split('/').map(encodeURIComponent).join('/')
  if (url.hostname === 'github.com') return `${base}/tree/${ref}`
  if (url.hostname === 'gitlab.com') return `${base}/-/tree/${ref}`
  if (url.hostname === 'bitbucket.org') return `${base}/branch/${ref}`
  return null
}

/** What a failed git command says, as a reason. */
export function classify (output: string): PushErrorCode {
  if (/Authentication failed|could not read (Username|Password)|terminal prompts disabled|returned error: (401|403)|Invalid username or password|Permission denied \(publickey/i.test(output)) return 'auth'
  if (/\[(remote )?rejected\]|non-fast-forward|hook declined|protected branch|stale info/i.test(output)) return 'rejected'
  if (/Could not resolve host|Failed to connect|Connection refused|Connection timed out|timed out|Couldn't connect|Network is unreachable|unable to access|Could not read from remote/i.test(output)) return 'network'
  return 'error'
}

/**
 * Commits the workspace's changes without touching it (a temporary index): prints nothing, sets
 * $base (the original commit) and $commit. Exits 70 when the workspace has no git repository.
 * Positional: $1 the commit message, $2 the parent to use instead of HEAD when it exists (or "").
 */
const COMMIT = `
set -u
cd /workspace 2>/dev/null && git rev-parse -q --verify HEAD >/dev/null 2>&1 || { echo 'the workspace is not a git repository with a commit'; exit 70; }
base=$(git rev-parse -q --verify '${BASE_REF}^{commit}' || git rev-parse HEAD)
export GIT_INDEX_FILE=/tmp/lop-push-index
rm -f "$GIT_INDEX_FILE"
git read-tree HEAD && git add --all . >/dev/null || { echo 'git add failed'; exit 71; }
tree=$(git write-tree) || exit 71
parent=HEAD
if [ -n "$2" ] && git cat-file -e "$2^{commit}" 2>/dev/null; then parent=$2; fi
if [ "$tree" = "$(git rev-parse "$parent^{tree}")" ]; then commit=$(git rev-parse "$parent"); else commit=$(git commit-tree "$tree" -p "$parent" -m "$1") || exit 71; fi
rm -f "$GIT_INDEX_FILE"
`

/**
 * The push: exit 3 when there is nothing to push, 4 when the branch already has the commit, 5 when a
 * force push would hit the remote's default branch, 6 when the branch exists (and is not the task's
 * own last push) without force, 20 when the remote cannot be read, 21 when the push fails.
 * Positional: $3 the branch, $4 "1" for force.
 */
const PUSH = `${COMMIT}
[ "$commit" = "$base" ] && { echo 'the workspace has no changes to push'; exit 3; }
[ -n "$2" ] && [ "$commit" = "$2" ] && { echo "lop-commit=$commit"; exit 4; }
refs=$(git ls-remote --symref origin HEAD "refs/heads/$3" 2>&1) || { printf '%s\\n' "$refs"; exit 20; }
default=$(printf '%s\\n' "$refs" | awk '$1 == "ref:" && $3 == "HEAD" { sub("^refs/heads/", "", $2); print $2 }')
tip=$(printf '%s\\n' "$refs" | awk -v r="refs/heads/$3" '$2 == r { print $1 }')
if [ "$4" = 1 ]; then
  [ -z "$default" ] && { echo "the remote's default branch cannot be told (no HEAD): a force push is refused"; exit 5; }
  [ "$default" = "$3" ] && { echo "$3 is the remote's default branch: it is never force-pushed"; exit 5; }
fi
if [ -n "$tip" ] && [ "$4" != 1 ] && [ "$tip" != "$2" ]; then echo "branch $3 exists on the remote (at $tip): give force to overwrite it"; exit 6; fi
git push --porcelain --force-with-lease="refs/heads/$3:$tip" origin "$commit:refs/heads/$3" 2>&1 || exit 21
echo "lop-commit=$commit"
`

/** The patch: the format-patch series from the original commit, or exit 3 when there is no change. */
const PATCH = `${COMMIT}
[ "$commit" = "$base" ] && exit 3
git format-patch --stdout "$base..$commit" 2>/dev/null || { echo 'git format-patch failed'; exit 72; }
`

export interface ShipConfig {
  author: { name: string, email: string }
  credentials: GitCredential[]
}

/** Commit and push, or the patch, for one task through its helper runner. */
export class Shipper {
  private readonly redactor: Redactor
  constructor (private readonly config: ShipConfig, secrets: string[]) {
    this.redactor = new Redactor([...secrets, ...Shipper.secretsOf(config.credentials)])
  }

  /** The values never to show (the credentials): for the engine's redaction of everything else. */
  static secretsOf (credentials: GitCredential[]): string[] {
    return credentials.map((c) => c.password).filter(Boolean)
  }

  private redact (s: string): string {
    return this.redactor.text(s)
  }

  private authorEnv (): string[] {
    const { name, email } = this.config.author
    return [`GIT_AUTHOR_NAME=${name}`, `GIT_AUTHOR_EMAIL=${email}`, `GIT_COMMITTER_NAME=${name}`, `GIT_COMMITTER_EMAIL=${email}`]
  }

  /**
   * Pushes the workspace's changes to `request.branch` of `remote`. `previous` is the task's last
   * push: its commit is the parent, and its branch tip is not "an existing branch". Never throws.
   */
  async push (run: HelperRun, remote: string, request: PushRequest, message: string, previous: PushResult | null): Promise<PushResult> {
    const at = Date.now()
    const prev = previous?.branch === request.branch && previous.commit ? previous.commit : ''
    const url = branchUrl(remote, request.branch)
    const fail = (error: PushErrorCode, text: string): PushResult => ({ branch: request.branch, commit: null, url: null, error, message: this.redact(text.trim()).slice(-1_000), at })
    const credential = credentialFor(this.config.credentials, remote)
    const env = [
      ...this.authorEnv(),
      'GIT_TERMINAL_PROMPT=0',
      // a helper that answers with the one credential (from this container's environment), and no other helper
      'GIT_CONFIG_COUNT=3',
      'GIT_CONFIG_KEY_0=credential.helper', 'GIT_CONFIG_VALUE_0=',
      'GIT_CONFIG_KEY_1=credential.helper',
      `GIT_CONFIG_VALUE_1=${credential ? '!f() { test "$1" = get && printf "username=%s\\npassword=%s\\n" "$LOP_GIT_USERNAME" "$LOP_GIT_PASSWORD"; }; f' : ''}`,
      'GIT_CONFIG_KEY_2=safe.directory', 'GIT_CONFIG_VALUE_2=/workspace',
      ...(credential ? [`LOP_GIT_USERNAME=${credential.username}`, `LOP_GIT_PASSWORD=${credential.password}`] : [])
    ]
    let run1
    try {
      run1 = await run(PUSH, [message, prev, request.branch, request.force ? '1' : '0'], { network: true, env })
    } catch (err) {
      return fail('error', `the push helper did not run: ${(err as Error).message}`)
    }
    const { exitCode, output } = run1
    const commit = /^lop-commit=([0-9a-f]{40})$/m.exec(output)?.[1]
    if ((exitCode === 0 || exitCode === 4) && commit) return { branch: request.branch, commit, url, error: null, message: null, at }
    if (exitCode === 3) return fail('no_changes', output)
    if (exitCode === 5) return fail('default_branch', output)
    if (exitCode === 6) return fail('exists', output)
    if (exitCode === 20 || exitCode === 21) return fail(classify(output), output)
    return fail('error', output || `the push helper exited with ${exitCode}`)
  }

  /** The changes since the original commit as a format-patch series (committed first when needed), capped. */
  async patch (run: HelperRun, message: string, limit = PATCH_LIMIT): Promise<{ patch: string, truncated: boolean, commits: number }> {
    const { exitCode, output } = await run(PATCH, [message, ''], { network: false, env: this.authorEnv() })
    if (exitCode === 3) return { patch: '', truncated: false, commits: 0 }
    if (exitCode !== 0) throw new Error(`the patch could not be made: ${this.redact(output.trim()).slice(-500)}`)
    const text = this.redact(output)
    const commits = (text.match(/^From [0-9a-f]{40} /gm) ?? []).length
    if (Buffer.byteLength(text) <= limit) return { patch: text, truncated: false, commits }
    return { patch: Buffer.from(text).subarray(0, limit).toString('utf8').replace(/\uFFFD$/, ''), truncated: true, commits }
  }
}

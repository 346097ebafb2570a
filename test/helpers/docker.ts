/** Real-engine helpers: the locally built base image, and labels so tests clean up after themselves. */
import type { Test } from 'tap'
import { DockerEngine } from '../../services/docker/engine.js'
import { LABEL } from '../../services/runner/container-spec.js'

/** Built by scripts/base-image.sh (called from .ci/run): a Debian minbase imported locally. */
export const BASE_IMAGE = process.env.TEST_BASE_IMAGE ?? 'letta-opencode-base:bookworm'
export const TEST_LABEL = 'letta-opencode-plugin.test'

export const engine = new DockerEngine()

/** Removes every container this test run created (by label) when the test ends. */
export function cleanupContainers (t: Test, run: string): void {
  t.teardown(async () => {
    const left = await engine.listContainers({ [TEST_LABEL]: run })
    await Promise.all(left.map((c) => engine.removeContainer(c.Id, { force: true }).catch(() => {})))
  })
}

export async function collect (chunks: AsyncIterable<{ stream: string, data: Buffer }>): Promise<{ stdout: string, stderr: string }> {
  const out = { stdout: '', stderr: '' }
  for await (const c of chunks) out[c.stream as 'stdout' | 'stderr'] += c.data.toString('utf8')
  return out
}

export async function waitFor (t: Test, what: string, check: () => boolean | Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const until = Date.now() + timeoutMs
  while (Date.now() < until) {
    if (await check()) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  t.fail(`timed out waiting for ${what}`)
}

/** The agent's containers of a task (not its short-lived workspace helpers, which carry the task's label too). */
export async function runContainers (taskId: string, on: DockerEngine = engine): Promise<Awaited<ReturnType<DockerEngine['listContainers']>>> {
  return await on.listContainers({ [LABEL.task]: taskId, [LABEL.role]: 'run' })
}

/** Whether the task's agent container runs: a task is marked running before its container is created and started. */
export async function containerRuns (taskId: string, on: DockerEngine = engine): Promise<boolean> {
  return (await runContainers(taskId, on)).some((c) => c.State === 'running')
}

/** Removes the containers and volumes a test service (its data directory, `owner`) left behind. */
export async function removeOwned (owner: string): Promise<void> {
  await removeOwnedOn(engine, owner)
}

/** The same on another engine (engine B of the cluster tests). */
export async function removeOwnedOn (on: DockerEngine, owner: string): Promise<void> {
  for (const c of await on.listContainers({ [LABEL.owner]: owner })) await on.removeContainer(c.Id, { force: true }).catch(() => {})
  for (const v of await on.listVolumes({ [LABEL.owner]: owner })) await on.removeVolume(v.Name, true).catch(() => {})
}

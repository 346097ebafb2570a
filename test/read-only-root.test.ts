/**
 * A read-only root for runner containers (CIS Docker Benchmark 5.12, RUNNER_READ_ONLY_ROOTFS, on by
 * default): the container's root filesystem cannot be written, the workspace and /tmp (a size-limited
 * tmpfs, where the XDG cache, state and config homes point) can, for a non-root user in an image that
 * has no /workspace; RUNNER_READ_ONLY_ROOTFS=false gives back a writable root and no tmpfs.
 * The agent is a shell (built here from the stand-in agent image): the task text is run by `sh -c`.
 */
import t, { type Test } from 'tap'
import { listen } from './helpers/app.js'
import { containerRuns, engine, runContainers, waitFor } from './helpers/docker.js'
import { callTool, connect, toolOk } from './helpers/mcp.js'
import { buildShellImage, SHELL_IMAGE } from './helpers/shell-image.js'
import { settled, type TaskResult } from './helpers/tasks.js'

const ENV = { RUNNER_IMAGE: SHELL_IMAGE, RUNNER_NETWORK: 'none', RUNNER_MEMORY_LIMIT: '128m', RUNNER_STOP_GRACE_S: '1', RUNNER_CPU_LIMIT: '0.5', RUNNER_TMPFS_SIZE: '16m' }

async function run (t: Test, env: Record<string, string>, task: string): Promise<TaskResult> {
  const { url } = await listen(t, { env: { ...ENV, ...env } })
  const { client } = await connect(t, url, { 'x-agent-id': 'agent-ro' })
  return await settled(client, await toolOk(client, 'opencode_execute_task', { task_description: task, sync: true }) as TaskResult)
}

const SCRIPT = [
  'grep " / " /proc/mounts | cut -d" " -f4 | cut -d, -f1 | sed "s/^/root=/"',
  'grep " /tmp " /proc/mounts | cut -d" " -f3 | sed "s/^/tmp=/"',
  'echo "$XDG_CONFIG_HOME $XDG_CACHE_HOME $XDG_STATE_HOME"',
  '(echo x > /var/tmp/out && echo var-tmp-written) 2>/dev/null || echo var-tmp-refused',
  '(echo x > /tmp/out && echo tmp-written) || echo tmp-refused',
  '(echo x > /workspace/out && echo workspace-written) || echo workspace-refused',
  '(mkdir -p "$XDG_CONFIG_HOME/opencode" && echo config-written) 2>/dev/null || echo config-refused'
].join('; ')

t.test('on by default: the root is read-only, the workspace and a size-limited /tmp are writable', async (t) => {
  buildShellImage()
  const { url } = await listen(t, { env: ENV })
  const { client } = await connect(t, url, { 'x-agent-id': 'agent-ro' })
  const running = await toolOk(client, 'opencode_execute_task', { task_description: 'sleep 30' }) as TaskResult
  await waitFor(t, 'container running', async () => await containerRuns(running.task_id))
  const [c] = await runContainers(running.task_id)
  const info = await engine.inspectContainer(c.Id)
  t.equal(info.HostConfig.ReadonlyRootfs, true)
  t.same(info.HostConfig.Tmpfs, { '/tmp': `rw,nosuid,nodev,size=${16 * 1024 ** 2},mode=1777` })
  t.ok(info.Config.Env?.includes('XDG_CACHE_HOME=/tmp/.cache'))
  await callTool(client, 'send_task_control', { task_id: running.task_id, control: 'cancel' })

  const done = await run(t, {}, SCRIPT)
  t.equal(done.status, 'completed', String(done.error))
  t.equal(done.output, [
    'root=ro', 'tmp=tmpfs', '/tmp/.config /tmp/.cache /tmp/.local/state',
    'var-tmp-refused', 'tmp-written', 'workspace-written', 'config-written', ''
  ].join('\n'))

  const full = await run(t, {}, 'head -c 20000000 /dev/zero > /tmp/big; echo exit=$?')
  // stdout and stderr are one stream: their lines may come in either order
  t.match(full.output, /No space left on device/, 'the tmpfs holds at most RUNNER_TMPFS_SIZE')
  t.match(full.output, /^exit=1$/m, 'the write failed')
})

t.test('RUNNER_READ_ONLY_ROOTFS=false: a writable root and no tmpfs, as before', async (t) => {
  buildShellImage()
  const done = await run(t, { RUNNER_READ_ONLY_ROOTFS: 'false' }, SCRIPT + '; echo "xdg=$XDG_CACHE_HOME"')
  t.equal(done.status, 'completed', String(done.error))
  t.equal(done.output, [
    'root=rw', '  ', 'var-tmp-written', 'tmp-written', 'workspace-written', 'config-refused', 'xdg=', ''
  ].join('\n'))
})

t.test('RUNNER_TMPFS_SIZE is checked at start', async (t) => {
  await t.rejects(listen(t, { env: { ...ENV, RUNNER_TMPFS_SIZE: '512k' } }), /RUNNER_TMPFS_SIZE="512k": expected a size from 1m to 16g/)
  await t.rejects(listen(t, { env: { ...ENV, RUNNER_READ_ONLY_ROOTFS: 'maybe' } }), /RUNNER_READ_ONLY_ROOTFS/)
})

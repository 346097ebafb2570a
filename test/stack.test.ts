/**
 * The Swarm stack (stack.yaml), deployed the way an operator deploys it, on engine B (the second
 * engine scripts/docker-engine-b.sh starts; the first engine is never made a swarm: other tests run
 * there). A one-node swarm on loopback, `docker stack deploy` of stack.yaml plus a small override (host
 * networking, since engine B runs with iptables off; the CI PostgreSQL as the external database), then
 * from outside: Swarm reports the replica healthy, GET /health through the published port, one task
 * through MCP whose runner container ran on engine B (not on the first engine) and whose row is in that
 * database, and `docker stack rm`
 * leaving no service, container, network or secret of the stack behind.
 */
import { execFile } from 'node:child_process'
import { statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js'
import pg from 'pg'
import t from 'tap'
import { DockerEngine } from '../services/docker/engine.js'
import { LABEL } from '../services/runner/container-spec.js'
import { tempDir } from './helpers/app.js'
import { engine as engineA, waitFor } from './helpers/docker.js'
import { connect } from './helpers/mcp.js'
import { freshDatabase } from './helpers/postgres.js'
import { freePort } from './helpers/server.js'
import { settled, type TaskResult } from './helpers/tasks.js'

const execFileP = promisify(execFile)
const ROOT = new URL('..', import.meta.url).pathname
const SOCK_B = process.env.ENGINE_B_SOCK ?? '/run/docker-b.sock'
const HOST_B = `unix://${SOCK_B}`
const engineB = new DockerEngine({ socketPath: SOCK_B })
const TOKEN = 'stack-test-token-0123456789abcdef'
const STACK = `lop-stack-${process.pid}`
const NS = 'com.docker.stack.namespace'

/** The docker CLI aimed at engine B (never at the first engine). */
async function dockerB (args: string[], env: Record<string, string> = {}): Promise<string> {
  const { stdout } = await execFileP('docker', args, {
    env: { ...process.env, ...env, DOCKER_HOST: HOST_B },
    timeout: 5 * 60_000,
    maxBuffer: 16 * 1024 * 1024
  })
  return stdout.trim()
}
const lines = (s: string) => s.split('\n').filter(Boolean)
/** What engine B still holds of the stack, by the label `docker stack deploy` puts on everything. */
async function leftOf (kind: 'service' | 'network' | 'secret' | 'container'): Promise<string[]> {
  const args = kind === 'container' ? ['ps', '-a'] : [kind, 'ls']
  return lines(await dockerB([...args, '--filter', `label=${NS}=${STACK}`, '--format', '{{.ID}}']))
}

t.test('swarm stack on engine B: healthy, a task end to end on engine B, stack rm leaves nothing', async (t) => {
  await engineB.ping().catch((err: Error) => {
    throw new Error(`engine B does not answer on ${SOCK_B} (${err.message}): run scripts/docker-engine-b.sh (as root)`)
  })
  t.equal(await dockerB(['info', '--format', '{{.Swarm.LocalNodeState}}']), 'inactive', 'engine B is in no swarm before the test')

  // The swarm's gateway bridge, made beforehand with a Linux name and subnet of engine B's own, so it
  // can never meet anything of the first engine (it would otherwise be `docker_gwbridge` on the host)
  await dockerB(['network', 'create', '--subnet', '10.214.250.0/24',
    '--opt', 'com.docker.network.bridge.name=lopb_gwbridge',
    '--opt', 'com.docker.network.bridge.enable_icc=false',
    '--opt', 'com.docker.network.bridge.enable_ip_masquerade=false', 'docker_gwbridge'])
  const swarmPort = await freePort()
  await dockerB(['swarm', 'init', '--advertise-addr', '127.0.0.1', '--listen-addr', `127.0.0.1:${swarmPort}`, '--default-addr-pool', '10.215.0.0/16'])
  t.teardown(async () => {
    await dockerB(['stack', 'rm', STACK]).catch(() => '')
    await waitFor(t, 'the stack\'s containers gone (teardown)', async () => (await leftOf('container')).length === 0, 120_000)
    for (const v of lines(await dockerB(['volume', 'ls', '-q', '--filter', `label=${NS}=${STACK}`]))) await dockerB(['volume', 'rm', '-f', v]).catch(() => '')
    for (const v of await engineB.listVolumes({ [LABEL.service]: 'letta-opencode-plugin' })) await engineB.removeVolume(v.Name, true).catch(() => {})
    await dockerB(['swarm', 'leave', '--force']).catch(() => '')
    await dockerB(['network', 'rm', 'docker_gwbridge']).catch(() => '')
  })

  // what the operator provides: the secrets as files, and the variables of the deploy's shell
  const dir = tempDir(t, 'lop-stack-')
  const secret = (name: string, value: string) => { writeFileSync(join(dir, name), value + '\n'); return join(dir, name) }
  const databaseUrl = await freshDatabase(t)
  const port = await freePort()
  // host networking for the service (engine B has iptables off, and the CI PostgreSQL is on loopback)
  writeFileSync(join(dir, 'override.yaml'), [
    'networks:',
    '  letta-opencode:',
    '    external: true',
    '    name: host',
    ''
  ].join('\n'))
  const vars = {
    SERVICE_IMAGE: 'letta-opencode-plugin:latest',
    RUNNER_IMAGE: 'letta-opencode-test-agent:latest',
    RUNNER_NETWORK: 'none',
    MCP_PORT: String(port),
    DOCKER_SOCKET: SOCK_B,
    DOCKER_GID: String(statSync(SOCK_B).gid),
    HEALTHCHECK_INTERVAL: '2s',
    POSTGRES_REPLICAS: '0',
    MCP_AUTH_TOKENS_SECRET: secret('tokens', `ci:${TOKEN}`),
    DATABASE_URL_SECRET: secret('database-url', databaseUrl),
    CLUSTER_TOKEN_SECRET: secret('cluster-token', 'stack-cluster-token-0123456789abcdef'),
    POSTGRES_PASSWORD_SECRET: secret('postgres-password', 'unused-external-database')
  }
  const started = Date.now()
  // --resolve-image never: no registry is asked for the images' digests (they are local to engine B)
  await dockerB(['stack', 'deploy', '--resolve-image', 'never', '--detach=true', '-c', join(ROOT, 'stack.yaml'), '-c', join(dir, 'override.yaml'), STACK], vars)

  const service = `${STACK}_letta-opencode-plugin`
  t.equal(await dockerB(['service', 'inspect', service, '--format', '{{.Spec.Mode.Global}} {{.Spec.EndpointSpec.Mode}}']), '{} dnsrr', 'global mode, DNS round robin')
  t.equal(await dockerB(['service', 'inspect', `${STACK}_postgres`, '--format', '{{.Spec.Mode.Replicated.Replicas}}']), '0', 'the bundled PostgreSQL is off: the database is external')
  await waitFor(t, 'Swarm reports the replica running and healthy', async () => {
    const state = await dockerB(['service', 'ps', service, '--filter', 'desired-state=running', '--format', '{{.CurrentState}}']).catch(() => '')
    if (!state.startsWith('Running')) return false
    const ids = lines(await dockerB(['ps', '-q', '--filter', `label=com.docker.swarm.service.name=${service}`]))
    return ids.length === 1 && (await dockerB(['inspect', ids[0], '--format', '{{.State.Health.Status}}'])) === 'healthy'
  }, 240_000)
  t.comment(`deploy → healthy: ${Date.now() - started} ms`)
  if (t.counts.fail > 0) {
    t.comment(await dockerB(['service', 'ps', '--no-trunc', service]).catch(() => ''))
    t.comment(await execFileP('docker', ['service', 'logs', '--tail', '20', service], { env: { ...process.env, DOCKER_HOST: HOST_B } }).then((r) => r.stdout + r.stderr, () => ''))
    return
  }
  const [replica] = lines(await dockerB(['ps', '-q', '--filter', `label=com.docker.swarm.service.name=${service}`]))
  t.equal(await dockerB(['inspect', replica, '--format', '{{.Config.User}}']), `letta:${vars.DOCKER_GID}`, 'the non-root user, with the socket\'s group')
  t.equal(lines(await dockerB(['exec', replica, 'ls', '/run/secrets'])).sort().join(','), 'cluster_token,database_url,mcp_auth_tokens', 'the three secrets, as files')
  t.notMatch(await dockerB(['service', 'inspect', service]), TOKEN, 'no token in the service spec')

  const url = `http://127.0.0.1:${port}`
  const health = await fetch(`${url}/health`)
  t.equal(health.status, 200)
  t.match(await health.json(), { status: 'healthy', service: 'letta-opencode-plugin', security: { authentication: true }, docker: { reachable: true } }, 'GET /health through the published port')
  t.equal((await fetch(`${url}/tasks`)).status, 401, 'the token from the secret file is required')

  const { client } = await connect(t, url, { authorization: `Bearer ${TOKEN}` })
  const since = Math.floor(Date.now() / 1000) - 5
  const res = await client.callTool({ name: 'opencode_execute_task', arguments: { task_description: 'say hello from engine B', sync: true } }, undefined, { timeout: 180_000 }) as CallToolResult
  t.notOk(res.isError, 'the task was accepted')
  const task = await settled(client, res.structuredContent as TaskResult)
  t.match(task, { status: 'completed' }, 'the task completed')
  t.match(JSON.stringify(task), 'hello from engine B', 'with the stand-in agent\'s answer')
  await client.close()
  // the task store is the external PostgreSQL of the database_url secret, not SQLite in /data
  const db = new pg.Client({ connectionString: databaseUrl })
  await db.connect()
  const rows = (await db.query<{ status: string }>('SELECT status FROM tasks WHERE id = $1', [task.task_id]).finally(() => db.end())).rows
  t.same(rows, [{ status: 'completed' }], 'the task is in the database of the database_url secret')
  // the runner container: started on engine B (its event), and nothing of the task on the first engine
  const events = await dockerB(['events', '--since', String(since), '--until', String(Math.floor(Date.now() / 1000) + 1), '--filter', 'type=container', '--filter', 'event=start', '--filter', `label=${LABEL.task}=${task.task_id}`, '--format', '{{.Actor.Attributes.image}}'])
  t.equal(events, 'letta-opencode-test-agent:latest', 'the runner container started on engine B')
  t.same((await engineA.listContainers({ [LABEL.task]: task.task_id })).map((c) => c.Id), [], 'no runner container on the first engine')
  t.same((await engineA.listVolumes({ [LABEL.task]: task.task_id })).map((v) => v.Name), [], 'no workspace volume on the first engine')
  t.ok((await engineB.listVolumes({ [LABEL.task]: task.task_id })).length > 0, 'the workspace volume is on engine B')

  const removing = Date.now()
  await dockerB(['stack', 'rm', STACK])
  await waitFor(t, 'the stack\'s containers and networks gone', async () => (await leftOf('container')).length === 0 && (await leftOf('network')).length === 0, 180_000)
  t.comment(`stack rm → nothing left: ${Date.now() - removing} ms`)
  t.same(await leftOf('service'), [], 'no service left')
  t.same(await leftOf('container'), [], 'no container left')
  t.same(await leftOf('network'), [], 'no network left')
  t.same(await leftOf('secret'), [], 'no secret left')
})

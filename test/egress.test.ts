/**
 * RUNNER_EGRESS=allowlist: runners join an internal network the service creates, and the service's
 * proxy (on that network's gateway) is the only way out. Stand-ins for the outside world listen on
 * this machine: an HTTP server on loopback that the proxy reaches through the test-only host map
 * (RUNNER_EGRESS_HOST_MAP), and a server in a container on another internal network the test makes.
 * The agent is a shell (see read-only-root.test.ts) that speaks HTTP with perl.
 */
import { writeFileSync } from 'node:fs'
import { createServer } from 'node:http'
import { connect as netConnect, createServer as createNetServer } from 'node:net'
import { join } from 'node:path'
import t from 'tap'
import { containerSpec, LABEL } from '../services/runner/container-spec.js'
import { matchRule, parseAllowList, widening } from '../services/runner/egress.js'
import { startModelServer } from './fixtures/model-server.js'
import { build, listen, tempDir } from './helpers/app.js'
import { engine, TEST_LABEL, waitFor } from './helpers/docker.js'
import { callTool, connect, toolOk } from './helpers/mcp.js'
import { opencodeConfigDir } from './helpers/opencode.js'
import { settled, type TaskResult } from './helpers/tasks.js'
import { HTTP, PROXY, section } from './helpers/egress.js'
import { buildShellImage, SHELL_IMAGE } from './helpers/shell-image.js'

t.test('allow-list entries: names, wildcards, ports; narrowing and widening', async (t) => {
  const rules = parseAllowList('api.example.com, *.cdn.test:8443, git.test:22')
  t.ok(matchRule(rules, 'api.example.com', 443))
  t.ok(matchRule(rules, 'API.example.com.', 80))
  t.notOk(matchRule(rules, 'api.example.com', 8080), 'no port: 443 and 80 only')
  t.notOk(matchRule(rules, 'x.api.example.com', 443))
  t.ok(matchRule(rules, 'a.b.cdn.test', 8443))
  t.notOk(matchRule(rules, 'cdn.test', 8443), 'a wildcard does not match its apex')
  t.notOk(matchRule(rules, 'a.cdn.test', 443))
  t.ok(matchRule(rules, 'git.test', 22))
  t.throws(() => parseAllowList('10.0.0.1'), /RUNNER_EGRESS_ALLOW entry "10.0.0.1" is not a host name/)
  t.throws(() => parseAllowList('a.test:99999'), /not a host name/)
  t.same(widening(parseAllowList('x.cdn.test:8443,api.example.com:443'), rules), [])
  t.same(widening(parseAllowList('other.test,api.example.com:8080'), rules).map((r) => r.pattern), ['other.test', 'api.example.com'])
})

t.test('the spec: open keeps RUNNER_NETWORK and no proxy; none has no network; allowlist joins the proxy network', async (t) => {
  const base = { RUNNER_IMAGE: 'x', RUNNER_CPU_LIMIT: 1, RUNNER_MEMORY_LIMIT: '64m', RUNNER_NETWORK: 'bridge', RUNNER_PIDS_LIMIT: 64, RUNNER_USER: '1000:1000', RUNNER_STOP_GRACE_S: 1, TASK_LOG_LIMIT: 0, RUNNER_OPENCODE_CONFIG_DIR: '', RUNNER_READ_ONLY_ROOTFS: true, RUNNER_TMPFS_SIZE: '16m' }
  const task = { id: 'task_x', agent_id: null, argv: ['run'] }
  const open = containerSpec({ ...base, RUNNER_EGRESS: 'open' }, task, 'o')
  t.equal(open.HostConfig?.NetworkMode, 'bridge')
  t.notOk(open.Env?.some((e) => /proxy=/i.test(e)))
  t.equal(containerSpec({ ...base, RUNNER_EGRESS: 'none' }, task, 'o').HostConfig?.NetworkMode, 'none')
  const env = ['HTTPS_PROXY=http://172.30.0.1:1234']
  const allow = containerSpec({ ...base, RUNNER_EGRESS: 'allowlist', egress: { network: 'lop-egress-x', env } }, task, 'o')
  t.equal(allow.HostConfig?.NetworkMode, 'lop-egress-x')
  t.ok(allow.Env?.includes(env[0]))
  t.throws(() => containerSpec({ ...base, RUNNER_EGRESS: 'allowlist' }, task, 'o'), /egress proxy is not running/)
})

t.test('allowlist: an allowed host through the proxy, 403 and egress_denied for the rest, no way around it', async (t) => {
  buildShellImage()
  // the allowed host's stand-in: answers with the Host it was asked for
  const allowed = createServer((req, res) => res.end(`hello from allowed, host=${req.headers.host}\n`))
  await new Promise<void>((resolve) => allowed.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => allowed.close(resolve)))
  const port = (allowed.address() as { port: number }).port
  const dir = tempDir(t)
  const hostMap = join(dir, 'hosts.json')
  writeFileSync(hostMap, JSON.stringify({ 'allowed.test': `127.0.0.1:${port}` }))

  // a server on another internal network made here: a runner must not reach it directly
  const run = `egress-${process.pid}`
  const other = `lop-test-other-${process.pid}`
  await engine.createNetwork({ Name: other, Internal: true, Labels: { [TEST_LABEL]: run } })
  const { Id: otherId } = await engine.createContainer({
    Image: SHELL_IMAGE,
    Entrypoint: ['perl', '-MIO::Socket::INET', '-e', '$s=IO::Socket::INET->new(LocalPort=>8080,Listen=>5,ReuseAddr=>1) or die; while($c=$s->accept){print $c "HTTP/1.0 200 OK\\r\\n\\r\\nother\\n"; close $c}'],
    Labels: { [TEST_LABEL]: run },
    HostConfig: { NetworkMode: other }
  })
  t.teardown(async () => {
    await engine.removeContainer(otherId, { force: true }).catch(() => {})
    await engine.removeNetwork(other).catch(() => {})
  })
  await engine.startContainer(otherId)
  const otherNet = await engine.inspectNetwork(other)
  const otherIp = Object.values(otherNet?.Containers ?? {})[0]?.IPv4Address.split('/')[0]
  t.ok(otherIp, 'the other server has an address')

  const { app, url } = await listen(t, {
    env: {
      RUNNER_IMAGE: SHELL_IMAGE,
      RUNNER_MEMORY_LIMIT: '128m',
      RUNNER_STOP_GRACE_S: '1',
      RUNNER_CPU_LIMIT: '0.5',
      RUNNER_EGRESS: 'allowlist',
      RUNNER_EGRESS_ALLOW: 'allowed.test',
      RUNNER_EGRESS_HOST_MAP: hostMap
    }
  })
  const net = await engine.inspectNetwork(app.egress?.network ?? '')
  t.match(net, { Internal: true, Labels: { [LABEL.service]: 'letta-opencode-plugin', [LABEL.owner]: app.tasks.owner } }, 'the service made an internal, labelled network')
  const gateway = net?.IPAM.Config?.[0]?.Gateway as string
  const servicePort = new URL(url).port

  const script = [
    HTTP, PROXY,
    'echo "proxy=$HTTP_PROXY https=$HTTPS_PROXY no=$NO_PROXY"',
    'echo "== allowed"; http "GET http://allowed.test/hello HTTP/1.0\\n\\n" "$PH" "$PP"',
    'echo "== denied"; http "GET http://denied.test/ HTTP/1.0\\n\\n" "$PH" "$PP"',
    'echo "== raw ip"; http "CONNECT 127.0.0.1:443 HTTP/1.1\\nHost: 127.0.0.1:443\\n\\n" "$PH" "$PP"',
    'echo "== tunnel, another Host inside"; http "CONNECT allowed.test:443 HTTP/1.1\\n\\nGET / HTTP/1.0\\nHost: denied.test\\n\\n" "$PH" "$PP"',
    `echo "== direct other"; http "GET / HTTP/1.0\\n\\n" ${otherIp} 8080`,
    `echo "== direct service"; http "GET /health HTTP/1.0\\n\\n" ${gateway} ${servicePort}`,
    'echo "== dns"; getent hosts denied.test allowed.test || echo "no names"'
  ].join('\n')

  const { client } = await connect(t, url, { 'x-agent-id': 'agent-egress' })
  const done = await settled(client, await toolOk(client, 'opencode_execute_task', { task_description: script, sync: true }) as TaskResult)
  t.equal(done.status, 'completed', String(done.error))
  const out = String(done.output)
  const part = (name: string) => section(out, name)
  t.match(out, new RegExp(`proxy=http://${gateway.replace(/\./g, '\\.')}:\\d+ https=http://`), 'the proxy variables point at the gateway')
  t.match(part('allowed'), /200 OK[\s\S]*hello from allowed, host=allowed\.test/)
  t.match(part('denied'), /^HTTP\/1\.1 403 Forbidden[\s\S]*egress to denied\.test:80 is not allowed/)
  t.notMatch(part('denied'), /hello/)
  t.match(part('raw ip'), /^HTTP\/1\.1 403 Forbidden/)
  t.match(part('tunnel, another Host inside'), /200 Connection Established[\s\S]*hello from allowed, host=denied\.test/, 'the tunnel goes to the allowed host only, whatever is asked inside it')
  t.match(part('direct other'), /^connect failed/)
  t.match(part('direct service'), /^connect failed/)
  t.match(part('dns'), /^no names/)

  type History = { events: Array<{ type: string, data: Record<string, unknown> }> }
  await waitFor(t, 'egress_denied events', async () => {
    const h = (await callTool(client, 'get_task_history', { task_id: done.task_id })).structuredContent as History
    return h.events.filter((e) => e.type === 'egress_denied').length >= 2
  })
  const denied = ((await callTool(client, 'get_task_history', { task_id: done.task_id })).structuredContent as History).events.filter((e) => e.type === 'egress_denied')
  t.match(denied.map((e) => e.data).sort((a, b) => String(a.host).localeCompare(String(b.host))), [
    { host: '127.0.0.1', port: 443, reason: 'ip_address', at: String },
    { host: 'denied.test', port: 80, reason: 'not_allowed', at: String }
  ])
  const metrics = await app.metrics.text()
  t.match(metrics, /lop_egress_denied_total\{reason="not_allowed"\} 1/)
  t.match(metrics, /lop_egress_denied_total\{reason="ip_address"\} 1/)
  t.match(metrics, /lop_egress_allowed_total\{rule="allowed\.test"\} 2/)
})

t.test('byte counts per task and direction in the task view (HTTP and MCP) and /metrics; the service\'s own port is closed to runners', async (t) => {
  buildShellImage()
  const DOWNLOAD = 1_000_000
  const UPLOAD = 300_000
  const server = createServer((req, res) => {
    if (req.url === '/download') { res.end(Buffer.alloc(DOWNLOAD, 'd')); return }
    let n = 0
    req.on('data', (c: Buffer) => { n += c.length })
    req.on('end', () => res.end(`uploaded ${n}\n`))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  const hostMap = join(tempDir(t), 'hosts.json')
  writeFileSync(hostMap, JSON.stringify({ 'bytes.test': `127.0.0.1:${(server.address() as { port: number }).port}` }))
  const app = await build(t, {
    env: { RUNNER_IMAGE: SHELL_IMAGE, RUNNER_MEMORY_LIMIT: '128m', RUNNER_STOP_GRACE_S: '1', RUNNER_CPU_LIMIT: '0.5', RUNNER_EGRESS: 'allowlist', RUNNER_EGRESS_ALLOW: 'bytes.test', RUNNER_EGRESS_HOST_MAP: hostMap }
  })
  // the service listens on the egress network's gateway (as MCP_HOST=0.0.0.0 would): a runner that
  // connects to it is not served; the test's clients are, through a forwarder on loopback (the
  // connection comes from the gateway's own address; the Host header stays a loopback one)
  const gateway = app.egress?.address as string
  await app.listen({ host: gateway, port: 0 })
  const servicePort = (app.server.address() as { port: number }).port
  const forwarder = createNetServer((c) => { const s = netConnect(servicePort, gateway); c.pipe(s).pipe(c); s.on('error', () => c.destroy()); c.on('error', () => s.destroy()) })
  await new Promise<void>((resolve) => forwarder.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { forwarder.close() })
  const url = `http://127.0.0.1:${(forwarder.address() as { port: number }).port}`

  // a download through the forward proxy (plain HTTP), an upload through a CONNECT tunnel, one refusal
  const perl = String.raw`perl -MIO::Socket::INET -e '
    ($h,$p,$up)=@ARGV;
    $s=IO::Socket::INET->new(PeerAddr=>$h,PeerPort=>$p) or die "no proxy";
    print $s "GET http://bytes.test/download HTTP/1.0\r\n\r\n"; $n=0; while(($r=sysread($s,$b,65536))>0){$n+=$r} print "downloaded $n\n";
    $s=IO::Socket::INET->new(PeerAddr=>$h,PeerPort=>$p) or die "no proxy";
    print $s "CONNECT bytes.test:443 HTTP/1.1\r\nHost: bytes.test:443\r\n\r\n"; while(<$s>){ last if /^\r?$/ }
    print $s "POST /upload HTTP/1.0\r\nContent-Length: $up\r\n\r\n" . ("u" x $up); print while <$s>;' "$PH" "$PP" ${UPLOAD} 2>&1`
  const script = [HTTP, PROXY, perl,
    'echo "== denied"; http "GET http://other.test/ HTTP/1.0\\n\\n" "$PH" "$PP"',
    `echo "== service"; http "GET /health HTTP/1.0\\n\\n" "$PH" ${servicePort}`].join('\n')
  const { client } = await connect(t, url, { 'x-agent-id': 'agent-egress' })
  const done = await settled(client, await toolOk(client, 'opencode_execute_task', { task_description: script, sync: true }) as TaskResult)
  t.equal(done.status, 'completed', String(done.error))
  const out = String(done.output)
  t.match(out, /downloaded (\d+)/)
  t.ok(Number(/downloaded (\d+)/.exec(out)?.[1]) > DOWNLOAD, 'the whole download came through')
  t.match(out, `uploaded ${UPLOAD}`)
  t.match(section(out, 'denied'), /^HTTP\/1\.1 403/)
  t.notMatch(section(out, 'service'), /HTTP|healthy/, 'the service\'s own port on the proxy\'s address answers nothing to a runner')

  type Egress = { bytes_out: number, bytes_in: number, connections: number, denied: number, hosts: Record<string, number> }
  const view = async () => ((await callTool(client, 'get_task_status', { task_id: done.task_id })).structuredContent as { egress: Egress | null }).egress
  await waitFor(t, 'both connections and the refusal counted in the task view', async () => {
    const e = await view()
    return e !== null && e.connections === 2 && e.denied === 1
  })
  const egress = await view() as Egress
  // each direction: the payload plus the HTTP headers around it (a few hundred bytes)
  t.ok(egress.bytes_in >= DOWNLOAD && egress.bytes_in < DOWNLOAD + 2048, `bytes_in ${egress.bytes_in} is the download (${DOWNLOAD}) and its headers`)
  t.ok(egress.bytes_out >= UPLOAD && egress.bytes_out < UPLOAD + 2048, `bytes_out ${egress.bytes_out} is the upload (${UPLOAD}) and its headers`)
  t.same(egress.hosts, { 'bytes.test:80': 1, 'bytes.test:443': 1 }, 'allowed connections by host:port')
  const http = await (await fetch(`${url}/tasks/${done.task_id}`)).json() as { egress: Egress }
  t.same(http.egress, egress, 'the HTTP view shows the same counts')
  const metrics = await app.metrics.text()
  t.equal(Number(/lop_egress_bytes_total\{direction="in"\} (\d+)/.exec(metrics)?.[1]), egress.bytes_in, 'metrics: bytes in')
  t.equal(Number(/lop_egress_bytes_total\{direction="out"\} (\d+)/.exec(metrics)?.[1]), egress.bytes_out, 'metrics: bytes out')

  const { url: openUrl } = await listen(t, { env: { RUNNER_IMAGE: SHELL_IMAGE } })
  const openClient = (await connect(t, openUrl)).client
  const plain = await settled(openClient, await toolOk(openClient, 'opencode_execute_task', { task_description: 'echo hi', sync: true }) as TaskResult)
  t.equal((plain as unknown as { egress: unknown }).egress, null, 'without the proxy: null')
})

t.test('a task narrows the allow-list with egress_allow (never widens it): the rest of the server\'s list is refused to it', async (t) => {
  buildShellImage()
  const allowed = createServer((req, res) => res.end(`hello from ${req.headers.host}\n`))
  await new Promise<void>((resolve) => allowed.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => allowed.close(resolve)))
  const port = (allowed.address() as { port: number }).port
  const hostMap = join(tempDir(t), 'hosts.json')
  writeFileSync(hostMap, JSON.stringify({ 'one.test': `127.0.0.1:${port}`, 'two.test': `127.0.0.1:${port}` }))
  const { url } = await listen(t, {
    env: { RUNNER_IMAGE: SHELL_IMAGE, RUNNER_MEMORY_LIMIT: '128m', RUNNER_STOP_GRACE_S: '1', RUNNER_CPU_LIMIT: '0.5', RUNNER_EGRESS: 'allowlist', RUNNER_EGRESS_ALLOW: 'one.test,two.test', RUNNER_EGRESS_HOST_MAP: hostMap }
  })
  const { client } = await connect(t, url, { 'x-agent-id': 'agent-egress' })
  const script = [HTTP, PROXY,
    'echo "== one"; http "GET http://one.test/ HTTP/1.0\\n\\n" "$PH" "$PP"',
    'echo "== two"; http "GET http://two.test/ HTTP/1.0\\n\\n" "$PH" "$PP"'].join('\n')

  const narrowed = await settled(client, await toolOk(client, 'opencode_execute_task', { task_description: script, sync: true, egress_allow: ['one.test'] }) as TaskResult)
  t.equal(narrowed.status, 'completed', String(narrowed.error))
  t.same(narrowed.egress_allow, ['one.test'], 'the view shows the task\'s own list')
  t.match(section(String(narrowed.output), 'one'), /hello from one\.test/)
  t.match(section(String(narrowed.output), 'two'), /^HTTP\/1\.1 403 Forbidden[\s\S]*task's egress_allow/, 'two.test is on the server\'s list, not on the task\'s')
  type History = { events: Array<{ type: string, data: Record<string, unknown> }> }
  await waitFor(t, 'the egress_denied event', async () => ((await callTool(client, 'get_task_history', { task_id: narrowed.task_id })).structuredContent as History).events.some((e) => e.type === 'egress_denied'))
  const denied = ((await callTool(client, 'get_task_history', { task_id: narrowed.task_id })).structuredContent as History).events.filter((e) => e.type === 'egress_denied')
  t.match(denied.map((e) => e.data), [{ host: 'two.test', port: 80, reason: 'not_allowed_for_task' }])
  const status = (await callTool(client, 'get_task_status', { task_id: narrowed.task_id })).structuredContent as { recent_events: Array<{ type: string, message: string }> }
  t.ok(status.recent_events.some((e) => e.message === 'egress_denied: two.test:80 (not_allowed_for_task)'), 'the one-line summary (the Letta block\'s events use it too) names host, port and reason')

  const whole = await settled(client, await toolOk(client, 'opencode_execute_task', { task_description: script, sync: true }) as TaskResult)
  t.equal(whole.egress_allow, null, 'without egress_allow: the server\'s list')
  t.match(section(String(whole.output), 'two'), /hello from two\.test/, 'another task still reaches two.test')

  const wider = await callTool(client, 'opencode_execute_task', { task_description: 'say no', egress_allow: ['one.test', 'three.test'] })
  t.equal(wider.isError, true)
  t.match((wider.content as Array<{ text: string }>)[0].text, /egress_allow may only narrow the server's list: three\.test is not within RUNNER_EGRESS_ALLOW/)
  const port8080 = await callTool(client, 'opencode_execute_task', { task_description: 'say no', egress_allow: ['one.test:8080'] })
  t.match((port8080.content as Array<{ text: string }>)[0].text, /one\.test:8080 is not within/, 'another port is wider too')
  const malformed = await callTool(client, 'opencode_execute_task', { task_description: 'say no', egress_allow: ['10.0.0.1'] })
  t.match(JSON.parse((malformed.content as Array<{ text: string }>)[0].text).error, /egress_allow entry "10\.0\.0\.1" is not a host name/)

  const { url: openUrl } = await listen(t, { env: { RUNNER_IMAGE: SHELL_IMAGE } })
  const { client: openClient } = await connect(t, openUrl)
  const open = await callTool(openClient, 'opencode_execute_task', { task_description: 'say no', egress_allow: ['one.test'] })
  t.match((open.content as Array<{ text: string }>)[0].text, /egress_allow needs RUNNER_EGRESS=allowlist on the server \(it is open\)/)
})

t.test('RUNNER_EGRESS=none: no network at all; a bad RUNNER_EGRESS_ALLOW or RUNNER_EGRESS_SERVICE_CONTAINER stops start-up', async (t) => {
  buildShellImage()
  const { url } = await listen(t, { env: { RUNNER_IMAGE: SHELL_IMAGE, RUNNER_NETWORK: 'bridge', RUNNER_EGRESS: 'none', RUNNER_MEMORY_LIMIT: '64m' } })
  const { client } = await connect(t, url, { 'x-agent-id': 'agent-egress' })
  const done = await settled(client, await toolOk(client, 'opencode_execute_task', { task_description: 'ls /sys/class/net', sync: true }) as TaskResult)
  t.equal(done.output, 'lo\n')
  await t.rejects(listen(t, { env: { RUNNER_EGRESS_ALLOW: 'api.example.com,10.1.2.3' } }), /RUNNER_EGRESS_ALLOW entry "10\.1\.2\.3" is not a host name/)
  await t.rejects(listen(t, { env: { RUNNER_EGRESS: 'closed' } }), /RUNNER_EGRESS="closed": expected open \(RUNNER_NETWORK/)
  await t.rejects(listen(t, { env: { RUNNER_EGRESS: 'allowlist', RUNNER_EGRESS_SERVICE_CONTAINER: `lop-no-such-container-${process.pid}` } }),
    /RUNNER_EGRESS_SERVICE_CONTAINER="lop-no-such-container-\d+" is not a running container on this Docker engine/)
  const { app } = await listen(t, { env: { RUNNER_IMAGE: SHELL_IMAGE, RUNNER_EGRESS: 'allowlist', RUNNER_EGRESS_SERVICE_CONTAINER: 'host' } })
  const gateway = (await engine.inspectNetwork(app.egress?.network ?? ''))?.IPAM.Config?.[0]?.Gateway
  t.equal(app.egress?.address, gateway, 'host: the proxy listens on the gateway')
  t.equal(app.egress?.container, undefined)
})

t.test('the real OpenCode CLI reaches its model through the proxy when the model host is allowed, and fails clearly when not', async (t) => {
  const model = await startModelServer('127.0.0.1')
  t.teardown(() => model.close())
  const dir = tempDir(t)
  const hostMap = join(dir, 'hosts.json')
  writeFileSync(hostMap, JSON.stringify({ 'model.test': new URL(model.url).host }))
  // the model's URL names a host the proxy maps to the scripted model server on loopback
  const configDir = opencodeConfigDir(t, 'http://model.test/v1')
  const env = {
    RUNNER_IMAGE: 'letta-opencode-runner:latest',
    RUNNER_MEMORY_LIMIT: '1g',
    RUNNER_CPU_LIMIT: '1',
    RUNNER_STOP_GRACE_S: '1',
    RUNNER_MODEL: 'mock/scripted',
    RUNNER_OPENCODE_CONFIG_DIR: configDir,
    SYNC_WAIT_MS: '120000',
    RUNNER_EGRESS: 'allowlist',
    RUNNER_EGRESS_HOST_MAP: hostMap
  }
  for (const [allow, expected] of [['model.test', 'completed'], ['other.test', 'failed']] as const) {
    const { url } = await listen(t, { env: { ...env, RUNNER_EGRESS_ALLOW: allow } })
    const { client } = await connect(t, url, { 'x-agent-id': 'agent-egress' })
    const before = model.requests.length
    const done = await settled(client, await toolOk(client, 'opencode_execute_task', { task_description: '[script:write-edit] create hello.txt and fix its wording', sync: true }) as TaskResult)
    t.equal(done.status, expected, `RUNNER_EGRESS_ALLOW=${allow}: ${String(done.error)} ${String(done.output).slice(-300)}`)
    if (expected === 'completed') {
      t.equal(done.answer, 'Done: wrote hello.txt and edited it.')
      t.ok(model.requests.length > before, 'the model server was asked through the proxy')
    } else {
      t.equal(model.requests.length, before, 'the model server was never reached')
      t.match(String(done.output) + String(done.error), /403|not allowed|Forbidden/, 'the refusal shows in the task')
      const history = (await callTool(client, 'get_task_history', { task_id: done.task_id })).structuredContent as { events: Array<{ type: string, data: Record<string, unknown> }> }
      t.ok(history.events.some((e) => e.type === 'egress_denied' && e.data.host === 'model.test'), 'egress_denied for the model host')
    }
  }
})

import t from 'tap'
import { build, listen, tempDir } from './helpers/app.js'
import { waitFor } from './helpers/docker.js'
import { EngineProxy } from './helpers/engine-proxy.js'
import { connect } from './helpers/mcp.js'

t.test('/health reports the guide\'s fields and the real engine', async (t) => {
  const app = await build(t)
  const res = await app.inject('/health')
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.match(body, {
    status: 'healthy',
    service: 'letta-opencode-plugin',
    transport: 'streamable_http',
    protocol_version: '2025-06-18',
    sessions: 0,
    uptime: Number,
    timestamp: String,
    security: { origin_validation: true, localhost_binding: true, authentication: false },
    version: String,
    docker: { reachable: true, version: String, api_version: String, last_error: null }
  })
  t.ok(!Number.isNaN(Date.parse(body.timestamp)), 'ISO timestamp')
  t.ok(body.protocol_versions.includes('2025-11-25'))
})

t.test('security tells the truth about the configuration', async (t) => {
  const app = await build(t, { env: { MCP_HOST: '0.0.0.0', MCP_AUTH_TOKENS: 'letta:0123456789abcdef0123' } })
  t.match((await app.inject('/health')).json().security, { localhost_binding: false, authentication: true })
})

t.test('an unreachable engine makes the service unhealthy (503) without waiting on it', async (t) => {
  const app = await build(t, { docker: { socketPath: '/nonexistent/docker.sock' } })
  const res = await app.inject('/health')
  t.equal(res.statusCode, 503)
  t.match(res.json(), { status: 'unhealthy', docker: { reachable: false, version: null, last_error: /Docker engine unreachable/ } })
})

t.test('/health follows the engine going away and coming back, within the probe interval', async (t) => {
  const proxy = new EngineProxy(tempDir(t))
  await proxy.start()
  t.teardown(() => proxy.stop())
  const app = await build(t, { docker: { socketPath: proxy.socketPath }, env: { DOCKER_PROBE_INTERVAL_MS: '200' } })
  // a busy machine can time a first probe out: healthy once a probe got through
  await waitFor(t, 'healthy through the proxy', async () => (await app.inject('/health')).statusCode === 200, 30_000)

  await proxy.stop()
  // noticed by the probe (bounded generously: a busy machine runs the probe late, never not at all)
  await waitFor(t, '503 after the engine went away', async () => (await app.inject('/health')).statusCode === 503, 30_000)
  const down = (await app.inject('/health')).json()
  t.match(down, { status: 'unhealthy', docker: { reachable: false, last_error: /unreachable/ } })
  t.ok(down.docker.version, 'the last known engine version is kept')

  await proxy.start()
  await waitFor(t, '200 after the engine came back', async () => (await app.inject('/health')).statusCode === 200, 30_000)
  t.match((await app.inject('/health')).json(), { status: 'healthy', docker: { reachable: true, last_error: null } })
})

t.test('a health request makes no engine round trip (the probe result is cached)', async (t) => {
  const proxy = new EngineProxy(tempDir(t))
  await proxy.start()
  t.teardown(() => proxy.stop())
  const app = await build(t, { docker: { socketPath: proxy.socketPath }, env: { DOCKER_PROBE_INTERVAL_MS: '600000' } })
  const before = proxy.connections
  t.ok(before > 0, 'the first probe ran at start-up')
  for (let i = 0; i < 20; i++) t.equal((await app.inject('/health')).statusCode, 200)
  t.equal(proxy.connections, before, 'no connection to the engine for 20 health requests')
})

t.test('a sample period with no event-loop sample gives a load figure of 0, not Infinity (null), in /health and the health tool', async (t) => {
  const { app, url } = await listen(t, { docker: { socketPath: `${tempDir(t)}/no-engine.sock` } })
  const { client } = await connect(t, url)
  // a sample period in which the histogram got no sample (a starved loop) makes under-pressure report
  // Infinity until the next one, which JSON writes as null: that state, made at will
  const measured = app.memoryUsage.bind(app)
  app.memoryUsage = () => ({ ...measured(), eventLoopDelay: Infinity })
  const body = (await app.inject('/health')).json()
  t.equal(typeof body.load.event_loop_delay_ms, 'number', `/health: ${body.load.event_loop_delay_ms}`)
  const res = await client.callTool({ name: 'health', arguments: {} })
  t.notOk(res.isError, 'the health tool passes its own output schema')
  t.match(res.structuredContent, { status: 'unhealthy', load: { event_loop_delay_ms: Number } })
})

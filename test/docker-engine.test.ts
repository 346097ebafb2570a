import { randomUUID } from 'node:crypto'
import { Readable } from 'node:stream'
import t from 'tap'
import { demuxDockerStream } from '../services/docker/demux.js'
import { DockerEngine } from '../services/docker/engine.js'
import { DockerError, mapDockerError } from '../services/docker/errors.js'
import { BASE_IMAGE, cleanupContainers, collect, engine, TEST_LABEL } from './helpers/docker.js'

const run = randomUUID()
cleanupContainers(t, run)

t.test('ping and version reach the real engine', async (t) => {
  await engine.ping()
  const v = await engine.version()
  t.match(v.ApiVersion, /^1\.\d+$/)
  t.ok(v.Version.length > 0)
})

t.test('create, start, wait, logs (stdout and stderr apart), inspect, remove', async (t) => {
  const { Id } = await engine.createContainer({
    Image: BASE_IMAGE,
    Cmd: ['sh', '-c', 'echo to-out; echo to-err >&2; echo more-out; exit 3'],
    Labels: { [TEST_LABEL]: run },
    HostConfig: { NetworkMode: 'none' }
  })
  await engine.startContainer(Id)
  const exit = await engine.waitContainer(Id)
  t.equal(exit.StatusCode, 3, 'exit code')
  const logs = await collect(engine.containerLogs(Id))
  t.equal(logs.stdout, 'to-out\nmore-out\n')
  t.equal(logs.stderr, 'to-err\n')
  const info = await engine.inspectContainer(Id)
  t.equal(info.State.Status, 'exited')
  t.equal(info.Config.Labels?.[TEST_LABEL], run)
  const listed = await engine.listContainers({ [TEST_LABEL]: run })
  t.ok(listed.some((c) => c.Id === Id), 'listed by label')
  await engine.removeContainer(Id)
  await t.rejects(engine.inspectContainer(Id), { code: 'no_such_container' }, 'gone after removal')
})

t.test('logs are followed live while the container runs', async (t) => {
  const { Id } = await engine.createContainer({
    Image: BASE_IMAGE,
    // the first line waits a second: the follow request is connected before it (a later line is live)
    Cmd: ['sh', '-c', 'sleep 1; for i in 1 2 3; do echo line-$i; sleep 0.5; done'],
    Labels: { [TEST_LABEL]: run },
    HostConfig: { NetworkMode: 'none' }
  })
  await engine.startContainer(Id)
  const seen: Array<{ line: string, at: number }> = []
  for await (const c of engine.containerLogs(Id, { follow: true })) {
    for (const line of c.data.toString().split('\n').filter(Boolean)) seen.push({ line, at: Date.now() })
  }
  t.same(seen.map((s) => s.line), ['line-1', 'line-2', 'line-3'])
  t.ok(seen[2].at - seen[0].at >= 600, 'lines arrived as they were printed, not at the end')
  await engine.removeContainer(Id, { force: true })
})

t.test('stop, pause and kill act on a running container', async (t) => {
  const { Id } = await engine.createContainer({
    Image: BASE_IMAGE,
    Cmd: ['sleep', '30'],
    Labels: { [TEST_LABEL]: run },
    HostConfig: { NetworkMode: 'none', Init: true }
  })
  await engine.startContainer(Id)
  await engine.pauseContainer(Id)
  t.equal((await engine.inspectContainer(Id)).State.Status, 'paused')
  await engine.unpauseContainer(Id)
  t.equal((await engine.inspectContainer(Id)).State.Status, 'running')
  await engine.killContainer(Id, 'SIGKILL')
  const exit = await engine.waitContainer(Id)
  t.equal(exit.StatusCode, 137, 'killed by SIGKILL')
  await engine.startContainer(Id)
  await engine.stopContainer(Id, 1)
  t.equal((await engine.inspectContainer(Id)).State.Running, false)
  await engine.removeContainer(Id)
})

t.test('archives go in and out of a container', async (t) => {
  const { Id } = await engine.createContainer({ Image: BASE_IMAGE, Cmd: ['true'], Labels: { [TEST_LABEL]: run } })
  // a one-file tar made by the engine itself; a tar header starts with the 100-byte file name
  const tar = await engine.getArchive(Id, '/etc/debian_version')
  const chunks: Buffer[] = []
  for await (const c of tar) chunks.push(c as Buffer)
  const archive = Buffer.concat(chunks)
  t.equal(archive.subarray(0, 100).toString().replace(/\0+$/, ''), 'debian_version', 'tar header names the file')
  await engine.putArchive(Id, '/tmp', archive)
  const back = await engine.getArchive(Id, '/tmp/debian_version')
  let size = 0
  for await (const c of back) size += (c as Buffer).length
  t.ok(size > 512, 'the file put in comes back out')
  await engine.removeContainer(Id)
})

t.test('volumes are created, listed by label and removed', async (t) => {
  const name = `lop-test-${run}`
  await engine.createVolume(name, { [TEST_LABEL]: run })
  t.ok((await engine.listVolumes({ [TEST_LABEL]: run })).some((v) => v.Name === name))
  await engine.removeVolume(name)
  await t.rejects(engine.removeVolume(name), { code: 'no_such_volume' })
})

t.test('engine errors are mapped once, with the fix', async (t) => {
  await t.rejects(engine.createContainer({ Image: 'letta-opencode-no-such-image:never' }), { code: 'no_such_image', statusCode: 404, message: /build or load the image/ })
  await t.rejects(engine.startContainer('no-such-container-' + run), { code: 'no_such_container', statusCode: 404 })
  t.equal(await engine.imageExists('letta-opencode-no-such-image:never'), false)
  t.equal(await engine.imageExists(BASE_IMAGE), true)

  const down = new DockerEngine({ socketPath: '/nonexistent/docker.sock' })
  await t.rejects(down.ping(), { code: 'engine_unavailable', message: /Docker engine unreachable \(ENOENT/ })

  const { Id } = await engine.createContainer({ Image: BASE_IMAGE, Cmd: ['sleep', '10'], Labels: { [TEST_LABEL]: run }, HostConfig: { Init: true } })
  await engine.startContainer(Id)
  await t.rejects(engine.removeContainer(Id), { code: 'conflict', statusCode: 409 }, 'removing a running container conflicts')
  await engine.removeContainer(Id, { force: true })

  // a socket the process may not open: what node reports for a socket of another group
  const denied = Object.assign(new Error('connect EACCES /var/run/docker.sock'), { code: 'EACCES', address: '/var/run/docker.sock' })
  const mapped = mapDockerError(denied, 'GET /_ping')
  t.ok(mapped instanceof DockerError)
  t.equal(mapped.code, 'permission_denied')
  t.match(mapped.message, /Permission denied on the Docker socket \/var\/run\/docker\.sock: .*socket's group.*DOCKER_GID/)
})

t.test('demultiplexing keeps streams apart across any chunking', async (t) => {
  const frame = (type: number, text: string) => {
    const payload = Buffer.from(text)
    const header = Buffer.alloc(8)
    header[0] = type
    header.writeUInt32BE(payload.length, 4)
    return Buffer.concat([header, payload])
  }
  const whole = Buffer.concat([frame(1, 'hello '), frame(2, 'oops'), frame(1, ''), frame(1, 'world')])
  for (const size of [1, 3, 7, 8, 9, whole.length]) {
    const chunks: Buffer[] = []
    for (let i = 0; i < whole.length; i += size) chunks.push(whole.subarray(i, i + size))
    const out = await collect(demuxDockerStream(Readable.from(chunks)))
    t.same(out, { stdout: 'hello world', stderr: 'oops' }, `chunks of ${size}`)
  }
})

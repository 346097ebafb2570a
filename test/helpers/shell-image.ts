/** A stand-in agent image whose `opencode` is a shell: the task text runs with `sh -c` (tests of the container's limits). */
import { execFileSync } from 'node:child_process'

export const SHELL_IMAGE = 'letta-opencode-shell-agent:test'

/** The stand-in agent image whose `opencode` runs its task (the last argument) with `sh -c`. */
export function buildShellImage (): void {
  const script = ['#!/bin/sh', 'if [ "$*" = --version ]; then echo 0.0.0-shell; exit 0; fi', 'for task; do :; done', 'exec sh -c "$task"']
  const dockerfile = [
    'FROM letta-opencode-test-agent:latest',
    `RUN printf '%s\\n' ${script.map((l) => `'${l.replace(/'/g, '\'"\'"\'')}'`).join(' ')} > /usr/local/bin/opencode && chmod 0755 /usr/local/bin/opencode`,
    ''
  ].join('\n')
  execFileSync('docker', ['build', '-q', '-t', SHELL_IMAGE, '-'], { input: dockerfile, stdio: ['pipe', 'ignore', 'pipe'] })
}

/**
 * A Unix socket that forwards to the real Docker engine and can be switched off and on: the
 * service sees its engine disappear and come back, while other tests keep using the engine.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net'
import { join } from 'node:path'

export const ENGINE_SOCKET = (process.env.DOCKER_HOST ?? '').startsWith('unix://')
  ? (process.env.DOCKER_HOST as string).slice('unix://'.length)
  : '/var/run/docker.sock'

export class EngineProxy {
  readonly socketPath: string
  private server: Server | undefined
  private readonly sockets = new Set<Socket>()
  /** Connections accepted so far: how many times the service went to the engine. */
  connections = 0

  constructor (dir: string) {
    this.socketPath = join(dir, 'engine.sock')
  }

  async start (): Promise<void> {
    const server = createServer((client) => {
      this.connections++
      const upstream = createConnection(ENGINE_SOCKET)
      for (const s of [client, upstream]) {
        this.sockets.add(s)
        s.on('close', () => this.sockets.delete(s))
        s.on('error', () => { client.destroy(); upstream.destroy() })
      }
      client.pipe(upstream).pipe(client)
    })
    await new Promise<void>((resolve, reject) => server.once('error', reject).listen(this.socketPath, resolve))
    this.server = server
  }

  async stop (): Promise<void> {
    const server = this.server
    this.server = undefined
    for (const s of this.sockets) s.destroy()
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

/**
 * The web dashboard: the files `npm run build:ui` wrote to dist/ui, served under /ui (and `/`
 * redirects there). index.html for every dashboard path (the page routes itself), `no-cache`;
 * hashed assets `immutable` for a year, gzip or brotli when the client takes it. Every response
 * carries a strict Content-Security-Policy. The page reads its data from the task routes, with the
 * caller's bearer token: nothing here reads a task.
 */
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { brotliCompressSync, gzipSync } from 'node:zlib'
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'

export const CSP = [
  "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:", "connect-src 'self'",
  "font-src 'self'", "object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'"
].join('; ')

const TYPES: Record<string, string> = { '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8', '.html': 'text/html; charset=utf-8', '.svg': 'image/svg+xml' }

interface Asset { type: string, raw: Buffer, gzip: Buffer, br: Buffer }

/** dist/ui beside the compiled code (dist/routes → dist/ui) or beside the sources (routes → dist/ui). */
function uiDir (): string | undefined {
  const here = dirname(fileURLToPath(import.meta.url))
  return [join(here, '..', 'ui'), join(here, '..', 'dist', 'ui')].find((dir) => existsSync(join(dir, 'manifest.json')))
}

function asset (file: string): Asset {
  const raw = readFileSync(file)
  const ext = file.slice(file.lastIndexOf('.'))
  return { type: TYPES[ext] ?? 'application/octet-stream', raw, gzip: gzipSync(raw, { level: 9 }), br: brotliCompressSync(raw) }
}

function send (request: FastifyRequest, reply: FastifyReply, a: Asset) {
  const accepts = String(request.headers['accept-encoding'] ?? '')
  const [body, encoding] = /\bbr\b/.test(accepts) ? [a.br, 'br'] : /\bgzip\b/.test(accepts) ? [a.gzip, 'gzip'] : [a.raw, undefined]
  if (encoding) reply.header('content-encoding', encoding)
  return reply.header('vary', 'accept-encoding').type(a.type).send(body)
}

const route: FastifyPluginAsync = async (fastify) => {
  const dir = uiDir()
  const assets = new Map<string, Asset>()
  let index: Asset | undefined
  if (dir) {
    const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as { files: string[] }
    for (const name of manifest.files) assets.set(name, asset(join(dir, 'assets', name)))
    index = asset(join(dir, 'index.html'))
  } else {
    fastify.log.warn('dashboard not built (npm run build:ui): /ui answers 404')
  }

  fastify.addHook('onSend', async (request, reply) => {
    if (request.url === '/ui' || request.url.startsWith('/ui/') || request.url.startsWith('/ui?')) {
      reply.header('content-security-policy', CSP)
      reply.header('x-content-type-options', 'nosniff')
      reply.header('referrer-policy', 'no-referrer')
      reply.header('x-frame-options', 'DENY')
    }
  })

  fastify.get('/', async (_request, reply) => reply.redirect('/ui', 302))

  const page = async (request: FastifyRequest, reply: FastifyReply) => {
    if (!index) return reply.code(404).type('text/plain; charset=utf-8').send('The dashboard is not built: run npm run build:ui')
    return send(request, reply.header('cache-control', 'no-cache'), index)
  }
  fastify.get('/ui', page)
  fastify.get('/ui/', page)
  fastify.get('/ui/health', page)
  fastify.get<{ Params: { id: string } }>('/ui/tasks/:id', page)

  fastify.get<{ Params: { file: string } }>('/ui/assets/:file', async (request, reply) => {
    const a = assets.get(request.params.file)
    if (!a) return reply.code(404).type('text/plain; charset=utf-8').send('Not found')
    return send(request, reply.header('cache-control', 'public, max-age=31536000, immutable'), a)
  })
}

export default route

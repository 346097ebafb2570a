// Builds the dashboard (ui/) into dist/ui: one minified bundle of script and one of styles with
// content-hashed names, the index.html that loads them, and manifest.json (what the server serves).
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const out = join(root, 'dist', 'ui')
rmSync(out, { recursive: true, force: true })
mkdirSync(join(out, 'assets'), { recursive: true })

const result = await build({
  entryPoints: [join(root, 'ui', 'main.ts'), join(root, 'ui', 'style.css')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['chrome110', 'firefox110', 'safari16'],
  outdir: join(out, 'assets'),
  entryNames: '[name]-[hash]',
  metafile: true,
  legalComments: 'none',
  logLevel: 'warning'
})
const files = Object.keys(result.metafile.outputs).map((f) => basename(f))
const js = files.find((f) => f.endsWith('.js'))
const css = files.find((f) => f.endsWith('.css'))
const html = readFileSync(join(root, 'ui', 'index.html'), 'utf8')
  .replace('%CSS%', `/ui/assets/${css}`)
  .replace('%JS%', `/ui/assets/${js}`)
writeFileSync(join(out, 'index.html'), html)
writeFileSync(join(out, 'manifest.json'), JSON.stringify({ files, js, css }, null, 2) + '\n')
console.log(`dashboard built: dist/ui (${files.join(', ')})`)

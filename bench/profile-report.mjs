// Shares of non-idle CPU in a .cpuprofile, inclusive: by package (node_modules/<pkg>), by our
// source directory, and by a few markers (GC, JSON.parse); then the top functions by self time.
import { readFileSync } from 'node:fs'

const profile = JSON.parse(readFileSync(process.argv[2], 'utf8'))
const byId = new Map(profile.nodes.map((n) => [n.id, n]))
const parent = new Map()
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id)

function bucketOf (frame) {
  const { url, functionName } = frame.callFrame
  if (functionName === '(garbage collector)') return 'GC'
  if (functionName === '(idle)' || functionName === '(program)') return functionName
  const m = url.match(/node_modules\/((?:@[^/]+\/)?[^/]+)/)
  if (m) return m[1]
  if (url.startsWith('node:')) return url.split('/')[0].replace(/^node:/, 'node:') + (url.includes('internal/') ? '' : '')
  const ours = url.match(/wt-[^/]+\/([^/]+)\//)
  if (ours) return `ours: ${ours[1]}/`
  if (!url) return `native: ${functionName || '(anonymous)'}`
  return 'other'
}

const counts = new Map()
const self = new Map()
let total = 0
const dt = profile.timeDeltas
profile.samples.forEach((id, i) => {
  const leaf = byId.get(id)
  const name = leaf.callFrame.functionName
  if (name === '(idle)') return
  const weight = dt[i] ?? 0
  total += weight
  const seen = new Set()
  for (let n = id; n !== undefined; n = parent.get(n)) {
    const b = bucketOf(byId.get(n))
    if (!seen.has(b)) { seen.add(b); counts.set(b, (counts.get(b) ?? 0) + weight) }
  }
  const key = `${name || '(anonymous)'} ${leaf.callFrame.url.replace(/.*node_modules\//, '')}:${leaf.callFrame.lineNumber}`
  self.set(key, (self.get(key) ?? 0) + weight)
})
const pct = (w) => `${(100 * w / total).toFixed(1)}%`
console.log(`non-idle CPU: ${(total / 1e6).toFixed(2)} s`)
console.log('inclusive by package:')
for (const [b, w] of [...counts].sort((a, b) => b[1] - a[1]).slice(0, 30)) console.log(`  ${pct(w).padStart(6)}  ${b}`)
console.log('self time, top functions:')
for (const [k, w] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`  ${pct(w).padStart(6)}  ${k}`)

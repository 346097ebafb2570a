/**
 * `npm run bench`: runs every benchmark, prints a table and writes bench/results/latest.json.
 * Each figure is measured against a baseline taken in the same process and conditions.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import { cpus, totalmem } from 'node:os'
import { runHttpBench } from './http.js'
import { runListBench } from './list.js'
import { runLogsBench } from './logs.js'
import { runSessionsBench } from './sessions.js'
import { runTasksBench } from './tasks.js'

// one after the other: each measures against a baseline in the same conditions
const rows = [...await runHttpBench(), ...await runSessionsBench(), ...await runTasksBench(), ...await runLogsBench(), ...await runListBench()]
console.table(rows)
mkdirSync(new URL('./results/', import.meta.url), { recursive: true })
writeFileSync(new URL('./results/latest.json', import.meta.url), JSON.stringify({
  date: new Date().toISOString(),
  machine: { cpus: cpus().length, cpu: cpus()[0]?.model, memory_gb: Math.round(totalmem() / 1024 ** 3), node: process.version },
  results: rows
}, null, 2) + '\n')
const missed = rows.filter((r) => !r.met)
if (missed.length) console.log(`targets missed: ${missed.map((r) => r.benchmark).join('; ')}`)

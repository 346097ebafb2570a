/**
 * Bounded output capture: the first and last `limit / 2` bytes of a task's output in memory, with
 * an explicit `truncated` flag and the total byte count; the full log goes to a file up to a cap.
 */
import { createWriteStream, statSync, type WriteStream } from 'node:fs'
import { open } from 'node:fs/promises'
import { setTimeout as sleep } from 'node:timers/promises'

export class BoundedOutput {
  private head: Buffer[] = []
  private headBytes = 0
  private tail: Buffer[] = []
  private tailBytes = 0
  total = 0

  constructor (private readonly limit: number) {}

  push (chunk: Buffer): void {
    this.total += chunk.length
    const half = Math.floor(this.limit / 2)
    if (this.headBytes < half) {
      const take = chunk.subarray(0, half - this.headBytes)
      this.head.push(Buffer.from(take))
      this.headBytes += take.length
      chunk = chunk.subarray(take.length)
      if (chunk.length === 0) return
    }
    this.tail.push(Buffer.from(chunk))
    this.tailBytes += chunk.length
    // keep only the last `half` bytes; drop whole chunks first, then trim the oldest
    while (this.tailBytes - this.tail[0].length >= half) this.tailBytes -= (this.tail.shift() as Buffer).length
    if (this.tailBytes > half) {
      const excess = this.tailBytes - half
      this.tail[0] = this.tail[0].subarray(excess)
      this.tailBytes -= excess
    }
  }

  get truncated (): boolean {
    return this.total > this.headBytes + this.tailBytes
  }

  text (): string {
    const head = Buffer.concat(this.head).toString('utf8')
    const tail = Buffer.concat(this.tail).toString('utf8')
    if (!this.truncated) return head + tail
    return `${head}\n[… ${this.total - this.headBytes - this.tailBytes} bytes omitted; the full log is at GET /tasks/<id>/logs …]\n${tail}`
  }
}

const MAX_BUFFERED = 8 * 1024 * 1024

/** Appends to a per-task log file and stops (marking it) at `cap` bytes. */
export class CappedLogFile {
  private written = 0
  private readonly stream: WriteStream | undefined
  capped = false

  /** `append` continues the log of an earlier turn of the same task. */
  constructor (path: string, private readonly cap: number, append = false) {
    // a 1 MB buffer: the disk takes large writes, and the reader rarely waits for it
    this.stream = cap > 0 ? createWriteStream(path, { flags: append ? 'a' : 'w', highWaterMark: 1024 * 1024 }) : undefined
    this.written = append ? statSync(path, { throwIfNoEntry: false })?.size ?? 0 : 0
    this.capped = this.written >= cap
    // a log that cannot be written must not fail the task
    this.stream?.on('error', () => { this.capped = true })
  }

  /** Resolves when the chunk is handed to the file, after the disk caught up if it fell behind (backpressure). */
  async write (chunk: Buffer): Promise<void> {
    const stream = this.stream
    if (!stream || this.capped) return
    const room = this.cap - this.written
    let ok: boolean
    if (chunk.length > room) {
      stream.write(chunk.subarray(0, room))
      ok = stream.write(`\n[log capped at ${this.cap} bytes]\n`)
      this.written = this.cap
      this.capped = true
    } else {
      ok = stream.write(chunk)
      this.written += chunk.length
    }
    // the disk falls behind: up to 8 MB wait in memory (reads and writes overlap), then the reader waits
    if (!ok && stream.writableLength > MAX_BUFFERED) {
      await new Promise<void>((resolve) => {
        const done = () => { stream.off('drain', done); stream.off('close', done); resolve() }
        stream.on('drain', done).on('close', done)
      })
    }
  }

  close (): Promise<void> {
    return new Promise((resolve) => (this.stream ? this.stream.end(resolve) : resolve()))
  }
}

/** A byte range of a log file; an absent file reads as empty. */
export async function readLogRange (path: string, offset: number, limit: number): Promise<{ data: Buffer, size: number }> {
  const file = await open(path, 'r').catch((err: NodeJS.ErrnoException) => { if (err.code === 'ENOENT') return undefined; throw err })
  if (!file) return { data: Buffer.alloc(0), size: 0 }
  try {
    const { size } = await file.stat()
    const length = Math.max(0, Math.min(limit, size - offset))
    const data = Buffer.alloc(length)
    if (length > 0) await file.read(data, 0, length, offset)
    return { data, size }
  } finally {
    await file.close()
  }
}

/**
 * A log file from `offset` as it grows, until `ended()` is true and everything written is read
 * (the writer closes the file before the task is marked ended), or until `signal` aborts.
 */
export async function * followLog (path: string, ended: () => Promise<boolean>, signal: AbortSignal, offset = 0, pollMs = 200): AsyncGenerator<Buffer> {
  const chunk = 64 * 1024
  while (!signal.aborted) {
    const finished = await ended() // read before the file: whatever was written by then is read below
    const { data } = await readLogRange(path, offset, chunk)
    if (data.length > 0) {
      offset += data.length
      yield data
      continue
    }
    if (finished) return
    await sleep(pollMs, undefined, { signal }).catch(() => {})
  }
}

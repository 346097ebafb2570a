/**
 * Bounded output capture: the first and last `limit / 2` bytes of a task's output in memory, with
 * an explicit `truncated` flag and the total byte count; the full log goes to a file up to a cap.
 */
import { createWriteStream, type WriteStream } from 'node:fs'

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

/** Appends to a per-task log file and stops (marking it) at `cap` bytes. */
export class CappedLogFile {
  private written = 0
  private readonly stream: WriteStream | undefined
  capped = false

  constructor (path: string, private readonly cap: number) {
    this.stream = cap > 0 ? createWriteStream(path, { flags: 'a' }) : undefined
    // a log that cannot be written must not fail the task
    this.stream?.on('error', () => { this.capped = true })
  }

  write (chunk: Buffer): void {
    if (!this.stream || this.capped) return
    const room = this.cap - this.written
    if (chunk.length > room) {
      this.stream.write(chunk.subarray(0, room))
      this.stream.write(`\n[log capped at ${this.cap} bytes]\n`)
      this.written = this.cap
      this.capped = true
      return
    }
    this.stream.write(chunk)
    this.written += chunk.length
  }

  close (): Promise<void> {
    return new Promise((resolve) => (this.stream ? this.stream.end(resolve) : resolve()))
  }
}

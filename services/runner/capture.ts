/**
 * What the service keeps of a turn's output stream, with bounded memory: secrets redacted first,
 * then the head and tail for the result, the full log on disk (up to a cap), and each line read as
 * an OpenCode event (non-JSON lines are log only).
 */
import { BoundedOutput, CappedLogFile } from './output.js'
import { LineSplitter, OpenCodeReader, type ParsedEvent, type RunResult } from './opencode.js'
import { Redactor } from './redact.js'

export class TurnCapture {
  readonly output: BoundedOutput
  readonly reader: OpenCodeReader
  private readonly log: CappedLogFile
  private readonly lines = new LineSplitter()
  private readonly redactor: Redactor

  constructor (opts: { outputLimit: number, logPath: string, logLimit: number, secrets: string[], previous?: RunResult | null, append: boolean }) {
    this.output = new BoundedOutput(opts.outputLimit)
    this.log = new CappedLogFile(opts.logPath, opts.logLimit, opts.append)
    this.reader = new OpenCodeReader(opts.previous ?? undefined)
    this.redactor = new Redactor(opts.secrets)
  }

  /** A chunk of the container's output; resolves with the events it completed, once the log took it. */
  async push (chunk: Buffer): Promise<ParsedEvent[]> {
    return this.take(this.redactor.push(chunk), false)
  }

  /** The end of the stream: what was held back, the last line. */
  async end (): Promise<ParsedEvent[]> {
    const events = await this.take(this.redactor.end(), true)
    this.reader.settle()
    await this.log.close()
    return events
  }

  /** Redacts a string that did not come through the stream (errors, messages). */
  redact (s: string): string {
    return this.redactor.text(s)
  }

  private async take (data: Buffer, last: boolean): Promise<ParsedEvent[]> {
    if (data.length) {
      this.output.push(data)
      await this.log.write(data)
    }
    const lines = [...this.lines.push(data), ...(last ? this.lines.end() : [])]
    const events: ParsedEvent[] = []
    for (const line of lines) {
      const event = this.reader.line(line)
      if (event) events.push(event)
    }
    return events
  }
}

/**
 * Removes secret values (the variables passed through to the runner) from a byte stream before it
 * reaches the output, the log, the events or Letta. A match split across chunks is still found:
 * the last (longest secret − 1) bytes are held back until the next chunk or the end.
 */
export const REDACTED = '[redacted]'

export class Redactor {
  private readonly secrets: Buffer[]
  private readonly hold: number
  private carry = Buffer.alloc(0)

  constructor (secrets: string[]) {
    // longest first, so a secret that contains another is replaced whole; short values are not secrets
    this.secrets = [...new Set(secrets.filter((s) => s.length >= 4))].sort((a, b) => b.length - a.length).map((s) => Buffer.from(s))
    this.hold = Math.max(0, ...this.secrets.map((s) => s.length - 1))
  }

  get active (): boolean {
    return this.secrets.length > 0
  }

  /** The part of the stream that is safe to pass on now. */
  push (chunk: Buffer): Buffer {
    if (!this.active) return chunk
    const data = this.replace(Buffer.concat([this.carry, chunk]))
    const cut = Math.max(0, data.length - this.hold)
    this.carry = Buffer.from(data.subarray(cut))
    return data.subarray(0, cut)
  }

  end (): Buffer {
    const rest = this.carry
    this.carry = Buffer.alloc(0)
    return rest
  }

  /** A whole string (event data, errors). */
  text (s: string): string {
    let out = s
    for (const secret of this.secrets) out = out.split(secret.toString()).join(REDACTED)
    return out
  }

  private replace (data: Buffer): Buffer {
    let out = data
    for (const secret of this.secrets) {
      let i = out.indexOf(secret)
      if (i === -1) continue
      const parts: Buffer[] = []
      let from = 0
      for (; i !== -1; i = out.indexOf(secret, from)) {
        parts.push(out.subarray(from, i), Buffer.from(REDACTED))
        from = i + secret.length
      }
      parts.push(out.subarray(from))
      out = Buffer.concat(parts)
    }
    return out
  }
}

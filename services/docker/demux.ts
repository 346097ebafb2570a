/**
 * Docker's multiplexed attach/logs stream (non-TTY containers): frames of an 8-byte header
 * (stream type, 3 zero bytes, big-endian payload length) followed by the payload.
 * Payloads are yielded as they arrive, so a frame is never buffered whole and memory stays bounded.
 */
export type StdStream = 'stdout' | 'stderr'
export interface LogChunk { stream: StdStream, data: Buffer }

const HEADER = 8

export async function * demuxDockerStream (source: AsyncIterable<Buffer>): AsyncGenerator<LogChunk> {
  let header = Buffer.alloc(0)
  let remaining = 0
  let stream: StdStream = 'stdout'
  for await (const chunk of source) {
    let off = 0
    while (off < chunk.length) {
      if (remaining === 0) {
        const need = HEADER - header.length
        header = Buffer.concat([header, chunk.subarray(off, off + need)])
        off += Math.min(need, chunk.length - off)
        if (header.length < HEADER) break
        stream = header[0] === 2 ? 'stderr' : 'stdout'
        remaining = header.readUInt32BE(4)
        header = Buffer.alloc(0)
        continue
      }
      const take = Math.min(remaining, chunk.length - off)
      yield { stream, data: chunk.subarray(off, off + take) }
      off += take
      remaining -= take
    }
  }
}

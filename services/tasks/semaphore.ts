/**
 * A counting semaphore with a bounded FIFO of waiters. `acquire` never takes `running` past `limit`,
 * however many acquire at once (only `take`, for a container that already runs, may); a full queue
 * refuses at once instead of growing.
 */
export class QueueFullError extends Error {
  override name = 'QueueFullError'
}

interface Waiter { id: string, resolve: (release: () => void) => void, reject: (err: Error) => void }

export class Semaphore {
  private active = 0
  private readonly waiters: Waiter[] = []

  constructor (readonly limit: number, readonly maxWaiting: number) {}

  get running (): number { return this.active }
  get waiting (): number { return this.waiters.length }
  /** Every slot taken and every waiting place too: a new acquire would be refused. */
  get full (): boolean { return this.active >= this.limit && this.waiters.length >= this.maxWaiting }

  /** Resolves with a release function once a slot is free; `id` lets a waiter be withdrawn. */
  acquire (id: string): Promise<() => void> {
    if (this.active < this.limit && this.waiters.length === 0) {
      this.active++
      return Promise.resolve(this.releaser())
    }
    if (this.waiters.length >= this.maxWaiting) {
      return Promise.reject(new QueueFullError(`queue full: ${this.active} running, ${this.waiters.length} waiting`))
    }
    return new Promise((resolve, reject) => this.waiters.push({ id, resolve, reject }))
  }

  /**
   * A slot at once, over the limit if it must be: for a container that already runs (re-attached
   * after a restart). Waiters start again only once `running` is back under the limit.
   */
  take (): () => void {
    this.active++
    return this.releaser()
  }

  /** Removes a waiter (a task cancelled while queued); its acquire rejects with `reason`. */
  withdraw (id: string, reason: Error): boolean {
    const i = this.waiters.findIndex((w) => w.id === id)
    if (i < 0) return false
    this.waiters.splice(i, 1)[0].reject(reason)
    return true
  }

  private releaser (): () => void {
    let done = false
    return () => {
      if (done) return
      done = true
      this.active--
      while (this.active < this.limit && this.waiters.length > 0) {
        const next = this.waiters.shift() as Waiter
        this.active++
        next.resolve(this.releaser())
      }
    }
  }
}

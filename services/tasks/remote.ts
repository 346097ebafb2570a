/**
 * What the engine needs of the other replicas (cluster mode): node-local calls on a task another
 * replica runs (its workspace, log, container) are handed to that replica. Defined here, implemented
 * by services/cluster/forward.ts and wired by the plugins; the engine knows nothing else of the cluster.
 */

/** The engine methods a replica serves for another one (the owner's engine runs them for `principal`). */
export const REMOTE_METHODS = ['files', 'readFile', 'logs', 'control', 'message', 'patch'] as const
export type RemoteMethod = typeof REMOTE_METHODS[number]

export interface RemoteNodes {
  /** The answer of `method(principal, ...args)` on replica `nodeId`'s engine, or its error (a TaskError keeps its code). */
  call: (nodeId: string, method: RemoteMethod, principal: string, args: unknown[]) => Promise<unknown>
  /** The task's log as replica `nodeId` streams it (with `follow`, until the task has ended); refusals are thrown before the first chunk. */
  streamLogs: (nodeId: string, principal: string, id: string, opts: { follow: boolean, offset?: number, signal: AbortSignal }) => Promise<AsyncGenerator<Buffer>>
}

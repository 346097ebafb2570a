/**
 * The task service's seam to cluster mode (PostgreSQL): the queue is the database. Defined here, in
 * the tasks layer, and implemented by services/cluster/ (which imports the tasks layer, never the
 * reverse); the tasks plugin wires one to the engine when DATABASE_URL is set. Without one (SQLite)
 * the engine queues in memory as before.
 */
export interface ClusterQueue {
  /**
   * The cluster's queue: `waiting`, the tasks queued beyond the live nodes' free slots (what
   * MAX_QUEUED_TASKS counts), and `room`, the free slots no queued task is spoken for yet.
   */
  backlog: () => Promise<{ waiting: number, room: number }>
  /**
   * Takes the cluster's admission lock: a submission's check of `backlog()` and the insert that
   * follows run one at a time across all replicas, so concurrent submissions never overfill
   * MAX_QUEUED_TASKS. Resolves with its release (which never throws).
   */
  admit: () => Promise<() => Promise<void>>
  /**
   * Claims the oldest task this replica may run (FIFO; a follow-up turn only on its own node; never
   * past CLUSTER_MAX_CONCURRENT_TASKS): the task is this replica's (node_id, lease) and its writes are
   * fenced from now on. Its id, or undefined when there is none (or no cluster slot).
   */
  claim: () => Promise<string | undefined>
  /** Gives back a claimed task that did not start here (draining): another replica may claim it. */
  unclaim: (id: string) => Promise<void>
  /** This replica no longer holds the task (its run ended or was taken over): its writes are no longer fenced. */
  release: (id: string) => void
}

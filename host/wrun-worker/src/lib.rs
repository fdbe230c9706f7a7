//! # wrun-worker: runs tasks for a scheduler
//!
//! A worker registers with the scheduler (cluster secret, threads, memory,
//! peer address) and receives batches of assignments through its
//! `WorkerControl` capability. For each assignment it makes sure it has the
//! module (fetched once per digest from the scheduler) and the inputs (its
//! own results, or fetched in chunks from the peer that holds them), builds
//! the argument array and queues the task. `threads` executor threads take
//! tasks from the queue and run each in a fresh sandbox instance; results
//! stay here until the scheduler frees them, and are served to peers and to
//! the scheduler (for clients) in chunks. Events (started, finished,
//! failed, steal answers) go back in batches: whatever accumulated while the
//! previous batch was in flight.
//!
//! Leaving: a worker with a known end (a Slurm job's walltime, or
//! `--lifetime`) retires a margin before it, and on SIGTERM or SIGINT: it
//! calls `WorkerSession.retire`, which returns once the scheduler has taken
//! back its queued tasks and had peers copy its results (`replicate`). A
//! `shutdown` from the scheduler (the cluster is stopping) ends it cleanly.
//!
//! Threads: one RPC thread (current-thread tokio, `LocalSet`, `!Send`
//! capabilities), and the executor threads (plain threads, `Send` data).

#![deny(missing_docs)]

mod worker;

pub use worker::{Departure, SchedulerTarget, WorkerConfig, WorkerError, run_worker};

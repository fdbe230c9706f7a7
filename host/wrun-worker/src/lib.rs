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
//! failed, steal answers) go back in batches.
//!
//! Leaving: a worker with a known end (a Slurm job's walltime, or
//! `--lifetime`) retires a margin before it, and on SIGTERM or SIGINT: it
//! calls `WorkerSession.retire`, which returns once the scheduler has taken
//! back its queued tasks and had peers copy its results (`replicate`). A
//! `shutdown` from the scheduler (the cluster is stopping) ends it cleanly.
//!
//! The parts, one file each:
//!
//! | file | what |
//! |---|---|
//! | `config.rs` | how a worker runs, and how it ends |
//! | `session.rs` | connect, register, events out, heartbeats, retirement |
//! | `control.rs` | `WorkerControl`: run, steal, cancel, free, fetch, replicate, shutdown |
//! | `inputs.rs` | an assignment's inputs, assembled into arguments |
//! | `queue.rs` | the task queue, running tasks' cancel flags, tasks being prepared |
//! | `executor.rs` | the executor threads |
//! | `outbox.rs` | task events gathered into batches |
//! | `peers.rs` | serving results to peers, fetching from them |
//! | `awaited.rs` | peers waiting for results still being made here |
//! | `results.rs` | the results held, spilled to disk past a threshold |
//! | `state.rs` | what the RPC thread and the executors share |
//! | `nanny.rs` | the nanny: the worker's parent process, restarting it |
//!
//! Threads: one RPC thread (current-thread tokio, `LocalSet`, `!Send`
//! capabilities), the executor threads (plain threads, `Send` data), and,
//! when the worker spills, a memory monitor (`results.rs`).

#![deny(missing_docs)]

mod awaited;
mod config;
mod control;
mod executor;
mod inputs;
mod nanny;
mod outbox;
mod peers;
mod queue;
mod results;
mod session;
mod state;

use std::sync::Arc;

pub use config::{Departure, SchedulerTarget, WorkerConfig, WorkerError};
pub use nanny::{Nanny, NannyExit, rss_bytes};
pub use results::{SpillConfig, remove_spill_dirs_of};
use wrun_sandbox::{Sandbox, SandboxConfig};

use crate::results::ResultStore;
use crate::state::WorkerState;

/// Joins a scheduler and runs its tasks until the connection ends or the
/// worker retires.
pub fn run_worker(config: WorkerConfig) -> Result<Departure, WorkerError> {
    let sandbox = Sandbox::new(SandboxConfig {
        max_concurrent_tasks: config.threads.max(1) * 2,
        ..config.sandbox.clone()
    })
    .map_err(|e| WorkerError::Setup(e.to_string()))?;
    let results = ResultStore::new(config.spill.as_ref()).map_err(|e| {
        WorkerError::Setup(format!(
            "making a spill directory in {}: {e}",
            config
                .spill
                .as_ref()
                .map(|s| s.dir.display().to_string())
                .unwrap_or_default()
        ))
    })?;
    let state = Arc::new(WorkerState::new(sandbox, results));
    // However this function ends (an error, a panic), the spill directory goes.
    let _spill_dir = RemoveSpillDir(state.clone());
    let monitor = config
        .spill
        .is_some()
        .then(|| memory_monitor(state.clone()))
        .transpose()?;
    let executors: Vec<_> = (0..config.threads.max(1))
        .map(|i| {
            let state = state.clone();
            std::thread::Builder::new()
                .name(format!("wrun-task-{i}"))
                .spawn(move || executor::executor(state, i))
                .map_err(|e| WorkerError::Setup(format!("starting an executor thread: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| WorkerError::Setup(e.to_string()))?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, session::serve(config, state.clone()));
    state.queue.stop();
    for executor in executors {
        let _ = executor.join();
    }
    if let Some((stop, monitor)) = monitor {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = monitor.join();
    }
    result
}

type Monitor = (
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<()>,
);

/// A thread that spills results while the process's memory is over the
/// spill threshold, until told to stop.
fn memory_monitor(state: Arc<WorkerState>) -> Result<Monitor, WorkerError> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let handle = std::thread::Builder::new()
        .name("wrun-memory".to_owned())
        .spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(results::MONITOR_EVERY);
                state.results.relieve();
            }
        })
        .map_err(|e| WorkerError::Setup(format!("starting the memory monitor: {e}")))?;
    Ok((stop, handle))
}

/// Removes the worker's spill directory when dropped.
struct RemoveSpillDir(Arc<WorkerState>);

impl Drop for RemoveSpillDir {
    fn drop(&mut self) {
        self.0.results.remove_spill_dir();
    }
}

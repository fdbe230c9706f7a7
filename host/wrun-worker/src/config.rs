//! How a worker runs, and how it ends.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use wrun_sandbox::SandboxConfig;

use crate::results::SpillConfig;

/// Where the scheduler is.
#[derive(Debug, Clone)]
pub enum SchedulerTarget {
    /// Read (and wait for) a scheduler file.
    File(PathBuf),
    /// An address and the cluster secret.
    Address {
        /// `host:port`.
        address: String,
        /// The cluster secret.
        secret: String,
        /// The scheduler's TLS certificate (DER), if it speaks TLS.
        certificate: Option<Vec<u8>>,
    },
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The scheduler to join.
    pub scheduler: SchedulerTarget,
    /// Task threads.
    pub threads: u32,
    /// Memory the worker may use (reported to the scheduler; the nanny enforces it).
    pub memory_bytes: u64,
    /// A name for status and logs.
    pub name: String,
    /// How long to wait for the scheduler file and the connection.
    pub connect_timeout: Duration,
    /// Interface peers reach this worker on.
    pub peer_host: String,
    /// Whether its peer port speaks TLS (with a certificate of its own,
    /// which the scheduler passes to the peers that fetch from it).
    pub peer_tls: bool,
    /// Sandbox settings (module cache, fuel metering).
    pub sandbox: SandboxConfig,
    /// When the worker will be stopped from outside (a Slurm job's end).
    pub end_time: Option<SystemTime>,
    /// How long before `end_time` the worker retires.
    pub retire_margin: Duration,
    /// Retire on SIGTERM or SIGINT instead of dying, and leave after at
    /// most this long (Slurm sends SIGKILL `KillWait`, 30 s, after SIGTERM).
    pub retire_on_signal: Option<Duration>,
    /// Retire when this is notified (a worker in the same process as its
    /// owner, such as `wrun-local`'s in-process workers, has no signal of
    /// its own); bounded like `retire_on_signal`, or by 20 s.
    pub retire_when: Option<Arc<tokio::sync::Notify>>,
    /// The Slurm job the worker runs in, shown by `wrun status`.
    pub slurm_job_id: Option<String>,
    /// When results go to disk; `None` keeps them all in memory.
    pub spill: Option<SpillConfig>,
    /// How long a worker that lost a scheduler keeping a journal waits for
    /// it to come back, keeping its results, before it gives up.
    pub rejoin_timeout: Duration,
}

impl WorkerConfig {
    /// A worker of `threads` threads for `scheduler`, with the defaults of
    /// `wrun worker` for everything else.
    pub fn new(scheduler: SchedulerTarget, threads: u32) -> WorkerConfig {
        WorkerConfig {
            scheduler,
            threads,
            memory_bytes: 0,
            name: format!("worker-{}", std::process::id()),
            connect_timeout: Duration::from_secs(60),
            peer_host: "127.0.0.1".to_owned(),
            peer_tls: false,
            sandbox: SandboxConfig::default(),
            end_time: None,
            retire_margin: Duration::from_secs(60),
            retire_on_signal: None,
            retire_when: None,
            slurm_job_id: None,
            spill: None,
            rejoin_timeout: Duration::from_secs(60),
        }
    }
}

/// Why a worker left without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// It retired (end time near, or asked to stop): the scheduler confirmed
    /// that its tasks and results were taken over.
    Retired,
    /// It retired but could not confirm the hand-over in time; the
    /// scheduler recomputes whatever was lost.
    RetiredUnconfirmed,
    /// The cluster was shut down (`wrun mpi` when its client ends).
    Shutdown,
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Could not reach the scheduler.
    #[error(transparent)]
    Connect(#[from] wrun_proto::ConnectError),
    /// The scheduler refused the registration (e.g. a wrong secret).
    #[error("the scheduler refused this worker: {0}")]
    Refused(String),
    /// The connection to the scheduler ended.
    #[error("lost the connection to the scheduler: {0}")]
    Disconnected(String),
    /// Local set-up failed.
    #[error("{0}")]
    Setup(String),
}

//! `wrun local`: a whole cluster on this machine.

use std::path::PathBuf;

use anyhow::Context;
use wrun_abi::units::ByteSize;
use wrun_local::{LocalCluster, LocalConfig};

use crate::args::ServeArgs;
use crate::exit::CommandResult;
use crate::output::outln;
use crate::signals::wait_for_signal;

/// A whole cluster on this machine: a scheduler and N workers with nannies.
/// Ctrl-C or SIGTERM stops every process it started.
#[derive(Debug, clap::Args)]
pub(crate) struct LocalCommand {
    /// Worker processes.
    #[arg(long, env = "WRUN_WORKERS", default_value_t = 2)]
    workers: u32,
    /// Task threads per worker.
    #[arg(long, env = "WRUN_THREADS", default_value_t = 1)]
    threads: u32,
    /// Memory per worker process.
    #[arg(long, env = "WRUN_WORKER_MEMORY", default_value = "4GiB")]
    memory: ByteSize,
    /// Where to write the scheduler file [default: a file in the temp dir].
    #[arg(long, env = "WRUN_SCHEDULER_FILE")]
    scheduler_file: Option<PathBuf>,
    #[command(flatten)]
    serve: ServeArgs,
}

impl LocalCommand {
    pub(crate) fn execute(self) -> CommandResult {
        let file = self.scheduler_file.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("wrun-local-{}.json", std::process::id()))
        });
        let wrun = std::env::current_exe().context("finding the wrun binary")?;
        let cluster = LocalCluster::start(
            LocalConfig {
                workers: self.workers,
                threads: self.threads,
                memory_bytes: self.memory.0,
                tls: self.serve.tls,
                scheduler: self.serve.config(None),
            },
            &wrun,
            file,
        )
        .context("starting the cluster")?;
        outln!("wrun local: scheduler at {}", cluster.address());
        outln!("scheduler file: {}", cluster.file().display());
        if let Some(url) = cluster.dashboard_url() {
            outln!("dashboard: {url}");
        }
        wait_for_signal();
        eprintln!("wrun local: stopping");
        cluster.stop();
        Ok(())
    }
}

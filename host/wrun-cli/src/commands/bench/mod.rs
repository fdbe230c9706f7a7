//! `wrun bench`: measurements that print a table, then one JSON line.

mod cluster;
mod sandbox;

use std::path::PathBuf;

use clap::Subcommand;

use crate::exit::CommandResult;

/// Measure wrun and print a table, then one JSON line.
#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// The sandbox alone: task overhead, throughput, compile and cache load, Wasm vs native.
    Sandbox {
        /// The seed-tasks module; built from examples/seed-tasks when not given.
        #[arg(long, env = "WRUN_SEED_MODULE")]
        module: Option<PathBuf>,
        /// No-op tasks timed one by one for the latency percentiles.
        #[arg(long, default_value_t = 20_000)]
        iterations: u32,
        /// Seconds of the all-cores throughput run.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
    /// A local cluster of 2 workers x 1 thread against the Dask reference workloads.
    Cluster {
        /// The seed-tasks module; built from examples/seed-tasks when not given.
        #[arg(long, env = "WRUN_SEED_MODULE")]
        module: Option<PathBuf>,
        /// Seconds of work per METG grain (Dask's script uses 4).
        #[arg(long, default_value_t = 4.0)]
        metg_seconds: f64,
    },
    /// The 100k no-op map with the dashboard closed and open in headless
    /// Chromium, three times each (also part of `bench cluster`).
    Dashboard {
        /// The seed-tasks module; built from examples/seed-tasks when not given.
        #[arg(long, env = "WRUN_SEED_MODULE")]
        module: Option<PathBuf>,
    },
}

impl BenchCommand {
    pub(crate) fn execute(self) -> CommandResult {
        match self {
            BenchCommand::Sandbox {
                module,
                iterations,
                seconds,
            } => sandbox::sandbox(module, iterations, seconds),
            BenchCommand::Cluster {
                module,
                metg_seconds,
            } => cluster::cluster(module, metg_seconds),
            BenchCommand::Dashboard { module } => cluster::dashboard(module),
        }
    }
}

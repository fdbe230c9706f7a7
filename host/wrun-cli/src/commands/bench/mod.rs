//! `wrun bench`: measurements that print a table, then one JSON line.

mod cluster;
mod sandbox;
mod scheduler;
mod taskbench;

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
    /// The real scheduler process against simulated workers (real Cap'n
    /// Proto connections from this process; a task "runs" by answering at
    /// once): tasks/s, the scheduler's CPU per task and its peak memory.
    Scheduler {
        /// Simulated workers.
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Task threads each worker says it has.
        #[arg(long, default_value_t = 1)]
        threads: u32,
        /// Tasks to run.
        #[arg(long, default_value_t = 100_000)]
        tasks: u64,
        /// What the tasks depend on.
        #[arg(long, value_enum, default_value_t = scheduler::Deps::None)]
        deps: scheduler::Deps,
        /// The seed-tasks module; built from examples/seed-tasks when not given.
        #[arg(long, env = "WRUN_SEED_MODULE")]
        module: Option<PathBuf>,
    },
    /// Task Bench's stencil_1d (each task needs itself and its two
    /// neighbours of the step before) with busy-wait tasks on a local
    /// cluster: efficiency per grain and METG(50%). bench/dask/taskbench.py
    /// runs the same graph on Dask.
    Taskbench {
        /// Workers of the local cluster.
        #[arg(long, default_value_t = 2)]
        workers: u32,
        /// Task threads per worker.
        #[arg(long, default_value_t = 1)]
        threads: u32,
        /// Steps (dependency levels) of the stencil.
        #[arg(long, default_value_t = 500)]
        steps: u32,
        /// Columns; the cluster's thread count when not given.
        #[arg(long)]
        width: Option<u32>,
        /// Spin of one task, in µs, for each point of the sweep.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "10000,3000,1000,300,100,50,30,10"
        )]
        grains: Vec<u64>,
        /// Runs per grain; the best counts.
        #[arg(long, default_value_t = 2)]
        runs: u32,
        /// The seed-tasks module; built from examples/seed-tasks when not given.
        #[arg(long, env = "WRUN_SEED_MODULE")]
        module: Option<PathBuf>,
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
            BenchCommand::Taskbench {
                workers,
                threads,
                steps,
                width,
                grains,
                runs,
                module,
            } => taskbench::taskbench(
                taskbench::Stencil {
                    workers,
                    threads,
                    steps,
                    width,
                    grains_us: grains,
                    runs,
                },
                module,
            ),
            BenchCommand::Scheduler {
                workers,
                threads,
                tasks,
                deps,
                module,
            } => scheduler::scheduler(workers, threads, tasks, deps, module),
        }
    }
}

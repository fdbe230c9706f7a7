//! # wrun: one binary for every role
//!
//! `wrun build`, `wrun inspect`, `wrun run` and `wrun bench` today; the
//! cluster roles (scheduler, worker, local, submit) join them as
//! subcommands. This crate is the edge: it parses flags (each with a
//! `WRUN_*` environment fallback), turns errors into messages and exit
//! codes, and leaves the work to the library crates.

mod bench;
mod bench_cluster;
mod cluster;
mod commands;
mod config;
mod exit;
mod graph;
mod limits;
mod mpi;
mod slurm;
mod units;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::limits::LimitArgs;

/// wrun: WebAssembly-sandboxed task execution.
#[derive(Debug, Parser)]
#[command(name = "wrun", version, about, propagate_version = true)]
struct Cli {
    /// Read settings from a TOML file: each key is a flag's WRUN_* variable
    /// without WRUN_ (`threads = 4`, `scheduler_file = "s.json"`); flags and
    /// the environment take precedence.
    #[arg(long, global = true, env = "WRUN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a task crate into a Wasm module (cargo, wasm32-wasip1, release).
    /// Prints the module's path as the last line.
    Build {
        /// The task crate's directory.
        #[arg(default_value = ".")]
        path: PathBuf,
    },
    /// List the tasks of a module with their signatures.
    Inspect {
        /// The .wasm module.
        module: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one task in the sandbox on this machine and print its JSON result.
    ///
    /// Each ARG is a JSON value: `wrun run seed.wasm add 1 2` prints 3;
    /// strings need JSON quotes: `wrun run m.wasm greet '"Ada"'`.
    /// Exit codes: 0 success, 1 task error, 2 usage or input error.
    Run {
        /// The .wasm module.
        module: PathBuf,
        /// The task to run.
        task: String,
        /// The arguments, one JSON value each.
        #[arg(allow_negative_numbers = true, conflicts_with = "args")]
        arg: Vec<String>,
        /// All arguments as one JSON array, instead of ARGs.
        #[arg(long)]
        args: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Print wall time, peak memory and fuel to stderr.
        #[arg(long)]
        usage: bool,
        #[command(flatten)]
        cache: CacheArgs,
    },
    /// Run a scheduler; it writes the scheduler file once it listens.
    Scheduler {
        /// Interface to listen on.
        #[arg(long, env = "WRUN_HOST", default_value = "127.0.0.1")]
        host: String,
        /// Port (0 picks a free one).
        #[arg(long, env = "WRUN_PORT", default_value_t = 0)]
        port: u16,
        /// Where to write the address and cluster secret (atomically).
        #[arg(long, env = "WRUN_SCHEDULER_FILE")]
        scheduler_file: Option<PathBuf>,
        #[command(flatten)]
        policy: cluster::PolicyArgs,
    },
    /// Run a worker (under a nanny that restarts it, unless --no-nanny).
    Worker(cluster::WorkerArgs),
    /// A whole cluster on this machine: a scheduler and N workers with nannies.
    /// Ctrl-C or SIGTERM stops every process it started.
    Local {
        /// Worker processes.
        #[arg(long, env = "WRUN_WORKERS", default_value_t = 2)]
        workers: u32,
        /// Task threads per worker.
        #[arg(long, env = "WRUN_THREADS", default_value_t = 1)]
        threads: u32,
        /// Memory per worker process.
        #[arg(long, env = "WRUN_WORKER_MEMORY", default_value = "4GiB", value_parser = units::parse_size)]
        memory: u64,
        /// Interface for the scheduler.
        #[arg(long, env = "WRUN_HOST", default_value = "127.0.0.1")]
        host: String,
        /// Port for the scheduler (0 picks a free one).
        #[arg(long, env = "WRUN_PORT", default_value_t = 0)]
        port: u16,
        /// Where to write the scheduler file [default: a file in the temp dir].
        #[arg(long, env = "WRUN_SCHEDULER_FILE")]
        scheduler_file: Option<PathBuf>,
        #[command(flatten)]
        policy: cluster::PolicyArgs,
    },
    /// Run a task (or a map of tasks) on a cluster and print the JSON results.
    ///
    /// With no scheduler named, an embedded cluster runs for the call.
    /// Exit codes: 0 all succeeded, 1 a task failed, 2 usage or input error,
    /// 3 cluster unreachable.
    Submit(cluster::SubmitArgs),
    /// Wait for a detached job (`wrun submit --detach`) and print its results in order.
    Gather {
        /// The job id `--detach` printed.
        job: String,
        #[command(flatten)]
        scheduler: cluster::SchedulerArgs,
    },
    /// Print the captured stdout and stderr of a detached job's tasks.
    Logs {
        /// JOB for every task, or JOB:N for the N-th (from 0).
        task: String,
        #[command(flatten)]
        scheduler: cluster::SchedulerArgs,
    },
    /// Cancel a detached job: stop its tasks and free their results.
    Cancel {
        /// The job id.
        job: String,
        #[command(flatten)]
        scheduler: cluster::SchedulerArgs,
    },
    /// Stop a cluster: its workers exit (their nannies too), then the
    /// scheduler. Needs the scheduler file (it holds the cluster secret).
    Shutdown {
        /// The scheduler file.
        #[arg(long, env = "WRUN_SCHEDULER_FILE")]
        scheduler_file: PathBuf,
        /// The exit code the scheduler process ends with.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        exit_code: i32,
        /// How long to wait for the scheduler.
        #[arg(long, env = "WRUN_CONNECT_TIMEOUT", default_value = "60s", value_parser = units::parse_duration)]
        connect_timeout: std::time::Duration,
    },
    /// Show the cluster's workers and tasks.
    Status {
        #[command(flatten)]
        scheduler: cluster::SchedulerArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Workers as Slurm batch jobs (dask-jobqueue's SLURMCluster):
    /// up, job-script, scale, adapt, down.
    Slurm {
        #[command(subcommand)]
        command: slurm::SlurmCommand,
    },
    /// Every rank of an MPI or srun launch (like dask-mpi): rank 0 runs the
    /// scheduler, rank 1 the client command, the rest workers. When the
    /// command ends, every rank exits with its exit code.
    ///
    /// `mpiexec -n 4 wrun mpi -- wrun submit m.wasm --map inc 1 2 3`
    Mpi(mpi::MpiArgs),
    /// Measure wrun and print a table, then one JSON line.
    Bench {
        #[command(subcommand)]
        which: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
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
}

/// Where compiled modules are cached.
#[derive(Debug, Clone, clap::Args)]
struct CacheArgs {
    /// Directory of the compiled-module cache [default: ~/.cache/wrun/modules].
    #[arg(long, env = "WRUN_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Do not read or write the compiled-module cache.
    #[arg(long, env = "WRUN_NO_CACHE")]
    no_cache: bool,
}

impl CacheArgs {
    fn dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(wrun_sandbox::default_cache_dir)
        }
    }
}

/// mimalloc keeps freed memory for reuse: large values (8 MiB chunks,
/// results, argument buffers) then do not fault in fresh pages each time,
/// which was most of a worker-to-worker transfer's cost with glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // mimalloc returns freed memory to the OS only when it frees again after
    // `purge_delay` (10 ms); an idle scheduler never does, so memory freed
    // after a burst (a grown hash table) would stay resident. Purge at once.
    // It reads this option lazily, at its first purge, after `main` starts.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: no other thread exists yet, so nothing reads the
        // environment concurrently (the reason `set_var` is unsafe).
        unsafe { std::env::set_var("MIMALLOC_PURGE_DELAY", "0") };
    }
    // Settings from --config FILE become WRUN_* variables, which every flag
    // falls back to; this must run before any thread starts.
    let args = match config::apply_config_file(std::env::args().collect()) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WRUN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Build { path } => commands::build(&path),
        Command::Inspect { module, json } => commands::inspect(&module, json),
        Command::Run {
            module,
            task,
            arg,
            args,
            limits,
            usage,
            cache,
        } => commands::run(
            &module,
            &task,
            &arg,
            args.as_deref(),
            &limits,
            usage,
            cache.dir(),
        ),
        Command::Scheduler {
            host,
            port,
            scheduler_file,
            policy,
        } => cluster::scheduler(host, port, scheduler_file, &policy),
        Command::Worker(args) => cluster::worker(args),
        Command::Local {
            workers,
            threads,
            memory,
            host,
            port,
            scheduler_file,
            policy,
        } => cluster::local(
            workers,
            threads,
            memory,
            host,
            port,
            scheduler_file,
            &policy,
        ),
        Command::Submit(args) => cluster::submit(args),
        Command::Status { scheduler, json } => cluster::status(scheduler, json),
        Command::Gather { job, scheduler } => cluster::gather(scheduler, job),
        Command::Logs { task, scheduler } => cluster::logs(scheduler, task),
        Command::Cancel { job, scheduler } => cluster::cancel(scheduler, job),
        Command::Slurm { command } => slurm::run(command),
        Command::Mpi(args) => mpi::mpi(args),
        Command::Shutdown {
            scheduler_file,
            exit_code,
            connect_timeout,
        } => cluster::shutdown_cluster(&scheduler_file, exit_code, connect_timeout)
            .map_err(|error| exit::Failure { code: 3, error }),
        Command::Bench {
            which:
                BenchCommand::Cluster {
                    module,
                    metg_seconds,
                },
        } => bench_cluster::cluster(module, metg_seconds),
        Command::Bench {
            which:
                BenchCommand::Sandbox {
                    module,
                    iterations,
                    seconds,
                },
        } => bench::sandbox(module, iterations, seconds),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            failure.exit_code()
        }
    }
}

//! # wrun: one binary for every role
//!
//! This crate is the edge: it parses flags (each with a `WRUN_*`
//! environment fallback, and a `--config` file below both), turns errors
//! into messages and exit codes (`exit.rs`), and leaves the work to the
//! library crates. One file per subcommand or family in `commands/`, each
//! with its clap struct and an `execute`; this file only dispatches.

mod args;
mod commands;
mod config;
mod exit;
mod graph_file;
mod output;
mod progress;
mod signals;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use crate::commands::bench::BenchCommand;
use crate::commands::build::BuildCommand;
use crate::commands::events::EventsCommand;
use crate::commands::graph::GraphCommand;
use crate::commands::inspect::InspectCommand;
use crate::commands::jobs::{CancelCommand, GatherCommand, LogsCommand};
use crate::commands::local::LocalCommand;
use crate::commands::mpi::MpiCommand;
use crate::commands::new::NewCommand;
use crate::commands::report::ReportCommand;
use crate::commands::run::RunCommand;
use crate::commands::scheduler::SchedulerCommand;
use crate::commands::shutdown::ShutdownCommand;
use crate::commands::slurm::SlurmCommand;
use crate::commands::status::StatusCommand;
use crate::commands::submit::SubmitCommand;
use crate::commands::tenant::TenantCommand;
use crate::commands::worker::WorkerCommand;

/// wrun: WebAssembly-sandboxed task execution.
#[derive(Debug, Parser)]
#[command(name = "wrun", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// Read settings from a TOML file: each key is a flag's WRUN_* variable
    /// without WRUN_ (`threads = 4`, `scheduler_file = "s.json"`); flags and
    /// the environment take precedence, and an unknown key is an error.
    #[arg(long, global = true, env = "WRUN_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a new task crate that `wrun build NAME` builds at once.
    New(NewCommand),
    /// Build a task crate into a Wasm module (cargo, wasm32-wasip1, release).
    /// Prints the module's path as the last line.
    Build(BuildCommand),
    /// List the tasks of a module with their signatures.
    Inspect(InspectCommand),
    /// Run one task in the sandbox on this machine and print its JSON result.
    Run(RunCommand),
    /// Run a scheduler; it writes the scheduler file once it listens.
    Scheduler(SchedulerCommand),
    /// Run a worker (under a nanny that restarts it, unless --no-nanny).
    Worker(WorkerCommand),
    /// A whole cluster on this machine: a scheduler and N workers with nannies.
    Local(LocalCommand),
    /// Run a task (or a map of tasks) on a cluster and print the JSON results.
    Submit(SubmitCommand),
    /// Wait for a detached job (`wrun submit --detach`) and print its results in order.
    Gather(GatherCommand),
    /// Print the captured stdout and stderr of a detached job's tasks.
    Logs(LogsCommand),
    /// Cancel a detached job: stop its tasks and free their results.
    Cancel(CancelCommand),
    /// Print the task stream of a detached job: when and where each task ran.
    Events(EventsCommand),
    /// Write a detached job's task stream and a summary as one HTML page.
    Report(ReportCommand),
    /// Draw a graph file's tasks and dependencies (SVG or Graphviz DOT).
    Graph(GraphCommand),
    /// Stop a cluster: its workers exit (their nannies too), then the scheduler.
    Shutdown(ShutdownCommand),
    /// Show the cluster's workers and tasks.
    Status(StatusCommand),
    /// The tenants of a shared cluster: add, list, remove, rotate.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Workers as Slurm batch jobs (dask-jobqueue's SLURMCluster):
    /// up, job-script, scale, adapt, down.
    #[command(subcommand)]
    Slurm(SlurmCommand),
    /// Every rank of an MPI or srun launch (like dask-mpi).
    Mpi(MpiCommand),
    /// Measure wrun and print a table, then one JSON line.
    #[command(subcommand)]
    Bench(BenchCommand),
}

impl Command {
    fn execute(self) -> exit::CommandResult {
        match self {
            Command::New(c) => c.execute(),
            Command::Build(c) => c.execute(),
            Command::Inspect(c) => c.execute(),
            Command::Run(c) => c.execute(),
            Command::Scheduler(c) => c.execute(),
            Command::Worker(c) => c.execute(),
            Command::Local(c) => c.execute(),
            Command::Submit(c) => c.execute(),
            Command::Gather(c) => c.execute(),
            Command::Logs(c) => c.execute(),
            Command::Cancel(c) => c.execute(),
            Command::Events(c) => c.execute(),
            Command::Report(c) => c.execute(),
            Command::Graph(c) => c.execute(),
            Command::Shutdown(c) => c.execute(),
            Command::Status(c) => c.execute(),
            Command::Tenant(c) => c.execute(),
            Command::Slurm(c) => c.execute(),
            Command::Mpi(c) => c.execute(),
            Command::Bench(c) => c.execute(),
        }
    }
}

/// mimalloc keeps freed memory for reuse: large values (8 MiB chunks,
/// results, argument buffers) then do not fault in fresh pages each time,
/// which was most of a worker-to-worker transfer's cost with glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages on or off for this process and the ones it
/// starts (`PR_SET_THP_DISABLE` is inherited). Off for every command but
/// `wrun worker`: a scheduler or a client builds and frees messages all the
/// time, and mimalloc, purging freed pages at once, had the kernel zero a
/// fresh 2 MiB page for nearly each (16-21% of the scheduler's CPU in a
/// map, 40% of `wrun submit`'s; 1,000 simulated workers cost 9-12 µs per
/// task with huge pages, 7-8 without). On for workers, whose large results
/// and transfers move 1.5x faster with them (64 MiB worker to worker
/// 810-910 against 450-580 MB/s).
pub(crate) fn transparent_huge_pages(on: bool) {
    if let Err(error) = nix::sys::prctl::set_thp_disable(!on) {
        tracing::debug!(
            "could not turn transparent huge pages {}: {error}",
            if on { "on" } else { "off" }
        );
    }
}

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
    let args = match config::apply_config_file(std::env::args().collect(), &Cli::command()) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::from(exit::USAGE);
        }
    };
    let cli = Cli::parse_from(args);
    // `wrun worker` turns them on again (also when `wrun local` starts it).
    if !matches!(cli.command, Command::Worker(_)) {
        transparent_huge_pages(false);
    }
    // A scheduler logs its audit trail (connections, sessions, submissions)
    // unless WRUN_LOG says otherwise; other commands only warnings.
    let default_filter = match cli.command {
        Command::Scheduler(_) | Command::Local(_) => "warn,wrun::audit=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WRUN_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command.execute() {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {failure}");
            failure.exit_code()
        }
    }
}

//! `wrun worker`: a worker, under a nanny that restarts it unless
//! `--no-nanny`.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use wrun_abi::units::{ByteSize, HumanDuration};
use wrun_sandbox::SandboxConfig;
use wrun_worker::{Departure, Nanny, SchedulerTarget, SpillConfig, WorkerConfig, WorkerError};

/// Results in memory never pass this fraction of --memory, spilling or not
/// (Dask pauses its workers at 0.8): the rest is for running tasks.
const HOLD_FRACTION: f64 = 0.8;

/// While the worker process's resident memory is above this fraction of
/// --memory (or of --spill-at, if higher), it spills more results (Dask's
/// `spill` threshold is 0.7).
const PROCESS_SPILL_FRACTION: f64 = 0.7;

fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!("`{text}` is not a fraction in (0, 1], such as 0.6")),
    }
}

use crate::args::SchedulerArgs;
use crate::exit::{CommandResult, Failure};
use crate::signals::{exit_with_parent, stop_flag};

/// Run a worker (under a nanny that restarts it, unless --no-nanny).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct WorkerCommand {
    #[command(flatten)]
    scheduler: SchedulerArgs,
    /// Not taken: the cluster secret would show in `ps`. With --scheduler,
    /// set WRUN_SECRET instead (or use --scheduler-file).
    #[arg(long, hide = true)]
    secret: Option<String>,
    /// Task threads.
    #[arg(long, env = "WRUN_THREADS", default_value_t = 1)]
    threads: u32,
    /// Memory for the worker process; the nanny restarts a worker above it.
    #[arg(long, env = "WRUN_WORKER_MEMORY", default_value = "4GiB")]
    memory: ByteSize,
    /// A name for status and logs [default: worker-PID].
    #[arg(long, env = "WRUN_WORKER_NAME")]
    name: Option<String>,
    /// Run the worker in this process, without a nanny to restart it.
    #[arg(long, env = "WRUN_NO_NANNY")]
    no_nanny: bool,
    /// Address that peers use to fetch this worker's results; `auto` picks
    /// the address of this node's host name.
    #[arg(long, env = "WRUN_PEER_HOST", default_value = "127.0.0.1")]
    peer_host: String,
    /// Serve peers over TLS even on loopback (off loopback it always does,
    /// unless --insecure-plaintext).
    #[arg(long, env = "WRUN_TLS")]
    tls: bool,
    /// Serve peers off loopback without TLS: results cross the network in clear.
    #[arg(long, env = "WRUN_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// Network interface for peers (e.g. ib0); overrides --peer-host.
    #[arg(long, env = "WRUN_INTERFACE")]
    interface: Option<String>,
    /// Stop after this long (retiring first), like dask-worker --lifetime.
    /// Under Slurm the job's own end time is used without it.
    #[arg(long, env = "WRUN_LIFETIME")]
    lifetime: Option<HumanDuration>,
    /// How long before its end time the worker retires: stops taking tasks
    /// and hands its results to peers.
    #[arg(long, env = "WRUN_RETIRE_MARGIN", default_value = "60s")]
    retire_margin: HumanDuration,
    /// On SIGTERM or SIGINT the worker retires and leaves within this long
    /// (Slurm kills KillWait, 30 s by default, after its SIGTERM).
    #[arg(long, env = "WRUN_RETIRE_TIMEOUT", default_value = "20s")]
    retire_timeout: HumanDuration,
    /// Results held in memory above this fraction of --memory are written
    /// to disk, oldest first; and more while the process's memory is above
    /// 0.7 of --memory (Dask's target and spill thresholds are 0.6 and 0.7).
    #[arg(long, env = "WRUN_SPILL_AT", default_value_t = 0.6, value_parser = parse_fraction)]
    spill_at: f64,
    /// The most bytes of results the worker writes to disk; 0 never spills.
    /// Past it (or with the disk full), results stay in memory up to 0.8 of
    /// --memory, and a task whose result does not fit then fails.
    #[arg(long, env = "WRUN_SPILL_LIMIT", default_value = "16GiB")]
    spill_limit: ByteSize,
    /// Where the worker makes its spill directory (wrun-spill-PID-*,
    /// removed when the worker ends) [default: $TMPDIR or /tmp].
    #[arg(long, env = "WRUN_SPILL_DIR")]
    spill_dir: Option<std::path::PathBuf>,
    /// How long the worker waits, keeping its results, for a scheduler
    /// that keeps a journal to come back after losing it.
    #[arg(long, env = "WRUN_REJOIN_TIMEOUT", default_value = "60s")]
    rejoin_timeout: HumanDuration,
    /// The most the compiled-module cache keeps on disk (least recently used go first).
    #[arg(long, env = "WRUN_CACHE_SIZE", default_value = "1GiB")]
    cache_size: ByteSize,
    /// Exit when the parent process dies (`wrun local` and the nanny pass it).
    #[arg(long, hide = true)]
    exit_with_parent: bool,
}

impl WorkerCommand {
    fn config(&self) -> Result<WorkerConfig, Failure> {
        if self.secret.is_some() {
            return Err(Failure::input(anyhow!(
                "--secret is not taken: a secret on the command line shows in `ps`; set WRUN_SECRET instead, or use --scheduler-file"
            )));
        }
        let secret = std::env::var("WRUN_SECRET").ok().filter(|s| !s.is_empty());
        let scheduler = match (
            &self.scheduler.scheduler_file,
            &self.scheduler.scheduler,
            &secret,
        ) {
            (Some(file), _, _) => SchedulerTarget::File(file.clone()),
            (None, Some(address), Some(secret)) => SchedulerTarget::Address {
                address: address.clone(),
                secret: secret.clone(),
                certificate: self.scheduler.credentials()?.certificate,
            },
            (None, Some(_), None) => {
                return Err(Failure::input(anyhow!(
                    "--scheduler needs the cluster secret in WRUN_SECRET"
                )));
            }
            (None, None, _) => {
                return Err(Failure::input(anyhow!(
                    "name the scheduler: --scheduler-file FILE or --scheduler HOST:PORT"
                )));
            }
        };
        let peer_host = match (&self.interface, self.peer_host.as_str()) {
            (Some(interface), _) => wrun_slurm::address_of_interface(interface)
                .map_err(|e| Failure::input(anyhow!(e)))?
                .to_string(),
            (None, "auto") => wrun_slurm::default_address().to_string(),
            (None, host) => host.to_owned(),
        };
        let slurm_job_id = std::env::var("SLURM_JOB_ID")
            .ok()
            .filter(|id| !id.is_empty());
        let end_time = match (self.lifetime, &slurm_job_id) {
            (Some(lifetime), _) => Some(SystemTime::now() + lifetime.0),
            (None, Some(job)) => match wrun_slurm::time_left(job) {
                Ok(left) => left.map(|left| SystemTime::now() + left),
                Err(error) => {
                    tracing::warn!("cannot learn the end of Slurm job {job}: {error}");
                    None
                }
            },
            (None, None) => None,
        };
        Ok(WorkerConfig {
            scheduler,
            threads: self.threads.max(1),
            memory_bytes: self.memory.0,
            name: self
                .name
                .clone()
                .unwrap_or_else(|| format!("worker-{}", std::process::id())),
            connect_timeout: self.scheduler.connect_timeout.0,
            peer_tls: self.tls
                || (!wrun_proto::tls::is_loopback(&peer_host) && !self.insecure_plaintext),
            peer_host,
            sandbox: SandboxConfig {
                cache_max_bytes: self.cache_size.0,
                ..SandboxConfig::default()
            },
            end_time,
            retire_margin: self.retire_margin.0,
            retire_on_signal: Some(self.retire_timeout.0),
            retire_when: None,
            slurm_job_id,
            spill: (self.spill_limit.0 > 0).then(|| SpillConfig {
                dir: self.spill_dir(),
                at_bytes: (self.memory.0 as f64 * self.spill_at) as u64,
                rss_bytes: (self.memory.0 as f64 * self.spill_at.max(PROCESS_SPILL_FRACTION))
                    as u64,
                hold_bytes: (self.memory.0 as f64 * HOLD_FRACTION) as u64,
                limit_bytes: self.spill_limit.0,
            }),
            rejoin_timeout: self.rejoin_timeout.0,
        })
    }

    fn spill_dir(&self) -> std::path::PathBuf {
        self.spill_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    pub(crate) fn execute(self) -> CommandResult {
        // Off in every other command, and inherited from `wrun local`.
        crate::transparent_huge_pages(true);
        let config = self.config()?;
        if self.exit_with_parent {
            exit_with_parent();
        }
        if !self.no_nanny {
            return self.nanny();
        }
        eprintln!(
            "wrun worker {}: {} thread(s), joining the scheduler{}",
            config.name,
            config.threads,
            match config
                .end_time
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
            {
                Some(left) => format!(
                    "; ends in {}, retires {} before",
                    wrun_slurm::format_duration(left),
                    wrun_slurm::format_duration(config.retire_margin)
                ),
                None => String::new(),
            }
        );
        let departure = wrun_worker::run_worker(config).map_err(|error| match error {
            WorkerError::Connect(_) | WorkerError::Disconnected(_) => Failure::unreachable(error),
            other => Failure::input(other),
        })?;
        eprintln!(
            "wrun worker: {}",
            match departure {
                Departure::Retired => "retired; its tasks and results were handed over",
                Departure::RetiredUnconfirmed =>
                    "retired without confirmation; the scheduler recomputes what was lost",
                Departure::Shutdown => "the cluster shut down",
            }
        );
        Ok(())
    }

    /// Runs this same command with `--no-nanny` as a child, restarted by a
    /// [`Nanny`] until it leaves cleanly or this process is asked to stop.
    fn nanny(&self) -> CommandResult {
        let mut args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        args.push("--no-nanny".into());
        if !self.exit_with_parent {
            args.push("--exit-with-parent".into());
        }
        let nanny = Nanny {
            program: std::env::current_exe().context("finding the wrun binary")?,
            args,
            memory_limit: self.memory.0,
            stop_grace: self.retire_timeout.0 + Duration::from_secs(5),
            scheduler_file: self.scheduler.scheduler_file.clone(),
            restarts: Arc::new(AtomicU32::new(0)),
            spill_dir: Some(self.spill_dir()),
        };
        nanny
            .run(&stop_flag())
            .context("starting the worker process")?;
        Ok(())
    }
}

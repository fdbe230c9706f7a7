//! Flag groups several commands share: where the scheduler is, task
//! limits, the module cache, the scheduling policy. Every flag has a
//! `WRUN_*` environment fallback (and so a `--config` key).

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::Args;
use wrun_abi::TaskLimits;
use wrun_abi::units::{ByteSize, HumanDuration};
use wrun_client::{Client, ClientError, Credentials, Target};
use wrun_scheduler::{ConnectionLimits, TaskCaps, TlsMode};

use crate::exit::Failure;

/// How to find the scheduler.
#[derive(Debug, Clone, Args)]
pub(crate) struct SchedulerArgs {
    /// The scheduler file to read (waited for until --connect-timeout).
    #[arg(long, env = "WRUN_SCHEDULER_FILE", conflicts_with = "scheduler")]
    pub(crate) scheduler_file: Option<PathBuf>,
    /// The scheduler's address, host:port.
    #[arg(long, env = "WRUN_SCHEDULER")]
    pub(crate) scheduler: Option<String>,
    /// How long to wait for the scheduler file and the connection.
    #[arg(long, env = "WRUN_CONNECT_TIMEOUT", default_value = "60s")]
    pub(crate) connect_timeout: HumanDuration,
    /// The tenant's token [default: the scheduler file's]. Prefer
    /// WRUN_TOKEN: a flag shows in `ps`.
    #[arg(long, env = "WRUN_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// The scheduler's TLS certificate (PEM), with --scheduler (a
    /// scheduler file carries its own).
    #[arg(long, env = "WRUN_CERTIFICATE")]
    pub(crate) certificate: Option<PathBuf>,
}

impl SchedulerArgs {
    pub(crate) fn target(&self) -> Option<Target> {
        match (&self.scheduler_file, &self.scheduler) {
            (Some(file), _) => Some(Target::File(file.clone())),
            (None, Some(address)) => Some(Target::Address(address.clone())),
            (None, None) => None,
        }
    }

    /// The token and certificate these flags give.
    pub(crate) fn credentials(&self) -> Result<Credentials, Failure> {
        let certificate = match &self.certificate {
            None => None,
            Some(path) => {
                let pem = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the certificate {}", path.display()))?;
                Some(wrun_proto::tls::certificate_from_pem(&pem).map_err(Failure::input)?)
            }
        };
        Ok(Credentials {
            token: self.token.clone(),
            certificate,
        })
    }

    /// Connects to the scheduler these flags name (one must be named).
    pub(crate) fn connect(&self) -> Result<Client, Failure> {
        let target = self.target().ok_or_else(|| {
            Failure::input(anyhow!(
                "name the scheduler: --scheduler-file FILE or --scheduler HOST:PORT"
            ))
        })?;
        Client::connect_with(&target, self.credentials()?, self.connect_timeout.0)
            .map_err(client_failure)
    }
}

/// A client error as a command's failure: unreachable, or refused input.
pub(crate) fn client_failure(error: ClientError) -> Failure {
    match error {
        ClientError::Connect(_) | ClientError::Disconnected(_) => Failure::unreachable(error),
        other => Failure::input(other),
    }
}

/// Limits of each task run. Defaults are [`TaskLimits::DEFAULT`]'s.
#[derive(Debug, Clone, Args)]
pub(crate) struct LimitArgs {
    /// Wall-time limit per task (e.g. 500ms, 10s, 2m).
    #[arg(long, env = "WRUN_TIMEOUT", default_value_t = HumanDuration(TaskLimits::DEFAULT.timeout))]
    pub(crate) timeout: HumanDuration,
    /// Linear-memory limit per task (e.g. 64MiB, 1GiB).
    #[arg(long, env = "WRUN_MEMORY", default_value_t = ByteSize(TaskLimits::DEFAULT.memory_bytes))]
    pub(crate) memory: ByteSize,
    /// Fuel limit per task (about one unit per Wasm instruction); turns on metering.
    #[arg(long, env = "WRUN_FUEL")]
    pub(crate) fuel: Option<u64>,
    /// Largest encoded result a task may return.
    #[arg(long, env = "WRUN_MAX_RESULT", default_value_t = ByteSize(TaskLimits::DEFAULT.result_bytes))]
    pub(crate) max_result: ByteSize,
    /// Captured stdout kept per task; the rest is dropped with a marker.
    #[arg(long, env = "WRUN_MAX_STDOUT", default_value_t = ByteSize(TaskLimits::DEFAULT.stdout_bytes))]
    pub(crate) max_stdout: ByteSize,
    /// Captured stderr kept per task; the rest is dropped with a marker.
    #[arg(long, env = "WRUN_MAX_STDERR", default_value_t = ByteSize(TaskLimits::DEFAULT.stderr_bytes))]
    pub(crate) max_stderr: ByteSize,
}

impl LimitArgs {
    pub(crate) fn limits(&self) -> TaskLimits {
        TaskLimits {
            memory_bytes: self.memory.0,
            timeout: self.timeout.0,
            fuel: self.fuel,
            result_bytes: self.max_result.0,
            stdout_bytes: self.max_stdout.0,
            stderr_bytes: self.max_stderr.0,
        }
    }
}

/// Where compiled modules are cached.
#[derive(Debug, Clone, Args)]
pub(crate) struct CacheArgs {
    /// Directory of the compiled-module cache [default: ~/.cache/wrun/modules].
    #[arg(long, env = "WRUN_CACHE_DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// Do not read or write the compiled-module cache.
    #[arg(long, env = "WRUN_NO_CACHE")]
    pub(crate) no_cache: bool,
}

impl CacheArgs {
    pub(crate) fn dir(&self) -> Option<PathBuf> {
        if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(wrun_sandbox::default_cache_dir)
        }
    }
}

/// How a scheduler serves: the flags `wrun scheduler` and `wrun local` share.
#[derive(Debug, Clone, Args)]
pub(crate) struct ServeArgs {
    /// Interface the scheduler listens on.
    #[arg(long, env = "WRUN_HOST", default_value = "127.0.0.1")]
    pub(crate) host: String,
    /// Port the scheduler listens on (0 picks a free one).
    #[arg(long, env = "WRUN_PORT", default_value_t = 0)]
    pub(crate) port: u16,
    #[command(flatten)]
    pub(crate) policy: PolicyArgs,
    /// The tenants file (`wrun tenant add`); reloaded on SIGHUP. Without
    /// one, the cluster has one tenant whose token the scheduler file carries.
    #[arg(long, env = "WRUN_TENANTS")]
    pub(crate) tenants: Option<PathBuf>,
    /// The most linear memory any task may ask for.
    #[arg(long, env = "WRUN_MAX_TASK_MEMORY", default_value_t = ByteSize(TaskCaps::default().memory_bytes))]
    pub(crate) max_task_memory: ByteSize,
    /// The longest time limit any task may ask for.
    #[arg(long, env = "WRUN_MAX_TASK_TIMEOUT", default_value_t = HumanDuration(TaskCaps::default().timeout))]
    pub(crate) max_task_timeout: HumanDuration,
    /// Connections open at once; more are closed as they arrive.
    #[arg(long, env = "WRUN_MAX_CONNECTIONS", default_value_t = ConnectionLimits::default().max_connections)]
    pub(crate) max_connections: usize,
    /// A connection that opens no session within this long is closed.
    #[arg(long, env = "WRUN_HANDSHAKE_TIMEOUT", default_value_t = HumanDuration(ConnectionLimits::default().handshake))]
    pub(crate) handshake_timeout: HumanDuration,
    /// Speak TLS even on loopback (off loopback it always does, unless
    /// --insecure-plaintext).
    #[arg(long, env = "WRUN_TLS", conflicts_with = "insecure_plaintext")]
    pub(crate) tls: bool,
    /// The scheduler's TLS certificate (PEM) [default: a self-signed one
    /// made at start]; clients and workers accept exactly this one.
    #[arg(long, env = "WRUN_TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The key of --tls-cert (PEM).
    #[arg(long, env = "WRUN_TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Listen off loopback without TLS: traffic and the cluster secret
    /// cross the network in clear.
    #[arg(long, env = "WRUN_INSECURE_PLAINTEXT")]
    pub(crate) insecure_plaintext: bool,
    /// Also write a file for tenants (mode 0644): the scheduler's address
    /// and certificate, without the cluster secret.
    #[arg(long, env = "WRUN_CLIENT_FILE")]
    pub(crate) client_file: Option<PathBuf>,
    /// Keep a journal in this directory (made if missing): every accepted
    /// module, submission and detached job is on disk before the call
    /// returns, and a scheduler started on it again serves them; workers
    /// that lost it keep their results and rejoin.
    #[arg(long, env = "WRUN_JOURNAL")]
    pub(crate) journal: Option<PathBuf>,
    /// How long a scheduler restarted on its journal waits for its workers
    /// to rejoin with their results before recomputing what is missing.
    #[arg(long, env = "WRUN_REJOIN_WAIT", default_value_t = HumanDuration(wrun_scheduler::SchedulerConfig::default().rejoin_timeout))]
    pub(crate) rejoin_wait: HumanDuration,
    /// Compact the journal (a snapshot of the live state starts a new
    /// file) when what was written since passes this and twice the snapshot.
    #[arg(long, env = "WRUN_JOURNAL_COMPACT_AT", default_value_t = ByteSize(wrun_scheduler::SchedulerConfig::default().journal_compact_bytes))]
    pub(crate) journal_compact_at: ByteSize,
    /// Serve the dashboard and `/metrics` here (`off`: not at all). Off
    /// loopback it speaks TLS and asks for a token. If the default port
    /// is taken, another free one is used (with a warning).
    #[arg(long, env = "WRUN_DASHBOARD", default_value = DEFAULT_DASHBOARD, value_parser = parse_dashboard)]
    pub(crate) dashboard: DashboardFlag,
    /// How many of the newest task runs the scheduler keeps for `wrun
    /// events`, `wrun report` and the dashboard (0: none).
    #[arg(long, env = "WRUN_TASK_STREAM", default_value_t = wrun_scheduler::DEFAULT_TASK_STREAM)]
    pub(crate) task_stream: usize,
}

const DEFAULT_DASHBOARD: &str = "127.0.0.1:8787";

/// `--dashboard`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DashboardFlag(pub(crate) Option<std::net::SocketAddr>);

fn parse_dashboard(text: &str) -> Result<DashboardFlag, String> {
    if text == "off" {
        return Ok(DashboardFlag(None));
    }
    text.parse()
        .map(|addr| DashboardFlag(Some(addr)))
        .map_err(|_| format!("`{text}` is not HOST:PORT (an IP address and a port) or `off`"))
}

impl ServeArgs {
    /// The scheduler's settings, writing its file at `scheduler_file`.
    pub(crate) fn config(
        &self,
        scheduler_file: Option<PathBuf>,
    ) -> wrun_scheduler::SchedulerConfig {
        wrun_scheduler::SchedulerConfig {
            host: self.host.clone(),
            port: self.port,
            scheduler_file,
            core: self.policy.core(),
            tenants_file: self.tenants.clone(),
            caps: TaskCaps {
                memory_bytes: self.max_task_memory.0,
                timeout: self.max_task_timeout.0,
            },
            connections: ConnectionLimits {
                max_connections: self.max_connections.max(1),
                handshake: self.handshake_timeout.0,
            },
            tls: match (self.tls, self.insecure_plaintext) {
                (true, _) => TlsMode::Always,
                (false, true) => TlsMode::InsecurePlaintext,
                (false, false) => TlsMode::OffLoopback,
            },
            tls_identity: self.tls_cert.clone().zip(self.tls_key.clone()),
            client_file: self.client_file.clone(),
            journal: self.journal.clone(),
            rejoin_timeout: self.rejoin_wait.0,
            journal_compact_bytes: self.journal_compact_at.0.max(1),
            dashboard: self
                .dashboard
                .0
                .map(|addr| wrun_scheduler::DashboardAddress {
                    addr,
                    or_any_port: addr.to_string() == DEFAULT_DASHBOARD,
                }),
            task_stream: self.task_stream,
            ..Default::default()
        }
    }
}

/// The scheduling policy's tunables, for `wrun scheduler` and `wrun local`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PolicyArgs {
    /// Tasks a worker may hold per thread (running plus queued on it):
    /// deeper queues hide round trips for tiny tasks; idle workers steal
    /// from deep queues, so balance is kept either way.
    #[arg(long, env = "WRUN_QUEUE_PER_SLOT", default_value_t = wrun_core::CoreConfig::default().queue_per_slot)]
    pub(crate) queue_per_slot: u32,
    /// A worker silent this long is removed and its work rescheduled.
    #[arg(long, env = "WRUN_HEARTBEAT_TIMEOUT", default_value_t = HumanDuration(wrun_core::CoreConfig::default().heartbeat_timeout))]
    pub(crate) heartbeat_timeout: HumanDuration,
    /// Do not stage: by default a task whose inputs are all being made on
    /// one worker goes there before they are made, and the worker starts
    /// it with no round trip through the scheduler (a chain of tiny tasks
    /// runs ~7x faster). With this, every task waits in the scheduler until
    /// its inputs are done, as in Dask.
    #[arg(long, env = "WRUN_NO_STAGING")]
    pub(crate) no_staging: bool,
}

impl PolicyArgs {
    pub(crate) fn core(&self) -> wrun_core::CoreConfig {
        wrun_core::CoreConfig {
            queue_per_slot: self.queue_per_slot.max(1),
            heartbeat_timeout: self.heartbeat_timeout.0,
            staging: !self.no_staging,
            ..wrun_core::CoreConfig::default()
        }
    }
}

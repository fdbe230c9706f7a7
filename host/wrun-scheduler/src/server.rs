//! The scheduler's life: bind, write the scheduler file, serve connections
//! on one thread, tick the core's clock, and stop (on a signal, on its
//! handle, or when the holder of the cluster secret shuts the cluster down).

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use wrun_core::{Core, CoreConfig};
use wrun_proto::SchedulerFile;
use wrun_proto::tls::TlsIdentity;

use crate::encode::flush;
use crate::listener::{Acceptor, ConnectionLimits};
use crate::state::{Deferred, Shared, State};
use crate::tenants::{TaskCaps, Tenants, TenantsFile};

/// How the scheduler listens.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Interface to bind (default 127.0.0.1).
    pub host: String,
    /// Port; 0 picks a free one.
    pub port: u16,
    /// Where to write the scheduler file once listening.
    pub scheduler_file: Option<PathBuf>,
    /// The cluster secret; a random one when `None`.
    pub secret: Option<String>,
    /// Scheduling policy.
    pub core: CoreConfig,
    /// The tenants file; without one the cluster has one tenant whose
    /// token the scheduler file carries.
    pub tenants_file: Option<PathBuf>,
    /// The most any task may ask for.
    pub caps: TaskCaps,
    /// Bounds on connections.
    pub connections: ConnectionLimits,
    /// When the scheduler speaks TLS.
    pub tls: TlsMode,
    /// A certificate and key (PEM files) instead of a generated pair.
    pub tls_identity: Option<(PathBuf, PathBuf)>,
    /// A file for tenants: the scheduler file without its secret.
    pub client_file: Option<PathBuf>,
    /// A directory for the journal: a scheduler started on one replays
    /// it, and workers that lost it rejoin.
    pub journal: Option<PathBuf>,
    /// How long a restarted scheduler waits for its workers to rejoin
    /// with the results the journal says they have.
    pub rejoin_timeout: Duration,
    /// How long a session restored from the journal waits for its client
    /// to resume it before its tasks are cancelled.
    pub resume_wait: Duration,
    /// The journal is compacted when its tail passes this (and twice its
    /// snapshot).
    pub journal_compact_bytes: u64,
    /// Where to serve the dashboard and `/metrics` (`None`: nowhere).
    pub dashboard: Option<DashboardAddress>,
    /// How many of the newest task runs to keep for `wrun events`.
    pub task_stream: usize,
}

/// Where the dashboard listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DashboardAddress {
    /// The address.
    pub addr: std::net::SocketAddr,
    /// If its port is taken, take any free one (with a warning), as Dask
    /// does for its default 8787; otherwise refuse to start.
    pub or_any_port: bool,
}

/// When a scheduler speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// When it listens off loopback (and it refuses to listen off
    /// loopback without).
    #[default]
    OffLoopback,
    /// Always (also on loopback, e.g. to measure what TLS costs).
    Always,
    /// Never, even off loopback (`--insecure-plaintext`).
    InsecurePlaintext,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            host: "127.0.0.1".to_owned(),
            port: 0,
            scheduler_file: None,
            secret: None,
            core: CoreConfig::default(),
            tenants_file: None,
            caps: TaskCaps::default(),
            connections: ConnectionLimits::default(),
            tls: TlsMode::default(),
            tls_identity: None,
            client_file: None,
            journal: None,
            rejoin_timeout: Duration::from_secs(10),
            resume_wait: Duration::from_secs(60),
            journal_compact_bytes: 64 << 20,
            dashboard: None,
            task_stream: crate::task_stream::DEFAULT_TASK_STREAM,
        }
    }
}

/// A scheduler running on its own thread.
pub struct SchedulerHandle {
    /// `host:port` it listens on.
    pub address: String,
    /// The cluster secret workers must present.
    pub secret: String,
    /// The token of the cluster's one tenant, when it has no tenants file.
    pub token: Option<String>,
    /// Its TLS certificate (PEM), when it speaks TLS.
    pub certificate: Option<String>,
    /// The dashboard's URL, when it serves one.
    pub dashboard_url: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<i32>>>,
    ended: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Stops serving when the handle goes.
    _dashboard: Option<wrun_dashboard::Dashboard>,
}

impl SchedulerHandle {
    /// The scheduler file contents for this scheduler.
    pub fn scheduler_file(&self) -> SchedulerFile {
        SchedulerFile {
            address: self.address.clone(),
            secret: self.secret.clone(),
            protocol: wrun_proto::PROTOCOL_VERSION,
            pid: std::process::id(),
            token: self.token.clone(),
            certificate: self.certificate.clone(),
        }
    }

    /// Stops the scheduler and waits for its thread.
    pub fn stop(mut self) {
        let _ = self.shutdown();
    }

    /// Waits until the scheduler stops by itself (a `shutdown` call with
    /// the cluster secret) and returns the exit code that call asked for.
    pub fn join(mut self) -> Option<i32> {
        self.thread
            .take()
            .and_then(|thread| thread.join().ok().flatten())
    }

    /// Resolves when the scheduler has stopped by itself (see [`SchedulerHandle::join`]).
    pub fn ended(&mut self) -> impl std::future::Future<Output = ()> + use<> {
        let ended = self.ended.take();
        async move {
            match ended {
                Some(ended) => {
                    let _ = ended.await;
                }
                None => std::future::pending().await,
            }
        }
    }

    fn shutdown(&mut self) -> Option<i32> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.thread
            .take()
            .and_then(|thread| thread.join().ok().flatten())
    }
}

impl Drop for SchedulerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Binds, writes the scheduler file, and serves on a new thread.
pub fn start_scheduler(config: SchedulerConfig) -> std::io::Result<SchedulerHandle> {
    // A journal that is not one stops the start before anything listens.
    let journal = match &config.journal {
        Some(dir) => Some(
            crate::journal::read(dir)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
        ),
        None => None,
    };
    let kept = match journal.as_ref().and_then(|j| j.as_ref()) {
        Some(read) => crate::recovery::identity_of(read)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
        None => None,
    };
    let listener = std::net::TcpListener::bind((config.host.as_str(), config.port))?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?.to_string();
    let secret = config
        .secret
        .clone()
        .or_else(|| kept.as_ref().map(|k| k.secret.clone()))
        .unwrap_or_else(wrun_proto::new_secret);
    let (tenants, token) = match &config.tenants_file {
        Some(path) => {
            let file = TenantsFile::load(path)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            (Tenants::from_file(&file), None)
        }
        None => {
            let token = kept
                .as_ref()
                .and_then(|k| k.token.clone())
                .unwrap_or_else(crate::tenants::new_token);
            (Tenants::single(&token), Some(token))
        }
    };
    let identity = tls_identity(&config)?;
    let acceptor = identity
        .as_ref()
        .map(|i| i.acceptor())
        .transpose()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let hub = config.dashboard.map(|_| {
        Arc::new(wrun_dashboard::Hub::new(crate::observe::access(
            &tenants, &secret,
        )))
    });
    let dashboard = match (config.dashboard, &hub) {
        (Some(address), Some(hub)) => Some(start_dashboard(
            address,
            hub.clone(),
            acceptor.clone(),
            &config.host,
        )?),
        _ => None,
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    let mut handle = SchedulerHandle {
        address,
        secret: secret.clone(),
        token,
        certificate: identity.as_ref().map(|i| i.certificate_pem()),
        dashboard_url: dashboard.as_ref().map(|d| d.url()),
        stop: Some(stop_tx),
        thread: None,
        ended: Some(ended_rx),
        _dashboard: dashboard,
    };
    if let Some(path) = &config.scheduler_file {
        handle.scheduler_file().write(path)?;
    }
    if let Some(path) = &config.client_file {
        handle.scheduler_file().write_public(path)?;
    }
    let journal = match (&config.journal, journal) {
        (Some(dir), Some(read)) => Some(JournalSetup {
            dir: dir.clone(),
            read,
            identity: crate::recovery::Identity {
                secret: secret.clone(),
                token: handle.token.clone(),
            },
            rejoin_timeout: config.rejoin_timeout,
            resume_wait: config.resume_wait,
            compact_bytes: config.journal_compact_bytes,
        }),
        _ => None,
    };
    let setup = Setup {
        journal,
        secret,
        tenants,
        core: config.core.clone(),
        caps: config.caps,
        connections: config.connections,
        tenants_file: config.tenants_file.clone(),
        acceptor,
        hub,
        task_stream: config.task_stream,
    };
    let thread = std::thread::Builder::new()
        .name("wrun-scheduler".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let local = tokio::task::LocalSet::new();
            let code = local.block_on(&runtime, serve(listener, setup, stop_rx));
            let _ = ended_tx.send(());
            code
        })?;
    handle.thread = Some(thread);
    info!(address = %handle.address, "scheduler listening");
    Ok(handle)
}

/// Serves the dashboard. Off loopback it speaks TLS: with the scheduler's
/// certificate when it has one, else a fresh self-signed one.
fn start_dashboard(
    address: DashboardAddress,
    hub: Arc<wrun_dashboard::Hub>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    host: &str,
) -> std::io::Result<wrun_dashboard::Dashboard> {
    let tls = if address.addr.ip().is_loopback() {
        None
    } else {
        match acceptor {
            Some(acceptor) => Some(acceptor),
            None => Some(
                TlsIdentity::generate(&[address.addr.ip().to_string(), host.to_owned()])
                    .and_then(|identity| identity.acceptor())
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
            ),
        }
    };
    let serve = |addr| wrun_dashboard::serve(addr, hub.clone(), tls.clone());
    match serve(address.addr) {
        Ok(dashboard) => Ok(dashboard),
        Err(wrun_dashboard::DashboardError::Bind { source, .. })
            if address.or_any_port && source.kind() == std::io::ErrorKind::AddrInUse =>
        {
            let mut any = address.addr;
            any.set_port(0);
            let dashboard = serve(any).map_err(|e| std::io::Error::other(e.to_string()))?;
            warn!(
                "port {} is in use (another cluster?): the dashboard is on {} instead",
                address.addr.port(),
                dashboard.addr()
            );
            Ok(dashboard)
        }
        Err(error) => Err(std::io::Error::other(error.to_string())),
    }
}

/// The scheduler's TLS identity, if it speaks TLS: the files given, or a
/// fresh self-signed one. Listening off loopback without TLS is refused
/// unless asked for by name.
fn tls_identity(config: &SchedulerConfig) -> std::io::Result<Option<TlsIdentity>> {
    let loopback = wrun_proto::tls::is_loopback(&config.host);
    let on = match config.tls {
        TlsMode::Always => true,
        TlsMode::OffLoopback => !loopback,
        TlsMode::InsecurePlaintext => false,
    };
    if !on {
        if !loopback {
            warn!(host = %config.host, "listening off loopback without TLS (--insecure-plaintext): traffic and the cluster secret cross the network in clear");
        }
        return Ok(None);
    }
    let identity = match &config.tls_identity {
        Some((cert, key)) => TlsIdentity::from_pem_files(cert, key),
        None => TlsIdentity::generate(&[config.host.clone(), "wrun".to_owned()]),
    };
    identity
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))
}

/// Runs a scheduler until SIGINT or SIGTERM, or until a client with the
/// cluster secret shuts the cluster down; returns the exit code it asked
/// for. `listening` is told the address once the scheduler listens.
pub fn run_scheduler(
    config: SchedulerConfig,
    listening: impl FnOnce(&SchedulerHandle),
) -> std::io::Result<Option<i32>> {
    let mut handle = start_scheduler(config.clone())?;
    listening(&handle);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let ended = handle.ended();
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = ended => {}
        }
        std::io::Result::Ok(())
    })?;
    if let Some(path) = &config.scheduler_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(handle.shutdown())
}

/// How often the core's clock ticks (heartbeat time-outs are judged then).
const TICK: Duration = Duration::from_millis(500);
/// How late a tick may be before the loop counts as stalled.
const TICK_SLACK: Duration = Duration::from_millis(250);

/// The journal a scheduler starts on: its newest file, if any.
struct JournalSetup {
    dir: PathBuf,
    read: Option<crate::journal::Read>,
    identity: crate::recovery::Identity,
    rejoin_timeout: Duration,
    resume_wait: Duration,
    compact_bytes: u64,
}

/// What the serving thread starts from.
struct Setup {
    journal: Option<JournalSetup>,
    secret: String,
    tenants: Tenants,
    core: CoreConfig,
    caps: TaskCaps,
    connections: ConnectionLimits,
    tenants_file: Option<PathBuf>,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    hub: Option<Arc<wrun_dashboard::Hub>>,
    task_stream: usize,
}

async fn serve(
    listener: std::net::TcpListener,
    setup: Setup,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Option<i32> {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let (deferred_tx, mut deferred_rx) = mpsc::unbounded_channel();
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::oneshot::channel();
    let shared: Shared = Rc::new(RefCell::new(State::new(
        Core::new(setup.core),
        setup.secret,
        setup.tenants,
        setup.caps,
        deferred_tx,
        shutdown_tx,
    )));
    shared.borrow_mut().stream =
        crate::task_stream::TaskStream::new(setup.task_stream, setup.hub.clone());
    if let Some(hub) = setup.hub.clone() {
        tokio::task::spawn_local(crate::observe::publish(shared.clone(), hub));
    }
    if let Some(journal) = setup.journal
        && let Err(error) = start_journal(&shared, journal)
    {
        error!("{error}");
        return Some(crate::EXIT_JOURNAL);
    }
    let mut acceptor = Acceptor::new(shared.clone(), setup.connections, setup.acceptor);
    let mut hangups = match &setup.tenants_file {
        Some(_) => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        None => None,
    };
    let mut tick = tokio::time::interval(TICK);
    // Ticks that come late skip, rather than burst: a late tick measures
    // the stall of this loop (below).
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_tick = Instant::now();
    loop {
        tokio::select! {
            _ = &mut stop => break None,
            code = &mut shutdown_rx => {
                let code = code.unwrap_or(0);
                shut_down(&shared, &listener, &acceptor, code).await;
                break Some(code);
            }
            () = acceptor.accept_one(&listener) => {}
            Some(()) = async { match hangups.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                if let Some(path) = &setup.tenants_file {
                    reload_tenants(&shared, path);
                }
            }
            Some(event) = deferred_rx.recv() => {
                {
                    let mut state = shared.borrow_mut();
                    match event {
                        Deferred::WorkerGone(worker) => state.remove_worker(worker),
                        Deferred::ClientGone(client) => state.remove_client(client),
                    }
                    state.progress.notify_waiters();
                }
                flush(&shared);
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let stall = now.saturating_duration_since(last_tick).saturating_sub(TICK + TICK_SLACK);
                last_tick = now;
                if !stall.is_zero() {
                    // This loop did not run for a while (a long call, or the
                    // machine did not schedule it): heartbeats may wait
                    // unread, so the stall is not the workers' silence.
                    warn!(stall_ms = stall.as_millis() as u64, "the scheduler's loop was stalled; not counted against workers' heartbeats");
                    shared.borrow_mut().core.loop_stalled(stall, now);
                }
                remove_silent_workers(&shared);
                if shared.borrow().journaled.is_some() {
                    let mut state = shared.borrow_mut();
                    state.recovery_tick(Instant::now());
                    state.expire_orphaned_sessions(Instant::now());
                    drop(state);
                    flush(&shared);
                }
                let dropped = shared.borrow_mut().modules.drop_stale_uploads(Instant::now());
                if dropped > 0 {
                    debug!(dropped, "unfinished uploads idle for a minute were dropped");
                }
            }
        }
    }
}

/// Replays the journal, if it has anything, and starts its next
/// generation from a snapshot of the state it made (so a torn tail is left
/// behind); then waits for workers to rejoin.
fn start_journal(shared: &Shared, setup: JournalSetup) -> Result<(), crate::JournalError> {
    let mut state = shared.borrow_mut();
    let started = Instant::now();
    let previous = setup.read.as_ref().map(|r| r.generation);
    if let Some(read) = &setup.read {
        if let Some(at) = read.torn_at {
            warn!(
                file = %read.path.display(),
                at,
                bytes = read.bytes.len(),
                "the journal's last record is torn (the scheduler died while writing it); replaying up to it"
            );
        }
        let replayed = crate::recovery::replay(&mut state, read, setup.resume_wait)?;
        info!(
            records = replayed.records,
            tasks = replayed.tasks,
            jobs = replayed.jobs,
            sessions = replayed.sessions,
            cancelled = replayed.cancelled,
            ms = started.elapsed().as_millis() as u64,
            "journal replayed"
        );
    }
    let journaled = crate::recovery::Journaled::start(
        &state,
        setup.dir,
        previous,
        setup.identity,
        setup.compact_bytes,
    )?;
    state.journaled = Some(journaled);
    state.begin_recovery(setup.rejoin_timeout);
    info!(ms = started.elapsed().as_millis() as u64, "journal ready");
    Ok(())
}

/// SIGHUP: reads the tenants file again. Tenants whose entry did not
/// change keep their sessions; removed tenants and rotated tokens lose them.
fn reload_tenants(shared: &Shared, path: &std::path::Path) {
    let file = match TenantsFile::load(path) {
        Ok(file) => file,
        Err(error) => {
            warn!("SIGHUP: keeping the tenants as they were: {error}");
            return;
        }
    };
    {
        let mut state = shared.borrow_mut();
        let ended = state.tenants.reload(&file);
        state.apply_tenant_shares();
        info!(target: "wrun::audit", tenants = file.tenants.len(), ended = ended.len(), "tenants file reloaded");
        state.end_tenants(&ended);
    }
    flush(shared);
}

/// Removes workers whose heartbeats stopped (the core judges by the clock).
fn remove_silent_workers(shared: &Shared) {
    let removed = {
        let mut state = shared.borrow_mut();
        let state = &mut *state;
        let removed = state.core.tick(Instant::now(), &mut state.outbox);
        for worker in &removed {
            warn!(%worker, "worker missed its heartbeats; removed");
            state.workers.remove(worker);
        }
        removed
    };
    if !removed.is_empty() {
        shared.borrow().progress.notify_waiters();
        flush(shared);
    }
}

/// The cluster is stopping at a client's request: workers are told to exit
/// cleanly (so their nannies do not restart them), and registrations still
/// in flight get their answer, and the shutdown, before the listener closes.
async fn shut_down(
    shared: &Shared,
    listener: &tokio::net::TcpListener,
    acceptor: &Acceptor,
    code: i32,
) {
    info!(code, "shutting down at a client's request");
    let calls: Vec<_> = {
        let mut state = shared.borrow_mut();
        state.shutting_down = true;
        state
            .workers
            .values()
            .map(|w| w.control.shutdown_request().send().promise)
            .collect()
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), futures::future::join_all(calls)).await;
    let grace = tokio::time::sleep(Duration::from_millis(250));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            _ = &mut grace => break,
            accepted = listener.accept() => if let Ok((stream, peer)) = accepted {
                acceptor.serve(stream, peer);
            },
        }
    }
}

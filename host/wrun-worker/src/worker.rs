//! The worker's RPC side and executor threads.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use capnp::capability::Rc as CapRc;
use futures::FutureExt;
use futures::future::{LocalBoxFuture, Shared};
use tracing::{debug, info};
use wrun_proto::capnp_rpc::rpc_twoparty_capnp::Side;
use wrun_proto::wrun_capnp::{cluster, peer, worker_control, worker_session};
use wrun_proto::{SchedulerFile, chunk_at, failed, fetch_chunked};
use wrun_sandbox::{Sandbox, SandboxConfig, TaskLimits};

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
    /// Sandbox settings (module cache, fuel metering).
    pub sandbox: SandboxConfig,
    /// When the worker will be stopped from outside (a Slurm job's end).
    pub end_time: Option<SystemTime>,
    /// How long before `end_time` the worker retires.
    pub retire_margin: Duration,
    /// Retire on SIGTERM or SIGINT instead of dying, and leave after at
    /// most this long (Slurm sends SIGKILL `KillWait`, 30 s, after SIGTERM).
    pub retire_on_signal: Option<Duration>,
    /// The Slurm job the worker runs in, shown by `wrun status`.
    pub slurm_job_id: Option<String>,
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

/// A task ready to run: arguments assembled.
struct Job {
    task: u64,
    digest: Vec<u8>,
    name: String,
    args: Vec<u8>,
    limits: TaskLimits,
}

enum Event {
    Started(u64),
    Finished {
        task: u64,
        size: u64,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    Failed {
        task: u64,
        kind: String,
        message: String,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    Stolen(u64, bool),
    Replicated(u64, bool),
}

/// State shared between the RPC thread and the executor threads.
struct Shared_ {
    queue: Mutex<VecDeque<Job>>,
    ready: Condvar,
    stop: AtomicBool,
    results: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    modules: Mutex<HashMap<Vec<u8>, Arc<Vec<u8>>>>,
    sandbox: Sandbox,
    events: EventOutbox,
    /// Cancel flags of the tasks the executors are running. Taken from the
    /// queue and entered here under the queue's lock, so a cancel (which
    /// holds that lock) finds a task in one place or the other.
    running: Mutex<HashMap<u64, Arc<AtomicBool>>>,
}

/// How many gathered events make a batch worth sending at once.
const EVENT_BATCH: usize = 64;

/// Task events on their way to the scheduler: gathered here by the
/// executors (and the RPC thread), sent in batches by the RPC thread.
///
/// Waking the RPC thread for every event cost each task a thread wake-up on
/// the worker and a message the scheduler woke up for. So it is woken by
/// the first event of a batch (to start its clock), by a full batch, and by
/// anything urgent: an executor that found no more queued work (the worker
/// needs tasks, or a chain waits on this result) or an answer to the
/// scheduler. Otherwise a batch waits at most [`EVENT_COALESCE`].
struct EventOutbox {
    pending: Mutex<Vec<Event>>,
    wake: tokio::sync::Notify,
}

impl EventOutbox {
    fn push(&self, event: Event, urgent: bool) {
        let count = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            // A task that ends before its `started` was sent needs no
            // `started`: the scheduler would only mark it running to unmark
            // it in the same batch. Half the events of a map of short tasks.
            if let Event::Finished { task, .. } | Event::Failed { task, .. } = &event {
                let from = pending.len().saturating_sub(8);
                if let Some(i) = pending[from..]
                    .iter()
                    .rposition(|e| matches!(e, Event::Started(t) if t == task))
                {
                    pending.remove(from + i);
                }
            }
            pending.push(event);
            pending.len()
        };
        if urgent || count == 1 || count >= EVENT_BATCH {
            self.wake.notify_one();
        }
    }

    fn len(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Shared_ {
    fn push(&self, job: Job) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(job);
        self.ready.notify_one();
    }

    fn result(&self, task: u64) -> Option<Arc<Vec<u8>>> {
        self.results
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&task)
            .cloned()
    }

    /// Answers a chunked fetch of one of our results (from the scheduler or a peer).
    fn fill_chunk(
        &self,
        task: u64,
        offset: u64,
        mut chunk: wrun_proto::wrun_capnp::chunk::Builder<'_>,
    ) -> Result<(), capnp::Error> {
        let value = self
            .result(task)
            .ok_or_else(|| failed("no such result on this worker"))?;
        chunk.set_data(chunk_at(&value, offset)?);
        chunk.set_total(value.len() as u64);
        Ok(())
    }

    fn module(&self, digest: &[u8]) -> Option<Arc<Vec<u8>>> {
        self.modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }
}

fn executor(shared: Arc<Shared_>) {
    loop {
        let (job, cancel) = {
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if shared.stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Some(job) = queue.pop_front() {
                    let cancel = Arc::new(AtomicBool::new(false));
                    shared
                        .running
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(job.task, cancel.clone());
                    break (job, cancel);
                }
                queue = shared.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
        };
        shared.events.push(Event::Started(job.task), false);
        let event = run_job(&shared, &job, &cancel);
        shared
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job.task);
        let idle = shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty();
        shared.events.push(event, idle);
    }
}

fn run_job(shared: &Shared_, job: &Job, cancel: &Arc<AtomicBool>) -> Event {
    let fail = |kind: &str, message: String| Event::Failed {
        task: job.task,
        kind: kind.to_owned(),
        message,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    let module = match shared.sandbox.loaded(&digest_of(&job.digest)) {
        Some(module) => module,
        None => {
            let Some(bytes) = shared.module(&job.digest) else {
                return fail("host", "the module is not on this worker".to_owned());
            };
            match shared.sandbox.load(&bytes) {
                Ok((module, _)) => module,
                Err(error) => return fail("bad-module", error.to_string()),
            }
        }
    };
    let run = shared
        .sandbox
        .run_cancellable(&module, &job.name, &job.args, &job.limits, cancel);
    match run.result {
        Ok(bytes) => {
            let size = bytes.len() as u64;
            shared
                .results
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(job.task, Arc::new(bytes));
            Event::Finished {
                task: job.task,
                size,
                stdout: run.stdout.bytes,
                stderr: run.stderr.bytes,
            }
        }
        Err(error) => Event::Failed {
            task: job.task,
            kind: error.kind().to_owned(),
            message: error.to_string(),
            stdout: run.stdout.bytes,
            stderr: run.stderr.bytes,
        },
    }
}

fn digest_of(bytes: &[u8]) -> wrun_abi::ModuleDigest {
    let mut digest = [0u8; 32];
    if bytes.len() == 32 {
        digest.copy_from_slice(bytes);
    }
    wrun_abi::ModuleDigest(digest)
}

/// Encodes the MessagePack array header for `n` elements.
fn array_header(n: usize, out: &mut Vec<u8>) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0xdc);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// Joins a scheduler and runs its tasks until the connection ends or the
/// worker retires.
pub fn run_worker(config: WorkerConfig) -> Result<Departure, WorkerError> {
    let sandbox = Sandbox::new(SandboxConfig {
        max_concurrent_tasks: config.threads.max(1) * 2,
        ..config.sandbox.clone()
    })
    .map_err(|e| WorkerError::Setup(e.to_string()))?;
    let shared = Arc::new(Shared_ {
        queue: Mutex::new(VecDeque::new()),
        ready: Condvar::new(),
        stop: AtomicBool::new(false),
        results: Mutex::new(HashMap::new()),
        modules: Mutex::new(HashMap::new()),
        sandbox,
        events: EventOutbox {
            pending: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
        },
        running: Mutex::new(HashMap::new()),
    });
    let executors: Vec<_> = (0..config.threads.max(1))
        .map(|i| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("wrun-task-{i}"))
                .spawn(move || executor(shared))
                .expect("spawning an executor thread")
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| WorkerError::Setup(e.to_string()))?;
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, serve(config, shared.clone()));
    shared.stop.store(true, Ordering::Relaxed);
    shared.ready.notify_all();
    for executor in executors {
        let _ = executor.join();
    }
    result
}

async fn serve(config: WorkerConfig, shared: Arc<Shared_>) -> Result<Departure, WorkerError> {
    // Peers fetch our results here.
    let peer_listener = tokio::net::TcpListener::bind((config.peer_host.as_str(), 0))
        .await
        .map_err(|e| WorkerError::Setup(format!("cannot listen for peers: {e}")))?;
    let peer_address = peer_listener
        .local_addr()
        .map_err(|e| WorkerError::Setup(e.to_string()))?
        .to_string();
    let peer_server: peer::Client = capnp_rpc::new_client(PeerImpl {
        shared: shared.clone(),
    });
    tokio::task::spawn_local(async move {
        while let Ok((stream, _)) = peer_listener.accept().await {
            let rpc =
                wrun_proto::rpc_system(stream, Side::Server, Some(peer_server.clone().client));
            tokio::task::spawn_local(async move {
                let _ = rpc.await;
            });
        }
    });

    let (address, secret) = match &config.scheduler {
        SchedulerTarget::File(path) => {
            let file = SchedulerFile::wait_for(path, config.connect_timeout).await?;
            (file.address, file.secret)
        }
        SchedulerTarget::Address { address, secret } => (address.clone(), secret.clone()),
    };
    let connect = wrun_proto::connect_with_retry(&address, config.connect_timeout);
    let stream = match &config.scheduler {
        // A scheduler that stops removes its file: stop retrying then.
        SchedulerTarget::File(path) => {
            let gone = async {
                while path.exists() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::select! {
                stream = connect => stream?,
                _ = gone => {
                    return Err(WorkerError::Disconnected(format!(
                        "the scheduler stopped (it removed {})",
                        path.display()
                    )));
                }
            }
        }
        SchedulerTarget::Address { .. } => connect.await?,
    };
    let mut rpc = wrun_proto::rpc_system(stream, Side::Client, None);
    let cluster: cluster::Client = rpc.bootstrap(Side::Server);
    let (disconnected_tx, disconnected_rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_local(async move {
        let result = rpc.await;
        let _ = disconnected_tx.send(
            result
                .map_err(|e| e.to_string())
                .err()
                .unwrap_or_else(|| "closed".to_owned()),
        );
    });

    let shutdown = std::rc::Rc::new(tokio::sync::Notify::new());
    // The scheduler may send work before our registration call returns.
    let (session_tx, session_rx) =
        tokio::sync::watch::channel::<Option<worker_session::Client>>(None);
    let control = ControlImpl {
        shared: shared.clone(),
        session: session_rx,
        module_fetches: RefCell::new(HashMap::new()),
        peers: std::rc::Rc::new(RefCell::new(HashMap::new())),
        cancelled: RefCell::new(HashSet::new()),
        shutdown: shutdown.clone(),
    };
    let control_client: worker_control::Client = capnp_rpc::new_client(control);
    let mut request = cluster.register_worker_request();
    {
        let mut p = request.get();
        p.set_secret(&secret);
        p.set_control(control_client);
        let mut info = p.init_info();
        info.set_name(&config.name);
        info.set_threads(config.threads.max(1));
        info.set_memory_bytes(config.memory_bytes);
        info.set_peer_address(&peer_address);
        info.set_pid(std::process::id());
        info.set_slurm_job_id(config.slurm_job_id.as_deref().unwrap_or(""));
        info.set_end_time_ms(
            config
                .end_time
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
        );
    }
    let response = request.send().promise.await.map_err(|e| {
        if e.kind == capnp::ErrorKind::Disconnected {
            WorkerError::Disconnected(e.to_string())
        } else {
            WorkerError::Refused(e.to_string())
        }
    })?;
    let session = response
        .get()
        .and_then(|r| r.get_session())
        .map_err(|e| WorkerError::Refused(e.to_string()))?;
    let _ = session_tx.send(Some(session.clone()));
    info!(name = %config.name, %address, %peer_address, threads = config.threads, "worker registered");

    // Events: send whatever accumulated while the previous batch was in
    // flight. While tasks are still queued here, wait a moment for more:
    // the queue keeps the executors busy meanwhile, and one message per
    // millisecond instead of one per task spares both sides a wake-up per
    // task. An idle worker reports at once (a chain waits on it).
    let events_session = session.clone();
    let events_shared = shared.clone();
    let events_loop = async move {
        let outbox = &events_shared.events;
        loop {
            outbox.wake.notified().await;
            let deadline = tokio::time::Instant::now() + EVENT_COALESCE;
            loop {
                let idle = events_shared
                    .queue
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_empty();
                if idle || outbox.len() >= EVENT_BATCH {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = outbox.wake.notified() => {}
                }
            }
            let batch = outbox.take();
            if batch.is_empty() {
                continue;
            }
            let mut request = events_session.events_request();
            let mut list = request.get().init_events(batch.len() as u32);
            for (i, event) in batch.iter().enumerate() {
                let mut e = list.reborrow().get(i as u32);
                match event {
                    Event::Started(task) => {
                        e.set_task(*task);
                        e.set_started(());
                    }
                    Event::Finished {
                        task,
                        size,
                        stdout,
                        stderr,
                    } => {
                        e.set_task(*task);
                        let mut f = e.init_finished();
                        f.set_size(*size);
                        f.set_stdout(stdout);
                        f.set_stderr(stderr);
                    }
                    Event::Failed {
                        task,
                        kind,
                        message,
                        stdout,
                        stderr,
                    } => {
                        e.set_task(*task);
                        let mut f = e.init_failed();
                        f.set_kind(kind);
                        f.set_message(message);
                        f.set_stdout(stdout);
                        f.set_stderr(stderr);
                    }
                    Event::Stolen(task, given) => {
                        e.set_task(*task);
                        e.set_stolen(*given);
                    }
                    Event::Replicated(task, ok) => {
                        e.set_task(*task);
                        e.set_replicated(*ok);
                    }
                }
            }
            if let Err(error) = request.send().promise.await {
                return error.to_string();
            }
        }
    };
    let retire_session = session.clone();
    let heartbeat_loop = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            if let Err(error) = session.heartbeat_request().send().promise.await {
                return error.to_string();
            }
        }
    };
    let retirement = retirement(&config, retire_session);
    let reason = tokio::select! {
        reason = disconnected_rx => reason.unwrap_or_else(|_| "closed".to_owned()),
        reason = events_loop => reason,
        reason = heartbeat_loop => reason,
        departure = retirement => return Ok(departure),
        _ = shutdown.notified() => {
            info!("the cluster is shutting down");
            return Ok(Departure::Shutdown);
        }
    };
    info!("scheduler connection ended: {reason}");
    Err(WorkerError::Disconnected(reason))
}

/// Waits for the moment to retire (the end time minus the margin, or a
/// signal), then retires: asks the scheduler to take over this worker's work
/// and waits, bounded, for it to confirm.
async fn retirement(config: &WorkerConfig, session: worker_session::Client) -> Departure {
    let deadline = config.end_time.map(|end| {
        let left = end
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        (left.saturating_sub(config.retire_margin), left)
    });
    let at_deadline = async {
        match deadline {
            Some((wait, _)) => tokio::time::sleep(wait).await,
            None => std::future::pending().await,
        }
    };
    let signalled = async {
        if config.retire_on_signal.is_none() {
            return std::future::pending().await;
        }
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending().await,
        }
    };
    let bound = tokio::select! {
        _ = at_deadline => {
            let left = deadline.map(|(_, left)| left).unwrap_or_default();
            info!("the end time is {} s away; retiring", left.as_secs());
            config.retire_margin
        }
        _ = signalled => {
            info!("asked to stop; retiring");
            config.retire_on_signal.unwrap_or_default()
        }
    };
    match tokio::time::timeout(bound, session.retire_request().send().promise).await {
        Ok(Ok(_)) => {
            info!("retired: the scheduler took over this worker's tasks and results");
            Departure::Retired
        }
        Ok(Err(error)) => {
            tracing::warn!("retiring failed: {error}; leaving anyway");
            Departure::RetiredUnconfirmed
        }
        Err(_) => {
            tracing::warn!(
                "the hand-over did not finish within {} s; leaving anyway",
                bound.as_secs()
            );
            Departure::RetiredUnconfirmed
        }
    }
}

type ModuleFetch = Shared<LocalBoxFuture<'static, Result<Arc<Vec<u8>>, String>>>;
type PeerConnect = Shared<LocalBoxFuture<'static, Result<peer::Client, String>>>;

struct ControlImpl {
    shared: Arc<Shared_>,
    session: tokio::sync::watch::Receiver<Option<worker_session::Client>>,
    module_fetches: RefCell<HashMap<Vec<u8>, ModuleFetch>>,
    /// One connection per peer, reused by every fetch from it (a new
    /// connection per fetch left one open socket behind each time).
    peers: std::rc::Rc<RefCell<HashMap<String, PeerConnect>>>,
    cancelled: RefCell<HashSet<u64>>,
    shutdown: std::rc::Rc<tokio::sync::Notify>,
}

enum PendingInput {
    Value(Vec<u8>),
    Local(u64),
    Remote(u64, String),
}

struct Pending {
    task: u64,
    digest: Vec<u8>,
    name: String,
    inputs: Vec<PendingInput>,
    limits: TaskLimits,
}

impl ControlImpl {
    /// The module's bytes: local, or fetched from the scheduler once.
    fn module_fetch(&self, digest: &[u8]) -> ModuleFetch {
        if let Some(fetch) = self.module_fetches.borrow().get(digest) {
            return fetch.clone();
        }
        let mut session = self.session.clone();
        let shared = self.shared.clone();
        let key = digest.to_vec();
        let fetch = async move {
            let session = session
                .wait_for(Option::is_some)
                .await
                .map_err(|_| "the worker stopped before registering".to_owned())?
                .clone()
                .expect("waited for Some");
            let bytes = fetch_chunked(|offset| {
                let mut request = session.fetch_module_request();
                request.get().set_digest(&key);
                request.get().set_offset(offset);
                request.send().promise
            })
            .await
            .map_err(|e| format!("fetching the module: {e}"))?;
            if wrun_abi::ModuleDigest::of(&bytes).0[..] != key[..] {
                return Err("the scheduler sent a module with another digest".to_owned());
            }
            let bytes = Arc::new(bytes);
            shared
                .modules
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, bytes.clone());
            Ok(bytes)
        }
        .boxed_local()
        .shared();
        self.module_fetches
            .borrow_mut()
            .insert(digest.to_vec(), fetch.clone());
        fetch
    }

    fn peer(&self, address: &str) -> PeerConnect {
        if let Some(connect) = self.peers.borrow().get(address) {
            return connect.clone();
        }
        let key = address.to_owned();
        let peers = self.peers.clone();
        let connect = async move {
            let connected = wrun_proto::connect_with_retry(&key, Duration::from_secs(5)).await;
            let stream = match connected {
                Ok(stream) => stream,
                Err(error) => {
                    peers.borrow_mut().remove(&key);
                    return Err(error.to_string());
                }
            };
            let mut rpc = wrun_proto::rpc_system(stream, Side::Client, None);
            let client: peer::Client = rpc.bootstrap(Side::Server);
            tokio::task::spawn_local(async move {
                let _ = rpc.await;
                // The connection is gone: the next fetch connects again.
                peers.borrow_mut().remove(&key);
            });
            Ok(client)
        }
        .boxed_local()
        .shared();
        // Concurrent fetches from the same peer share one connection attempt.
        self.peers
            .borrow_mut()
            .insert(address.to_owned(), connect.clone());
        connect
    }

    /// Drops a cached peer connection after a failed fetch.
    fn forget_peer(&self, address: &str) {
        self.peers.borrow_mut().remove(address);
    }

    fn assemble(
        &self,
        pending: &Pending,
        remote: &HashMap<u64, Arc<Vec<u8>>>,
    ) -> Result<Vec<u8>, String> {
        let mut args = Vec::new();
        array_header(pending.inputs.len(), &mut args);
        for input in &pending.inputs {
            match input {
                PendingInput::Value(bytes) => args.extend_from_slice(bytes),
                PendingInput::Local(task) => {
                    let value = self
                        .shared
                        .result(*task)
                        .ok_or_else(|| format!("input t{task} is not on this worker"))?;
                    args.extend_from_slice(&value);
                }
                PendingInput::Remote(task, _) => {
                    let value = remote
                        .get(task)
                        .ok_or_else(|| format!("input t{task} was not fetched"))?;
                    args.extend_from_slice(value);
                }
            }
        }
        Ok(args)
    }

    fn enqueue(&self, pending: Pending, args: Vec<u8>) {
        if self.cancelled.borrow_mut().remove(&pending.task) {
            return;
        }
        self.shared.push(Job {
            task: pending.task,
            digest: pending.digest,
            name: pending.name,
            args,
            limits: pending.limits,
        });
    }
}

fn fail_event(task: u64, kind: &str, message: String) -> Event {
    Event::Failed {
        task,
        kind: kind.to_owned(),
        message,
        stdout: Vec::new(),
        stderr: Vec::new(),
    }
}

impl worker_control::Server for ControlImpl {
    async fn run(
        self: CapRc<Self>,
        params: worker_control::RunParams,
        _: worker_control::RunResults,
    ) -> Result<(), capnp::Error> {
        use wrun_proto::wrun_capnp::input::Which;
        let tasks = params.get()?.get_tasks()?;
        for assignment in tasks.iter() {
            let l = assignment.get_limits()?;
            let mut inputs = Vec::new();
            for input in assignment.get_inputs()?.iter() {
                inputs.push(match input.which()? {
                    Which::Value(bytes) => PendingInput::Value(bytes?.to_vec()),
                    Which::Local(task) => PendingInput::Local(task),
                    Which::Remote(remote) => PendingInput::Remote(
                        remote.get_task(),
                        remote.get_address()?.to_str()?.to_owned(),
                    ),
                });
            }
            let pending = Pending {
                task: assignment.get_task(),
                digest: assignment.get_module()?.to_vec(),
                name: assignment.get_name()?.to_str()?.to_owned(),
                inputs,
                limits: TaskLimits {
                    memory_bytes: l.get_memory_bytes(),
                    timeout: Duration::from_millis(l.get_timeout_ms().max(1)),
                    fuel: (l.get_fuel() > 0).then_some(l.get_fuel()),
                    result_bytes: l.get_result_bytes(),
                    stdout_bytes: l.get_stdout_bytes(),
                    stderr_bytes: l.get_stderr_bytes(),
                },
            };
            let all_local = pending
                .inputs
                .iter()
                .all(|i| !matches!(i, PendingInput::Remote(..)));
            if all_local && self.shared.module(&pending.digest).is_some() {
                // The common case: no waiting, and the queue keeps assignment order.
                match self.assemble(&pending, &HashMap::new()) {
                    Ok(args) => self.enqueue(pending, args),
                    Err(message) => {
                        self.shared
                            .events
                            .push(fail_event(pending.task, "host", message), true);
                    }
                }
                continue;
            }
            let this = self.clone();
            tokio::task::spawn_local(async move {
                let task = pending.task;
                let prepared = async {
                    this.module_fetch(&pending.digest).await?;
                    let mut remote = HashMap::new();
                    for input in &pending.inputs {
                        if let PendingInput::Remote(dep, address) = input {
                            let peer = this.peer(address).await?;
                            let dep = *dep;
                            let started = std::time::Instant::now();
                            let value = fetch_chunked(|offset| {
                                let mut request = peer.fetch_request();
                                request.get().set_task(dep);
                                request.get().set_offset(offset);
                                request.send().promise
                            })
                            .await
                            .map_err(|e| {
                                this.forget_peer(address);
                                format!("fetching input t{dep} from {address}: {e}")
                            })?;
                            info!(
                                target: "wrun_worker::transfer",
                                task = dep,
                                bytes = value.len(),
                                micros = started.elapsed().as_micros() as u64,
                                "fetched an input from a peer"
                            );
                            remote.insert(dep, Arc::new(value));
                        }
                    }
                    this.assemble(&pending, &remote)
                }
                .await;
                match prepared {
                    Ok(args) => this.enqueue(pending, args),
                    Err(message) => {
                        debug!(task, "preparing failed: {message}");
                        this.shared
                            .events
                            .push(fail_event(task, "host", message), true);
                    }
                }
            });
        }
        Ok(())
    }

    async fn shutdown(
        self: CapRc<Self>,
        _: worker_control::ShutdownParams,
        _: worker_control::ShutdownResults,
    ) -> Result<(), capnp::Error> {
        self.shutdown.notify_one();
        Ok(())
    }

    async fn replicate(
        self: CapRc<Self>,
        params: worker_control::ReplicateParams,
        _: worker_control::ReplicateResults,
    ) -> Result<(), capnp::Error> {
        let copies = params.get()?.get_copies()?;
        for copy in copies.iter() {
            let task = copy.get_task();
            let address = copy.get_address()?.to_str()?.to_owned();
            let this = self.clone();
            tokio::task::spawn_local(async move {
                let copied = async {
                    let peer = this.peer(&address).await?;
                    fetch_chunked(|offset| {
                        let mut request = peer.fetch_request();
                        request.get().set_task(task);
                        request.get().set_offset(offset);
                        request.send().promise
                    })
                    .await
                    .map_err(|e| e.to_string())
                }
                .await;
                let ok = match copied {
                    Ok(value) => {
                        this.shared
                            .results
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(task, Arc::new(value));
                        true
                    }
                    Err(error) => {
                        this.forget_peer(&address);
                        debug!(
                            task,
                            "copying from a retiring peer at {address} failed: {error}"
                        );
                        false
                    }
                };
                this.shared.events.push(Event::Replicated(task, ok), true);
            });
        }
        Ok(())
    }

    async fn steal(
        self: CapRc<Self>,
        params: worker_control::StealParams,
        _: worker_control::StealResults,
    ) -> Result<(), capnp::Error> {
        let tasks = params.get()?.get_tasks()?;
        let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        for task in tasks.iter() {
            let position = queue.iter().position(|job| job.task == task);
            if let Some(position) = position {
                queue.remove(position);
            }
            self.shared
                .events
                .push(Event::Stolen(task, position.is_some()), true);
        }
        Ok(())
    }

    async fn cancel(
        self: CapRc<Self>,
        params: worker_control::CancelParams,
        _: worker_control::CancelResults,
    ) -> Result<(), capnp::Error> {
        let tasks = params.get()?.get_tasks()?;
        let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
        let running = self
            .shared
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for task in tasks.iter() {
            if let Some(position) = queue.iter().position(|job| job.task == task) {
                queue.remove(position);
            } else if let Some(flag) = running.get(&task) {
                // Running: the sandbox stops it within one epoch tick.
                flag.store(true, Ordering::Relaxed);
            } else {
                // Still being prepared: drop it when it is ready.
                self.cancelled.borrow_mut().insert(task);
            }
        }
        Ok(())
    }

    async fn free(
        self: CapRc<Self>,
        params: worker_control::FreeParams,
        _: worker_control::FreeResults,
    ) -> Result<(), capnp::Error> {
        let tasks = params.get()?.get_tasks()?;
        let mut results = self
            .shared
            .results
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for task in tasks.iter() {
            results.remove(&task);
        }
        Ok(())
    }

    async fn fetch(
        self: CapRc<Self>,
        params: worker_control::FetchParams,
        mut results: worker_control::FetchResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        self.shared.fill_chunk(
            params.get_task(),
            params.get_offset(),
            results.get().init_chunk(),
        )
    }

    async fn fetch_many(
        self: CapRc<Self>,
        params: worker_control::FetchManyParams,
        mut results: worker_control::FetchManyResults,
    ) -> Result<(), capnp::Error> {
        let tasks = params.get()?.get_tasks()?;
        let store = self
            .shared
            .results
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut values = results.get().init_values(tasks.len());
        let mut total = 0usize;
        for (i, task) in tasks.iter().enumerate() {
            let mut value = values.reborrow().get(i as u32);
            match store.get(&task) {
                None => value.set_missing("no such result on this worker"),
                Some(bytes) if total + bytes.len() > BATCH_BYTES => {
                    value.set_large(bytes.len() as u64)
                }
                Some(bytes) => {
                    total += bytes.len();
                    value.set_data(bytes);
                }
            }
        }
        Ok(())
    }
}

/// How long a busy worker lets task events gather before sending them.
const EVENT_COALESCE: Duration = Duration::from_millis(1);

/// The most value bytes one batched fetch answers with; the rest come back
/// as `large` and are read in chunks (messages stay far below the reader limit).
const BATCH_BYTES: usize = 4 << 20;

struct PeerImpl {
    shared: Arc<Shared_>,
}

impl peer::Server for PeerImpl {
    async fn fetch(
        self: CapRc<Self>,
        params: peer::FetchParams,
        mut results: peer::FetchResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        self.shared.fill_chunk(
            params.get_task(),
            params.get_offset(),
            results.get().init_chunk(),
        )
    }
}

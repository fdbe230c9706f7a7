//! The Cap'n Proto servers of the scheduler and the batching of decisions.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use capnp::capability::Rc as CapRc;
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use wrun_abi::TaskSignature;
use wrun_core::{Arg, ClientId, Comm, Core, CoreConfig, Failure, TaskId, TaskSpec, WorkerId};
use wrun_proto::capnp_rpc::rpc_twoparty_capnp::Side;
use wrun_proto::wrun_capnp::{
    client_session, cluster, task_listener, worker_control, worker_session,
};
use wrun_proto::{SchedulerFile, chunk_at, failed};

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
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            host: "127.0.0.1".to_owned(),
            port: 0,
            scheduler_file: None,
            secret: None,
            core: CoreConfig::default(),
        }
    }
}

/// A scheduler running on its own thread.
pub struct SchedulerHandle {
    /// `host:port` it listens on.
    pub address: String,
    /// The cluster secret workers must present.
    pub secret: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<i32>>>,
    ended: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl SchedulerHandle {
    /// The scheduler file contents for this scheduler.
    pub fn scheduler_file(&self) -> SchedulerFile {
        SchedulerFile {
            address: self.address.clone(),
            secret: self.secret.clone(),
            protocol: wrun_proto::PROTOCOL_VERSION,
            pid: std::process::id(),
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
    let listener = std::net::TcpListener::bind((config.host.as_str(), config.port))?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?.to_string();
    let secret = config.secret.clone().unwrap_or_else(wrun_proto::new_secret);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let mut handle = SchedulerHandle {
        address,
        secret: secret.clone(),
        stop: Some(stop_tx),
        thread: None,
        ended: None,
    };
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    handle.ended = Some(ended_rx);
    if let Some(path) = &config.scheduler_file {
        handle.scheduler_file().write(path)?;
    }
    let core_config = config.core.clone();
    let thread = std::thread::Builder::new()
        .name("wrun-scheduler".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let local = tokio::task::LocalSet::new();
            let code = local.block_on(&runtime, serve(listener, secret, core_config, stop_rx));
            let _ = ended_tx.send(());
            code
        })?;
    handle.thread = Some(thread);
    info!(address = %handle.address, "scheduler listening");
    Ok(handle)
}

/// Runs a scheduler until SIGINT or SIGTERM, or until a client with the
/// cluster secret shuts the cluster down; returns the exit code it asked for.
pub fn run_scheduler(config: SchedulerConfig) -> std::io::Result<Option<i32>> {
    let mut handle = start_scheduler(config.clone())?;
    println!("wrun scheduler listening on {}", handle.address);
    if let Some(path) = &config.scheduler_file {
        println!("scheduler file: {}", path.display());
    }
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

// ---- state ----

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Limits {
    memory_bytes: u64,
    timeout_ms: u64,
    fuel: u64,
    result_bytes: u64,
    stdout_bytes: u64,
    stderr_bytes: u64,
}

/// What travels with a task to the worker; the core does not read it.
#[derive(Clone)]
struct Payload {
    template: Rc<Template>,
    /// The client's key of this task (events name tasks by key).
    key: u64,
}

/// What tasks of one submission share: one allocation for a whole map.
struct Template {
    module: Rc<ModuleEntry>,
    name: String,
    limits: Limits,
}

struct ModuleEntry {
    digest: Vec<u8>,
    bytes: Vec<u8>,
    signatures: Vec<TaskSignature>,
    records: String,
}

struct WorkerConn {
    control: worker_control::Client,
    name: String,
    threads: u32,
    memory_bytes: u64,
    peer_address: String,
    pid: u32,
    slurm_job_id: String,
    end_time_ms: u64,
}

struct ClientConn {
    listener: task_listener::Client,
    keys: HashMap<u64, TaskId>,
}

enum Input {
    Value(Vec<u8>),
    Local(TaskId),
    Remote(TaskId, WorkerId),
}

enum ClientEvent {
    Done(u64),
    Failed(String, String),
}

/// The core's decisions, batched until the handler ends.
#[derive(Default)]
struct Outbox {
    run: BTreeMap<WorkerId, Vec<(TaskId, Payload, Vec<Input>)>>,
    steal: BTreeMap<WorkerId, Vec<TaskId>>,
    cancel: BTreeMap<WorkerId, Vec<TaskId>>,
    free: BTreeMap<WorkerId, Vec<TaskId>>,
    replicate: BTreeMap<WorkerId, Vec<(TaskId, WorkerId)>>,
    client: BTreeMap<ClientId, Vec<(TaskId, ClientEvent)>>,
}

impl Comm<Payload> for Outbox {
    fn assign(
        &mut self,
        worker: WorkerId,
        task: &TaskSpec<Payload>,
        inputs: &[(TaskId, WorkerId)],
    ) {
        let args = task
            .args
            .iter()
            .map(|arg| match arg {
                Arg::Value(bytes) => Input::Value(bytes.to_vec()),
                Arg::Result(dep) => {
                    let holder = inputs
                        .iter()
                        .find(|(d, _)| d == dep)
                        .map(|(_, h)| *h)
                        .unwrap_or(worker);
                    if holder == worker {
                        Input::Local(*dep)
                    } else {
                        Input::Remote(*dep, holder)
                    }
                }
            })
            .collect();
        self.run
            .entry(worker)
            .or_default()
            .push((task.id, task.payload.clone(), args));
    }
    fn steal(&mut self, worker: WorkerId, tasks: &[TaskId]) {
        self.steal
            .entry(worker)
            .or_default()
            .extend_from_slice(tasks);
    }
    fn cancel(&mut self, worker: WorkerId, task: TaskId) {
        self.cancel.entry(worker).or_default().push(task);
    }
    fn free(&mut self, worker: WorkerId, task: TaskId) {
        self.free.entry(worker).or_default().push(task);
    }
    fn replicate(&mut self, to: WorkerId, task: TaskId, from: WorkerId) {
        self.replicate.entry(to).or_default().push((task, from));
    }
    fn done(&mut self, client: ClientId, task: TaskId, _worker: WorkerId, size: u64) {
        self.client
            .entry(client)
            .or_default()
            .push((task, ClientEvent::Done(size)));
    }
    fn failed(&mut self, client: ClientId, task: TaskId, failure: &Failure) {
        let kind = failure_kind(failure);
        self.client.entry(client).or_default().push((
            task,
            ClientEvent::Failed(kind.to_owned(), failure.to_string()),
        ));
    }
}

fn failure_kind(failure: &Failure) -> &str {
    match failure {
        Failure::Error { kind, .. } => kind.as_str(),
        Failure::Dependency { .. } => "dependency",
        Failure::Suspicious { .. } => "suspicious",
        Failure::Cancelled => "cancelled",
    }
}

enum Deferred {
    WorkerGone(WorkerId),
    ClientGone(ClientId),
}

struct State {
    core: Core<Payload>,
    secret: String,
    modules: HashMap<Vec<u8>, Rc<ModuleEntry>>,
    uploads: HashMap<(ClientId, Vec<u8>), Vec<u8>>,
    workers: HashMap<WorkerId, WorkerConn>,
    clients: HashMap<ClientId, ClientConn>,
    logs: HashMap<TaskId, (Vec<u8>, Vec<u8>)>,
    next_id: u64,
    outbox: Outbox,
    deferred: mpsc::UnboundedSender<Deferred>,
    /// Woken whenever tasks finish, for fetches waiting on a recomputation.
    finished: Rc<tokio::sync::Notify>,
    /// Woken after every batch of worker events and every worker removal,
    /// for retirements waiting to complete.
    progress: Rc<tokio::sync::Notify>,
    /// Detached jobs: tasks no session owns, by job name, in submission order.
    jobs: HashMap<String, Vec<(u64, TaskId)>>,
    /// Fired by a `shutdown` call with the exit code it asks for.
    shutdown: Option<tokio::sync::oneshot::Sender<i32>>,
    /// Shutting down: workers that register now are told to exit at once.
    shutting_down: bool,
}

type Shared = Rc<RefCell<State>>;

impl State {
    fn next(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn remove_worker(&mut self, worker: WorkerId) {
        if self.workers.remove(&worker).is_some() {
            info!(%worker, "worker removed");
        }
        self.core.remove_worker(worker, &mut self.outbox);
    }

    fn remove_client(&mut self, client: ClientId) {
        let Some(conn) = self.clients.remove(&client) else {
            return;
        };
        let tasks: Vec<TaskId> = conn.keys.values().copied().collect();
        debug!(
            client = client.0,
            tasks = tasks.len(),
            "client gone; cancelling its tasks"
        );
        self.core.cancel(&tasks, &mut self.outbox);
        for task in tasks {
            self.logs.remove(&task);
        }
    }
}

/// Sends everything the core decided, one batched call per worker and kind.
fn flush(shared: &Shared) {
    let mut state = shared.borrow_mut();
    let outbox = std::mem::take(&mut state.outbox);
    if outbox
        .client
        .values()
        .flatten()
        .any(|(_, e)| matches!(e, ClientEvent::Done(_)))
    {
        state.finished.notify_waiters();
    }
    for (worker, tasks) in outbox.run {
        let Some(conn) = state.workers.get(&worker) else {
            continue;
        };
        let mut request = conn.control.run_request();
        let mut list = request.get().init_tasks(tasks.len() as u32);
        for (i, (task, payload, inputs)) in tasks.iter().enumerate() {
            let mut a = list.reborrow().get(i as u32);
            a.set_task(task.0);
            a.set_module(&payload.template.module.digest);
            a.set_name(&payload.template.name);
            let mut l = a.reborrow().init_limits();
            l.set_memory_bytes(payload.template.limits.memory_bytes);
            l.set_timeout_ms(payload.template.limits.timeout_ms);
            l.set_fuel(payload.template.limits.fuel);
            l.set_result_bytes(payload.template.limits.result_bytes);
            l.set_stdout_bytes(payload.template.limits.stdout_bytes);
            l.set_stderr_bytes(payload.template.limits.stderr_bytes);
            let mut list_inputs = a.init_inputs(inputs.len() as u32);
            for (j, input) in inputs.iter().enumerate() {
                let mut b = list_inputs.reborrow().get(j as u32);
                match input {
                    Input::Value(bytes) => b.set_value(bytes),
                    Input::Local(dep) => b.set_local(dep.0),
                    Input::Remote(dep, holder) => {
                        let mut r = b.init_remote();
                        r.set_task(dep.0);
                        r.set_address(
                            state
                                .workers
                                .get(holder)
                                .map(|w| w.peer_address.as_str())
                                .unwrap_or(""),
                        );
                    }
                }
            }
        }
        spawn_call(format!("run on {worker}"), request.send().promise);
    }
    for (worker, tasks) in outbox.steal {
        if let Some(conn) = state.workers.get(&worker) {
            let mut request = conn.control.steal_request();
            let mut list = request.get().init_tasks(tasks.len() as u32);
            for (i, t) in tasks.iter().enumerate() {
                list.set(i as u32, t.0);
            }
            spawn_call(format!("steal from {worker}"), request.send().promise);
        }
    }
    for (worker, tasks) in outbox.cancel {
        if let Some(conn) = state.workers.get(&worker) {
            let mut request = conn.control.cancel_request();
            let mut list = request.get().init_tasks(tasks.len() as u32);
            for (i, t) in tasks.iter().enumerate() {
                list.set(i as u32, t.0);
            }
            spawn_call(format!("cancel on {worker}"), request.send().promise);
        }
    }
    for (worker, tasks) in outbox.free {
        if let Some(conn) = state.workers.get(&worker) {
            let mut request = conn.control.free_request();
            let mut list = request.get().init_tasks(tasks.len() as u32);
            for (i, t) in tasks.iter().enumerate() {
                list.set(i as u32, t.0);
            }
            spawn_call(format!("free on {worker}"), request.send().promise);
        }
    }
    for (worker, copies) in outbox.replicate {
        if let Some(conn) = state.workers.get(&worker) {
            let mut request = conn.control.replicate_request();
            let mut list = request.get().init_copies(copies.len() as u32);
            for (i, (task, from)) in copies.iter().enumerate() {
                let mut c = list.reborrow().get(i as u32);
                c.set_task(task.0);
                c.set_address(
                    state
                        .workers
                        .get(from)
                        .map(|w| w.peer_address.as_str())
                        .unwrap_or(""),
                );
            }
            spawn_call(format!("replicate on {worker}"), request.send().promise);
        }
    }
    for (client, events) in outbox.client {
        let Some(conn) = state.clients.get(&client) else {
            continue;
        };
        let mut request = conn.listener.events_request();
        let mut list = request.get().init_events(events.len() as u32);
        for (i, (task, event)) in events.iter().enumerate() {
            let mut e = list.reborrow().get(i as u32);
            e.set_key(
                state
                    .core
                    .spec(*task)
                    .map(|spec| spec.payload.key)
                    .unwrap_or(u64::MAX),
            );
            match event {
                ClientEvent::Done(size) => e.set_done(*size),
                ClientEvent::Failed(kind, message) => {
                    let mut f = e.init_failed();
                    f.set_kind(kind);
                    f.set_message(message);
                }
            }
        }
        spawn_call(
            format!("events to client {}", client.0),
            request.send().promise,
        );
    }
}

/// How long the scheduler waits for a worker to answer a fetch. A worker
/// that is stopped (not dead) keeps its connection open; the heartbeat
/// timeout removes it, and this bounds the calls already sent to it.
const WORKER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

async fn with_timeout<T>(
    call: impl std::future::Future<Output = Result<T, capnp::Error>>,
) -> Result<T, capnp::Error> {
    match tokio::time::timeout(WORKER_CALL_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(capnp::Error::disconnected(
            "the worker did not answer in time".to_owned(),
        )),
    }
}

fn spawn_call<T: 'static>(
    what: String,
    promise: impl std::future::Future<Output = Result<T, capnp::Error>> + 'static,
) {
    tokio::task::spawn_local(async move {
        if let Err(error) = promise.await {
            debug!("{what}: {error}");
        }
    });
}

/// Serves the bootstrap capability on one accepted connection.
fn serve_connection(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    cluster: &cluster::Client,
) {
    debug!(%peer, "connection");
    let rpc = wrun_proto::rpc_system(stream, Side::Server, Some(cluster.clone().client));
    tokio::task::spawn_local(async move {
        if let Err(error) = rpc.await {
            debug!(%peer, "connection ended: {error}");
        }
    });
}

async fn serve(
    listener: std::net::TcpListener,
    secret: String,
    core: CoreConfig,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Option<i32> {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    let (deferred_tx, mut deferred_rx) = mpsc::unbounded_channel();
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::oneshot::channel();
    let shared: Shared = Rc::new(RefCell::new(State {
        core: Core::new(core),
        secret,
        modules: HashMap::new(),
        uploads: HashMap::new(),
        workers: HashMap::new(),
        clients: HashMap::new(),
        logs: HashMap::new(),
        next_id: 0,
        outbox: Outbox::default(),
        deferred: deferred_tx,
        finished: Rc::new(tokio::sync::Notify::new()),
        progress: Rc::new(tokio::sync::Notify::new()),
        jobs: HashMap::new(),
        shutdown: Some(shutdown_tx),
        shutting_down: false,
    }));
    let cluster_client: cluster::Client = capnp_rpc::new_client(ClusterImpl {
        shared: shared.clone(),
    });
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = &mut stop => break None,
            code = &mut shutdown_rx => {
                let code = code.unwrap_or(0);
                info!(code, "shutting down at a client's request");
                // Workers exit cleanly (their nannies do not restart them).
                let calls: Vec<_> = {
                    let mut state = shared.borrow_mut();
                    state.shutting_down = true;
                    state
                        .workers
                        .values()
                        .map(|w| w.control.shutdown_request().send().promise)
                        .collect()
                };
                let _ = tokio::time::timeout(
                    Duration::from_secs(3),
                    futures::future::join_all(calls),
                )
                .await;
                // Registrations already in flight get their answer (and
                // the shutdown) before the listener closes.
                let grace = tokio::time::sleep(Duration::from_millis(250));
                tokio::pin!(grace);
                loop {
                    tokio::select! {
                        _ = &mut grace => break,
                        accepted = listener.accept() => if let Ok((stream, peer)) = accepted {
                            serve_connection(stream, peer, &cluster_client);
                        },
                    }
                }
                break Some(code);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => serve_connection(stream, peer, &cluster_client),
                Err(error) => warn!("accept failed: {error}"),
            },
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
                    flush(&shared);
                }
            }
        }
    }
}

// ---- Cluster (bootstrap) ----

struct ClusterImpl {
    shared: Shared,
}

impl cluster::Server for ClusterImpl {
    async fn shutdown(
        self: CapRc<Self>,
        params: cluster::ShutdownParams,
        _: cluster::ShutdownResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let mut state = self.shared.borrow_mut();
        if params.get_secret()?.to_str()? != state.secret {
            warn!("a shutdown request presented a wrong cluster secret; refused");
            return Err(capnp::Error::failed("wrong cluster secret".to_owned()));
        }
        if let Some(shutdown) = state.shutdown.take() {
            let _ = shutdown.send(params.get_exit_code());
        }
        Ok(())
    }

    async fn info(
        self: CapRc<Self>,
        _: cluster::InfoParams,
        mut results: cluster::InfoResults,
    ) -> Result<(), capnp::Error> {
        let workers = self.shared.borrow().workers.len() as u32;
        let mut r = results.get();
        r.set_protocol_version(wrun_proto::PROTOCOL_VERSION);
        r.set_workers(workers);
        Ok(())
    }

    async fn connect_client(
        self: CapRc<Self>,
        params: cluster::ConnectClientParams,
        mut results: cluster::ConnectClientResults,
    ) -> Result<(), capnp::Error> {
        let listener = params.get()?.get_listener()?;
        let mut state = self.shared.borrow_mut();
        let client = ClientId(state.next());
        state.clients.insert(
            client,
            ClientConn {
                listener,
                keys: HashMap::new(),
            },
        );
        let deferred = state.deferred.clone();
        drop(state);
        debug!(client = client.0, "client connected");
        results
            .get()
            .set_session(capnp_rpc::new_client(ClientSessionImpl {
                shared: self.shared.clone(),
                client,
                deferred,
            }));
        Ok(())
    }

    async fn register_worker(
        self: CapRc<Self>,
        params: cluster::RegisterWorkerParams,
        mut results: cluster::RegisterWorkerResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let mut state = self.shared.borrow_mut();
        if params.get_secret()?.to_str()? != state.secret {
            warn!("a worker presented a wrong cluster secret; refused");
            return Err(capnp::Error::failed("wrong cluster secret".to_owned()));
        }
        let info = params.get_info()?;
        let worker = WorkerId(state.next());
        let conn = WorkerConn {
            control: params.get_control()?,
            name: info.get_name()?.to_str()?.to_owned(),
            threads: info.get_threads().max(1),
            memory_bytes: info.get_memory_bytes(),
            peer_address: info.get_peer_address()?.to_str()?.to_owned(),
            pid: info.get_pid(),
            slurm_job_id: info.get_slurm_job_id()?.to_str()?.to_owned(),
            end_time_ms: info.get_end_time_ms(),
        };
        info!(%worker, name = %conn.name, threads = conn.threads, "worker joined");
        let threads = conn.threads;
        if state.shutting_down {
            spawn_call(
                format!("shutdown of {worker}"),
                conn.control.shutdown_request().send().promise,
            );
        }
        state.workers.insert(worker, conn);
        let state_ref = &mut *state;
        state_ref
            .core
            .add_worker(worker, threads, Instant::now(), &mut state_ref.outbox);
        let deferred = state.deferred.clone();
        drop(state);
        results
            .get()
            .set_session(capnp_rpc::new_client(WorkerSessionImpl {
                shared: self.shared.clone(),
                worker,
                deferred,
            }));
        // Queued tasks may have gone to the new worker.
        flush(&self.shared);
        Ok(())
    }
}

// ---- WorkerSession ----

struct WorkerSessionImpl {
    shared: Shared,
    worker: WorkerId,
    deferred: mpsc::UnboundedSender<Deferred>,
}

impl Drop for WorkerSessionImpl {
    fn drop(&mut self) {
        let _ = self.deferred.send(Deferred::WorkerGone(self.worker));
    }
}

impl worker_session::Server for WorkerSessionImpl {
    async fn events(
        self: CapRc<Self>,
        params: worker_session::EventsParams,
        _: worker_session::EventsResults,
    ) -> Result<(), capnp::Error> {
        use wrun_proto::wrun_capnp::worker_event::Which;
        let events = params.get()?.get_events()?;
        {
            let mut state = self.shared.borrow_mut();
            let state = &mut *state;
            if !state.workers.contains_key(&self.worker) {
                return Err(capnp::Error::failed("this worker was removed".to_owned()));
            }
            state.core.heartbeat(self.worker, Instant::now());
            for event in events.iter() {
                let task = TaskId(event.get_task());
                match event.which()? {
                    Which::Started(()) => state.core.task_started(self.worker, task),
                    Which::Finished(done) => {
                        keep_logs(
                            &mut state.logs,
                            task,
                            done.get_stdout()?,
                            done.get_stderr()?,
                        );
                        state.core.task_finished(
                            self.worker,
                            task,
                            done.get_size(),
                            &mut state.outbox,
                        );
                    }
                    Which::Failed(failure) => {
                        keep_logs(
                            &mut state.logs,
                            task,
                            failure.get_stdout()?,
                            failure.get_stderr()?,
                        );
                        let failure = Failure::Error {
                            kind: failure.get_kind()?.to_str()?.to_owned(),
                            message: failure.get_message()?.to_str()?.to_owned(),
                        };
                        state
                            .core
                            .task_failed(self.worker, task, failure, &mut state.outbox);
                    }
                    Which::Stolen(given_back) => {
                        state
                            .core
                            .steal_response(self.worker, task, given_back, &mut state.outbox)
                    }
                    Which::Replicated(ok) => {
                        state
                            .core
                            .replicated(self.worker, task, ok, &mut state.outbox)
                    }
                }
            }
            state.progress.notify_waiters();
        }
        flush(&self.shared);
        Ok(())
    }

    async fn retire(
        self: CapRc<Self>,
        _: worker_session::RetireParams,
        _: worker_session::RetireResults,
    ) -> Result<(), capnp::Error> {
        {
            let mut state = self.shared.borrow_mut();
            let state = &mut *state;
            if !state.workers.contains_key(&self.worker) {
                return Err(capnp::Error::failed("this worker was removed".to_owned()));
            }
            info!(worker = %self.worker, "worker retiring");
            state.core.retire_worker(self.worker, &mut state.outbox);
        }
        flush(&self.shared);
        let progress = self.shared.borrow().progress.clone();
        loop {
            // Created before the check, so no wake-up between them is missed.
            let notified = progress.notified();
            {
                let mut state = self.shared.borrow_mut();
                if !state.workers.contains_key(&self.worker) {
                    return Err(capnp::Error::failed(
                        "this worker was removed while retiring".to_owned(),
                    ));
                }
                if state.core.retirement_complete(self.worker) {
                    info!(worker = %self.worker, "worker retired");
                    state.remove_worker(self.worker);
                    state.progress.notify_waiters();
                    drop(state);
                    flush(&self.shared);
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    async fn heartbeat(
        self: CapRc<Self>,
        _: worker_session::HeartbeatParams,
        _: worker_session::HeartbeatResults,
    ) -> Result<(), capnp::Error> {
        let mut state = self.shared.borrow_mut();
        if !state.workers.contains_key(&self.worker) {
            return Err(capnp::Error::failed("this worker was removed".to_owned()));
        }
        state.core.heartbeat(self.worker, Instant::now());
        Ok(())
    }

    async fn fetch_module(
        self: CapRc<Self>,
        params: worker_session::FetchModuleParams,
        mut results: worker_session::FetchModuleResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let state = self.shared.borrow();
        let module = state
            .modules
            .get(params.get_digest()?)
            .ok_or_else(|| failed("unknown module"))?;
        let mut chunk = results.get().init_chunk();
        chunk.set_data(chunk_at(&module.bytes, params.get_offset())?);
        chunk.set_total(module.bytes.len() as u64);
        Ok(())
    }
}

fn keep_logs(
    logs: &mut HashMap<TaskId, (Vec<u8>, Vec<u8>)>,
    task: TaskId,
    stdout: &[u8],
    stderr: &[u8],
) {
    if !stdout.is_empty() || !stderr.is_empty() {
        logs.insert(task, (stdout.to_vec(), stderr.to_vec()));
    }
}

// ---- ClientSession ----

struct ClientSessionImpl {
    shared: Shared,
    client: ClientId,
    deferred: mpsc::UnboundedSender<Deferred>,
}

impl Drop for ClientSessionImpl {
    fn drop(&mut self) {
        let _ = self.deferred.send(Deferred::ClientGone(self.client));
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl ClientSessionImpl {
    fn task_of(&self, state: &State, key: u64) -> Result<TaskId, capnp::Error> {
        state
            .clients
            .get(&self.client)
            .and_then(|c| c.keys.get(&key).copied())
            .ok_or_else(|| failed(format!("no task with key {key} in this session")))
    }
}

impl client_session::Server for ClientSessionImpl {
    async fn has_module(
        self: CapRc<Self>,
        params: client_session::HasModuleParams,
        mut results: client_session::HasModuleResults,
    ) -> Result<(), capnp::Error> {
        let known = self
            .shared
            .borrow()
            .modules
            .contains_key(params.get()?.get_digest()?);
        results.get().set_known(known);
        Ok(())
    }

    async fn upload_module(
        self: CapRc<Self>,
        params: client_session::UploadModuleParams,
        mut results: client_session::UploadModuleResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let digest = params.get_digest()?.to_vec();
        let total = params.get_total();
        if total > 256 << 20 {
            return Err(failed(format!(
                "module of {total} bytes is over the 256 MiB limit"
            )));
        }
        let mut state = self.shared.borrow_mut();
        if state.modules.contains_key(&digest) {
            results.get().set_complete(true);
            return Ok(());
        }
        let key = (self.client, digest.clone());
        let buffer = state.uploads.entry(key.clone()).or_default();
        if params.get_offset() != buffer.len() as u64 {
            state.uploads.remove(&key);
            return Err(failed(
                "module chunks out of order; start again at offset 0",
            ));
        }
        buffer.extend_from_slice(params.get_data()?);
        if (buffer.len() as u64) < total {
            results.get().set_complete(false);
            return Ok(());
        }
        let bytes = state.uploads.remove(&key).unwrap_or_default();
        let actual = wrun_abi::ModuleDigest::of(&bytes);
        if actual.0[..] != digest[..] {
            return Err(failed(format!(
                "uploaded module has digest {actual}, not {}",
                hex(&digest)
            )));
        }
        let signatures = wrun_abi::read_task_signatures(&bytes).map_err(failed)?;
        let records = json!(signatures
            .iter()
            .map(|s| json!({
                "name": s.name,
                "params": s.params.iter().map(|p| json!({"name": p.name, "type": p.ty.to_string()})).collect::<Vec<_>>(),
                "returns": s.returns.to_string(),
            }))
            .collect::<Vec<_>>())
        .to_string();
        info!(digest = %actual, bytes = bytes.len(), tasks = signatures.len(), "module uploaded");
        state.modules.insert(
            digest.clone(),
            Rc::new(ModuleEntry {
                digest,
                bytes,
                signatures,
                records,
            }),
        );
        results.get().set_complete(true);
        Ok(())
    }

    async fn describe_module(
        self: CapRc<Self>,
        params: client_session::DescribeModuleParams,
        mut results: client_session::DescribeModuleResults,
    ) -> Result<(), capnp::Error> {
        let digest = params.get()?.get_digest()?;
        let state = self.shared.borrow();
        let module = state
            .modules
            .get(digest)
            .ok_or_else(|| failed(format!("unknown module digest {}", hex(digest))))?;
        results.get().set_tasks(&module.records);
        Ok(())
    }

    async fn submit(
        self: CapRc<Self>,
        params: client_session::SubmitParams,
        _: client_session::SubmitResults,
    ) -> Result<(), capnp::Error> {
        use wrun_proto::wrun_capnp::arg::Which;
        let submissions = params.get()?.get_tasks()?;
        {
            let mut state = self.shared.borrow_mut();
            let state = &mut *state;
            let Some(conn) = state.clients.get(&self.client) else {
                return Err(failed("this session is closed"));
            };
            let mut new_keys: HashMap<u64, TaskId> = HashMap::new();
            let mut batch = Vec::with_capacity(submissions.len() as usize);
            let mut templates: HashMap<(usize, String, Limits), Rc<Template>> = HashMap::new();
            for sub in submissions.iter() {
                let key = sub.get_key();
                if conn.keys.contains_key(&key) || new_keys.contains_key(&key) {
                    return Err(failed(format!(
                        "task key {key} is already used in this session"
                    )));
                }
                let digest = sub.get_module()?;
                let module = state
                    .modules
                    .get(digest)
                    .ok_or_else(|| {
                        failed(format!(
                            "task {key}: unknown module digest {}; upload it first",
                            hex(digest)
                        ))
                    })?
                    .clone();
                let name = sub.get_task()?.to_str()?;
                let Some(signature) = module.signatures.iter().find(|s| s.name == name) else {
                    let available: Vec<_> =
                        module.signatures.iter().map(|s| s.name.as_str()).collect();
                    return Err(failed(format!(
                        "task {key}: unknown task `{name}`; the module has: {}",
                        available.join(", ")
                    )));
                };
                let args_reader = sub.get_args()?;
                if args_reader.len() as usize != signature.params.len() {
                    return Err(failed(format!(
                        "task {key}: `{signature}` takes {} argument(s), got {}",
                        signature.params.len(),
                        args_reader.len()
                    )));
                }
                let mut args = Vec::with_capacity(args_reader.len() as usize);
                for (arg, param) in args_reader.iter().zip(&signature.params) {
                    args.push(match arg.which()? {
                        Which::Value(bytes) => {
                            let bytes = bytes?;
                            let value = wrun_abi::decode_value(bytes)
                                .map_err(|e| failed(format!("task {key}: argument `{}`: {e}", param.name)))?;
                            wrun_abi::check_value(&param.ty, &value).map_err(|mismatch| {
                                failed(format!("task {key}: argument `{}` of task `{name}`: {mismatch}", param.name))
                            })?;
                            Arg::Value(bytes.into())
                        }
                        Which::Result(dep) => {
                            let dep_task = conn.keys.get(&dep).or_else(|| new_keys.get(&dep)).copied().ok_or_else(|| {
                                failed(format!("task {key}: argument `{}` refers to task key {dep}, which is not submitted before it", param.name))
                            })?;
                            Arg::Result(dep_task)
                        }
                    });
                }
                let l = sub.get_limits()?;
                let limits = Limits {
                    memory_bytes: l.get_memory_bytes(),
                    timeout_ms: l.get_timeout_ms(),
                    fuel: l.get_fuel(),
                    result_bytes: l.get_result_bytes(),
                    stdout_bytes: l.get_stdout_bytes(),
                    stderr_bytes: l.get_stderr_bytes(),
                };
                let module_ptr = Rc::as_ptr(&module) as usize;
                let template = templates
                    .entry((module_ptr, name.to_owned(), limits))
                    .or_insert_with(|| {
                        Rc::new(Template {
                            module: module.clone(),
                            name: name.to_owned(),
                            limits,
                        })
                    })
                    .clone();
                state.next_id += 1;
                let id = TaskId(state.next_id);
                new_keys.insert(key, id);
                batch.push(TaskSpec {
                    id,
                    client: self.client,
                    args: args.into(),
                    retries: sub.get_retries(),
                    payload: Payload { template, key },
                });
            }
            state
                .core
                .submit(batch, &mut state.outbox)
                .map_err(failed)?;
            let conn = state.clients.get_mut(&self.client).expect("checked");
            for (key, id) in new_keys {
                conn.keys.insert(key, id);
            }
        }
        flush(&self.shared);
        Ok(())
    }

    async fn fetch(
        self: CapRc<Self>,
        params: client_session::FetchParams,
        mut results: client_session::FetchResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let (key, offset) = (params.get_key(), params.get_offset());
        // The holder may die, and the result be recomputed, between the
        // client hearing "done" and fetching: wait for it, then retry.
        let mut attempts = 0;
        let chunk = loop {
            attempts += 1;
            let (finished, found) = {
                let state = self.shared.borrow();
                let task = self.task_of(&state, key)?;
                let holder = state.core.holders(task).first().copied();
                let found = match holder.and_then(|h| state.workers.get(&h)) {
                    Some(conn) => Some((conn.control.clone(), task)),
                    None if state.core.is_active(task) => None,
                    None => {
                        return Err(failed(format!(
                            "task {key} has no result (failed, or released)"
                        )));
                    }
                };
                (state.finished.clone(), found)
            };
            let Some((control, task)) = found else {
                let wait = finished.notified();
                tokio::select! {
                    _ = wait => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            };
            let mut request = control.fetch_request();
            request.get().set_task(task.0);
            request.get().set_offset(offset);
            match with_timeout(request.send().promise).await {
                Ok(response) => break response,
                Err(error) if attempts < 100 => debug!(key, "fetch failed, retrying: {error}"),
                Err(error) => return Err(error),
            }
        };
        let chunk = chunk.get()?.get_chunk()?;
        let mut out = results.get().init_chunk();
        out.set_data(chunk.get_data()?);
        out.set_total(chunk.get_total());
        Ok(())
    }

    async fn release(
        self: CapRc<Self>,
        params: client_session::ReleaseParams,
        _: client_session::ReleaseResults,
    ) -> Result<(), capnp::Error> {
        let keys = params.get()?.get_keys()?;
        {
            let mut state = self.shared.borrow_mut();
            let state = &mut *state;
            for key in keys.iter() {
                let Some(task) = state
                    .clients
                    .get_mut(&self.client)
                    .and_then(|c| c.keys.remove(&key))
                else {
                    continue;
                };
                state.logs.remove(&task);
                state.core.release(task, &mut state.outbox);
            }
        }
        flush(&self.shared);
        Ok(())
    }

    async fn status(
        self: CapRc<Self>,
        _: client_session::StatusParams,
        mut results: client_session::StatusResults,
    ) -> Result<(), capnp::Error> {
        let state = self.shared.borrow();
        let workers: Vec<_> = state
            .core
            .workers()
            .map(|(id, slots, assigned, running)| {
                let conn = state.workers.get(&id);
                json!({
                    "id": id.0,
                    "name": conn.map(|c| c.name.as_str()),
                    "threads": slots,
                    "memory_bytes": conn.map(|c| c.memory_bytes),
                    "pid": conn.map(|c| c.pid),
                    "peer": conn.map(|c| c.peer_address.as_str()),
                    "assigned": assigned,
                    "running": running,
                    "retiring": state.core.is_retiring(id),
                    "slurm_job_id": conn.map(|c| c.slurm_job_id.as_str()).filter(|j| !j.is_empty()),
                    "end_time_ms": conn.map(|c| c.end_time_ms).filter(|t| *t > 0),
                })
            })
            .collect();
        let mine = state
            .clients
            .get(&self.client)
            .map(|c| c.keys.len())
            .unwrap_or(0);
        let c = state.core.state_counts();
        let by_state = json!({
            "waiting": c.waiting,
            "queued": c.queued,
            "on_workers": c.on_workers,
            "running": c.running,
            "done": c.done,
            "failed": c.failed,
        });
        let status = json!({
            "workers": workers,
            "tasks": state.core.task_count(),
            "queued": state.core.queued_count(),
            "by_state": by_state,
            "recomputed": state.core.recomputed(),
            "clients": state.clients.len(),
            "session_tasks": mine,
            "jobs": state.jobs.iter().map(|(name, tasks)| (name.clone(), json!(tasks.len()))).collect::<serde_json::Map<_, _>>(),
        });
        results.get().set_json(status.to_string());
        Ok(())
    }

    async fn fetch_many(
        self: CapRc<Self>,
        params: client_session::FetchManyParams,
        mut results: client_session::FetchManyResults,
    ) -> Result<(), capnp::Error> {
        use wrun_proto::wrun_capnp::value::Which;
        enum Slot {
            Data(Vec<u8>),
            Large(u64),
            Missing(String),
        }
        let keys: Vec<u64> = params.get()?.get_keys()?.iter().collect();
        if keys.len() > 1 << 16 {
            return Err(failed("at most 65536 keys per fetchMany"));
        }
        let mut slots: Vec<Slot> = Vec::with_capacity(keys.len());
        let mut by_worker: BTreeMap<WorkerId, (worker_control::Client, Vec<(usize, TaskId)>)> =
            BTreeMap::new();
        {
            let state = self.shared.borrow();
            for (index, key) in keys.iter().enumerate() {
                let Ok(task) = self.task_of(&state, *key) else {
                    slots.push(Slot::Missing(format!(
                        "no task with key {key} in this session"
                    )));
                    continue;
                };
                let holder = state
                    .core
                    .holders(task)
                    .first()
                    .and_then(|h| state.workers.get(h).map(|c| (*h, c)));
                match holder {
                    Some((worker, conn)) => {
                        by_worker
                            .entry(worker)
                            .or_insert_with(|| (conn.control.clone(), Vec::new()))
                            .1
                            .push((index, task));
                        slots.push(Slot::Missing(String::new()));
                    }
                    None => slots.push(Slot::Missing(format!("task {key} has no result here now"))),
                }
            }
        }
        let requests = by_worker.into_values().map(|(control, items)| {
            let mut request = control.fetch_many_request();
            let mut list = request.get().init_tasks(items.len() as u32);
            for (i, (_, task)) in items.iter().enumerate() {
                list.set(i as u32, task.0);
            }
            async move { (items, with_timeout(request.send().promise).await) }
        });
        for (items, response) in futures::future::join_all(requests).await {
            let values = match &response {
                Ok(r) => r.get().and_then(|r| r.get_values()),
                Err(error) => Err(error.clone()),
            };
            for (i, (index, _)) in items.iter().enumerate() {
                slots[*index] = match &values {
                    Ok(values) => match values.get(i as u32).which()? {
                        Which::Data(data) => Slot::Data(data?.to_vec()),
                        Which::Large(size) => Slot::Large(size),
                        Which::Missing(reason) => Slot::Missing(reason?.to_string()?),
                    },
                    Err(error) => Slot::Missing(error.to_string()),
                };
            }
        }
        let mut list = results.get().init_values(slots.len() as u32);
        for (i, slot) in slots.iter().enumerate() {
            let mut value = list.reborrow().get(i as u32);
            match slot {
                Slot::Data(data) => value.set_data(data),
                Slot::Large(size) => value.set_large(*size),
                Slot::Missing(reason) => value.set_missing(reason),
            }
        }
        Ok(())
    }

    async fn detach(
        self: CapRc<Self>,
        params: client_session::DetachParams,
        mut results: client_session::DetachResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let keys: Vec<u64> = params.get_keys()?.iter().collect();
        let mut name = params.get_job()?.to_str()?.to_owned();
        let mut state = self.shared.borrow_mut();
        let state = &mut *state;
        let conn = state
            .clients
            .get_mut(&self.client)
            .ok_or_else(|| failed("this session is closed"))?;
        if let Some(missing) = keys.iter().find(|k| !conn.keys.contains_key(k)) {
            return Err(failed(format!(
                "no task with key {missing} in this session"
            )));
        }
        if name.is_empty() {
            state.next_id += 1;
            name = format!("job-{}", state.next_id);
        }
        let job = state.jobs.entry(name.clone()).or_default();
        for key in keys {
            let task = conn.keys.remove(&key).expect("checked");
            job.push((key, task));
        }
        info!(job = %name, tasks = job.len(), "job detached");
        results.get().set_job(&name);
        Ok(())
    }

    async fn adopt(
        self: CapRc<Self>,
        params: client_session::AdoptParams,
        mut results: client_session::AdoptResults,
    ) -> Result<(), capnp::Error> {
        let name = params.get()?.get_job()?.to_str()?.to_owned();
        let mut state = self.shared.borrow_mut();
        let state = &mut *state;
        let Some(job) = state.jobs.get(&name) else {
            let known: Vec<&str> = state.jobs.keys().map(String::as_str).collect();
            return Err(failed(format!(
                "no job `{name}`; the scheduler has: {}",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        };
        let conn = state
            .clients
            .get_mut(&self.client)
            .ok_or_else(|| failed("this session is closed"))?;
        if let Some((key, _)) = job.iter().find(|(key, _)| conn.keys.contains_key(key)) {
            return Err(failed(format!(
                "key {key} of job `{name}` is already used in this session"
            )));
        }
        let job = state.jobs.remove(&name).expect("checked");
        let mut keys = results.get().init_keys(job.len() as u32);
        for (i, (key, _)) in job.iter().enumerate() {
            keys.set(i as u32, *key);
        }
        let finished: Vec<(u64, Result<u64, Rc<String>>, String)> = job
            .iter()
            .filter_map(|(key, task)| {
                state.core.outcome(*task).map(|outcome| match outcome {
                    Ok(size) => (*key, Ok(size), String::new()),
                    Err(failure) => (
                        *key,
                        Err(Rc::new(failure.to_string())),
                        failure_kind(&failure).to_owned(),
                    ),
                })
            })
            .collect();
        for (key, task) in &job {
            conn.keys.insert(*key, *task);
            state.core.set_client(*task, self.client);
        }
        let mut events = results.get().init_finished(finished.len() as u32);
        for (i, (key, outcome, kind)) in finished.iter().enumerate() {
            let mut e = events.reborrow().get(i as u32);
            e.set_key(*key);
            match outcome {
                Ok(size) => e.set_done(*size),
                Err(message) => {
                    let mut f = e.init_failed();
                    f.set_kind(kind);
                    f.set_message(message.as_str());
                }
            }
        }
        info!(job = %name, tasks = job.len(), "job adopted");
        Ok(())
    }

    async fn cancel(
        self: CapRc<Self>,
        params: client_session::CancelParams,
        _: client_session::CancelResults,
    ) -> Result<(), capnp::Error> {
        let keys = params.get()?.get_keys()?;
        {
            let mut state = self.shared.borrow_mut();
            let state = &mut *state;
            let Some(conn) = state.clients.get_mut(&self.client) else {
                return Err(failed("this session is closed"));
            };
            let tasks: Vec<TaskId> = keys
                .iter()
                .filter_map(|key| conn.keys.remove(&key))
                .collect();
            state.core.cancel(&tasks, &mut state.outbox);
            for task in tasks {
                state.logs.remove(&task);
            }
        }
        flush(&self.shared);
        Ok(())
    }

    async fn logs(
        self: CapRc<Self>,
        params: client_session::LogsParams,
        mut results: client_session::LogsResults,
    ) -> Result<(), capnp::Error> {
        let key = params.get()?.get_key();
        let state = self.shared.borrow();
        let task = self.task_of(&state, key)?;
        if let Some((stdout, stderr)) = state.logs.get(&task) {
            let mut r = results.get();
            r.set_stdout(stdout);
            r.set_stderr(stderr);
        }
        Ok(())
    }
}

//! The connection thread: a current-thread runtime that owns the Cap'n
//! Proto connection and the session, runs the calls the blocking API hands
//! it, and records the task events the scheduler sends (`TaskListener`).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc as std_mpsc};
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use futures::future::LocalBoxFuture;
use tokio::sync::mpsc;
use wrun_proto::capnp_rpc::rpc_twoparty_capnp::Side;
use wrun_proto::wrun_capnp::{client_session, cluster, task_event, task_listener};
use wrun_proto::{SchedulerFile, TaskKey};

use crate::error::{ClientError, TaskFailure, rpc_error};

/// Where the scheduler is.
#[derive(Debug, Clone)]
pub enum Target {
    /// A scheduler file (waited for until the timeout).
    File(std::path::PathBuf),
    /// `host:port`.
    Address(String),
}

/// What the client knows of one of its tasks.
#[derive(Debug, Clone)]
pub(crate) enum TaskState {
    Pending,
    Done,
    Failed(TaskFailure),
}

/// The session's tasks, as the scheduler's events left them.
#[derive(Debug, Default)]
pub(crate) struct TaskTable {
    pub(crate) tasks: HashMap<TaskKey, TaskState>,
    /// Keys in the order they finished (done or failed): waiters read what
    /// is new since their last look instead of rescanning all their keys.
    pub(crate) finished_log: Vec<TaskKey>,
    pub(crate) disconnected: Option<String>,
}

impl TaskTable {
    pub(crate) fn record(&mut self, key: TaskKey, state: TaskState) {
        self.tasks.insert(key, state);
        self.finished_log.push(key);
    }
}

/// Work for the connection thread.
pub(crate) type Job = Box<dyn FnOnce(client_session::Client) -> LocalBoxFuture<'static, ()> + Send>;

pub(crate) enum Command {
    Call(Job),
    FlushReleases,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// What the blocking API and the connection thread share.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    table: Mutex<TaskTable>,
    pub(crate) changed: Condvar,
    /// Keys whose last handle dropped, released in one call.
    pub(crate) releases: Mutex<Vec<TaskKey>>,
    pub(crate) next_key: AtomicU64,
}

impl Inner {
    pub(crate) fn table(&self) -> MutexGuard<'_, TaskTable> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running connection thread.
pub(crate) struct Connection {
    pub(crate) inner: Arc<Inner>,
    pub(crate) thread: std::thread::JoinHandle<()>,
    pub(crate) stop: tokio::sync::oneshot::Sender<()>,
}

/// What a client opens its session with, beyond where the scheduler is.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The tenant's token; a scheduler file's token (or its secret) when
    /// `None`.
    pub token: Option<String>,
    /// The scheduler's TLS certificate (DER) to accept, for a
    /// [`Target::Address`] (a scheduler file carries its own).
    pub certificate: Option<Vec<u8>>,
}

/// Starts the connection thread; returns once the session is open.
pub(crate) fn start(
    target: &Target,
    credentials: Credentials,
    timeout: Duration,
) -> Result<Connection, ClientError> {
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let inner = Arc::new(Inner {
        commands: commands_tx,
        table: Mutex::new(TaskTable::default()),
        changed: Condvar::new(),
        releases: Mutex::new(Vec::new()),
        next_key: AtomicU64::new(1),
    });
    let (ready_tx, ready_rx) = std_mpsc::channel::<Result<(), ClientError>>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let target = target.clone();
    let thread_inner = inner.clone();
    let thread = std::thread::Builder::new()
        .name("wrun-client".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(
                &runtime,
                run(
                    target,
                    credentials,
                    timeout,
                    thread_inner,
                    commands_rx,
                    ready_tx,
                    stop_rx,
                ),
            );
        })
        .map_err(|e| ClientError::Disconnected(e.to_string()))?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(Connection {
            inner,
            thread,
            stop: stop_tx,
        }),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(_) => Err(ClientError::Disconnected(
            "the connection thread ended".to_owned(),
        )),
    }
}

/// Receives the session's task events.
struct Listener {
    inner: Arc<Inner>,
}

/// A task event as the client's task state.
pub(crate) fn read_event(
    event: task_event::Reader<'_>,
) -> Result<(TaskKey, TaskState), capnp::Error> {
    let state = match event.which()? {
        task_event::Which::Done(_) => TaskState::Done,
        task_event::Which::Failed(f) => TaskState::Failed(TaskFailure {
            kind: f.get_kind()?.to_str()?.to_owned(),
            message: f.get_message()?.to_str()?.to_owned(),
        }),
    };
    Ok((TaskKey(event.get_key()), state))
}

impl task_listener::Server for Listener {
    async fn events(
        self: CapRc<Self>,
        params: task_listener::EventsParams,
        _: task_listener::EventsResults,
    ) -> Result<(), capnp::Error> {
        let events = params.get()?.get_events()?;
        let mut table = self.inner.table();
        for event in events.iter() {
            let (key, state) = read_event(event)?;
            table.record(key, state);
        }
        drop(table);
        self.inner.changed.notify_all();
        Ok(())
    }
}

/// Connects and opens the session: the session, and the disconnector that
/// ends the connection cleanly.
async fn open(
    target: &Target,
    credentials: Credentials,
    timeout: Duration,
    inner: &Arc<Inner>,
) -> Result<(client_session::Client, capnp_rpc::Disconnector<Side>), ClientError> {
    // The token: the one given, else the scheduler file's (a cluster
    // without tenants), else its cluster secret (the operator's).
    let Credentials { token, certificate } = credentials;
    let (address, token, certificate) = match target {
        Target::File(path) => {
            let file = SchedulerFile::wait_for(path, timeout).await?;
            let certificate = certificate.or(file.certificate_der()?);
            let secret = Some(file.secret).filter(|s| !s.is_empty());
            (file.address, token.or(file.token).or(secret), certificate)
        }
        Target::Address(address) => (address.clone(), token, certificate),
    };
    let stream = wrun_proto::connect_with_retry(&address, timeout).await?;
    // Unreachable says more than a missing token, so it is said first.
    let token = token.ok_or(ClientError::NoToken)?;
    let stream = wrun_proto::tls::secure(stream, certificate.as_deref()).await?;
    let mut rpc = wrun_proto::rpc_system(stream, Side::Client, None);
    let cluster: cluster::Client = rpc.bootstrap(Side::Server);
    let disconnector = rpc.get_disconnector();
    let rpc_inner = inner.clone();
    tokio::task::spawn_local(async move {
        let reason = match rpc.await {
            Ok(()) => "the scheduler closed the connection".to_owned(),
            Err(error) => error.to_string(),
        };
        rpc_inner.table().disconnected = Some(reason);
        rpc_inner.changed.notify_all();
    });
    let mut request = cluster.connect_client_request();
    request.get().set_token(&token);
    request.get().set_listener(capnp_rpc::new_client(Listener {
        inner: inner.clone(),
    }));
    let response = request.send().promise.await.map_err(rpc_error)?;
    let session = response
        .get()
        .and_then(|r| r.get_session())
        .map_err(rpc_error)?;
    Ok((session, disconnector))
}

async fn run(
    target: Target,
    credentials: Credentials,
    timeout: Duration,
    inner: Arc<Inner>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    ready: std_mpsc::Sender<Result<(), ClientError>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let (session, disconnector) = match open(&target, credentials, timeout, &inner).await {
        Ok(pair) => pair,
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            command = commands.recv() => match command {
                None => break,
                Some(Command::Call(job)) => {
                    tokio::task::spawn_local(job(session.clone()));
                }
                Some(Command::FlushReleases) => flush_releases(&inner, &session),
            }
        }
    }
    drop(session);
    let _ = disconnector.await;
}

/// Releases, in one call, every key whose last handle dropped.
fn flush_releases(inner: &Inner, session: &client_session::Client) {
    let keys = std::mem::take(&mut *inner.releases.lock().unwrap_or_else(|p| p.into_inner()));
    if keys.is_empty() {
        return;
    }
    {
        let mut table = inner.table();
        for key in &keys {
            table.tasks.remove(key);
        }
    }
    let mut request = session.release_request();
    let mut list = request.get().init_keys(keys.len() as u32);
    for (i, key) in keys.iter().enumerate() {
        list.set(i as u32, key.0);
    }
    tokio::task::spawn_local(async move {
        let _ = request.send().promise.await;
    });
}

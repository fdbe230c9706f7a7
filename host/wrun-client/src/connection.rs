//! The connection thread: a current-thread runtime that owns the Cap'n
//! Proto connection and the session, runs the calls the blocking API hands
//! it, and records the task events the scheduler sends (`TaskListener`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// Done; with its result when the scheduler sent it along (small
    /// results), so gathering it needs no fetch.
    Done(Option<Box<[u8]>>),
    /// Boxed: failures are rare and the table has an entry per task (a
    /// million-task map kept 48 bytes more per entry inline).
    Failed(Box<TaskFailure>),
}

/// The session's tasks, as the scheduler's events left them.
#[derive(Debug, Default)]
pub(crate) struct TaskTable {
    /// By this client's own keys (never a peer's: a fast hash is safe).
    pub(crate) tasks: HashMap<TaskKey, TaskState, wrun_proto::IdHash>,
    /// Keys in the order they finished (done or failed): waiters read what
    /// is new since their last look instead of rescanning all their keys.
    /// Kept only while a waiter reads it (a waiter reads only what
    /// finishes after it starts), so it does not grow for ever.
    pub(crate) finished_log: Vec<TaskKey>,
    /// Waiters reading `finished_log` now.
    pub(crate) log_readers: usize,
    pub(crate) disconnected: Option<String>,
}

impl TaskTable {
    pub(crate) fn record(&mut self, key: TaskKey, state: TaskState) {
        self.tasks.insert(key, state);
        if self.log_readers > 0 {
            self.finished_log.push(key);
        }
    }

    /// A waiter starts reading `finished_log`; returns where it starts.
    pub(crate) fn start_reading_log(&mut self) -> usize {
        self.log_readers += 1;
        self.finished_log.len()
    }

    /// A waiter is done with `finished_log`; the last one empties it.
    pub(crate) fn stop_reading_log(&mut self) {
        self.log_readers -= 1;
        if self.log_readers == 0 {
            self.finished_log = Vec::new();
        }
    }
}

/// Work for the connection thread: a call, which answers whether it should
/// run again on the session resumed after a restart (the connection was
/// lost under it).
pub(crate) type Job =
    Arc<dyn Fn(client_session::Client) -> LocalBoxFuture<'static, bool> + Send + Sync>;

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
    /// The scheduler keeps a journal: a lost connection is resumed (the
    /// session survives its restart), and calls cut off are made again.
    pub(crate) resumable: AtomicBool,
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
        resumable: AtomicBool::new(false),
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
        task_event::Which::Done(_) => {
            let value = event.get_value()?;
            TaskState::Done((!value.is_empty()).then(|| value.into()))
        }
        task_event::Which::Failed(f) => TaskState::Failed(Box::new(TaskFailure {
            kind: f.get_kind()?.to_str()?.to_owned(),
            message: f.get_message()?.to_str()?.to_owned(),
        })),
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

/// An open session.
struct Opened {
    session: client_session::Client,
    /// Ends the connection cleanly.
    disconnector: capnp_rpc::Disconnector<Side>,
    /// Fires with the reason once the connection ends.
    ended: tokio::sync::oneshot::Receiver<String>,
    /// Resumes the session after the scheduler restarts (id 0: none).
    ticket: (u64, Vec<u8>),
    journaled: bool,
}

/// Connects and opens the session (or resumes the one `resume` names).
async fn open(
    target: &Target,
    credentials: &Credentials,
    timeout: Duration,
    inner: &Arc<Inner>,
    resume: Option<&(u64, Vec<u8>)>,
) -> Result<Opened, ClientError> {
    // The token: the one given, else the scheduler file's (a cluster
    // without tenants), else its cluster secret (the operator's).
    let Credentials { token, certificate } = credentials.clone();
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
    let (ended_tx, ended) = tokio::sync::oneshot::channel();
    tokio::task::spawn_local(async move {
        let reason = match rpc.await {
            Ok(()) => "the scheduler closed the connection".to_owned(),
            Err(error) => error.to_string(),
        };
        let _ = ended_tx.send(reason);
    });
    let mut request = cluster.connect_client_request();
    request.get().set_token(&token);
    request.get().set_listener(capnp_rpc::new_client(Listener {
        inner: inner.clone(),
    }));
    if let Some((id, secret)) = resume {
        let mut ticket = request.get().init_resume();
        ticket.set_id(*id);
        ticket.set_secret(secret);
    }
    let response = request.send().promise.await.map_err(rpc_error)?;
    let r = response.get().map_err(rpc_error)?;
    let session = r.get_session().map_err(rpc_error)?;
    let ticket = match resume {
        Some(ticket) => ticket.clone(),
        None => {
            let t = r.get_ticket().map_err(rpc_error)?;
            (t.get_id(), t.get_secret().map_err(rpc_error)?.to_vec())
        }
    };
    Ok(Opened {
        session,
        disconnector,
        ended,
        ticket,
        journaled: r.get_journaled(),
    })
}

/// How long a client tries to resume its session after losing a scheduler
/// that keeps a journal.
const RESUME_FOR: Duration = Duration::from_secs(60);

/// Tries to resume the session, with a back-off from 50 ms to 1 s, until
/// [`RESUME_FOR`] has passed.
async fn resume(
    target: &Target,
    credentials: &Credentials,
    inner: &Arc<Inner>,
    ticket: &(u64, Vec<u8>),
) -> Result<Opened, ClientError> {
    let deadline = tokio::time::Instant::now() + RESUME_FOR;
    let mut pause = Duration::from_millis(50);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match open(
            target,
            credentials,
            left.min(Duration::from_secs(2)),
            inner,
            Some(ticket),
        )
        .await
        {
            Ok(opened) => return Ok(opened),
            // The scheduler is back but has not the session: no use trying again.
            Err(error @ ClientError::Refused(_)) => return Err(error),
            Err(error) if left.is_zero() => return Err(error),
            Err(_) => {}
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
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
    // A scheduler that dies between accepting the connection and answering
    // leaves no session behind worth resuming, and one restarted meanwhile
    // rewrites the scheduler file with its new address: with a file, try
    // in short attempts that read it again, within the time-out.
    let deadline = tokio::time::Instant::now() + timeout;
    let mut opened = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (attempt, again) = match target {
            Target::File(_) => (
                left.min(Duration::from_secs(2)),
                left > Duration::from_secs(2),
            ),
            Target::Address(_) => (left, false),
        };
        match open(&target, &credentials, attempt, &inner, None).await {
            Ok(opened) => break opened,
            Err(
                error @ (ClientError::Disconnected(_)
                | ClientError::Connect(
                    wrun_proto::ConnectError::Unreachable { .. }
                    | wrun_proto::ConnectError::NoSchedulerFile { .. },
                )),
            ) if again => {
                tracing::debug!("opening a session: {error}; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => {
                let _ = ready.send(Err(error));
                return;
            }
        }
    };
    inner.resumable.store(opened.journaled, Ordering::Relaxed);
    let _ = ready.send(Ok(()));
    let disconnected = |reason: String| {
        inner.table().disconnected = Some(reason);
        inner.changed.notify_all();
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            reason = &mut opened.ended => {
                let reason = reason.unwrap_or_else(|_| "the connection ended".to_owned());
                if !opened.journaled {
                    disconnected(reason);
                    break;
                }
                tracing::warn!("lost the scheduler ({reason}); it keeps a journal, so resuming the session");
                let resumed = tokio::select! {
                    _ = &mut stop => break,
                    resumed = resume(&target, &credentials, &inner, &opened.ticket) => resumed,
                };
                match resumed {
                    Ok(again) => {
                        tracing::info!("session resumed");
                        opened = again;
                    }
                    Err(error) => {
                        disconnected(format!("{reason}; resuming the session failed: {error}"));
                        break;
                    }
                }
            }
            command = commands.recv() => match command {
                None => break,
                Some(Command::Call(job)) => {
                    let again = inner.commands.clone();
                    let future = job(opened.session.clone());
                    tokio::task::spawn_local(async move {
                        if future.await {
                            let _ = again.send(Command::Call(job));
                        }
                    });
                }
                Some(Command::FlushReleases) => flush_releases(&inner, &opened.session),
            }
        }
    }
    let Opened {
        session,
        disconnector,
        ..
    } = opened;
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

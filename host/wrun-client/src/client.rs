//! The blocking client and its background RPC thread.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, mpsc as std_mpsc};
use std::time::Duration;

use capnp::capability::Rc as CapRc;
use futures::StreamExt;
use futures::future::LocalBoxFuture;
use serde_json::Value as Json;
use tokio::sync::mpsc;
use wrun_abi::{ArgError, ModuleDigest, TaskSignature};
use wrun_proto::capnp_rpc::rpc_twoparty_capnp::Side;
use wrun_proto::wrun_capnp::{client_session, cluster, task_listener};
use wrun_proto::{SchedulerFile, fetch_chunked};

/// Where the scheduler is.
#[derive(Debug, Clone)]
pub enum Target {
    /// A scheduler file (waited for until the timeout).
    File(PathBuf),
    /// `host:port`.
    Address(String),
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The scheduler could not be reached.
    #[error(transparent)]
    Connect(#[from] wrun_proto::ConnectError),
    /// Arguments that do not fit the task's signature.
    #[error(transparent)]
    Arguments(#[from] ArgError),
    /// The module has no such task.
    #[error("unknown task `{name}`; the module has: {}", available.join(", "))]
    UnknownTask {
        /// The name asked for.
        name: String,
        /// The module's tasks.
        available: Vec<String>,
    },
    /// The module is not a wrun task module.
    #[error(transparent)]
    Module(#[from] wrun_abi::ModuleError),
    /// The scheduler refused a request; its message says why.
    #[error("{0}")]
    Refused(String),
    /// The connection is gone.
    #[error("disconnected from the scheduler: {0}")]
    Disconnected(String),
}

/// Why a task has no result, as the scheduler reported it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TaskFailure {
    /// A short kind: "panic", "time-limit", "dependency", "suspicious", ...
    pub kind: String,
    /// The full message (for dependencies, the first failure in the chain).
    pub message: String,
}

/// Limits and retries given to submitted tasks (defaults as in the sandbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOptions {
    /// Linear memory per task.
    pub memory_bytes: u64,
    /// Wall time per task.
    pub timeout: Duration,
    /// Fuel per task (0: none; the workers must meter fuel).
    pub fuel: u64,
    /// Result size limit.
    pub result_bytes: u64,
    /// Captured stdout kept.
    pub stdout_bytes: u64,
    /// Captured stderr kept.
    pub stderr_bytes: u64,
    /// Runs again after a task error (guest errors are deterministic: default 0).
    pub retries: u32,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            memory_bytes: 256 << 20,
            timeout: Duration::from_secs(60),
            fuel: 0,
            result_bytes: 64 << 20,
            stdout_bytes: 1 << 20,
            stderr_bytes: 1 << 20,
            retries: 0,
        }
    }
}

/// An uploaded module and its tasks.
#[derive(Debug, Clone)]
pub struct Module {
    /// Its digest.
    pub digest: ModuleDigest,
    /// Its tasks.
    pub tasks: Arc<Vec<TaskSignature>>,
}

impl Module {
    fn task(&self, name: &str) -> Result<&TaskSignature, ClientError> {
        self.tasks
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| ClientError::UnknownTask {
                name: name.to_owned(),
                available: self.tasks.iter().map(|t| t.name.clone()).collect(),
            })
    }
}

/// An argument: a JSON value, or another task's result.
#[derive(Debug, Clone)]
pub enum Argument {
    /// A value, converted to MessagePack by the parameter's type.
    Value(Json),
    /// The result of this task (it moves worker to worker, not through the client).
    Future(TaskFuture),
}

impl From<Json> for Argument {
    fn from(value: Json) -> Argument {
        Argument::Value(value)
    }
}

impl From<&TaskFuture> for Argument {
    fn from(future: &TaskFuture) -> Argument {
        Argument::Future(future.clone())
    }
}

impl From<TaskFuture> for Argument {
    fn from(future: TaskFuture) -> Argument {
        Argument::Future(future)
    }
}

/// A handle to a submitted task. Clones share it; when the last one drops,
/// the result is released on the cluster.
#[derive(Debug, Clone)]
pub struct TaskFuture {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    key: u64,
    inner: Arc<Inner>,
    detached: std::sync::atomic::AtomicBool,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.detached.load(Ordering::Relaxed) {
            return;
        }
        let first = {
            let mut releases = self
                .inner
                .releases
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            releases.push(self.key);
            releases.len() == 1
        };
        if first {
            let _ = self.inner.commands.send(Command::FlushReleases);
        }
    }
}

impl TaskFuture {
    /// The task's key in this session.
    pub fn key(&self) -> u64 {
        self.handle.key
    }
}

#[derive(Debug, Clone)]
enum TaskState {
    Pending,
    Done,
    Failed(TaskFailure),
}

#[derive(Debug, Default)]
struct Shared {
    tasks: HashMap<u64, TaskState>,
    /// Keys in the order they finished (done or failed): waiters read what
    /// is new since their last look instead of rescanning all their keys.
    finished_log: Vec<u64>,
    disconnected: Option<String>,
}

type Job = Box<dyn FnOnce(client_session::Client) -> LocalBoxFuture<'static, ()> + Send>;

enum Command {
    Call(Job),
    FlushReleases,
}

#[derive(Debug)]
struct Inner {
    commands: mpsc::UnboundedSender<Command>,
    shared: Mutex<Shared>,
    changed: Condvar,
    releases: Mutex<Vec<u64>>,
    next_key: AtomicU64,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// A connection to a wrun scheduler, with one client session.
pub struct Client {
    inner: Arc<Inner>,
    options: TaskOptions,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Listener {
    inner: Arc<Inner>,
}

impl task_listener::Server for Listener {
    async fn events(
        self: CapRc<Self>,
        params: task_listener::EventsParams,
        _: task_listener::EventsResults,
    ) -> Result<(), capnp::Error> {
        use wrun_proto::wrun_capnp::task_event::Which;
        let events = params.get()?.get_events()?;
        let mut shared = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
        for event in events.iter() {
            let state = match event.which()? {
                Which::Done(_) => TaskState::Done,
                Which::Failed(f) => TaskState::Failed(TaskFailure {
                    kind: f.get_kind()?.to_str()?.to_owned(),
                    message: f.get_message()?.to_str()?.to_owned(),
                }),
            };
            let key = event.get_key();
            shared.tasks.insert(key, state);
            shared.finished_log.push(key);
        }
        drop(shared);
        self.inner.changed.notify_all();
        Ok(())
    }
}

fn rpc_error(error: capnp::Error) -> ClientError {
    match error.kind {
        capnp::ErrorKind::Disconnected => ClientError::Disconnected(error.extra),
        _ => ClientError::Refused(error.extra),
    }
}

impl Client {
    /// Connects (waiting for the scheduler file and retrying the connection
    /// until `timeout`) and opens a session.
    pub fn connect(target: &Target, timeout: Duration) -> Result<Client, ClientError> {
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            commands: commands_tx,
            shared: Mutex::new(Shared::default()),
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
                    run_connection(
                        target,
                        timeout,
                        thread_inner,
                        commands_rx,
                        ready_tx,
                        stop_rx,
                    ),
                );
            })
            .map_err(|e| ClientError::Disconnected(e.to_string()))?;
        let mut client = Client {
            inner,
            options: TaskOptions::default(),
            thread: Some(thread),
            stop: Some(stop_tx),
        };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(client),
            Ok(Err(error)) => Err(error),
            Err(_) => {
                client.stop.take();
                Err(ClientError::Disconnected(
                    "the connection thread ended".to_owned(),
                ))
            }
        }
    }

    /// Sets the limits and retries of tasks submitted from now on.
    pub fn set_options(&mut self, options: TaskOptions) {
        self.options = options;
    }

    /// Runs `job` on the connection thread and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        job: impl FnOnce(client_session::Client) -> LocalBoxFuture<'static, Result<T, ClientError>>
        + Send
        + 'static,
    ) -> Result<T, ClientError> {
        let (tx, rx) = std_mpsc::channel();
        let command = Command::Call(Box::new(move |session| {
            Box::pin(async move {
                let _ = tx.send(job(session).await);
            })
        }));
        self.inner
            .commands
            .send(command)
            .map_err(|_| self.disconnected())?;
        rx.recv().map_err(|_| self.disconnected())?
    }

    fn disconnected(&self) -> ClientError {
        let shared = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
        ClientError::Disconnected(
            shared
                .disconnected
                .clone()
                .unwrap_or_else(|| "the connection ended".to_owned()),
        )
    }

    /// Uploads a module (skipped when the cluster has it) and reads its tasks.
    pub fn upload(&self, bytes: &[u8]) -> Result<Module, ClientError> {
        let tasks = wrun_abi::read_task_signatures(bytes)?;
        let digest = ModuleDigest::of(bytes);
        let bytes = bytes.to_vec();
        self.call(move |session| {
            Box::pin(async move {
                let mut request = session.has_module_request();
                request.get().set_digest(&digest.0);
                let known = request
                    .send()
                    .promise
                    .await
                    .map_err(rpc_error)?
                    .get()
                    .map_err(rpc_error)?
                    .get_known();
                if !known {
                    let mut offset = 0usize;
                    loop {
                        let end = (offset + wrun_proto::CHUNK_BYTES).min(bytes.len());
                        let mut request = session.upload_module_request();
                        let mut p = request.get();
                        p.set_digest(&digest.0);
                        p.set_offset(offset as u64);
                        p.set_total(bytes.len() as u64);
                        p.set_data(&bytes[offset..end]);
                        let response = request.send().promise.await.map_err(rpc_error)?;
                        offset = end;
                        if response.get().map_err(rpc_error)?.get_complete() {
                            break;
                        }
                        if offset >= bytes.len() {
                            return Err(ClientError::Refused(
                                "the scheduler did not accept the module".to_owned(),
                            ));
                        }
                    }
                }
                Ok(())
            })
        })?;
        Ok(Module {
            digest,
            tasks: Arc::new(tasks),
        })
    }

    fn new_key(&self) -> u64 {
        self.inner.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Encodes one submission; literal arguments are checked against the signature.
    fn encode(
        &self,
        module: &Module,
        task: &str,
        args: &[ArgRef<'_>],
        key: u64,
    ) -> Result<Submission, ClientError> {
        let signature = module.task(task)?;
        if args.len() != signature.params.len() {
            return Err(ArgError::Count {
                signature: signature.to_string(),
                expected: signature.params.len(),
                given: args.len(),
            }
            .into());
        }
        let mut encoded = Vec::with_capacity(args.len());
        for (arg, param) in args.iter().zip(&signature.params) {
            encoded.push(match arg {
                ArgRef::Value(json) => {
                    let value = wrun_abi::json_to_value(&param.ty, json).map_err(|mismatch| {
                        ArgError::Type {
                            task: task.to_owned(),
                            param: param.name.clone(),
                            mismatch: mismatch.to_string(),
                        }
                    })?;
                    let bytes = wrun_abi::encode_value(&value);
                    if bytes.len() > MAX_INLINE_ARGUMENT {
                        return Err(ClientError::Refused(format!(
                            "argument `{}` of task `{task}` is {} bytes; values passed inline are limited to {} bytes: \
                             produce large inputs with a task and pass its future instead",
                            param.name,
                            bytes.len(),
                            MAX_INLINE_ARGUMENT
                        )));
                    }
                    SubmitArg::Value(bytes)
                }
                ArgRef::Key(key) => SubmitArg::Result(*key),
            });
        }
        Ok(Submission {
            key,
            module: module.digest,
            task: task.to_owned(),
            args: encoded,
            options: self.options.clone(),
        })
    }

    fn send_submissions(&self, submissions: Vec<Submission>) -> Result<(), ClientError> {
        {
            let mut shared = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
            for s in &submissions {
                shared.tasks.insert(s.key, TaskState::Pending);
            }
        }
        let keys: Vec<u64> = submissions.iter().map(|s| s.key).collect();
        let result = self.call(move |session| {
            Box::pin(async move {
                let mut request = session.submit_request();
                let mut list = request.get().init_tasks(submissions.len() as u32);
                for (i, s) in submissions.iter().enumerate() {
                    let mut t = list.reborrow().get(i as u32);
                    t.set_key(s.key);
                    t.set_module(&s.module.0);
                    t.set_task(&s.task);
                    t.set_retries(s.options.retries);
                    let mut l = t.reborrow().init_limits();
                    l.set_memory_bytes(s.options.memory_bytes);
                    l.set_timeout_ms(s.options.timeout.as_millis() as u64);
                    l.set_fuel(s.options.fuel);
                    l.set_result_bytes(s.options.result_bytes);
                    l.set_stdout_bytes(s.options.stdout_bytes);
                    l.set_stderr_bytes(s.options.stderr_bytes);
                    let mut args = t.init_args(s.args.len() as u32);
                    for (j, arg) in s.args.iter().enumerate() {
                        match arg {
                            SubmitArg::Value(bytes) => {
                                args.reborrow().get(j as u32).set_value(bytes)
                            }
                            SubmitArg::Result(key) => {
                                args.reborrow().get(j as u32).set_result(*key)
                            }
                        }
                    }
                }
                request.send().promise.await.map_err(rpc_error)?;
                Ok(())
            })
        });
        if result.is_err() {
            let mut shared = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
            for key in keys {
                shared.tasks.remove(&key);
            }
        }
        result
    }

    fn future(&self, key: u64) -> TaskFuture {
        TaskFuture {
            handle: Arc::new(Handle {
                key,
                inner: self.inner.clone(),
                detached: false.into(),
            }),
        }
    }

    /// Submits one task.
    pub fn submit(
        &self,
        module: &Module,
        task: &str,
        args: Vec<Argument>,
    ) -> Result<TaskFuture, ClientError> {
        let key = self.new_key();
        let submission = self.encode(module, task, &arg_refs(&args), key)?;
        self.send_submissions(vec![submission])?;
        Ok(self.future(key))
    }

    /// Submits `task` once per argument list, in one message; futures in order.
    pub fn map(
        &self,
        module: &Module,
        task: &str,
        calls: Vec<Vec<Argument>>,
    ) -> Result<Vec<TaskFuture>, ClientError> {
        let mut submissions = Vec::with_capacity(calls.len());
        for args in &calls {
            submissions.push(self.encode(module, task, &arg_refs(args), self.new_key())?);
        }
        let keys: Vec<u64> = submissions.iter().map(|s| s.key).collect();
        // Messages stay far below the peers' 16 MiB reader limit.
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for submission in submissions {
            let size = submission.encoded_size();
            if !batch.is_empty()
                && (batch.len() >= 10_000 || batch_bytes + size > SUBMIT_BATCH_BYTES)
            {
                self.send_submissions(std::mem::take(&mut batch))?;
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push(submission);
        }
        if !batch.is_empty() {
            self.send_submissions(batch)?;
        }
        Ok(keys.into_iter().map(|k| self.future(k)).collect())
    }

    /// Waits until every future is done or failed; `Err` for the failed ones.
    pub fn wait(
        &self,
        futures: &[TaskFuture],
    ) -> Result<Vec<Result<(), TaskFailure>>, ClientError> {
        self.wait_with_progress(futures, |_, _| {})
    }

    /// Like [`Client::wait`], calling `progress(finished, total)` as tasks end.
    pub fn wait_with_progress(
        &self,
        futures: &[TaskFuture],
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Vec<Result<(), TaskFailure>>, ClientError> {
        let mut shared = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending: std::collections::HashSet<u64> = futures
            .iter()
            .map(TaskFuture::key)
            .filter(|key| matches!(shared.tasks.get(key), Some(TaskState::Pending)))
            .collect();
        let mut cursor = shared.finished_log.len();
        let total = futures.len();
        let mut last = usize::MAX;
        loop {
            for key in &shared.finished_log[cursor..] {
                pending.remove(key);
            }
            cursor = shared.finished_log.len();
            let finished = total - pending.len().min(total);
            if finished != last {
                progress(finished, total);
                last = finished;
            }
            if pending.is_empty() {
                break;
            }
            if let Some(reason) = &shared.disconnected {
                return Err(ClientError::Disconnected(reason.clone()));
            }
            shared = self
                .inner
                .changed
                .wait_timeout(shared, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(futures
            .iter()
            .map(|f| match shared.tasks.get(&f.key()) {
                Some(TaskState::Failed(failure)) => Err(failure.clone()),
                _ => Ok(()),
            })
            .collect())
    }

    /// Waits for the tasks and fetches their results (MessagePack).
    pub fn gather_raw(
        &self,
        futures: &[TaskFuture],
    ) -> Result<Vec<Result<Vec<u8>, TaskFailure>>, ClientError> {
        let states = self.wait(futures)?;
        let wanted: Vec<u64> = futures
            .iter()
            .zip(&states)
            .filter(|(_, s)| s.is_ok())
            .map(|(f, _)| f.key())
            .collect();
        let mut values = self.call(move |session| {
            Box::pin(async move {
                use wrun_proto::wrun_capnp::value::Which;
                let mut map = HashMap::with_capacity(wanted.len());
                let mut one_by_one = Vec::new();
                // Small results in batches: one round trip per 4096.
                for batch in wanted.chunks(4096) {
                    let mut request = session.fetch_many_request();
                    let mut list = request.get().init_keys(batch.len() as u32);
                    for (i, key) in batch.iter().enumerate() {
                        list.set(i as u32, *key);
                    }
                    let response = request.send().promise.await.map_err(rpc_error)?;
                    let values = response
                        .get()
                        .and_then(|r| r.get_values())
                        .map_err(rpc_error)?;
                    for (key, value) in batch.iter().zip(values.iter()) {
                        match value
                            .which()
                            .map_err(|e| ClientError::Refused(e.to_string()))?
                        {
                            Which::Data(data) => {
                                map.insert(*key, data.map_err(rpc_error)?.to_vec());
                            }
                            // Large, or not available right now (e.g. being
                            // recomputed after a worker died): read it alone.
                            Which::Large(_) | Which::Missing(_) => one_by_one.push(*key),
                        }
                    }
                }
                let fetches = futures::stream::iter(one_by_one.into_iter().map(|key| {
                    let session = session.clone();
                    async move {
                        let value = fetch_chunked(|offset| {
                            let mut request = session.fetch_request();
                            request.get().set_key(key);
                            request.get().set_offset(offset);
                            request.send().promise
                        })
                        .await;
                        (key, value)
                    }
                }))
                .buffered(64)
                .collect::<Vec<_>>()
                .await;
                for (key, value) in fetches {
                    map.insert(key, value.map_err(rpc_error)?);
                }
                Ok(map)
            })
        })?;
        Ok(futures
            .iter()
            .zip(states)
            .map(|(f, state)| state.map(|()| values.remove(&f.key()).unwrap_or_default()))
            .collect())
    }

    /// Waits for the tasks and returns their results as JSON.
    pub fn gather(
        &self,
        futures: &[TaskFuture],
    ) -> Result<Vec<Result<Json, TaskFailure>>, ClientError> {
        Ok(self
            .gather_raw(futures)?
            .into_iter()
            .map(|r| {
                r.and_then(|bytes| {
                    wrun_abi::decode_value(&bytes)
                        .map(|v| wrun_abi::value_to_json(&v))
                        .map_err(|message| TaskFailure {
                            kind: "bad-result".to_owned(),
                            message,
                        })
                })
            })
            .collect())
    }

    /// The cluster's status as JSON (workers, tasks, queue).
    pub fn status(&self) -> Result<Json, ClientError> {
        let text = self.call(|session| {
            Box::pin(async move {
                let response = session
                    .status_request()
                    .send()
                    .promise
                    .await
                    .map_err(rpc_error)?;
                response
                    .get()
                    .map_err(rpc_error)?
                    .get_json()
                    .map_err(rpc_error)?
                    .to_string()
                    .map_err(|e| ClientError::Refused(e.to_string()))
            })
        })?;
        serde_json::from_str(&text).map_err(|e| ClientError::Refused(e.to_string()))
    }

    /// A finished task's captured stdout and stderr.
    pub fn logs(&self, future: &TaskFuture) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        let key = future.key();
        self.call(move |session| {
            Box::pin(async move {
                let mut request = session.logs_request();
                request.get().set_key(key);
                let response = request.send().promise.await.map_err(rpc_error)?;
                let r = response.get().map_err(rpc_error)?;
                Ok((
                    r.get_stdout().map_err(rpc_error)?.to_vec(),
                    r.get_stderr().map_err(rpc_error)?.to_vec(),
                ))
            })
        })
    }

    /// Hands `futures` to the scheduler as a job named `job` (a new name when
    /// empty) that outlives this session; returns the job's name. The handles
    /// are consumed without releasing anything.
    pub fn detach(&self, futures: Vec<TaskFuture>, job: &str) -> Result<String, ClientError> {
        let keys: Vec<u64> = futures.iter().map(TaskFuture::key).collect();
        let job = job.to_owned();
        let name = self.call(move |session| {
            Box::pin(async move {
                let mut request = session.detach_request();
                let mut list = request.get().init_keys(keys.len() as u32);
                for (i, key) in keys.iter().enumerate() {
                    list.set(i as u32, *key);
                }
                request.get().set_job(&job);
                let response = request.send().promise.await.map_err(rpc_error)?;
                let name = response
                    .get()
                    .and_then(|r| r.get_job())
                    .map_err(rpc_error)?;
                name.to_string()
                    .map_err(|e| ClientError::Refused(e.to_string()))
            })
        })?;
        for future in futures {
            future.forget();
        }
        Ok(name)
    }

    /// Takes a detached job into this session: its futures, in submission order.
    pub fn adopt(&self, job: &str) -> Result<Vec<TaskFuture>, ClientError> {
        use wrun_proto::wrun_capnp::task_event::Which;
        let job = job.to_owned();
        let (keys, finished) = self.call(move |session| {
            Box::pin(async move {
                let mut request = session.adopt_request();
                request.get().set_job(&job);
                let response = request.send().promise.await.map_err(rpc_error)?;
                let r = response.get().map_err(rpc_error)?;
                let keys: Vec<u64> = r.get_keys().map_err(rpc_error)?.iter().collect();
                let mut finished = Vec::new();
                for event in r.get_finished().map_err(rpc_error)?.iter() {
                    let state = match event
                        .which()
                        .map_err(|e| ClientError::Refused(e.to_string()))?
                    {
                        Which::Done(_) => TaskState::Done,
                        Which::Failed(f) => TaskState::Failed(TaskFailure {
                            kind: f
                                .get_kind()
                                .map_err(rpc_error)?
                                .to_string()
                                .unwrap_or_default(),
                            message: f
                                .get_message()
                                .map_err(rpc_error)?
                                .to_string()
                                .unwrap_or_default(),
                        }),
                    };
                    finished.push((event.get_key(), state));
                }
                Ok((keys, finished))
            })
        })?;
        {
            let mut shared = self.inner.shared.lock().unwrap_or_else(|p| p.into_inner());
            for key in &keys {
                shared.tasks.entry(*key).or_insert(TaskState::Pending);
            }
            for (key, state) in finished {
                shared.tasks.insert(key, state);
                shared.finished_log.push(key);
            }
        }
        // Keys this session makes from now on must not collide with adopted ones.
        if let Some(max) = keys.iter().max() {
            self.inner.next_key.fetch_max(max + 1, Ordering::Relaxed);
        }
        Ok(keys.into_iter().map(|key| self.future(key)).collect())
    }

    /// Cancels tasks: stops them (and what depends on them) and frees their results.
    pub fn cancel(&self, futures: Vec<TaskFuture>) -> Result<(), ClientError> {
        let keys: Vec<u64> = futures.iter().map(TaskFuture::key).collect();
        self.call(move |session| {
            Box::pin(async move {
                let mut request = session.cancel_request();
                let mut list = request.get().init_keys(keys.len() as u32);
                for (i, key) in keys.iter().enumerate() {
                    list.set(i as u32, *key);
                }
                request.send().promise.await.map_err(rpc_error)?;
                Ok(())
            })
        })?;
        for future in futures {
            future.forget();
        }
        Ok(())
    }

    /// A lazy task graph on this client: nothing runs until [`Graph::compute`].
    pub fn graph(&self) -> Graph<'_> {
        Graph {
            client: self,
            nodes: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
enum SubmitArg {
    Value(Vec<u8>),
    Result(u64),
}

/// Bytes of submissions per message.
const SUBMIT_BATCH_BYTES: usize = 4 << 20;
/// The largest argument passed by value (inside the submit message).
const MAX_INLINE_ARGUMENT: usize = 8 << 20;

impl Submission {
    /// Roughly what the submission takes in a message.
    fn encoded_size(&self) -> usize {
        64 + self.task.len()
            + self
                .args
                .iter()
                .map(|a| match a {
                    SubmitArg::Value(bytes) => 16 + bytes.len(),
                    SubmitArg::Result(_) => 16,
                })
                .sum::<usize>()
    }
}

#[derive(Debug, Clone)]
struct Submission {
    key: u64,
    module: ModuleDigest,
    task: String,
    args: Vec<SubmitArg>,
    options: TaskOptions,
}

/// A node of a [`Graph`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delayed(usize);

/// An argument of a graph node.
#[derive(Debug, Clone)]
pub enum GraphArg {
    /// A literal JSON value.
    Value(Json),
    /// Another node's result.
    Node(Delayed),
}

impl From<Json> for GraphArg {
    fn from(value: Json) -> GraphArg {
        GraphArg::Value(value)
    }
}

impl From<Delayed> for GraphArg {
    fn from(node: Delayed) -> GraphArg {
        GraphArg::Node(node)
    }
}

/// A lazy graph, in the style of `dask.delayed`: calls build nodes, and
/// `compute` submits them all in one message and gathers the outputs.
pub struct Graph<'c> {
    client: &'c Client,
    nodes: Vec<(Module, String, Vec<GraphArg>)>,
}

impl Graph<'_> {
    /// Adds a call of `task` to the graph. Arguments may be earlier nodes.
    pub fn call(&mut self, module: &Module, task: &str, args: Vec<GraphArg>) -> Delayed {
        self.nodes.push((module.clone(), task.to_owned(), args));
        Delayed(self.nodes.len() - 1)
    }

    /// Submits every node, waits for `outputs` and returns their results;
    /// intermediate results are released when done.
    pub fn compute(
        self,
        outputs: &[Delayed],
    ) -> Result<Vec<Result<Json, TaskFailure>>, ClientError> {
        let client = self.client;
        let keys: Vec<u64> = (0..self.nodes.len()).map(|_| client.new_key()).collect();
        let mut submissions = Vec::with_capacity(self.nodes.len());
        let mut futures = Vec::with_capacity(self.nodes.len());
        for (index, (module, task, args)) in self.nodes.iter().enumerate() {
            let args: Vec<ArgRef<'_>> = args
                .iter()
                .map(|arg| match arg {
                    GraphArg::Value(json) => ArgRef::Value(json),
                    GraphArg::Node(Delayed(i)) => ArgRef::Key(keys[*i]),
                })
                .collect();
            submissions.push(client.encode(module, task, &args, keys[index])?);
        }
        client.send_submissions(submissions)?;
        for key in &keys {
            futures.push(client.future(*key));
        }
        let wanted: Vec<TaskFuture> = outputs
            .iter()
            .map(|Delayed(i)| futures[*i].clone())
            .collect();
        client.gather(&wanted)
    }
}

impl TaskFuture {
    /// Drops this handle, and makes every clone drop without releasing the
    /// task: it was detached or cancelled, so it is not ours to release.
    fn forget(self) {
        self.handle.detached.store(true, Ordering::Relaxed);
    }
}

/// An argument as `encode` reads it: a value, or a task by key.
enum ArgRef<'a> {
    Value(&'a Json),
    Key(u64),
}

fn arg_refs(args: &[Argument]) -> Vec<ArgRef<'_>> {
    args.iter()
        .map(|arg| match arg {
            Argument::Value(json) => ArgRef::Value(json),
            Argument::Future(future) => ArgRef::Key(future.key()),
        })
        .collect()
}

async fn run_connection(
    target: Target,
    timeout: Duration,
    inner: Arc<Inner>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    ready: std_mpsc::Sender<Result<(), ClientError>>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let connected = async {
        let address = match &target {
            Target::File(path) => SchedulerFile::wait_for(path, timeout).await?.address,
            Target::Address(address) => address.clone(),
        };
        let stream = wrun_proto::connect_with_retry(&address, timeout).await?;
        let mut rpc = wrun_proto::rpc_system(stream, Side::Client, None);
        let cluster: cluster::Client = rpc.bootstrap(Side::Server);
        let disconnector = rpc.get_disconnector();
        let rpc_inner = inner.clone();
        tokio::task::spawn_local(async move {
            let reason = match rpc.await {
                Ok(()) => "the scheduler closed the connection".to_owned(),
                Err(error) => error.to_string(),
            };
            rpc_inner
                .shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .disconnected = Some(reason);
            rpc_inner.changed.notify_all();
        });
        let mut request = cluster.connect_client_request();
        request.get().set_token("");
        request.get().set_listener(capnp_rpc::new_client(Listener {
            inner: inner.clone(),
        }));
        let response = request.send().promise.await.map_err(rpc_error)?;
        let session = response
            .get()
            .and_then(|r| r.get_session())
            .map_err(rpc_error)?;
        Ok::<_, ClientError>((session, disconnector))
    };
    let (session, disconnector) = match connected.await {
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
                Some(Command::FlushReleases) => {
                    let keys = std::mem::take(&mut *inner.releases.lock().unwrap_or_else(|p| p.into_inner()));
                    if keys.is_empty() {
                        continue;
                    }
                    {
                        let mut shared = inner.shared.lock().unwrap_or_else(|p| p.into_inner());
                        for key in &keys {
                            shared.tasks.remove(key);
                        }
                    }
                    let mut request = session.release_request();
                    let mut list = request.get().init_keys(keys.len() as u32);
                    for (i, key) in keys.iter().enumerate() {
                        list.set(i as u32, *key);
                    }
                    tokio::task::spawn_local(async move {
                        let _ = request.send().promise.await;
                    });
                }
            }
        }
    }
    drop(session);
    let _ = disconnector.await;
}

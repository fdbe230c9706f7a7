//! The [`Client`]: one connection and one session, with a blocking API.
//! Its methods live beside this file by concept: `upload.rs`, `submit.rs`,
//! `task_future.rs` (waiting), `gather.rs`, `graph.rs`, `jobs.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use wrun_proto::TaskKey;
use wrun_proto::status::ClusterStatus;
use wrun_proto::wrun_capnp::client_session;

use crate::connection::{self, Command, Credentials, Inner, Target};
use crate::error::{ClientError, rpc_error};
use crate::submit::TaskOptions;
use crate::task_future::TaskFuture;

/// Times a call is made before its loss of connection is the answer.
const MAX_ATTEMPTS: u32 = 5;

/// A connection to a wrun scheduler, with one client session.
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    pub(crate) options: TaskOptions,
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

impl Client {
    /// Connects (waiting for the scheduler file and retrying the connection
    /// until `timeout`) and opens a session with the scheduler file's token
    /// (a cluster without tenants) or its cluster secret (the operator).
    pub fn connect(target: &Target, timeout: Duration) -> Result<Client, ClientError> {
        Client::connect_with(target, Credentials::default(), timeout)
    }

    /// [`Client::connect`] with a tenant's token and, for a
    /// [`Target::Address`], the scheduler's certificate; both take
    /// precedence over a scheduler file's.
    pub fn connect_with(
        target: &Target,
        credentials: Credentials,
        timeout: Duration,
    ) -> Result<Client, ClientError> {
        let connection = connection::start(target, credentials, timeout)?;
        Ok(Client {
            inner: connection.inner,
            options: TaskOptions::default(),
            thread: Some(connection.thread),
            stop: Some(connection.stop),
        })
    }

    /// Sets the limits and retries of tasks submitted from now on.
    pub fn set_options(&mut self, options: TaskOptions) {
        self.options = options;
    }

    /// Runs `job` on the connection thread and waits for its answer. A job
    /// cut off by the loss of a scheduler that keeps a journal runs again,
    /// whole, on the resumed session (at most [`MAX_ATTEMPTS`] times).
    pub(crate) fn call<T: Send + 'static>(
        &self,
        job: impl Fn(client_session::Client) -> LocalBoxFuture<'static, Result<T, ClientError>>
        + Send
        + Sync
        + 'static,
    ) -> Result<T, ClientError> {
        let (tx, rx) = std_mpsc::channel();
        let inner = self.inner.clone();
        let attempts = std::sync::atomic::AtomicU32::new(0);
        let command = Command::Call(Arc::new(move |session| {
            let tx = tx.clone();
            let future = job(session);
            let again = inner.resumable.load(Ordering::Relaxed)
                && attempts.fetch_add(1, Ordering::Relaxed) + 1 < MAX_ATTEMPTS;
            Box::pin(async move {
                let result = future.await;
                if again && matches!(result, Err(ClientError::Disconnected(_))) {
                    return true;
                }
                let _ = tx.send(result);
                false
            })
        }));
        self.inner
            .commands
            .send(command)
            .map_err(|_| self.disconnected())?;
        rx.recv().map_err(|_| self.disconnected())?
    }

    pub(crate) fn disconnected(&self) -> ClientError {
        ClientError::Disconnected(
            self.inner
                .table()
                .disconnected
                .clone()
                .unwrap_or_else(|| "the connection ended".to_owned()),
        )
    }

    pub(crate) fn new_key(&self) -> TaskKey {
        TaskKey(self.inner.next_key.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn future(&self, key: TaskKey) -> TaskFuture {
        TaskFuture::new(key, self.inner.clone())
    }

    /// The cluster's status: workers, tasks by state, jobs.
    pub fn status(&self) -> Result<ClusterStatus, ClientError> {
        self.call(|session| {
            Box::pin(async move {
                let response = session
                    .status_request()
                    .send()
                    .promise
                    .await
                    .map_err(rpc_error)?;
                ClusterStatus::read(
                    response
                        .get()
                        .and_then(|r| r.get_status())
                        .map_err(rpc_error)?,
                )
                .map_err(rpc_error)
            })
        })
    }
}

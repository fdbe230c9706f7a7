//! `WorkerControl`: how the scheduler commands this worker. Run batches of
//! assignments (preparing those whose module or inputs must be fetched
//! first), give back queued tasks (steal), cancel, free results, answer
//! fetches, copy results from retiring peers, and shut down.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use capnp::capability::Rc as CapRc;
use futures::FutureExt;
use futures::future::{LocalBoxFuture, Shared};
use tracing::{debug, info};
use wrun_abi::ModuleDigest;
use wrun_proto::wrun_capnp::{worker_control, worker_session};
use wrun_proto::{TaskId, fetch_chunked};

use crate::inputs::{Pending, PendingInput};
use crate::outbox::{Event, Transfer, unix_micros};
use crate::peers::{Peers, fill_chunk};
use crate::queue::{Cancelled, Job};
use crate::state::WorkerState;

/// The most value bytes one batched fetch answers with; the rest come back
/// as `large` and are read in chunks (messages stay far below the reader limit).
const BATCH_BYTES: usize = 4 << 20;

type ModuleFetch = Shared<LocalBoxFuture<'static, Result<(), String>>>;

pub(crate) struct ControlImpl {
    pub(crate) state: Arc<WorkerState>,
    /// The worker's session, once registered (the scheduler may send work
    /// before the registration call returns).
    pub(crate) session: tokio::sync::watch::Receiver<Option<worker_session::Client>>,
    pub(crate) module_fetches: RefCell<HashMap<ModuleDigest, ModuleFetch>>,
    pub(crate) peers: Peers,
    pub(crate) shutdown: Rc<tokio::sync::Notify>,
}

/// The worker's session, once it has registered.
async fn registered(
    mut session: tokio::sync::watch::Receiver<Option<worker_session::Client>>,
) -> Result<worker_session::Client, String> {
    Ok(session
        .wait_for(Option::is_some)
        .await
        .map_err(|_| "the worker stopped before registering".to_owned())?
        .clone()
        .expect("waited for Some"))
}

impl ControlImpl {
    /// Reads a value put with `putValue` from the scheduler, and checks it.
    async fn fetch_value(&self, digest: ModuleDigest) -> Result<Vec<u8>, String> {
        let session = registered(self.session.clone()).await?;
        let bytes = fetch_chunked(|offset| {
            let mut request = session.fetch_value_request();
            request.get().set_digest(&digest.0);
            request.get().set_offset(offset);
            request.send().promise
        })
        .await
        .map_err(|e| format!("fetching a stored argument from the scheduler: {e}"))?;
        if ModuleDigest::of(&bytes) != digest {
            return Err("the scheduler sent a stored value with another digest".to_owned());
        }
        Ok(bytes)
    }

    /// Makes sure the module is here: fetched from the scheduler once, by
    /// however many assignments need it meanwhile.
    fn module_fetch(&self, digest: ModuleDigest) -> ModuleFetch {
        if let Some(fetch) = self.module_fetches.borrow().get(&digest) {
            return fetch.clone();
        }
        let session = self.session.clone();
        let state = self.state.clone();
        let fetch = async move {
            if state.modules.get(&digest).is_some() {
                return Ok(());
            }
            let session = registered(session).await?;
            let bytes = fetch_chunked(|offset| {
                let mut request = session.fetch_module_request();
                request.get().set_digest(&digest.0);
                request.get().set_offset(offset);
                request.send().promise
            })
            .await
            .map_err(|e| format!("fetching the module: {e}"))?;
            if ModuleDigest::of(&bytes) != digest {
                return Err("the scheduler sent a module with another digest".to_owned());
            }
            state.modules.insert(digest, Arc::new(bytes));
            Ok(())
        }
        .boxed_local()
        .shared();
        self.module_fetches
            .borrow_mut()
            .insert(digest, fetch.clone());
        fetch
    }
}

/// How long a staged task waits for an input a peer is making. Past it the
/// task fails before running, and the scheduler (which does not count
/// that against it) places it again once its inputs are done.
const STAGED_INPUT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Fetches what an assignment lacks, then queues it (unless it was
/// cancelled meanwhile); a failure fails the task.
fn prepare(control: &CapRc<ControlImpl>, mut pending: Pending<'static>) {
    {
        let task = pending.task;
        control.state.queue.preparing(task);
        let this = control.clone();
        tokio::task::spawn_local(async move {
            let prepared = async {
                this.module_fetch(pending.digest).await?;
                // Large literals come from the scheduler, and become plain
                // values of this assignment.
                for input in &mut pending.inputs {
                    if let PendingInput::Stored(digest) = input {
                        let bytes = this.fetch_value(*digest).await?;
                        *input = PendingInput::Value(std::borrow::Cow::Owned(bytes));
                    }
                }
                let mut remote = HashMap::new();
                let mut transfer = Transfer {
                    start_us: unix_micros(),
                    ..Transfer::default()
                };
                // A staged task's input may still be being made by its peer,
                // which answers when it is.
                let wait = if pending.wait_for_inputs {
                    STAGED_INPUT_WAIT
                } else {
                    std::time::Duration::ZERO
                };
                for input in &pending.inputs {
                    if let PendingInput::Remote(remote_input) = input {
                        let (dep, address) = (&remote_input.task, &remote_input.address);
                        let started = std::time::Instant::now();
                        let value = this
                            .peers
                            .fetch(
                                (address, &remote_input.certificate),
                                *dep,
                                &remote_input.ticket,
                                wait,
                            )
                            .await
                            .map_err(|e| format!("fetching input {dep} from {address}: {e}"))?;
                        info!(
                            target: "wrun_worker::transfer",
                            task = dep.0,
                            bytes = value.len(),
                            micros = started.elapsed().as_micros() as u64,
                            "fetched an input from a peer"
                        );
                        transfer.bytes += value.len() as u64;
                        remote.insert(*dep, value);
                    }
                }
                if remote.is_empty() {
                    transfer = Transfer::default();
                } else {
                    transfer.end_us = unix_micros();
                }
                pending
                    .assemble(&this.state.results, &remote)
                    .map(|job| Job { transfer, ..job })
            }
            .await;
            match prepared {
                Ok(job) => {
                    this.state.queue.push_when_ready(job, &this.state.results);
                }
                Err(message) => {
                    debug!(%task, "preparing failed: {message}");
                    this.state.queue.abandon(task);
                    this.state
                        .events
                        .push(Event::failed_before_running(task, "host", message), true);
                }
            }
        });
    }
}

fn task_ids(list: capnp::primitive_list::Reader<'_, u64>) -> impl Iterator<Item = TaskId> + '_ {
    list.iter().map(TaskId)
}

impl worker_control::Server for ControlImpl {
    async fn run(
        self: CapRc<Self>,
        params: worker_control::RunParams,
        _: worker_control::RunResults,
    ) -> Result<(), capnp::Error> {
        let tasks = params.get()?.get_tasks()?;
        for assignment in tasks.iter() {
            let pending = match Pending::decode(assignment) {
                Ok(pending) => pending,
                Err((task, message)) => {
                    self.state
                        .events
                        .push(Event::failed_before_running(task, "host", message), true);
                    continue;
                }
            };
            if pending.all_local() && self.state.modules.get(&pending.digest).is_some() {
                // The common case: no waiting, and the queue keeps assignment order.
                let task = pending.task;
                match pending.assemble(&self.state.results, &HashMap::new()) {
                    Ok(job) => {
                        self.state.queue.push_when_ready(job, &self.state.results);
                    }
                    Err(message) => self
                        .state
                        .events
                        .push(Event::failed_before_running(task, "host", message), true),
                }
                continue;
            }
            prepare(&self, pending.into_owned());
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
        for copy in params.get()?.get_copies()?.iter() {
            let task = TaskId(copy.get_task());
            let address = copy.get_address()?.to_str()?.to_owned();
            let ticket = copy.get_ticket()?.to_vec();
            let certificate = copy.get_certificate()?.to_vec();
            let this = self.clone();
            tokio::task::spawn_local(async move {
                let ok = match this
                    .peers
                    .fetch(
                        (&address, &certificate),
                        task,
                        &ticket,
                        std::time::Duration::ZERO,
                    )
                    .await
                {
                    Ok(value) => match this.state.results.insert(task, value) {
                        Ok(()) => {
                            this.state.queue.made(task);
                            true
                        }
                        Err(error) => {
                            debug!(%task, "no room for a copy from a retiring peer: {error}");
                            false
                        }
                    },
                    Err(error) => {
                        debug!(%task, "copying from a retiring peer at {address} failed: {error}");
                        false
                    }
                };
                this.state.events.push(Event::Replicated(task, ok), true);
            });
        }
        Ok(())
    }

    async fn steal(
        self: CapRc<Self>,
        params: worker_control::StealParams,
        _: worker_control::StealResults,
    ) -> Result<(), capnp::Error> {
        for task in task_ids(params.get()?.get_tasks()?) {
            let given_back = self.state.queue.steal(task);
            if given_back {
                self.state.awaited.ended(task);
            }
            self.state
                .events
                .push(Event::Stolen(task, given_back), true);
        }
        Ok(())
    }

    async fn cancel(
        self: CapRc<Self>,
        params: worker_control::CancelParams,
        _: worker_control::CancelResults,
    ) -> Result<(), capnp::Error> {
        for task in task_ids(params.get()?.get_tasks()?) {
            // Queued: gone; running: stopped within a tick; being prepared:
            // dropped when ready.
            // A result it made already stays: the scheduler may have
            // taken its report (still on the way) for the task's next
            // assignment, here, by the time it comes.
            match self.state.queue.cancel(task) {
                Cancelled::Dequeued | Cancelled::Unknown => self.state.awaited.ended(task),
                Cancelled::Interrupted | Cancelled::WhilePreparing => {}
            }
        }
        Ok(())
    }

    async fn free(
        self: CapRc<Self>,
        params: worker_control::FreeParams,
        _: worker_control::FreeResults,
    ) -> Result<(), capnp::Error> {
        self.state
            .results
            .free(task_ids(params.get()?.get_tasks()?));
        Ok(())
    }

    async fn fetch(
        self: CapRc<Self>,
        params: worker_control::FetchParams,
        mut results: worker_control::FetchResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let (task, offset) = (TaskId(params.get_task()), params.get_offset());
        fill_chunk(&self.state, task, offset, results.get().init_chunk()).await
    }

    async fn fetch_many(
        self: CapRc<Self>,
        params: worker_control::FetchManyParams,
        mut results: worker_control::FetchManyResults,
    ) -> Result<(), capnp::Error> {
        let tasks = params.get()?.get_tasks()?;
        let mut values = results.get().init_values(tasks.len());
        let mut total = 0u64;
        for (i, task) in task_ids(tasks).enumerate() {
            let mut value = values.reborrow().get(i as u32);
            match self.state.results.get(task) {
                None => value.set_missing("no such result on this worker"),
                Some(held) if total + held.len() > BATCH_BYTES as u64 => {
                    value.set_large(held.len())
                }
                // A spilled value is read back here: small ones only (the
                // whole answer is at most BATCH_BYTES).
                Some(held) => match held.bytes() {
                    Ok(bytes) => {
                        total += held.len();
                        value.set_data(&bytes);
                    }
                    Err(error) => {
                        value.set_missing(format!("reading the result back from disk: {error}"))
                    }
                },
            }
        }
        Ok(())
    }
}

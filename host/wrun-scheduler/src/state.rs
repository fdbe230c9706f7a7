//! The scheduler's state: the core, the connected workers and clients, the
//! modules, the logs and jobs, and the [`Outbox`] that gathers the core's
//! decisions until the handler that caused them ends.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use tokio::sync::mpsc;
use tracing::{debug, info};
use wrun_core::{ClientId, Comm, Core, Failure, TaskId, TaskSpec, TenantId, WorkerId};
use wrun_proto::TaskKey;
use wrun_proto::wrun_capnp::{task_listener, worker_control};

use crate::jobs::Jobs;
use crate::modules::{ModuleEntry, ModuleRegistry};
use crate::tenants::{OPERATOR_ID, TaskCaps, Tenants};

/// What travels with a task to the worker; the core does not read it.
#[derive(Clone)]
pub(crate) struct Payload {
    pub(crate) template: Rc<Template>,
    /// The client's key of this task (events name tasks by key).
    pub(crate) key: TaskKey,
}

/// What tasks of one submission share: one allocation for a whole map.
pub(crate) struct Template {
    pub(crate) module: Rc<ModuleEntry>,
    /// Shared, not copied, by every run of it the task stream records.
    pub(crate) name: std::sync::Arc<str>,
    pub(crate) limits: wrun_proto::TaskLimits,
}

/// A registered worker: the capability to command it and what it told us.
pub(crate) struct WorkerConn {
    pub(crate) control: worker_control::Client,
    pub(crate) name: String,
    /// How the task stream names it (its name, or its id if it has none).
    pub(crate) label: std::sync::Arc<str>,
    pub(crate) threads: u32,
    pub(crate) memory_bytes: u64,
    pub(crate) peer_address: String,
    pub(crate) pid: u32,
    pub(crate) slurm_job_id: String,
    pub(crate) end_time_ms: u64,
    /// The certificate its peer port presents (DER; empty: plain).
    pub(crate) peer_certificate: Vec<u8>,
    /// Result bytes it holds, and of them on disk, as of its last heartbeat.
    pub(crate) held_bytes: u64,
    pub(crate) spilled_bytes: u64,
}

/// A client session: its tenant, where its events go, its tasks by key.
pub(crate) struct ClientConn {
    pub(crate) tenant: TenantId,
    /// Where its events go; `None` for a session restored from the journal
    /// whose client has not come back yet.
    pub(crate) listener: Option<task_listener::Client>,
    pub(crate) keys: HashMap<TaskKey, TaskId>,
    /// SHA-256 of the secret of the ticket that resumes it after a restart.
    pub(crate) ticket_hash: [u8; 32],
    /// Restored and waiting for its client until then; its tasks are
    /// cancelled if it does not come.
    pub(crate) orphaned_until: Option<std::time::Instant>,
    /// Resumed after a restart: a submission it sends again (its answer was
    /// lost with the scheduler) is taken as the one already accepted.
    pub(crate) resumed: bool,
    /// Its task events on their way (`encode.rs`).
    pub(crate) events: ClientEvents,
}

/// A client's task events: one `events` call (or one batch of them) is in
/// flight at a time, and what comes meanwhile waits for it to return. A
/// busy scheduler then sends a few large calls instead of one small call
/// for each worker's batch of events (3,100 calls for a 100k map over
/// 1,000 workers), and a slow client makes it hold, not queue, calls.
#[derive(Default)]
pub(crate) struct ClientEvents {
    /// Calls sent and not yet returned.
    pub(crate) in_flight: usize,
    /// Events waiting for them, with their tasks' keys.
    pub(crate) held: Vec<(TaskKey, ClientEvent)>,
}

/// What a client hears about one of its tasks.
pub(crate) enum ClientEvent {
    /// Its result's size, and the result itself when its worker sent it
    /// with `finished` (small; empty otherwise).
    Done(u64, Vec<u8>),
    Failed(String, String),
}

/// A task assigned, with a holder for each of its dependencies.
pub(crate) type Assigned = (TaskId, Vec<(TaskId, WorkerId)>);

/// The core's decisions, gathered per worker and client until the handler
/// ends and [`crate::encode::flush`] sends one call per worker and kind.
/// Assignments keep only the task and where its inputs are: the task's
/// spec is read from the core when the batch is encoded.
#[derive(Default)]
pub(crate) struct Outbox {
    pub(crate) run: BTreeMap<WorkerId, Vec<Assigned>>,
    pub(crate) steal: BTreeMap<WorkerId, Vec<TaskId>>,
    pub(crate) cancel: BTreeMap<WorkerId, Vec<TaskId>>,
    pub(crate) free: BTreeMap<WorkerId, Vec<TaskId>>,
    pub(crate) replicate: BTreeMap<WorkerId, Vec<(TaskId, WorkerId)>>,
    pub(crate) client: BTreeMap<ClientId, Vec<(TaskId, ClientEvent)>>,
    /// What the journal records of the core's decisions (see `recovery.rs`).
    pub(crate) finished: Vec<(TaskId, u64)>,
    pub(crate) failed: Vec<(TaskId, String, String)>,
    pub(crate) forgotten: Vec<TaskId>,
    /// The result a worker sent with the `finished` being handled: the
    /// core's `done` for that task takes it for the client's event.
    pub(crate) finishing: Option<(TaskId, Vec<u8>)>,
}

impl Comm<Payload> for Outbox {
    fn assign(
        &mut self,
        worker: WorkerId,
        task: &TaskSpec<Payload>,
        inputs: &[(TaskId, WorkerId)],
    ) {
        self.run
            .entry(worker)
            .or_default()
            .push((task.id, inputs.to_vec()));
    }
    fn steal(&mut self, worker: WorkerId, tasks: &[TaskId]) {
        self.steal
            .entry(worker)
            .or_default()
            .extend_from_slice(tasks);
    }
    fn cancel(&mut self, worker: WorkerId, task: TaskId) {
        // A run of it not sent yet is dropped; one assigned again later in
        // this turn comes after, and `flush` sends cancels before runs.
        if let Some(runs) = self.run.get_mut(&worker) {
            runs.retain(|(t, _)| *t != task);
        }
        self.cancel.entry(worker).or_default().push(task);
    }
    fn free(&mut self, worker: WorkerId, task: TaskId) {
        self.free.entry(worker).or_default().push(task);
    }
    fn replicate(&mut self, to: WorkerId, task: TaskId, from: WorkerId) {
        self.replicate.entry(to).or_default().push((task, from));
    }
    fn done(&mut self, client: ClientId, task: TaskId, _worker: WorkerId, size: u64) {
        self.finished.push((task, size));
        let value = match self.finishing.take() {
            Some((finished, value)) if finished == task => value,
            other => {
                self.finishing = other;
                Vec::new()
            }
        };
        self.client
            .entry(client)
            .or_default()
            .push((task, ClientEvent::Done(size, value)));
    }
    fn failed(&mut self, client: ClientId, task: TaskId, failure: &Failure) {
        let (kind, message) = (failure_kind(failure).to_owned(), failure.to_string());
        self.failed.push((task, kind.clone(), message.clone()));
        self.client
            .entry(client)
            .or_default()
            .push((task, ClientEvent::Failed(kind, message)));
    }
    fn forgotten(&mut self, task: TaskId) {
        self.forgotten.push(task);
    }
}

/// The short kind a client sees for a failure ("panic", "dependency", ...).
pub(crate) fn failure_kind(failure: &Failure) -> &str {
    match failure {
        Failure::Error { kind, .. } => kind.as_str(),
        Failure::Dependency { .. } => "dependency",
        Failure::Suspicious { .. } => "suspicious",
        Failure::Cancelled => "cancelled",
    }
}

/// Work a dropped capability leaves for the scheduler's loop (a `Drop` must
/// not borrow the state, which its caller may hold).
pub(crate) enum Deferred {
    WorkerGone(WorkerId),
    ClientGone(ClientId),
}

pub(crate) struct State {
    pub(crate) core: Core<Payload>,
    pub(crate) secret: String,
    pub(crate) tenants: Tenants,
    /// The most any task may ask for.
    pub(crate) caps: TaskCaps,
    pub(crate) modules: ModuleRegistry,
    /// Large literal values put with `putValue`.
    pub(crate) values: crate::values::ValueStore,
    /// Copies of small results, passed to dependents on other workers.
    pub(crate) small_results: crate::small_results::SmallResults,
    pub(crate) workers: HashMap<WorkerId, WorkerConn>,
    pub(crate) clients: HashMap<ClientId, ClientConn>,
    /// Captured stdout and stderr of finished tasks that printed anything.
    pub(crate) logs: HashMap<TaskId, (Vec<u8>, Vec<u8>)>,
    pub(crate) jobs: Jobs,
    /// One sequence for task, worker, client and job numbers, so no two
    /// things in a scheduler share a number.
    pub(crate) next_id: u64,
    pub(crate) outbox: Outbox,
    pub(crate) deferred: mpsc::UnboundedSender<Deferred>,
    /// Woken whenever tasks finish, for fetches waiting on a recomputation.
    pub(crate) finished: Rc<tokio::sync::Notify>,
    /// Woken after every batch of worker events and every worker removal,
    /// for retirements waiting to complete.
    pub(crate) progress: Rc<tokio::sync::Notify>,
    /// Fired by a `shutdown` call with the exit code it asks for.
    pub(crate) shutdown: Option<tokio::sync::oneshot::Sender<i32>>,
    /// Shutting down: workers that register now are told to exit at once.
    pub(crate) shutting_down: bool,
    /// The journal, when the scheduler keeps one.
    pub(crate) journaled: Option<crate::recovery::Journaled>,
    /// A restart waiting for workers to rejoin with their results.
    pub(crate) recovery: Option<crate::recovery::Recovery>,
    /// The newest task runs and each tenant's totals.
    pub(crate) stream: crate::task_stream::TaskStream,
}

pub(crate) type Shared = Rc<RefCell<State>>;

impl State {
    pub(crate) fn new(
        core: Core<Payload>,
        secret: String,
        tenants: Tenants,
        caps: TaskCaps,
        deferred: mpsc::UnboundedSender<Deferred>,
        shutdown: tokio::sync::oneshot::Sender<i32>,
    ) -> State {
        let mut state = State {
            core,
            secret,
            tenants,
            caps,
            modules: ModuleRegistry::default(),
            values: Default::default(),
            small_results: Default::default(),
            workers: HashMap::new(),
            clients: HashMap::new(),
            logs: HashMap::new(),
            jobs: Jobs::default(),
            next_id: 0,
            outbox: Outbox::default(),
            deferred,
            finished: Rc::new(tokio::sync::Notify::new()),
            progress: Rc::new(tokio::sync::Notify::new()),
            shutdown: Some(shutdown),
            shutting_down: false,
            journaled: None,
            recovery: None,
            stream: crate::task_stream::TaskStream::new(
                crate::task_stream::DEFAULT_TASK_STREAM,
                None,
            ),
        };
        state.apply_tenant_shares();
        state
    }

    /// Tells the core each tenant's weight and slot quota.
    pub(crate) fn apply_tenant_shares(&mut self) {
        let shares: Vec<_> = self.tenants.all().map(|t| (t.id, t.share())).collect();
        for (id, share) in shares {
            self.core.set_tenant(id, share, &mut self.outbox);
        }
    }

    /// A session's connection, if it is still open.
    pub(crate) fn session(&self, client: ClientId) -> Result<&ClientConn, capnp::Error> {
        self.clients.get(&client).ok_or_else(|| {
            wrun_proto::failed(
                "this session is closed (its tenant was removed, or its token rotated)",
            )
        })
    }

    /// Whether a tenant's status shows everything (the operator, or a
    /// cluster's only tenant).
    pub(crate) fn sees_all(&self, tenant: TenantId) -> bool {
        tenant == OPERATOR_ID || self.tenants.get(tenant).is_some_and(|t| t.sees_all)
    }

    /// The tenants removed or rotated by a reload: their sessions end and
    /// their work (sessions' tasks and detached jobs) is cancelled.
    pub(crate) fn end_tenants(&mut self, ended: &[TenantId]) {
        let clients: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| ended.contains(&c.tenant))
            .map(|(id, _)| *id)
            .collect();
        for client in clients {
            self.remove_client(client);
        }
        for tenant in ended {
            if self.tenants.get(*tenant).is_none() {
                let tasks = self.jobs.take_all_of(*tenant);
                self.cancel(&tasks);
            }
        }
    }

    /// A fresh number from [`State::next_id`] (reserved in the journal).
    pub(crate) fn next_id(&mut self) -> Result<u64, crate::journal::NotDurable> {
        self.reserve_ids(1)?;
        self.next_id += 1;
        Ok(self.next_id)
    }

    pub(crate) fn remove_worker(&mut self, worker: WorkerId) {
        if self.workers.remove(&worker).is_some() {
            info!(%worker, "worker removed");
        }
        self.core.remove_worker(worker, &mut self.outbox);
    }

    pub(crate) fn remove_client(&mut self, client: ClientId) {
        let Some(conn) = self.clients.remove(&client) else {
            return;
        };
        self.journal(|_| crate::recovery::session_closed_record(client));
        let tasks: Vec<TaskId> = conn.keys.values().copied().collect();
        self.modules.forget_uploads_of(client);
        self.values.session_closed(client);
        debug!(
            client = client.0,
            tasks = tasks.len(),
            "client gone; cancelling its tasks"
        );
        self.cancel(&tasks);
    }

    /// Cancels tasks in the core and forgets their logs.
    pub(crate) fn cancel(&mut self, tasks: &[TaskId]) {
        self.core.cancel(tasks, &mut self.outbox);
        for task in tasks {
            self.logs.remove(task);
        }
    }

    /// The task a session's key names.
    pub(crate) fn task_of(&self, client: ClientId, key: TaskKey) -> Option<TaskId> {
        self.clients
            .get(&client)
            .and_then(|c| c.keys.get(&key).copied())
    }

    /// Keeps a finished task's captured output, if it printed anything.
    /// Records a run in the task stream: `status` is `done` or the kind of
    /// failure, the times are the worker's (a worker too old to send them
    /// leaves them 0: then now, as the scheduler sees it).
    pub(crate) fn record_run(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        status: &str,
        bytes: u64,
        event: wrun_proto::wrun_capnp::worker_event::Reader<'_>,
    ) {
        let Some(spec) = self.core.spec(task) else {
            return;
        };
        let (key, tenant) = (spec.payload.key, spec.tenant);
        let name = spec.payload.template.name.clone();
        let worker_name = match self.workers.get(&worker) {
            Some(conn) => conn.label.clone(),
            None => self.stream.intern(&worker.to_string()),
        };
        let (mut start_us, mut end_us) = (event.get_start_us(), event.get_end_us());
        if end_us == 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            (start_us, end_us) = (now, now);
        }
        let transfer =
            (event.get_transfer_end_us() > 0).then(|| wrun_proto::stream::TransferRecord {
                start_us: event.get_transfer_start_us(),
                end_us: event.get_transfer_end_us(),
                bytes: event.get_transfer_bytes(),
            });
        let run = crate::task_stream::Run {
            task,
            key,
            tenant,
            name,
            worker: worker_name,
            thread: event.get_thread(),
            start_us,
            end_us: end_us.max(start_us),
            status: self.stream.intern(status),
            bytes,
            transfer,
        };
        let tenants = &self.tenants;
        self.stream.push(run, || tenants.name_of(tenant).to_owned());
    }

    pub(crate) fn keep_logs(&mut self, task: TaskId, stdout: &[u8], stderr: &[u8]) {
        if !stdout.is_empty() || !stderr.is_empty() {
            self.logs.insert(task, (stdout.to_vec(), stderr.to_vec()));
        }
    }

    /// Where a worker's peers fetch from ("" if it is gone).
    pub(crate) fn peer_address(&self, worker: WorkerId) -> &str {
        self.workers
            .get(&worker)
            .map(|w| w.peer_address.as_str())
            .unwrap_or("")
    }

    /// The certificate a worker's peer port presents (empty: plain).
    pub(crate) fn peer_certificate(&self, worker: WorkerId) -> &[u8] {
        self.workers
            .get(&worker)
            .map(|w| w.peer_certificate.as_slice())
            .unwrap_or(&[])
    }
}

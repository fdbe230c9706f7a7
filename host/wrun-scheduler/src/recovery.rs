//! Restarting on the journal: the record each accepted change writes, the
//! snapshot that starts each journal file, the replay of a journal into a
//! fresh state, and the wait for workers to rejoin with their results.
//!
//! What a replay restores: the cluster's identity (secret and token),
//! modules, tasks (with their results' sizes and failures), detached jobs,
//! client sessions (with the hash of each session's ticket), and the ids in
//! use. A restored session waits `resume_wait` (60 s) for its client to
//! come back with its ticket (`connectClient(resume)`); one that does not
//! is closed as a dropped connection would be, its tasks cancelled. Tasks
//! of no job and no session are cancelled when the replay ends.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use capnp::message::{Builder, ReaderOptions};
use tracing::{info, warn};
use wrun_abi::ModuleDigest;
use wrun_core::{Arg, ClientId, Failure, TaskId, TaskSpec, WorkerId};
use wrun_proto::TaskKey;
use wrun_proto::wrun_capnp::{journal_arg, journal_record};

use crate::journal::{self, Journal, JournalError, NotDurable};
use crate::state::{Outbox, Payload, State, Template};

/// Ids are reserved in the journal this many at a time (one synced record
/// per block).
const ID_BLOCK: u64 = 1 << 20;
/// Tasks per record in a snapshot.
const TASKS_PER_RECORD: usize = 10_000;

/// What clients and workers authenticate with; kept across restarts.
#[derive(Clone)]
pub(crate) struct Identity {
    pub(crate) secret: String,
    pub(crate) token: Option<String>,
}

/// The journal of a running scheduler and what it needs to write one.
pub(crate) struct Journaled {
    pub(crate) journal: Journal,
    pub(crate) identity: Identity,
    /// Ids below this may be in use (it is in the journal).
    pub(crate) ids_reserved: u64,
    /// Compaction is due when the tail passes this and twice the snapshot.
    pub(crate) compact_bytes: u64,
}

fn record(build: impl FnOnce(journal_record::Builder<'_>)) -> Vec<u8> {
    let mut message = Builder::new_default();
    build(message.init_root());
    capnp::serialize::write_message_to_words(&message)
}

fn identity_record(identity: &Identity) -> Vec<u8> {
    record(|r| {
        let mut i = r.init_identity();
        i.set_secret(&identity.secret);
        i.set_token(identity.token.as_deref().unwrap_or(""));
    })
}

fn ids_record(upto: u64) -> Vec<u8> {
    record(|mut r| r.set_ids(upto))
}

pub(crate) fn module_record(owners: &[&str], bytes: &[u8]) -> Vec<u8> {
    record(|r| {
        let mut m = r.init_module();
        let mut list = m.reborrow().init_owners(owners.len() as u32);
        for (i, owner) in owners.iter().enumerate() {
            list.set(i as u32, *owner);
        }
        m.set_bytes(bytes);
    })
}

/// A value put with `putValue`, with the tenants that put it.
pub(crate) fn value_record(owners: &[&str], bytes: &[u8]) -> Vec<u8> {
    record(|r| {
        let mut v = r.init_value();
        let mut list = v.reborrow().init_owners(owners.len() as u32);
        for (i, owner) in owners.iter().enumerate() {
            list.set(i as u32, *owner);
        }
        v.set_bytes(bytes);
    })
}

/// The tasks of a submission (or of a snapshot), with their tenants' names.
pub(crate) fn tasks_record(state: &State, specs: &[&TaskSpec<Payload>]) -> Vec<u8> {
    record(|r| {
        let mut list = r.init_tasks(specs.len() as u32);
        for (i, spec) in specs.iter().enumerate() {
            let mut t = list.reborrow().get(i as u32);
            t.set_id(spec.id.0);
            t.set_client(spec.client.0);
            t.set_tenant(state.tenants.name_of(spec.tenant));
            t.set_key(spec.payload.key.0);
            let template = &spec.payload.template;
            t.set_module(&template.module.digest.0);
            t.set_name(&template.name);
            wrun_proto::limits::write(&template.limits, t.reborrow().init_limits());
            t.set_retries(spec.retries);
            let mut args = t.init_args(spec.args.len() as u32);
            for (j, arg) in spec.args.iter().enumerate() {
                let mut a = args.reborrow().get(j as u32);
                match arg {
                    Arg::Value(bytes) => a.set_value(bytes),
                    Arg::Result(task) => a.set_result(task.0),
                    Arg::Stored(digest) => a.set_stored(&digest[..]),
                }
            }
        }
    })
}

pub(crate) fn finished_record(finished: &[(TaskId, u64)]) -> Vec<u8> {
    record(|r| {
        let mut list = r.init_finished(finished.len() as u32);
        for (i, (task, size)) in finished.iter().enumerate() {
            let mut f = list.reborrow().get(i as u32);
            f.set_task(task.0);
            f.set_size(*size);
        }
    })
}

pub(crate) fn failed_record(task: TaskId, kind: &str, message: &str) -> Vec<u8> {
    record(|r| {
        let mut f = r.init_failed();
        f.set_task(task.0);
        f.set_kind(kind);
        f.set_message(message);
    })
}

pub(crate) fn forgotten_record(tasks: &[TaskId]) -> Vec<u8> {
    record(|r| {
        let mut list = r.init_forgotten(tasks.len() as u32);
        for (i, task) in tasks.iter().enumerate() {
            list.set(i as u32, task.0);
        }
    })
}

pub(crate) fn detached_record(tenant: &str, job: &str, tasks: &[(TaskKey, TaskId)]) -> Vec<u8> {
    record(|r| {
        let mut d = r.init_detached();
        d.set_tenant(tenant);
        d.set_job(job);
        let mut keys = d.reborrow().init_keys(tasks.len() as u32);
        for (i, (key, _)) in tasks.iter().enumerate() {
            keys.set(i as u32, key.0);
        }
        let mut ids = d.init_tasks(tasks.len() as u32);
        for (i, (_, task)) in tasks.iter().enumerate() {
            ids.set(i as u32, task.0);
        }
    })
}

pub(crate) fn session_record(client: ClientId, tenant: &str, ticket_hash: &[u8; 32]) -> Vec<u8> {
    record(|r| {
        let mut s = r.init_session();
        s.set_id(client.0);
        s.set_tenant(tenant);
        s.set_ticket_hash(ticket_hash);
    })
}

pub(crate) fn session_closed_record(client: ClientId) -> Vec<u8> {
    record(|mut r| r.set_session_closed(client.0))
}

pub(crate) fn adopted_record(tenant: &str, job: &str, client: ClientId) -> Vec<u8> {
    record(|r| {
        let mut a = r.init_adopted();
        a.set_tenant(tenant);
        a.set_job(job);
        a.set_session(client.0);
    })
}

/// Framed records that recreate the live state: what each journal file
/// starts with.
pub(crate) fn snapshot(state: &State, identity: &Identity, ids_reserved: u64) -> Vec<u8> {
    let mut out = Vec::new();
    journal::frame(&identity_record(identity), &mut out);
    journal::frame(&ids_record(ids_reserved), &mut out);
    for (client, conn) in &state.clients {
        journal::frame(
            &session_record(
                *client,
                state.tenants.name_of(conn.tenant),
                &conn.ticket_hash,
            ),
            &mut out,
        );
    }
    for (module, owners) in state.modules.all() {
        let owners: Vec<&str> = owners.iter().map(|t| state.tenants.name_of(*t)).collect();
        journal::frame(&module_record(&owners, &module.bytes), &mut out);
    }
    for (bytes, owners) in state.values.all() {
        let owners: Vec<&str> = owners.iter().map(|t| state.tenants.name_of(*t)).collect();
        journal::frame(&value_record(&owners, bytes), &mut out);
    }
    let tasks = state.core.tasks_in_order();
    for chunk in tasks.chunks(TASKS_PER_RECORD) {
        let specs: Vec<&TaskSpec<Payload>> = chunk.iter().map(|(spec, _)| *spec).collect();
        journal::frame(&tasks_record(state, &specs), &mut out);
        let finished: Vec<(TaskId, u64)> = chunk
            .iter()
            .filter_map(|(spec, outcome)| match outcome {
                Some(Ok(size)) => Some((spec.id, *size)),
                _ => None,
            })
            .collect();
        if !finished.is_empty() {
            journal::frame(&finished_record(&finished), &mut out);
        }
        for (spec, outcome) in chunk {
            if let Some(Err(failure)) = outcome {
                let kind = crate::state::failure_kind(failure);
                journal::frame(
                    &failed_record(spec.id, kind, &failure.to_string()),
                    &mut out,
                );
            }
        }
    }
    for (tenant, name, tasks) in state.jobs.all() {
        journal::frame(
            &detached_record(state.tenants.name_of(tenant), name, tasks),
            &mut out,
        );
    }
    out
}

fn options() -> ReaderOptions {
    // The file is ours and checksummed; a module record is up to 256 MiB.
    let mut options = ReaderOptions::new();
    options.traversal_limit_in_words(None).nesting_limit(64);
    options
}

fn bad(read: &journal::Read, index: usize) -> impl Fn(capnp::Error) -> JournalError + '_ {
    move |e| JournalError::BadRecord {
        path: read.path.clone(),
        index,
        reason: e.to_string(),
    }
}

/// The identity in a journal's first record.
pub(crate) fn identity_of(read: &journal::Read) -> Result<Option<Identity>, JournalError> {
    let Some(first) = read.payloads().next() else {
        return Ok(None);
    };
    let message = capnp::serialize::read_message_from_flat_slice(&mut &first[..], options())
        .map_err(bad(read, 0))?;
    let root: journal_record::Reader<'_> = message.get_root().map_err(bad(read, 0))?;
    match root.which().map_err(|e| bad(read, 0)(e.into()))? {
        journal_record::Which::Identity(i) => {
            let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, JournalError> {
                t.and_then(|t| Ok(t.to_str()?.to_owned()))
                    .map_err(bad(read, 0))
            };
            let secret = text(i.get_secret())?;
            let token = text(i.get_token())?;
            Ok(Some(Identity {
                secret,
                token: (!token.is_empty()).then_some(token),
            }))
        }
        _ => Ok(None),
    }
}

/// What a replay found.
pub(crate) struct Replayed {
    pub(crate) records: usize,
    pub(crate) tasks: usize,
    pub(crate) jobs: usize,
    pub(crate) sessions: usize,
    pub(crate) cancelled: usize,
}

/// Replays a journal into a fresh `state` (no worker, no session).
pub(crate) fn replay(
    state: &mut State,
    read: &journal::Read,
    resume_wait: Duration,
) -> Result<Replayed, JournalError> {
    let mut scratch = Outbox::default();
    let mut skipped: HashSet<TaskId> = HashSet::new();
    for (index, payload) in read.payloads().enumerate() {
        let bad = bad(read, index);
        let message = capnp::serialize::read_message_from_flat_slice(&mut &payload[..], options())
            .map_err(&bad)?;
        let root: journal_record::Reader<'_> = message.get_root().map_err(&bad)?;
        apply(state, root, index, &mut scratch, &mut skipped).map_err(&bad)?;
    }
    // Sessions wait for their clients to resume them (`resume_wait`); tasks
    // that are neither theirs nor a job's go, as with any disconnect.
    let core = &state.core;
    state.jobs.retain_tasks(|t| core.spec(t).is_some());
    let until = Instant::now() + resume_wait;
    for conn in state.clients.values_mut() {
        conn.keys.retain(|_, t| core.spec(*t).is_some());
        conn.orphaned_until = Some(until);
    }
    let in_jobs: HashSet<TaskId> = state
        .jobs
        .all()
        .flat_map(|(_, _, tasks)| tasks.iter().map(|(_, t)| *t))
        .chain(
            state
                .clients
                .values()
                .flat_map(|c| c.keys.values().copied()),
        )
        .collect();
    let orphans: Vec<TaskId> = state
        .core
        .tasks_in_order()
        .iter()
        .map(|(spec, _)| spec.id)
        .filter(|t| !in_jobs.contains(t))
        .collect();
    state.core.cancel(&orphans, &mut scratch);
    // Large values stay while a restored task names them.
    let users: Vec<(TaskId, Vec<ModuleDigest>)> = state
        .core
        .tasks_in_order()
        .iter()
        .map(|(spec, _)| (spec.id, crate::submit::stored_args(&spec.args)))
        .filter(|(_, digests)| !digests.is_empty())
        .collect();
    for (task, digests) in users {
        state.values.use_by(task, digests);
    }
    state.values.collect_unused();
    Ok(Replayed {
        records: read.records.len(),
        tasks: state.core.task_count(),
        jobs: state.jobs.all().count(),
        sessions: state.clients.len(),
        cancelled: orphans.len(),
    })
}

/// Applies one record to the state being restored.
fn apply(
    state: &mut State,
    root: journal_record::Reader<'_>,
    index: usize,
    scratch: &mut Outbox,
    skipped: &mut HashSet<TaskId>,
) -> capnp::Result<()> {
    use journal_record::Which;
    match root.which()? {
        Which::Identity(_) => {}
        Which::Ids(upto) => state.next_id = state.next_id.max(upto),
        Which::Module(m) => {
            let mut owners = Vec::new();
            for owner in m.get_owners()?.iter() {
                if let Some(id) = state.tenants.id_of(owner?.to_str()?) {
                    owners.push(id);
                }
            }
            let bytes = m.get_bytes()?.to_vec();
            state
                .modules
                .restore(bytes, owners)
                .map_err(|e| capnp::Error::failed(e.to_string()))?;
        }
        Which::Value(v) => {
            let mut owners = std::collections::BTreeSet::new();
            for owner in v.get_owners()?.iter() {
                if let Some(id) = state.tenants.id_of(owner?.to_str()?) {
                    owners.insert(id);
                }
            }
            state.values.restore(owners, v.get_bytes()?.to_vec());
        }
        Which::Tasks(list) => {
            let specs = decode_tasks(state, list?, skipped)?;
            let keys: Vec<(ClientId, TaskKey, TaskId)> = specs
                .iter()
                .map(|s| (s.client, s.payload.key, s.id))
                .collect();
            match state.core.submit(specs, scratch) {
                Ok(()) => {
                    for (client, key, task) in keys {
                        if let Some(conn) = state.clients.get_mut(&client) {
                            conn.keys.insert(key, task);
                        }
                    }
                }
                Err(error) => warn!("journal record {index}: tasks not restored: {error}"),
            }
        }
        Which::Session(s) => {
            let Some(tenant) = state.tenants.id_of(s.get_tenant()?.to_str()?) else {
                return Ok(());
            };
            let ticket_hash = <[u8; 32]>::try_from(s.get_ticket_hash()?)
                .map_err(|_| capnp::Error::failed("a ticket hash is 32 bytes".into()))?;
            state.clients.insert(
                ClientId(s.get_id()),
                crate::state::ClientConn {
                    tenant,
                    listener: None,
                    keys: HashMap::new(),
                    ticket_hash,
                    orphaned_until: None,
                    resumed: false,
                    events: Default::default(),
                },
            );
        }
        Which::SessionClosed(client) => {
            // Its tasks' cancellation follows in `forgotten` records.
            state.clients.remove(&ClientId(client));
        }
        Which::Adopted(a) => {
            let Some(tenant) = state.tenants.id_of(a.get_tenant()?.to_str()?) else {
                return Ok(());
            };
            let client = ClientId(a.get_session());
            let job = a.get_job()?.to_str()?;
            if let Some(conn) = state.clients.get_mut(&client)
                && let Ok(tasks) = state.jobs.adopt(tenant, &mut conn.keys, job)
            {
                for (_, task) in tasks {
                    state.core.set_client(task, client);
                }
            }
        }
        Which::Finished(list) => {
            for f in list?.iter() {
                state
                    .core
                    .restore_done(TaskId(f.get_task()), f.get_size(), scratch);
            }
        }
        Which::Failed(f) => {
            let failure = Failure::Error {
                kind: f.get_kind()?.to_str()?.to_owned(),
                message: f.get_message()?.to_str()?.to_owned(),
            };
            state
                .core
                .restore_failed(TaskId(f.get_task()), failure, scratch);
        }
        Which::Forgotten(list) => {
            for task in list?.iter() {
                state.core.restore_forgotten(TaskId(task), scratch);
            }
        }
        Which::Detached(d) => {
            let Some(tenant) = state.tenants.id_of(d.get_tenant()?.to_str()?) else {
                return Ok(());
            };
            let job = d.get_job()?.to_str()?;
            let pairs: Vec<(TaskKey, TaskId)> = d
                .get_keys()?
                .iter()
                .zip(d.get_tasks()?.iter())
                .map(|(k, t)| (TaskKey(k), TaskId(t)))
                .collect();
            for (key, task) in &pairs {
                let owner = state.core.spec(*task).map(|s| s.client);
                if let Some(conn) = owner.and_then(|c| state.clients.get_mut(&c)) {
                    conn.keys.remove(key);
                }
            }
            state.jobs.restore(tenant, job, &pairs);
        }
    }
    Ok(())
}

/// The task specs of a `tasks` record. Tasks of a tenant that is gone, of
/// a module that is not known, or depending on a task left out, are left
/// out (and named in `skipped`).
fn decode_tasks(
    state: &State,
    list: capnp::struct_list::Reader<'_, wrun_proto::wrun_capnp::journal_task::Owned>,
    skipped: &mut HashSet<TaskId>,
) -> Result<Vec<TaskSpec<Payload>>, capnp::Error> {
    let mut templates: HashMap<(ModuleDigest, String, wrun_proto::TaskLimits), Rc<Template>> =
        HashMap::new();
    let mut specs = Vec::with_capacity(list.len() as usize);
    for t in list.iter() {
        let id = TaskId(t.get_id());
        let tenant = state.tenants.id_of(t.get_tenant()?.to_str()?);
        let digest = <[u8; 32]>::try_from(t.get_module()?)
            .map(ModuleDigest)
            .map_err(|_| capnp::Error::failed("a module digest is 32 bytes".into()))?;
        let name = t.get_name()?.to_str()?.to_owned();
        let limits = wrun_proto::limits::read(t.get_limits()?);
        let mut args = Vec::new();
        let mut lost_dependency = false;
        for a in t.get_args()?.iter() {
            args.push(match a.which()? {
                journal_arg::Which::Value(bytes) => Arg::Value(bytes?.into()),
                journal_arg::Which::Result(dep) => {
                    lost_dependency |= skipped.contains(&TaskId(dep));
                    Arg::Result(TaskId(dep))
                }
                journal_arg::Which::Stored(digest) => {
                    let digest = crate::values::digest_from(digest?)
                        .map_err(|e| capnp::Error::failed(e.to_string()))?;
                    lost_dependency |= state.values.get(&digest).is_none();
                    Arg::Stored(Box::new(digest.0))
                }
            });
        }
        let module = state.modules.get(&digest);
        let (Some(tenant), Some(module), false) = (tenant, module, lost_dependency) else {
            skipped.insert(id);
            continue;
        };
        let template = templates
            .entry((digest, name.clone(), limits))
            .or_insert_with(|| {
                Rc::new(Template {
                    module: module.clone(),
                    name: name.into(),
                    limits,
                })
            })
            .clone();
        specs.push(TaskSpec {
            id,
            client: ClientId(t.get_client()),
            tenant,
            args: args.into(),
            retries: t.get_retries(),
            payload: Payload {
                template,
                key: TaskKey(t.get_key()),
            },
        });
    }
    if !skipped.is_empty() {
        warn!(
            skipped = skipped.len(),
            "journal: tasks of removed tenants or unknown modules were not restored"
        );
    }
    Ok(specs)
}

impl Journaled {
    /// Starts the journal's next generation from the state as it is.
    pub(crate) fn start(
        state: &State,
        dir: PathBuf,
        previous: Option<u64>,
        identity: Identity,
        compact_bytes: u64,
    ) -> Result<Journaled, JournalError> {
        let ids_reserved = state.next_id + ID_BLOCK;
        let journal = Journal::start(&dir, previous, snapshot(state, &identity, ids_reserved))?;
        Ok(Journaled {
            journal,
            identity,
            ids_reserved,
            compact_bytes,
        })
    }
}

impl State {
    /// Makes sure the next `count` ids are reserved in the journal before
    /// they are used: a result a worker keeps under an id must never name
    /// another task after a restart.
    pub(crate) fn reserve_ids(&mut self, count: u64) -> Result<(), NotDurable> {
        let next = self.next_id;
        let Some(j) = self.journaled.as_mut() else {
            return Ok(());
        };
        if next + count < j.ids_reserved {
            return Ok(());
        }
        j.ids_reserved = next + count + ID_BLOCK;
        j.journal.record(&ids_record(j.ids_reserved));
        let seq = j.journal.hand_over();
        j.journal.wait_durable(seq)
    }

    /// Adds a record to the journal, if there is one.
    pub(crate) fn journal(&mut self, make: impl FnOnce(&State) -> Vec<u8>) {
        if self.journaled.is_none() {
            return;
        }
        let record = make(self);
        if let Some(j) = self.journaled.as_mut() {
            j.journal.record(&record);
        }
    }

    /// Hands this handler's records to the journal's writer (compacting
    /// first if the tail has grown large); returns what to wait on for
    /// them to be durable.
    pub(crate) fn journal_hand_over(
        &mut self,
    ) -> Option<impl std::future::Future<Output = Result<(), NotDurable>> + use<>> {
        let j = self.journaled.as_ref()?;
        let due = j.journal.tail_bytes > j.compact_bytes.max(2 * j.journal.snapshot_bytes);
        if due {
            let started = Instant::now();
            let snapshot = snapshot(self, &j.identity, j.ids_reserved);
            let j = self.journaled.as_mut().expect("checked");
            let bytes = snapshot.len();
            let seq = j.journal.rotate(snapshot);
            info!(
                bytes,
                ms = started.elapsed().as_millis() as u64,
                "journal compacted: a new generation starts from a snapshot"
            );
            return Some(j.journal.durable(seq));
        }
        let j = self.journaled.as_mut().expect("checked");
        let seq = j.journal.hand_over();
        Some(j.journal.durable(seq))
    }
}

/// A restarted scheduler waiting for its workers to bring back the results
/// the journal says exist.
pub(crate) struct Recovery {
    awaited: HashSet<TaskId>,
    had: usize,
    started: Instant,
    deadline: Instant,
}

impl State {
    /// After a replay: hold placement until the workers have rejoined with
    /// the results still needed, or `timeout` has passed.
    pub(crate) fn begin_recovery(&mut self, timeout: Duration) {
        let awaited: HashSet<TaskId> = self.core.results_awaited().into_iter().collect();
        if awaited.is_empty() {
            return;
        }
        info!(
            results = awaited.len(),
            timeout_s = timeout.as_secs_f64(),
            "waiting for workers to rejoin with the results they kept"
        );
        self.core.hold_placement();
        let now = Instant::now();
        self.recovery = Some(Recovery {
            had: awaited.len(),
            awaited,
            started: now,
            deadline: now + timeout,
        });
    }

    /// Whether the result of `task` may yet come back with a rejoining
    /// worker (a fetch waits for it rather than failing).
    pub(crate) fn result_awaited(&self, task: TaskId) -> bool {
        self.recovery
            .as_ref()
            .is_some_and(|r| r.awaited.contains(&task))
    }

    /// A worker brought back results it kept.
    pub(crate) fn results_held(&mut self, worker: WorkerId, results: &[(TaskId, u64)]) {
        self.core.results_held(worker, results, &mut self.outbox);
        if let Some(recovery) = self.recovery.as_mut() {
            for (task, _) in results {
                recovery.awaited.remove(task);
            }
            if recovery.awaited.is_empty() {
                self.end_recovery();
            }
        }
    }

    /// Ends the wait once its time is up.
    pub(crate) fn recovery_tick(&mut self, now: Instant) {
        let Some(recovery) = self.recovery.as_mut() else {
            return;
        };
        // Results released or cancelled meanwhile are no longer awaited.
        let core = &self.core;
        recovery
            .awaited
            .retain(|t| core.spec(*t).is_some() && core.holders(*t).is_empty());
        if recovery.awaited.is_empty() || now >= recovery.deadline {
            self.end_recovery();
        }
    }

    fn end_recovery(&mut self) {
        let Some(recovery) = self.recovery.take() else {
            return;
        };
        let before = self.core.recomputed();
        self.core.resume_placement(&mut self.outbox);
        let lost = self.core.recomputed() - before;
        info!(
            found = recovery.had - recovery.awaited.len(),
            lost,
            ms = recovery.started.elapsed().as_millis() as u64,
            "recovered: workers brought back their results; scheduling again"
        );
    }
}

impl State {
    /// Gives a session restored from the journal back to its client: the
    /// same tenant, with the ticket's secret. Everything that ended while
    /// the client was away is told again (it may have missed it).
    pub(crate) fn resume_session(
        &mut self,
        client: ClientId,
        tenant: wrun_core::TenantId,
        secret: &[u8],
        listener: wrun_proto::wrun_capnp::task_listener::Client,
    ) -> Result<(), String> {
        let gone = || {
            "the session cannot be resumed: the scheduler no longer has it (its client did not come back in time, or the ticket is not its own)".to_owned()
        };
        let hash = std::str::from_utf8(secret).map(crate::tenants::hash_token);
        let conn = self.clients.get_mut(&client).ok_or_else(gone)?;
        let matches = hash.is_ok_and(|h| crate::tenants::same_secret(&h, &conn.ticket_hash));
        if conn.tenant != tenant || !matches || conn.listener.is_some() {
            return Err(gone());
        }
        conn.listener = Some(listener);
        conn.orphaned_until = None;
        conn.resumed = true;
        let mut ended: Vec<(TaskId, crate::state::ClientEvent)> = Vec::new();
        for task in conn.keys.values() {
            match self.core.outcome(*task) {
                Some(Ok(size)) => {
                    ended.push((*task, crate::state::ClientEvent::Done(size, Vec::new())))
                }
                Some(Err(failure)) => ended.push((
                    *task,
                    crate::state::ClientEvent::Failed(
                        crate::state::failure_kind(&failure).to_owned(),
                        failure.to_string(),
                    ),
                )),
                None => {}
            }
        }
        self.outbox.client.entry(client).or_default().extend(ended);
        Ok(())
    }

    /// Sessions restored from the journal whose clients did not come back
    /// in time end, as a disconnect does.
    pub(crate) fn expire_orphaned_sessions(&mut self, now: Instant) {
        let expired: Vec<ClientId> = self
            .clients
            .iter()
            .filter(|(_, c)| c.orphaned_until.is_some_and(|until| now >= until))
            .map(|(id, _)| *id)
            .collect();
        for client in expired {
            info!(
                session = client.0,
                "a session restored from the journal was not resumed in time; its tasks are cancelled"
            );
            self.remove_client(client);
        }
    }
}

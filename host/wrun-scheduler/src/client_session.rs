//! `ClientSession`: what one client may do, on its own tasks only. Each
//! handler decodes its request, calls the function that decides (in
//! `submit.rs`, `modules.rs`, `jobs.rs`, `fetch.rs`, `status.rs`), and
//! sends what the core decided.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use capnp::capability::Rc as CapRc;
use tokio::sync::mpsc;
use tracing::info;
use wrun_core::{ClientId, TaskId};
use wrun_proto::wrun_capnp::client_session;
use wrun_proto::{TaskKey, WriteMeter, failed};

use crate::encode::flush;

/// Task runs in one `taskStream` answer, at most; a page also stops
/// before its records pass `BATCH_BYTES`, under the 16 MiB of a message.
const TASK_STREAM_PAGE: usize = 20_000;
use crate::fetch::{self, Slot};
use crate::modules::{UploadChunk, UploadQuota, digest_from};
use crate::state::{Deferred, Shared, failure_kind};
use crate::status::cluster_status;
use crate::submit;
use crate::tenants::{OPERATOR, tenant_record};

pub(crate) struct ClientSessionImpl {
    pub(crate) shared: Shared,
    pub(crate) client: ClientId,
    pub(crate) deferred: mpsc::UnboundedSender<Deferred>,
    /// What the connection has written: big answers wait for room.
    pub(crate) meter: Rc<WriteMeter>,
    /// Calls of this session being answered now.
    pub(crate) in_flight: Cell<u32>,
}

/// Calls one session may have in flight at once.
const MAX_CALLS_IN_FLIGHT: u32 = 256;
/// Answer bytes produced for a client but not yet written to it, before
/// the next big answer waits.
const MAX_UNSENT_BYTES: u64 = 64 << 20;
/// How long a big answer waits for a client that does not read.
const READ_PATIENCE: Duration = Duration::from_secs(30);

/// A call in flight, counted until it is answered.
struct InFlight<'a>(&'a Cell<u32>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl ClientSessionImpl {
    /// Counts a call that may hold memory while it waits; refuses one over
    /// the session's bound.
    fn call(&self) -> Result<InFlight<'_>, capnp::Error> {
        if self.in_flight.get() >= MAX_CALLS_IN_FLIGHT {
            return Err(failed(format!(
                "this session has {MAX_CALLS_IN_FLIGHT} calls in flight, the most allowed; wait for their answers"
            )));
        }
        self.in_flight.set(self.in_flight.get() + 1);
        Ok(InFlight(&self.in_flight))
    }

    /// Waits until the client has read most of what it was sent, then
    /// reserves `bytes` for this answer: a client that stops reading has at
    /// most [`MAX_UNSENT_BYTES`] of answers made or being made for it, however
    /// many calls it sends (each fetch waits on a worker, and the worker's
    /// link also carries its heartbeats).
    async fn room_for_answer(&self, bytes: u64) -> Result<wrun_proto::Reservation, capnp::Error> {
        self.meter
            .reserve(MAX_UNSENT_BYTES, bytes, READ_PATIENCE)
            .await
            .ok_or_else(|| {
                failed(format!(
                    "the client has not read {} of answers for {} s; not answering more",
                    wrun_abi::humanize_bytes(MAX_UNSENT_BYTES),
                    READ_PATIENCE.as_secs()
                ))
            })
    }
}

impl Drop for ClientSessionImpl {
    fn drop(&mut self) {
        let _ = self.deferred.send(Deferred::ClientGone(self.client));
    }
}

fn keys_of(list: capnp::primitive_list::Reader<'_, u64>) -> Vec<TaskKey> {
    list.iter().map(TaskKey).collect()
}

fn closed() -> capnp::Error {
    failed("this session is closed (its tenant was removed, or its token rotated)")
}

impl client_session::Server for ClientSessionImpl {
    async fn has_module(
        self: CapRc<Self>,
        params: client_session::HasModuleParams,
        mut results: client_session::HasModuleResults,
    ) -> Result<(), capnp::Error> {
        let digest = digest_from(params.get()?.get_digest()?).map_err(failed)?;
        let state = self.shared.borrow();
        let tenant = state.session(self.client)?.tenant;
        let known = state.modules.get_for(tenant, &digest).is_some();
        results.get().set_known(known);
        Ok(())
    }

    async fn upload_module(
        self: CapRc<Self>,
        params: client_session::UploadModuleParams,
        mut results: client_session::UploadModuleResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let digest = digest_from(params.get_digest()?).map_err(failed)?;
        let (complete, durable) = {
            let mut state_guard = self.shared.borrow_mut();
            let state = &mut *state_guard;
            let tenant = state.session(self.client)?.tenant;
            let known_before = state.modules.get_for(tenant, &digest).is_some();
            let record = tenant_record(&state.tenants, tenant);
            let quota = UploadQuota {
                tenant,
                name: record.map_or(OPERATOR, |t| t.name.as_str()),
                max_bytes: record.and_then(|t| t.quotas.max_module_bytes).map(|b| b.0),
            };
            // Read once: each read counts against the traversal limit.
            let data = params.get_data()?;
            let complete = state
                .modules
                .upload_chunk(
                    self.client,
                    &quota,
                    UploadChunk {
                        digest,
                        offset: params.get_offset(),
                        total: params.get_total(),
                        data,
                    },
                    Instant::now(),
                )
                .map_err(failed)?;
            if complete && params.get_offset() + data.len() as u64 >= params.get_total() {
                info!(target: "wrun::audit", tenant = quota.name, %digest, bytes = params.get_total(), "module uploaded");
            }
            let durable = if complete && !known_before {
                let owner = quota.name.to_owned();
                state.journal(|state| {
                    let bytes = &state.modules.get(&digest).expect("just uploaded").bytes;
                    crate::recovery::module_record(&[owner.as_str()], bytes)
                });
                state.journal_hand_over()
            } else {
                None
            };
            (complete, durable)
        };
        if let Some(durable) = durable {
            durable.await.map_err(|e| failed(e.to_string()))?;
        }
        results.get().set_complete(complete);
        Ok(())
    }

    async fn put_value(
        self: CapRc<Self>,
        params: client_session::PutValueParams,
        mut results: client_session::PutValueResults,
    ) -> Result<(), capnp::Error> {
        use crate::values::{PutChunk, PutOutcome};
        let params = params.get()?;
        let digest = crate::values::digest_from(params.get_digest()?).map_err(failed)?;
        let (complete, durable) = {
            let mut state_guard = self.shared.borrow_mut();
            let state = &mut *state_guard;
            let tenant = state.session(self.client)?.tenant;
            let data = params.get_data()?;
            let outcome = state
                .values
                .put(
                    self.client,
                    tenant,
                    PutChunk {
                        digest,
                        offset: params.get_offset(),
                        total: params.get_total(),
                        data,
                    },
                )
                .map_err(failed)?;
            match outcome {
                PutOutcome::More => (false, None),
                PutOutcome::Complete(None) => (true, None),
                PutOutcome::Complete(Some(bytes)) => {
                    let owner = state.tenants.name_of(tenant).to_owned();
                    state.journal(|_| crate::recovery::value_record(&[owner.as_str()], &bytes));
                    (true, state.journal_hand_over())
                }
            }
        };
        if let Some(durable) = durable {
            durable.await.map_err(|e| failed(e.to_string()))?;
        }
        results.get().set_complete(complete);
        Ok(())
    }

    async fn submit(
        self: CapRc<Self>,
        params: client_session::SubmitParams,
        _: client_session::SubmitResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let requests = submit::decode(params.get_tasks()?)?;
        {
            let mut state = self.shared.borrow_mut();
            let state = &mut *state;
            let conn = state.clients.get(&self.client).ok_or_else(closed)?;
            if conn.resumed
                && !requests.is_empty()
                && requests.iter().all(|r| conn.keys.contains_key(&r.key))
            {
                // Sent again after a restart: accepted the first time.
                return Ok(());
            }
            state
                .reserve_ids(requests.len() as u64)
                .map_err(|e| failed(e.to_string()))?;
            let conn = state.clients.get(&self.client).expect("checked");
            let tenant = conn.tenant;
            let record = tenant_record(&state.tenants, tenant);
            let submitter = submit::Submitter {
                client: self.client,
                tenant,
                record,
                usage: state.core.tenant_usage(tenant),
                caps: state.caps,
            };
            let accepted = submit::validate(
                &requests,
                &submitter,
                &conn.keys,
                &state.modules,
                &state.values,
                &mut state.next_id,
            )
            .map_err(failed)?;
            for spec in &accepted.specs {
                let digests = submit::stored_args(&spec.args);
                state.values.use_by(spec.id, digests);
            }
            // Each module once (a map names the same one 50,000 times).
            let digests: std::collections::BTreeSet<_> =
                requests.iter().map(|r| r.module).collect();
            info!(
                target: "wrun::audit",
                tenant = record.map_or(OPERATOR, |t| t.name.as_str()),
                tasks = requests.len(),
                modules = %digests.iter().map(hex::encode).collect::<Vec<_>>().join(","),
                "tasks submitted"
            );
            state.journal(|state| {
                let specs: Vec<_> = accepted.specs.iter().collect();
                crate::recovery::tasks_record(state, &specs)
            });
            state
                .core
                .submit(accepted.specs, &mut state.outbox)
                .map_err(failed)?;
            let conn = state.clients.get_mut(&self.client).expect("checked");
            conn.keys.extend(accepted.keys);
        }
        flush(&self.shared);
        // Accepted means in the journal: the answer waits for the sync
        // (shared with every other call's records meanwhile).
        let durable = self.shared.borrow_mut().journal_hand_over();
        if let Some(durable) = durable {
            durable.await.map_err(|e| failed(e.to_string()))?;
        }
        Ok(())
    }

    async fn fetch(
        self: CapRc<Self>,
        params: client_session::FetchParams,
        mut results: client_session::FetchResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.call()?;
        let room = self.room_for_answer(wrun_proto::CHUNK_BYTES as u64).await?;
        let params = params.get()?;
        let response = fetch::fetch_chunk(
            &self.shared,
            self.client,
            TaskKey(params.get_key()),
            params.get_offset(),
        )
        .await?;
        let chunk = response.get()?.get_chunk()?;
        // Read the data once: every read counts against the message's
        // traversal limit, and two reads of an 8 MiB chunk pass it.
        let data = chunk.get_data()?;
        let mut out = results.get().init_chunk();
        room.settle(data.len() as u64);
        out.set_data(data);
        out.set_total(chunk.get_total());
        Ok(())
    }

    async fn fetch_many(
        self: CapRc<Self>,
        params: client_session::FetchManyParams,
        mut results: client_session::FetchManyResults,
    ) -> Result<(), capnp::Error> {
        let _call = self.call()?;
        let room = self
            .room_for_answer(fetch::MAX_FETCH_MANY_BYTES as u64)
            .await?;
        let keys = keys_of(params.get()?.get_keys()?);
        let slots = fetch::fetch_many(&self.shared, self.client, &keys).await?;
        room.settle(
            slots
                .iter()
                .map(|s| match s {
                    Slot::Data(d) => d.len() as u64,
                    _ => 0,
                })
                .sum(),
        );
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

    async fn release(
        self: CapRc<Self>,
        params: client_session::ReleaseParams,
        _: client_session::ReleaseResults,
    ) -> Result<(), capnp::Error> {
        let keys = keys_of(params.get()?.get_keys()?);
        {
            let mut state = self.shared.borrow_mut();
            let state = &mut *state;
            state.session(self.client)?;
            for key in keys {
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
        state.session(self.client)?;
        let status = cluster_status(&state, self.client);
        status.write(results.get().init_status());
        Ok(())
    }

    async fn logs(
        self: CapRc<Self>,
        params: client_session::LogsParams,
        mut results: client_session::LogsResults,
    ) -> Result<(), capnp::Error> {
        let key = TaskKey(params.get()?.get_key());
        let state = self.shared.borrow();
        let task = state
            .task_of(self.client, key)
            .ok_or_else(|| failed(format!("no task with key {key} in this session")))?;
        if let Some((stdout, stderr)) = state.logs.get(&task) {
            let mut r = results.get();
            r.set_stdout(stdout);
            r.set_stderr(stderr);
        }
        Ok(())
    }

    async fn task_stream(
        self: CapRc<Self>,
        params: client_session::TaskStreamParams,
        mut results: client_session::TaskStreamResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let name = params.get_job()?.to_str()?;
        let from = params.get_from() as usize;
        let state = self.shared.borrow();
        let tenant = state.session(self.client)?.tenant;
        let job = state
            .jobs
            .tasks_of(tenant, name)
            .map_err(|e| failed(e.to_string()))?;
        let tasks: std::collections::HashSet<TaskId> = job.iter().map(|(_, t)| *t).collect();
        let runs: Vec<_> = state.stream.runs_of(&tasks).collect();
        let ended = tasks
            .iter()
            .filter(|t| state.core.outcome(**t).is_some())
            .count();
        // A task may have run more than once (a retry, a lost result).
        let kept: std::collections::HashSet<TaskId> = runs.iter().map(|r| r.task).collect();
        let rest = runs.get(from..).unwrap_or_default();
        let mut bytes = 0;
        let fit = rest
            .iter()
            .take(TASK_STREAM_PAGE)
            .take_while(|run| {
                bytes += 128 + run.name.len() + run.worker.len() + run.status.len();
                bytes <= wrun_proto::BATCH_BYTES
            })
            .count();
        let page = &rest[..fit.max(rest.len().min(1))];
        let mut r = results.get();
        r.set_dropped(ended.saturating_sub(kept.len()) as u64);
        r.set_more(from + page.len() < runs.len());
        let mut list = r.init_records(page.len() as u32);
        for (i, run) in page.iter().enumerate() {
            run.record().write(list.reborrow().get(i as u32));
        }
        Ok(())
    }

    async fn detach(
        self: CapRc<Self>,
        params: client_session::DetachParams,
        mut results: client_session::DetachResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let keys = keys_of(params.get_keys()?);
        let name = params.get_job()?.to_str()?;
        let (name, durable) = {
            let mut state_guard = self.shared.borrow_mut();
            let state = &mut *state_guard;
            state.clients.get(&self.client).ok_or_else(closed)?;
            state.reserve_ids(1).map_err(|e| failed(e.to_string()))?;
            let conn = state.clients.get_mut(&self.client).expect("checked");
            let tenant = conn.tenant;
            let moved: Vec<(TaskKey, TaskId)> = keys
                .iter()
                .filter_map(|k| conn.keys.get(k).map(|t| (*k, *t)))
                .collect();
            let name = state
                .jobs
                .detach(tenant, &mut conn.keys, &keys, name, &mut state.next_id)
                .map_err(failed)?;
            info!(target: "wrun::audit", tenant = tenant.0, job = %name, tasks = keys.len(), "job detached");
            state.journal(|state| {
                crate::recovery::detached_record(state.tenants.name_of(tenant), &name, &moved)
            });
            (name, state.journal_hand_over())
        };
        if let Some(durable) = durable {
            durable.await.map_err(|e| failed(e.to_string()))?;
        }
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
        let conn = state.clients.get_mut(&self.client).ok_or_else(closed)?;
        let tenant = conn.tenant;
        let job = state
            .jobs
            .adopt(tenant, &mut conn.keys, &name)
            .map_err(failed)?;
        let mut keys = results.get().init_keys(job.len() as u32);
        for (i, (key, _)) in job.iter().enumerate() {
            keys.set(i as u32, key.0);
        }
        let finished: Vec<Ended> = job
            .iter()
            .filter_map(|(key, task)| ended(state, *key, *task))
            .collect();
        let mut events = results.get().init_finished(finished.len() as u32);
        for (i, (key, outcome)) in finished.iter().enumerate() {
            let mut e = events.reborrow().get(i as u32);
            e.set_key(key.0);
            match outcome {
                Ok(size) => e.set_done(*size),
                Err((kind, message)) => {
                    let mut f = e.init_failed();
                    f.set_kind(kind);
                    f.set_message(message);
                }
            }
        }
        for (_, task) in &job {
            state.core.set_client(*task, self.client);
        }
        info!(target: "wrun::audit", tenant = tenant.0, job = %name, tasks = job.len(), "job adopted");
        let client = self.client;
        state.journal(|state| {
            crate::recovery::adopted_record(state.tenants.name_of(tenant), &name, client)
        });
        drop(state.journal_hand_over());
        Ok(())
    }

    async fn cancel(
        self: CapRc<Self>,
        params: client_session::CancelParams,
        _: client_session::CancelResults,
    ) -> Result<(), capnp::Error> {
        let keys = keys_of(params.get()?.get_keys()?);
        {
            let mut state = self.shared.borrow_mut();
            let conn = state.clients.get_mut(&self.client).ok_or_else(closed)?;
            let tasks: Vec<TaskId> = keys
                .iter()
                .filter_map(|key| conn.keys.remove(key))
                .collect();
            state.cancel(&tasks);
        }
        flush(&self.shared);
        Ok(())
    }
}

/// What a session adopting a job hears of a task that already ended: its
/// result's size, or its failure's kind and message.
type Ended = (TaskKey, Result<u64, (String, String)>);

fn ended(state: &crate::state::State, key: TaskKey, task: TaskId) -> Option<Ended> {
    state.core.outcome(task).map(|outcome| {
        (
            key,
            outcome.map_err(|failure| (failure_kind(&failure).to_owned(), failure.to_string())),
        )
    })
}

//! `WorkerSession`: what a registered worker tells the scheduler (task
//! events, heartbeats, retiring) and asks of it (modules).

use std::time::Instant;

use capnp::capability::Rc as CapRc;
use tokio::sync::mpsc;
use tracing::info;
use wrun_core::{Failure, TaskId, WorkerId};
use wrun_proto::wrun_capnp::{held_result, worker_event, worker_session};
use wrun_proto::{chunk_at, failed};

use crate::encode::flush;
use crate::modules::digest_from;
use crate::state::{Deferred, Shared, State};

pub(crate) struct WorkerSessionImpl {
    pub(crate) shared: Shared,
    pub(crate) worker: WorkerId,
    pub(crate) deferred: mpsc::UnboundedSender<Deferred>,
}

impl Drop for WorkerSessionImpl {
    fn drop(&mut self) {
        let _ = self.deferred.send(Deferred::WorkerGone(self.worker));
    }
}

/// The results a rejoining worker says it kept.
pub(crate) fn held_results(
    list: capnp::struct_list::Reader<'_, held_result::Owned>,
) -> Vec<(TaskId, u64)> {
    list.iter()
        .map(|h| (TaskId(h.get_task()), h.get_size()))
        .collect()
}

fn removed() -> capnp::Error {
    failed("this worker was removed")
}

/// Hands one worker event to the core.
fn apply_event(
    state: &mut State,
    worker: WorkerId,
    event: worker_event::Reader<'_>,
) -> Result<(), capnp::Error> {
    use worker_event::Which;
    let task = TaskId(event.get_task());
    match event.which()? {
        Which::Started(()) => state.core.task_started(worker, task),
        Which::Finished(done) => {
            state.record_run(worker, task, "done", done.get_size(), event);
            state.keep_logs(task, done.get_stdout()?, done.get_stderr()?);
            // A result that came along goes to the client with `done` (if
            // the core takes this finish as the task's), and it need not
            // fetch it. Only what the worker said it made.
            let value = done.get_value()?;
            let whole = !value.is_empty() && value.len() as u64 == done.get_size();
            if whole {
                state.outbox.finishing = Some((task, value.to_vec()));
            }
            state
                .core
                .task_finished(worker, task, done.get_size(), &mut state.outbox);
            state.outbox.finishing = None;
            // A recomputed result replaces any copy of the old one. Kept
            // only if a task still to run needs it, the core took the
            // result as this worker's (not a stale finish), and it is what
            // the worker said it made.
            state.small_results.remove(task);
            if whole
                && state.core.has_pending_dependents(task)
                && state.core.holders(task).contains(&worker)
            {
                state.small_results.keep(task, value);
            }
        }
        Which::Failed(failure) => {
            let kind = failure.get_kind()?.to_str()?;
            state.record_run(worker, task, kind, 0, event);
            if kind == wrun_proto::CANCELLED_KIND {
                // A run stopped by our own cancel: the task was taken back
                // when the cancel was sent, and may be assigned to this very
                // worker again by now; its end says nothing about that run.
                return Ok(());
            }
            state.keep_logs(task, failure.get_stdout()?, failure.get_stderr()?);
            let failure = Failure::Error {
                kind: kind.to_owned(),
                message: failure.get_message()?.to_str()?.to_owned(),
            };
            state
                .core
                .task_failed(worker, task, failure, &mut state.outbox);
        }
        Which::Stolen(given_back) => {
            state
                .core
                .steal_response(worker, task, given_back, &mut state.outbox)
        }
        Which::Replicated(ok) => state.core.replicated(worker, task, ok, &mut state.outbox),
    }
    Ok(())
}

/// Placement deferred for one `events` call, and done when this is
/// dropped. During a panic (a bug while applying an event) it only lifts
/// the deferral: placing then could panic again, and a deferral left in
/// place would stop all placement for good.
struct DeferredPlacement<'a>(&'a mut State);

impl<'a> DeferredPlacement<'a> {
    fn new(state: &'a mut State) -> DeferredPlacement<'a> {
        state.core.defer_placement();
        DeferredPlacement(state)
    }
}

impl Drop for DeferredPlacement<'_> {
    fn drop(&mut self) {
        let state = &mut *self.0;
        if std::thread::panicking() {
            state.core.lift_deferral();
        } else {
            state.core.place_deferred(&mut state.outbox);
        }
    }
}

impl worker_session::Server for WorkerSessionImpl {
    async fn events(
        self: CapRc<Self>,
        params: worker_session::EventsParams,
        _: worker_session::EventsResults,
    ) -> Result<(), capnp::Error> {
        let events = params.get()?.get_events()?;
        let applied = {
            let mut state = self.shared.borrow_mut();
            if !state.workers.contains_key(&self.worker) {
                return Err(removed());
            }
            state.core.heartbeat(self.worker, Instant::now());
            // The batch is placed once, after its last event (a malformed
            // event ends it early: what came before is placed and sent).
            let batch = DeferredPlacement::new(&mut state);
            let applied = events
                .iter()
                .try_for_each(|event| apply_event(batch.0, self.worker, event));
            drop(batch);
            state.progress.notify_waiters();
            applied
        };
        flush(&self.shared);
        applied
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
                return Err(removed());
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
                    return Err(failed("this worker was removed while retiring"));
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
        params: worker_session::HeartbeatParams,
        _: worker_session::HeartbeatResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let mut state = self.shared.borrow_mut();
        let Some(conn) = state.workers.get_mut(&self.worker) else {
            return Err(removed());
        };
        conn.held_bytes = params.get_held_bytes();
        conn.spilled_bytes = params.get_spilled_bytes();
        state.core.heartbeat(self.worker, Instant::now());
        Ok(())
    }

    async fn held(
        self: CapRc<Self>,
        params: worker_session::HeldParams,
        _: worker_session::HeldResults,
    ) -> Result<(), capnp::Error> {
        let held = held_results(params.get()?.get_results()?);
        {
            let mut state = self.shared.borrow_mut();
            if !state.workers.contains_key(&self.worker) {
                return Err(removed());
            }
            state.results_held(self.worker, &held);
        }
        flush(&self.shared);
        Ok(())
    }

    async fn fetch_module(
        self: CapRc<Self>,
        params: worker_session::FetchModuleParams,
        mut results: worker_session::FetchModuleResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let digest = digest_from(params.get_digest()?).map_err(failed)?;
        let state = self.shared.borrow();
        let module = state
            .modules
            .get(&digest)
            .ok_or_else(|| failed("unknown module"))?;
        let mut chunk = results.get().init_chunk();
        chunk.set_data(chunk_at(&module.bytes, params.get_offset())?);
        chunk.set_total(module.bytes.len() as u64);
        Ok(())
    }

    async fn fetch_value(
        self: CapRc<Self>,
        params: worker_session::FetchValueParams,
        mut results: worker_session::FetchValueResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let digest = crate::values::digest_from(params.get_digest()?).map_err(failed)?;
        let value = self
            .shared
            .borrow()
            .values
            .get(&digest)
            .ok_or_else(|| failed("unknown value (its tasks are gone)"))?;
        let mut chunk = results.get().init_chunk();
        chunk.set_data(chunk_at(&value, params.get_offset())?);
        chunk.set_total(value.len() as u64);
        Ok(())
    }
}

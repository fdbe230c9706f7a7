//! Sending what the core decided: [`flush`] empties the [`Outbox`] into one
//! batched call per worker and kind (run, steal, cancel, free, replicate)
//! and events calls to clients, one batch in flight at a time per client,
//! so a map of 100,000 tasks is a handful of messages, not 100,000. Each
//! batch is split by size ([`split_by_size`]) so that no message exceeds
//! what its reader accepts: an oversized message would cost the
//! connection, and with it the worker.

use std::time::Duration;

use tracing::debug;
use wrun_core::{Arg, TaskId, WorkerId};
use wrun_proto::TaskKey;
use wrun_proto::wrun_capnp::worker_control;

use crate::state::{ClientEvent, Outbox, Shared, State};

/// Sends everything the core decided, one batched call per worker and kind.
pub(crate) fn flush(shared: &Shared) {
    let mut state = shared.borrow_mut();
    let mut outbox = std::mem::take(&mut state.outbox);
    for task in &outbox.forgotten {
        state.values.forgotten(*task);
    }
    if state.journaled.is_some() {
        journal_outcomes(&mut state, &outbox);
    }
    if outbox
        .client
        .values()
        .flatten()
        .any(|(_, e)| matches!(e, ClientEvent::Done(..)))
    {
        state.finished.notify_waiters();
    }
    // Cancels first: a task taken back and assigned again to the same
    // worker in one turn (a staged task whose input is retried there) must
    // not have its new run cancelled by the old one's cancel.
    for (worker, tasks) in &outbox.cancel {
        if let Some(conn) = state.workers.get(worker) {
            send_task_list(TaskListCall::Cancel, *worker, &conn.control, tasks);
        }
    }
    send_runs(&state, &outbox);
    let lists = [
        (TaskListCall::Steal, &outbox.steal),
        (TaskListCall::Free, &outbox.free),
    ];
    for (call, batches) in lists {
        for (worker, tasks) in batches {
            if let Some(conn) = state.workers.get(worker) {
                send_task_list(call, *worker, &conn.control, tasks);
            }
        }
    }
    send_replicates(&state, &outbox);
    send_client_events(&mut state, shared, std::mem::take(&mut outbox.client));
    // After the runs: nothing still to run needs a result freed or forgotten.
    for task in outbox.free.values().flatten().chain(&outbox.forgotten) {
        state.small_results.remove(*task);
    }
}

/// The core's decisions the journal keeps: results made, failures,
/// tasks forgotten. They are handed to the writer at once, but nobody
/// waits for them: a result whose record is lost is found again on its
/// worker when it rejoins.
fn journal_outcomes(state: &mut State, outbox: &Outbox) {
    use crate::recovery::{failed_record, finished_record, forgotten_record};
    if !outbox.finished.is_empty() {
        state.journal(|_| finished_record(&outbox.finished));
    }
    for (task, kind, message) in &outbox.failed {
        state.journal(|_| failed_record(*task, kind, message));
    }
    if !outbox.forgotten.is_empty() {
        state.journal(|_| forgotten_record(&outbox.forgotten));
    }
    // Nobody waits on these; a failed write shows in the next call that must be durable.
    drop(state.journal_hand_over());
}

fn send_runs(state: &State, outbox: &Outbox) {
    for (worker, tasks) in &outbox.run {
        let Some(conn) = state.workers.get(worker) else {
            continue;
        };
        // A task assigned and cancelled (or taken back) in the same turn is
        // no longer assigned here; the worker hears only of the cancel.
        let tasks: Vec<_> = tasks
            .iter()
            .filter(|(task, _)| {
                state
                    .core
                    .assignment(*task)
                    .is_some_and(|(w, _)| w == *worker)
            })
            .filter_map(|(task, inputs)| state.core.spec(*task).map(|spec| (spec, inputs)))
            .collect();
        for batch in split_by_size(&tasks, |(spec, _)| assignment_size(state, spec)) {
            let mut request = conn.control.run_request();
            let mut list = request.get().init_tasks(batch.len() as u32);
            for (i, (spec, inputs)) in batch.iter().enumerate() {
                write_assignment(state, *worker, spec, inputs, list.reborrow().get(i as u32));
            }
            spawn_call(format!("run on {worker}"), request.send().promise);
        }
    }
}

/// Roughly the bytes an assignment takes in a message: its literals, and
/// for each input a small result passed inline or else a peer's address,
/// ticket and certificate at most.
fn assignment_size(state: &State, spec: &wrun_core::TaskSpec<crate::state::Payload>) -> usize {
    128 + spec.payload.template.name.len()
        + spec
            .args
            .iter()
            .map(|arg| match arg {
                // The Input struct and its pointer, and the bytes padded
                // to a word.
                Arg::Value(bytes) => 48 + bytes.len(),
                Arg::Result(dep) => match state.small_results.get(*dep) {
                    Some(value) => 48 + value.len(),
                    // With the holder's address, ticket and certificate.
                    None => 2048,
                },
                Arg::Stored(_) => 64,
            })
            .sum::<usize>()
}

/// Consecutive runs of `items` of at most [`wrun_proto::BATCH_BYTES`]
/// each (by `size`), so that no message the scheduler builds exceeds what
/// its reader accepts; an item larger than that goes alone (submission
/// bounds each task's literals well under the reader's limit).
pub(crate) fn split_by_size<T>(items: &[T], size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut batches = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let item_bytes = size(item);
        if i > start && bytes + item_bytes > wrun_proto::BATCH_BYTES {
            batches.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += item_bytes;
    }
    if start < items.len() {
        batches.push(&items[start..]);
    }
    batches
}

fn write_assignment(
    state: &State,
    worker: WorkerId,
    spec: &wrun_core::TaskSpec<crate::state::Payload>,
    inputs: &[(TaskId, WorkerId)],
    mut a: wrun_proto::wrun_capnp::assignment::Builder<'_>,
) {
    let template = &spec.payload.template;
    a.set_task(spec.id.0);
    a.set_module(&template.module.digest.0);
    a.set_name(&template.name);
    wrun_proto::limits::write(&template.limits, a.reborrow().init_limits());
    a.set_tenant(spec.tenant.0);
    a.set_weight(state.core.tenant_share(spec.tenant).weight);
    a.set_share_result(state.core.has_pending_dependents(spec.id));
    a.set_wait_for_inputs(
        state
            .core
            .assignment(spec.id)
            .is_some_and(|(_, staged)| staged),
    );
    let mut wire_inputs = a.init_inputs(spec.args.len() as u32);
    for (j, arg) in spec.args.iter().enumerate() {
        let mut input = wire_inputs.reborrow().get(j as u32);
        match arg {
            Arg::Value(bytes) => input.set_value(bytes),
            Arg::Stored(digest) => input.set_stored(&digest[..]),
            Arg::Result(dep) => {
                let holder = holder_of(inputs, *dep).unwrap_or(worker);
                if holder == worker {
                    input.set_local(dep.0);
                } else if let Some(value) = state.small_results.get(*dep) {
                    input.set_value(value);
                } else {
                    let mut remote = input.init_remote();
                    remote.set_task(dep.0);
                    remote.set_address(state.peer_address(holder));
                    remote.set_ticket(&wrun_proto::tickets::ticket(&state.secret, *dep));
                    remote.set_certificate(state.peer_certificate(holder));
                }
            }
        }
    }
}

fn holder_of(inputs: &[(TaskId, WorkerId)], dep: TaskId) -> Option<WorkerId> {
    inputs.iter().find(|(d, _)| *d == dep).map(|(_, h)| *h)
}

/// The `WorkerControl` calls that take a list of task ids.
#[derive(Clone, Copy)]
enum TaskListCall {
    Steal,
    Cancel,
    Free,
}

fn send_task_list(
    call: TaskListCall,
    worker: WorkerId,
    control: &worker_control::Client,
    tasks: &[TaskId],
) {
    macro_rules! send {
        ($request:expr, $what:literal) => {{
            for tasks in split_by_size(tasks, |_| 8) {
                let mut request = $request;
                let mut list = request.get().init_tasks(tasks.len() as u32);
                for (i, t) in tasks.iter().enumerate() {
                    list.set(i as u32, t.0);
                }
                spawn_call(format!("{} {worker}", $what), request.send().promise);
            }
        }};
    }
    match call {
        TaskListCall::Steal => send!(control.steal_request(), "steal from"),
        TaskListCall::Cancel => send!(control.cancel_request(), "cancel on"),
        TaskListCall::Free => send!(control.free_request(), "free on"),
    }
}

fn send_replicates(state: &State, outbox: &Outbox) {
    for (worker, copies) in &outbox.replicate {
        let Some(conn) = state.workers.get(worker) else {
            continue;
        };
        // Each copy carries the holder's address and certificate.
        let copy_size = |(_, from): &(TaskId, WorkerId)| {
            64 + state.peer_address(*from).len() + state.peer_certificate(*from).len()
        };
        for batch in split_by_size(copies, copy_size) {
            let mut request = conn.control.replicate_request();
            let mut list = request.get().init_copies(batch.len() as u32);
            for (i, (task, from)) in batch.iter().enumerate() {
                let mut c = list.reborrow().get(i as u32);
                c.set_task(task.0);
                c.set_address(state.peer_address(*from));
                c.set_ticket(&wrun_proto::tickets::ticket(&state.secret, *task));
                c.set_certificate(state.peer_certificate(*from));
            }
            spawn_call(format!("replicate on {worker}"), request.send().promise);
        }
    }
}

/// Hands each client its events: sent at once if no call to it is in
/// flight, else held until its calls return (see [`ClientEvents`]).
///
/// [`ClientEvents`]: crate::state::ClientEvents
fn send_client_events(
    state: &mut State,
    shared: &Shared,
    events: std::collections::BTreeMap<wrun_core::ClientId, Vec<(TaskId, ClientEvent)>>,
) {
    for (client, events) in events {
        // Keys now: a task may be forgotten before its event leaves.
        let keyed = events.into_iter().map(|(task, event)| {
            let key = state
                .core
                .spec(task)
                .map_or(TaskKey(u64::MAX), |spec| spec.payload.key);
            (key, event)
        });
        let Some(conn) = state.clients.get_mut(&client) else {
            continue;
        };
        if conn.listener.is_none() {
            continue; // restored, its client not back: it asks when it is
        }
        conn.events.held.extend(keyed);
        if conn.events.in_flight == 0 {
            send_held_events(state, shared, client);
        }
    }
}

/// How long an events call to a client may go unanswered before the
/// events held behind it go anyway.
const CLIENT_EVENTS_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends what a client's events hold, in calls of at most
/// [`wrun_proto::BATCH_BYTES`]; once they have all returned, what came
/// meanwhile goes the same way.
fn send_held_events(state: &mut State, shared: &Shared, client: wrun_core::ClientId) {
    let Some(conn) = state.clients.get_mut(&client) else {
        return;
    };
    let Some(listener) = conn.listener.clone() else {
        conn.events.held.clear();
        return;
    };
    let held = std::mem::take(&mut conn.events.held);
    for batch in split_by_size(&held, |(_, event)| match event {
        ClientEvent::Done(_, value) => 32 + value.len(),
        ClientEvent::Failed(kind, message) => 64 + kind.len() + message.len(),
    }) {
        conn.events.in_flight += 1;
        let call = client_events_request(&listener, batch).send().promise;
        let shared = shared.clone();
        tokio::task::spawn_local(async move {
            // A client that reads its calls but never answers them must not
            // hold its later events here for good: past the time-out the
            // call counts as returned (it was sent; the client may still
            // take it), and the next batch goes.
            match tokio::time::timeout(CLIENT_EVENTS_TIMEOUT, call).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => debug!("events to client {}: {error}", client.0),
                Err(_) => debug!("events to client {}: no answer in time", client.0),
            }
            let mut state = shared.borrow_mut();
            let Some(conn) = state.clients.get_mut(&client) else {
                return;
            };
            conn.events.in_flight -= 1;
            if conn.events.in_flight == 0 && !conn.events.held.is_empty() {
                send_held_events(&mut state, &shared, client);
            }
        });
    }
}

fn client_events_request(
    listener: &wrun_proto::wrun_capnp::task_listener::Client,
    events: &[(TaskKey, ClientEvent)],
) -> capnp::capability::Request<
    wrun_proto::wrun_capnp::task_listener::events_params::Owned,
    wrun_proto::wrun_capnp::task_listener::events_results::Owned,
> {
    let mut request = listener.events_request();
    let mut list = request.get().init_events(events.len() as u32);
    for (i, (key, event)) in events.iter().enumerate() {
        let mut e = list.reborrow().get(i as u32);
        e.set_key(key.0);
        match event {
            ClientEvent::Done(size, value) => {
                e.set_done(*size);
                if !value.is_empty() {
                    e.set_value(value);
                }
            }
            ClientEvent::Failed(kind, message) => {
                let mut f = e.init_failed();
                f.set_kind(kind);
                f.set_message(message);
            }
        }
    }
    request
}

/// How long the scheduler waits for a worker to answer a fetch. A worker
/// that is stopped (not dead) keeps its connection open; the heartbeat
/// timeout removes it, and this bounds the calls already sent to it.
const WORKER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A call to a worker, given up after [`WORKER_CALL_TIMEOUT`].
pub(crate) async fn with_timeout<T>(
    call: impl std::future::Future<Output = Result<T, capnp::Error>>,
) -> Result<T, capnp::Error> {
    match tokio::time::timeout(WORKER_CALL_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(capnp::Error::disconnected(
            "the worker did not answer in time".to_owned(),
        )),
    }
}

/// Sends a call whose answer nobody waits for; a failure is only logged
/// (the connection's end is what tells the scheduler a peer is gone).
pub(crate) fn spawn_call<T: 'static>(
    what: String,
    promise: impl std::future::Future<Output = Result<T, capnp::Error>> + 'static,
) {
    tokio::task::spawn_local(async move {
        if let Err(error) = promise.await {
            debug!("{what}: {error}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::split_by_size;

    #[test]
    fn batches_are_split_by_size_and_an_oversized_item_goes_alone() {
        let budget = wrun_proto::BATCH_BYTES;
        let sizes = [budget / 2, budget / 2, 1, budget + 5, 3, 4];
        let batches: Vec<Vec<usize>> = split_by_size(&sizes, |s| *s)
            .into_iter()
            .map(<[usize]>::to_vec)
            .collect();
        assert_eq!(
            batches,
            vec![
                vec![budget / 2, budget / 2],
                vec![1],
                vec![budget + 5],
                vec![3, 4]
            ]
        );
        assert!(split_by_size(&[] as &[usize], |s| *s).is_empty());
        // Small items: all in one batch, in order.
        let small: Vec<usize> = (0..1000).collect();
        assert_eq!(split_by_size(&small, |_| 8), vec![&small[..]]);
    }
}

//! Sending what the core decided: [`flush`] empties the [`Outbox`] into one
//! batched call per worker and kind (run, steal, cancel, free, replicate)
//! and one events call per client, so a map of 100,000 tasks is a handful
//! of messages, not 100,000.

use std::time::Duration;

use tracing::debug;
use wrun_core::{Arg, TaskId, WorkerId};
use wrun_proto::wrun_capnp::worker_control;

use crate::state::{ClientEvent, Outbox, Shared, State};

/// Sends everything the core decided, one batched call per worker and kind.
pub(crate) fn flush(shared: &Shared) {
    let mut state = shared.borrow_mut();
    let outbox = std::mem::take(&mut state.outbox);
    if outbox
        .client
        .values()
        .flatten()
        .any(|(_, e)| matches!(e, ClientEvent::Done(_)))
    {
        state.finished.notify_waiters();
    }
    send_runs(&state, &outbox);
    let lists = [
        (TaskListCall::Steal, &outbox.steal),
        (TaskListCall::Cancel, &outbox.cancel),
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
    send_client_events(&state, &outbox);
}

fn send_runs(state: &State, outbox: &Outbox) {
    for (worker, tasks) in &outbox.run {
        let Some(conn) = state.workers.get(worker) else {
            continue;
        };
        // A task assigned and cancelled in the same turn is gone from the
        // core; the worker hears only of the cancel.
        let tasks: Vec<_> = tasks
            .iter()
            .filter_map(|(task, inputs)| state.core.spec(*task).map(|spec| (spec, inputs)))
            .collect();
        let mut request = conn.control.run_request();
        let mut list = request.get().init_tasks(tasks.len() as u32);
        for (i, (spec, inputs)) in tasks.iter().enumerate() {
            let template = &spec.payload.template;
            let mut a = list.reborrow().get(i as u32);
            a.set_task(spec.id.0);
            a.set_module(&template.module.digest.0);
            a.set_name(&template.name);
            wrun_proto::limits::write(&template.limits, a.reborrow().init_limits());
            let mut wire_inputs = a.init_inputs(spec.args.len() as u32);
            for (j, arg) in spec.args.iter().enumerate() {
                let mut input = wire_inputs.reborrow().get(j as u32);
                match arg {
                    Arg::Value(bytes) => input.set_value(bytes),
                    Arg::Result(dep) => {
                        let holder = holder_of(inputs, *dep).unwrap_or(*worker);
                        if holder == *worker {
                            input.set_local(dep.0);
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
        spawn_call(format!("run on {worker}"), request.send().promise);
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
            let mut request = $request;
            let mut list = request.get().init_tasks(tasks.len() as u32);
            for (i, t) in tasks.iter().enumerate() {
                list.set(i as u32, t.0);
            }
            spawn_call(format!("{} {worker}", $what), request.send().promise);
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
        let mut request = conn.control.replicate_request();
        let mut list = request.get().init_copies(copies.len() as u32);
        for (i, (task, from)) in copies.iter().enumerate() {
            let mut c = list.reborrow().get(i as u32);
            c.set_task(task.0);
            c.set_address(state.peer_address(*from));
            c.set_ticket(&wrun_proto::tickets::ticket(&state.secret, *task));
            c.set_certificate(state.peer_certificate(*from));
        }
        spawn_call(format!("replicate on {worker}"), request.send().promise);
    }
}

fn send_client_events(state: &State, outbox: &Outbox) {
    for (client, events) in &outbox.client {
        let Some(conn) = state.clients.get(client) else {
            continue;
        };
        let mut request = conn.listener.events_request();
        let mut list = request.get().init_events(events.len() as u32);
        for (i, (task, event)) in events.iter().enumerate() {
            let mut e = list.reborrow().get(i as u32);
            e.set_key(
                state
                    .core
                    .spec(*task)
                    .map(|spec| spec.payload.key.0)
                    .unwrap_or(u64::MAX),
            );
            match event {
                ClientEvent::Done(size) => e.set_done(*size),
                ClientEvent::Failed(kind, message) => {
                    let mut f = e.init_failed();
                    f.set_kind(kind);
                    f.set_message(message);
                }
            }
        }
        spawn_call(
            format!("events to client {}", client.0),
            request.send().promise,
        );
    }
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

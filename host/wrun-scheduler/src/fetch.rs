//! Results for clients: the scheduler asks the worker that holds a result
//! and passes the answer on (results stay on workers until gathered).

use std::collections::BTreeMap;
use std::time::Duration;

use tracing::debug;
use wrun_core::{ClientId, TaskId, WorkerId};
use wrun_proto::wrun_capnp::{value, worker_control};
use wrun_proto::{TaskKey, failed};

use crate::encode::with_timeout;
use crate::state::Shared;

/// Most keys one `fetchMany` may ask for.
pub(crate) const MAX_FETCH_MANY: usize = 1 << 16;
/// Most value bytes in one `fetchMany` answer; values past it come back as
/// `large`, for the client to read in chunks (answers stay under the
/// reader's message limit, whatever the number of workers).
pub(crate) const MAX_FETCH_MANY_BYTES: usize = 8 << 20;

/// A worker's answer to a chunked fetch (the handler copies the chunk
/// straight from it into its own answer).
pub(crate) type FetchedChunk = capnp::capability::Response<worker_control::fetch_results::Owned>;

/// Fetches the chunk at `offset` of the result of the session's task `key`.
/// The holder may die, and the result be recomputed, between the client
/// hearing "done" and fetching: then this waits for it and asks again.
pub(crate) async fn fetch_chunk(
    shared: &Shared,
    client: ClientId,
    key: TaskKey,
    offset: u64,
) -> Result<FetchedChunk, capnp::Error> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (finished, found) = {
            let state = shared.borrow();
            let task = state
                .task_of(client, key)
                .ok_or_else(|| failed(format!("no task with key {key} in this session")))?;
            let holder = state.core.holders(task).first().copied();
            let found = match holder.and_then(|h| state.workers.get(&h)) {
                Some(conn) => Some((conn.control.clone(), task)),
                None if state.core.is_active(task) || state.result_awaited(task) => None,
                None => {
                    return Err(failed(format!(
                        "task {key} has no result (failed, or released)"
                    )));
                }
            };
            (state.finished.clone(), found)
        };
        let Some((control, task)) = found else {
            let wait = finished.notified();
            tokio::select! {
                _ = wait => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            continue;
        };
        let mut request = control.fetch_request();
        request.get().set_task(task.0);
        request.get().set_offset(offset);
        match with_timeout(request.send().promise).await {
            Ok(response) => return Ok(response),
            Err(error) if attempts < 100 => debug!(%key, "fetch failed, retrying: {error}"),
            Err(error) => return Err(error),
        }
    }
}

/// One value of a batched fetch.
pub(crate) enum Slot {
    Data(Vec<u8>),
    /// Too large for the batch: fetch it in chunks.
    Large(u64),
    /// Why there is no value now.
    Missing(String),
}

/// Fetches many small results in one round trip per holder, in the order asked.
pub(crate) async fn fetch_many(
    shared: &Shared,
    client: ClientId,
    keys: &[TaskKey],
) -> Result<Vec<Slot>, capnp::Error> {
    if keys.len() > MAX_FETCH_MANY {
        return Err(failed(format!(
            "at most {MAX_FETCH_MANY} keys per fetchMany"
        )));
    }
    let mut slots: Vec<Slot> = Vec::with_capacity(keys.len());
    let mut by_worker: BTreeMap<WorkerId, (worker_control::Client, Vec<(usize, TaskId)>)> =
        BTreeMap::new();
    {
        let state = shared.borrow();
        for (index, key) in keys.iter().enumerate() {
            let Some(task) = state.task_of(client, *key) else {
                slots.push(Slot::Missing(format!(
                    "no task with key {key} in this session"
                )));
                continue;
            };
            let holder = state
                .core
                .holders(task)
                .first()
                .and_then(|h| state.workers.get(h).map(|c| (*h, c)));
            match holder {
                Some((worker, conn)) => {
                    by_worker
                        .entry(worker)
                        .or_insert_with(|| (conn.control.clone(), Vec::new()))
                        .1
                        .push((index, task));
                    slots.push(Slot::Missing(String::new()));
                }
                None => slots.push(Slot::Missing(format!("task {key} has no result here now"))),
            }
        }
    }
    let requests = by_worker.into_values().map(|(control, items)| {
        let mut request = control.fetch_many_request();
        let mut list = request.get().init_tasks(items.len() as u32);
        for (i, (_, task)) in items.iter().enumerate() {
            list.set(i as u32, task.0);
        }
        async move { (items, with_timeout(request.send().promise).await) }
    });
    for (items, response) in futures::future::join_all(requests).await {
        let values = match &response {
            Ok(r) => r.get().and_then(|r| r.get_values()),
            Err(error) => Err(error.clone()),
        };
        for (i, (index, _)) in items.iter().enumerate() {
            slots[*index] = match &values {
                // A worker that answers with fewer values than asked is
                // wrong, not fatal: the missing ones are read one by one.
                Ok(values) if (i as u32) < values.len() => match values.get(i as u32).which()? {
                    value::Which::Data(data) => Slot::Data(data?.to_vec()),
                    value::Which::Large(size) => Slot::Large(size),
                    value::Which::Missing(reason) => Slot::Missing(reason?.to_string()?),
                },
                Ok(_) => Slot::Missing("the worker's answer was short".to_owned()),
                Err(error) => Slot::Missing(error.to_string()),
            };
        }
    }
    let mut total = 0usize;
    for slot in &mut slots {
        if let Slot::Data(data) = slot {
            total += data.len();
            if total > MAX_FETCH_MANY_BYTES {
                *slot = Slot::Large(data.len() as u64);
            }
        }
    }
    Ok(slots)
}

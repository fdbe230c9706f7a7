//! Gathering results: small ones in batches (one round trip per 4096),
//! large ones, and any not available at the moment, in chunks.

use std::collections::HashMap;

use futures::StreamExt;
use serde_json::Value as Json;
use wrun_proto::fetch_chunked;
use wrun_proto::wrun_capnp::value;

use crate::client::Client;
use crate::connection::TaskState;
use crate::error::{ClientError, TaskFailure, rpc_error};
use crate::task_future::TaskFuture;

/// Keys per `fetchMany`.
const FETCH_BATCH: usize = 4096;
/// Large results read at once.
const FETCHES_IN_FLIGHT: usize = 64;

impl Client {
    /// Waits for the tasks and fetches their results (MessagePack).
    pub fn gather_raw(
        &self,
        futures: &[TaskFuture],
    ) -> Result<Vec<Result<Vec<u8>, TaskFailure>>, ClientError> {
        let states = self.wait(futures)?;
        // Small results came with their events; the rest are fetched.
        let mut came: Vec<Option<Vec<u8>>> = Vec::with_capacity(futures.len());
        let mut wanted = Vec::new();
        {
            let table = self.inner.table();
            for (future, state) in futures.iter().zip(&states) {
                let value = match table.tasks.get(&future.key()) {
                    Some(TaskState::Done(Some(value))) => Some(value.to_vec()),
                    _ => {
                        if state.is_ok() {
                            wanted.push(future.key());
                        }
                        None
                    }
                };
                came.push(value);
            }
        }
        let mut fetched = if wanted.is_empty() {
            HashMap::new()
        } else {
            self.fetch_values(wanted)?
        };
        Ok(futures
            .iter()
            .zip(states)
            .zip(came)
            .map(|((f, state), value)| {
                state.map(|()| {
                    value
                        .or_else(|| fetched.remove(&f.key()))
                        .unwrap_or_default()
                })
            })
            .collect())
    }

    /// Fetches the results of `wanted`: small ones in batches, the rest
    /// (and any not available at the moment) in chunks.
    fn fetch_values(
        &self,
        wanted: Vec<wrun_proto::TaskKey>,
    ) -> Result<HashMap<wrun_proto::TaskKey, Vec<u8>>, ClientError> {
        let wanted = std::sync::Arc::new(wanted);
        self.call(move |session| {
            let wanted = wanted.clone();
            Box::pin(async move {
                let mut map = HashMap::with_capacity(wanted.len());
                let mut one_by_one = Vec::new();
                for batch in wanted.chunks(FETCH_BATCH) {
                    let mut request = session.fetch_many_request();
                    let mut list = request.get().init_keys(batch.len() as u32);
                    for (i, key) in batch.iter().enumerate() {
                        list.set(i as u32, key.0);
                    }
                    let response = request.send().promise.await.map_err(rpc_error)?;
                    let values = response
                        .get()
                        .and_then(|r| r.get_values())
                        .map_err(rpc_error)?;
                    for (i, key) in batch.iter().enumerate() {
                        let which = (i < values.len() as usize)
                            .then(|| values.get(i as u32).which())
                            .transpose()
                            .map_err(|e| ClientError::Refused(e.to_string()))?;
                        match which {
                            Some(value::Which::Data(data)) => {
                                map.insert(*key, data.map_err(rpc_error)?.to_vec());
                            }
                            // Large, or not available right now (e.g. being
                            // recomputed after a worker died): read it alone.
                            _ => one_by_one.push(*key),
                        }
                    }
                }
                let fetches = futures::stream::iter(one_by_one.into_iter().map(|key| {
                    let session = session.clone();
                    async move {
                        let value = fetch_chunked(|offset| {
                            let mut request = session.fetch_request();
                            request.get().set_key(key.0);
                            request.get().set_offset(offset);
                            request.send().promise
                        })
                        .await;
                        (key, value)
                    }
                }))
                .buffered(FETCHES_IN_FLIGHT)
                .collect::<Vec<_>>()
                .await;
                for (key, value) in fetches {
                    map.insert(key, value.map_err(rpc_error)?);
                }
                Ok(map)
            })
        })
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
}

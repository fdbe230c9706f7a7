//! Detached jobs and a task's logs: hand tasks to the scheduler under a
//! name that outlives this session, take a job into this session, cancel
//! tasks, read what a task printed.

use std::sync::atomic::Ordering;

use wrun_proto::TaskKey;
use wrun_proto::stream::TaskRecord;

use crate::client::Client;
use crate::connection::{TaskState, read_event};
use crate::error::{ClientError, rpc_error, utf8_error};
use crate::task_future::TaskFuture;

impl Client {
    /// A finished task's captured stdout and stderr.
    pub fn logs(&self, future: &TaskFuture) -> Result<(Vec<u8>, Vec<u8>), ClientError> {
        let key = future.key();
        self.call(move |session| {
            Box::pin(async move {
                let mut request = session.logs_request();
                request.get().set_key(key.0);
                let response = request.send().promise.await.map_err(rpc_error)?;
                let r = response.get().map_err(rpc_error)?;
                Ok((
                    r.get_stdout().map_err(rpc_error)?.to_vec(),
                    r.get_stderr().map_err(rpc_error)?.to_vec(),
                ))
            })
        })
    }

    /// The task stream of the detached job `job` (it stays detached), as
    /// Dask's `get_task_stream`: each run of its tasks the scheduler still
    /// keeps, oldest first, and how many of its finished tasks it no longer
    /// keeps (it keeps the cluster's newest `--task-stream` runs).
    pub fn task_stream(&self, job: &str) -> Result<TaskStream, ClientError> {
        let mut stream = TaskStream::default();
        loop {
            let job = job.to_owned();
            let from = stream.records.len() as u64;
            let (page, dropped, more) = self.call(move |session| {
                let job = job.clone();
                Box::pin(async move {
                    let mut request = session.task_stream_request();
                    request.get().set_job(&job);
                    request.get().set_from(from);
                    let response = request.send().promise.await.map_err(rpc_error)?;
                    let r = response.get().map_err(rpc_error)?;
                    let records = r
                        .get_records()
                        .map_err(rpc_error)?
                        .iter()
                        .map(TaskRecord::read)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(rpc_error)?;
                    Ok((records, r.get_dropped(), r.get_more()))
                })
            })?;
            let empty = page.is_empty();
            stream.records.extend(page);
            stream.dropped = dropped;
            if !more || empty {
                return Ok(stream);
            }
        }
    }

    /// Hands `futures` to the scheduler as a job named `job` (a new name when
    /// empty) that outlives this session; returns the job's name. The handles
    /// are consumed without releasing anything.
    pub fn detach(&self, futures: Vec<TaskFuture>, job: &str) -> Result<String, ClientError> {
        let keys: Vec<TaskKey> = futures.iter().map(TaskFuture::key).collect();
        let job = job.to_owned();
        let name = self.call(move |session| {
            let keys = keys.clone();
            let job = job.clone();
            Box::pin(async move {
                let mut request = session.detach_request();
                let mut list = request.get().init_keys(keys.len() as u32);
                for (i, key) in keys.iter().enumerate() {
                    list.set(i as u32, key.0);
                }
                request.get().set_job(&job);
                let response = request.send().promise.await.map_err(rpc_error)?;
                let name = response
                    .get()
                    .and_then(|r| r.get_job())
                    .map_err(rpc_error)?;
                name.to_str().map(str::to_owned).map_err(utf8_error)
            })
        })?;
        for future in futures {
            future.forget();
        }
        Ok(name)
    }

    /// Takes a detached job into this session: its futures, in submission order.
    pub fn adopt(&self, job: &str) -> Result<Vec<TaskFuture>, ClientError> {
        let job = job.to_owned();
        let (keys, finished) = self.call(move |session| {
            let job = job.clone();
            Box::pin(async move {
                let mut request = session.adopt_request();
                request.get().set_job(&job);
                let response = request.send().promise.await.map_err(rpc_error)?;
                let r = response.get().map_err(rpc_error)?;
                let keys: Vec<TaskKey> = r
                    .get_keys()
                    .map_err(rpc_error)?
                    .iter()
                    .map(TaskKey)
                    .collect();
                let finished = r
                    .get_finished()
                    .map_err(rpc_error)?
                    .iter()
                    .map(read_event)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(rpc_error)?;
                Ok((keys, finished))
            })
        })?;
        {
            let mut table = self.inner.table();
            for key in &keys {
                table.tasks.entry(*key).or_insert(TaskState::Pending);
            }
            for (key, state) in finished {
                table.record(key, state);
            }
        }
        // Keys this session makes from now on must not collide with adopted ones.
        if let Some(max) = keys.iter().max() {
            self.inner.next_key.fetch_max(max.0 + 1, Ordering::Relaxed);
        }
        Ok(keys.into_iter().map(|key| self.future(key)).collect())
    }

    /// Cancels tasks: stops them (and what depends on them) and frees their results.
    pub fn cancel(&self, futures: Vec<TaskFuture>) -> Result<(), ClientError> {
        let keys: Vec<TaskKey> = futures.iter().map(TaskFuture::key).collect();
        self.call(move |session| {
            let keys = keys.clone();
            Box::pin(async move {
                let mut request = session.cancel_request();
                let mut list = request.get().init_keys(keys.len() as u32);
                for (i, key) in keys.iter().enumerate() {
                    list.set(i as u32, key.0);
                }
                request.send().promise.await.map_err(rpc_error)?;
                Ok(())
            })
        })?;
        for future in futures {
            future.forget();
        }
        Ok(())
    }
}

/// A job's task stream ([`Client::task_stream`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskStream {
    /// Each run, oldest first.
    pub records: Vec<TaskRecord>,
    /// Finished tasks of the job whose runs the scheduler no longer keeps.
    pub dropped: u64,
}

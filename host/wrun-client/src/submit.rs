//! Submitting: one task, a map in batched messages, or the nodes of a
//! graph. Literal arguments are checked against the task's signature and
//! encoded here, before anything is sent.

use serde_json::Value as Json;
use wrun_abi::{ArgError, ModuleDigest, TaskLimits};
use wrun_proto::TaskKey;

use crate::client::Client;
use crate::connection::TaskState;
use crate::error::{ClientError, rpc_error};
use crate::task_future::TaskFuture;
use crate::upload::Module;

/// Limits and retries given to submitted tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskOptions {
    /// The limits of each task (defaults: [`TaskLimits::DEFAULT`]).
    pub limits: TaskLimits,
    /// Runs again after a task error (guest errors are deterministic: default 0).
    pub retries: u32,
}

/// An argument: a JSON value, or another task's result.
#[derive(Debug, Clone)]
pub enum Argument {
    /// A value, converted to MessagePack by the parameter's type.
    Value(Json),
    /// The result of this task (it moves worker to worker, not through the client).
    Future(TaskFuture),
}

impl From<Json> for Argument {
    fn from(value: Json) -> Argument {
        Argument::Value(value)
    }
}

impl From<&TaskFuture> for Argument {
    fn from(future: &TaskFuture) -> Argument {
        Argument::Future(future.clone())
    }
}

impl From<TaskFuture> for Argument {
    fn from(future: TaskFuture) -> Argument {
        Argument::Future(future)
    }
}

/// An argument as [`Client::encode`] reads it: a value, or a task by key.
pub(crate) enum ArgRef<'a> {
    Value(&'a Json),
    Key(TaskKey),
}

fn arg_refs(args: &[Argument]) -> Vec<ArgRef<'_>> {
    args.iter()
        .map(|arg| match arg {
            Argument::Value(json) => ArgRef::Value(json),
            Argument::Future(future) => ArgRef::Key(future.key()),
        })
        .collect()
}

#[derive(Debug, Clone)]
enum SubmitArg {
    Value(Vec<u8>),
    Result(TaskKey),
    /// A large value, put in the scheduler (`putValue`) before the
    /// submission that names it.
    Stored(ModuleDigest, std::sync::Arc<Vec<u8>>),
}

/// A task, encoded and ready to send.
#[derive(Debug, Clone)]
pub(crate) struct Submission {
    key: TaskKey,
    module: ModuleDigest,
    task: String,
    args: Vec<SubmitArg>,
    options: TaskOptions,
}

/// Bytes of submissions per message.
const SUBMIT_BATCH_BYTES: usize = 4 << 20;
/// Submissions per message. Each message is one turn of the scheduler,
/// and a turn sends a run batch to every worker with room: with 10,000 per
/// message a map over 1,000 workers went out as batches of about 10 tasks
/// (and came back as as many events calls), 12 µs of scheduler CPU per
/// task against 7 µs at 50,000 (`wrun bench scheduler --workers 1000`).
const SUBMIT_BATCH_TASKS: usize = 50_000;
/// The largest argument passed inside the submit message; larger ones
/// are put in the scheduler in chunks and named by digest.
const MAX_INLINE_ARGUMENT: usize = 1 << 20;
/// The largest argument at all (the scheduler's `putValue` limit).
const MAX_STORED_ARGUMENT: usize = 256 << 20;

impl Submission {
    /// Roughly what the submission takes in a message.
    fn encoded_size(&self) -> usize {
        64 + self.task.len()
            + self
                .args
                .iter()
                .map(|a| match a {
                    SubmitArg::Value(bytes) => 16 + bytes.len(),
                    SubmitArg::Result(_) => 16,
                    SubmitArg::Stored(..) => 48,
                })
                .sum::<usize>()
    }
}

impl Client {
    /// Encodes one submission; literal arguments are checked against the signature.
    pub(crate) fn encode(
        &self,
        module: &Module,
        task: &str,
        args: &[ArgRef<'_>],
        key: TaskKey,
    ) -> Result<Submission, ClientError> {
        let signature = module.task(task)?;
        if args.len() != signature.params.len() {
            return Err(ArgError::Count {
                signature: signature.to_string(),
                expected: signature.params.len(),
                given: args.len(),
            }
            .into());
        }
        let mut encoded = Vec::with_capacity(args.len());
        for (arg, param) in args.iter().zip(&signature.params) {
            encoded.push(match arg {
                ArgRef::Value(json) => {
                    let value = wrun_abi::json_to_value(&param.ty, json).map_err(|mismatch| {
                        ArgError::Type {
                            task: task.to_owned(),
                            param: param.name.clone(),
                            mismatch: mismatch.to_string(),
                        }
                    })?;
                    let bytes = wrun_abi::encode_value(&value);
                    if bytes.len() > MAX_STORED_ARGUMENT {
                        return Err(ClientError::Refused(format!(
                            "argument `{}` of task `{task}` is {} bytes; a literal argument is at most {} bytes: \
                             produce large inputs with a task and pass its future instead",
                            param.name,
                            bytes.len(),
                            MAX_STORED_ARGUMENT
                        )));
                    }
                    if bytes.len() > MAX_INLINE_ARGUMENT {
                        SubmitArg::Stored(ModuleDigest::of(&bytes), std::sync::Arc::new(bytes))
                    } else {
                        SubmitArg::Value(bytes)
                    }
                }
                ArgRef::Key(key) => SubmitArg::Result(*key),
            });
        }
        let literal_bytes: usize = encoded
            .iter()
            .map(|a| match a {
                SubmitArg::Value(bytes) => bytes.len(),
                SubmitArg::Result(_) | SubmitArg::Stored(..) => 0,
            })
            .sum();
        if literal_bytes as u64 > wrun_proto::MAX_TASK_LITERAL_BYTES {
            return Err(ClientError::Refused(format!(
                "the arguments of task `{task}` passed inline are {literal_bytes} bytes together; \
                 one task carries at most {} bytes of them: produce large inputs with a task \
                 and pass its future instead",
                wrun_proto::MAX_TASK_LITERAL_BYTES
            )));
        }
        Ok(Submission {
            key,
            module: module.digest,
            task: task.to_owned(),
            args: encoded,
            options: self.options,
        })
    }

    /// Sends submissions in messages that stay far below the reader's
    /// limit (by bytes and by count).
    pub(crate) fn send_submissions(&self, submissions: Vec<Submission>) -> Result<(), ClientError> {
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        for submission in submissions {
            let size = submission.encoded_size();
            if !batch.is_empty()
                && (batch.len() >= SUBMIT_BATCH_TASKS || batch_bytes + size > SUBMIT_BATCH_BYTES)
            {
                self.send_batch(std::mem::take(&mut batch))?;
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push(submission);
        }
        if !batch.is_empty() {
            self.send_batch(batch)?;
        }
        Ok(())
    }

    fn send_batch(&self, submissions: Vec<Submission>) -> Result<(), ClientError> {
        {
            let mut table = self.inner.table();
            for s in &submissions {
                table.tasks.insert(s.key, TaskState::Pending);
            }
        }
        let keys: Vec<TaskKey> = submissions.iter().map(|s| s.key).collect();
        let submissions = std::sync::Arc::new(submissions);
        let result = self.call(move |session| {
            let submissions = submissions.clone();
            Box::pin(async move {
                // Large values first, each once (the scheduler skips what
                // this tenant has put already); within this call, so that a
                // call run again after a scheduler restart puts them again.
                let mut put = std::collections::HashSet::new();
                for arg in submissions.iter().flat_map(|s| &s.args) {
                    if let SubmitArg::Stored(digest, bytes) = arg
                        && put.insert(*digest)
                    {
                        put_value(&session, digest, bytes).await?;
                    }
                }
                let mut request = session.submit_request();
                let mut list = request.get().init_tasks(submissions.len() as u32);
                for (i, s) in submissions.iter().enumerate() {
                    let mut t = list.reborrow().get(i as u32);
                    t.set_key(s.key.0);
                    t.set_module(&s.module.0);
                    t.set_task(&s.task);
                    t.set_retries(s.options.retries);
                    wrun_proto::limits::write(&s.options.limits, t.reborrow().init_limits());
                    let mut args = t.init_args(s.args.len() as u32);
                    for (j, arg) in s.args.iter().enumerate() {
                        match arg {
                            SubmitArg::Value(bytes) => {
                                args.reborrow().get(j as u32).set_value(bytes)
                            }
                            SubmitArg::Result(key) => {
                                args.reborrow().get(j as u32).set_result(key.0)
                            }
                            SubmitArg::Stored(digest, _) => {
                                args.reborrow().get(j as u32).set_stored(&digest.0)
                            }
                        }
                    }
                }
                request.send().promise.await.map_err(rpc_error)?;
                Ok(())
            })
        });
        if result.is_err() {
            let mut table = self.inner.table();
            for key in keys {
                table.tasks.remove(&key);
            }
        }
        result
    }

    /// Submits one task.
    pub fn submit(
        &self,
        module: &Module,
        task: &str,
        args: Vec<Argument>,
    ) -> Result<TaskFuture, ClientError> {
        let key = self.new_key();
        let submission = self.encode(module, task, &arg_refs(&args), key)?;
        self.send_submissions(vec![submission])?;
        Ok(self.future(key))
    }

    /// Submits `task` once per argument list, in as few messages as fit;
    /// futures in order.
    pub fn map(
        &self,
        module: &Module,
        task: &str,
        calls: Vec<Vec<Argument>>,
    ) -> Result<Vec<TaskFuture>, ClientError> {
        let mut submissions = Vec::with_capacity(calls.len());
        for args in &calls {
            submissions.push(self.encode(module, task, &arg_refs(args), self.new_key())?);
        }
        let keys: Vec<TaskKey> = submissions.iter().map(|s| s.key).collect();
        self.send_submissions(submissions)?;
        Ok(keys.into_iter().map(|k| self.future(k)).collect())
    }
}

/// Puts one value in the scheduler in chunks (`putValue`).
async fn put_value(
    session: &wrun_proto::wrun_capnp::client_session::Client,
    digest: &ModuleDigest,
    bytes: &[u8],
) -> Result<(), ClientError> {
    crate::upload::send_in_chunks(bytes, "a large argument", |offset, chunk| {
        let mut request = session.put_value_request();
        let mut p = request.get();
        p.set_digest(&digest.0);
        p.set_offset(offset);
        p.set_total(bytes.len() as u64);
        p.set_data(chunk);
        async move {
            let response = request.send().promise.await.map_err(rpc_error)?;
            Ok(response.get().map_err(rpc_error)?.get_complete())
        }
    })
    .await
}

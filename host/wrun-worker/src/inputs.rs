//! An assignment's inputs: literal values, results this worker holds, and
//! results to fetch from the peers that hold them; assembled into the
//! MessagePack argument array the task is called with.

use std::borrow::Cow;
use std::collections::HashMap;

use wrun_abi::{ModuleDigest, TaskLimits};
use wrun_proto::TaskId;
use wrun_proto::wrun_capnp::{assignment, input};

use crate::queue::Job;
use crate::state::ResultStore;

pub(crate) enum PendingInput<'a> {
    Value(Cow<'a, [u8]>),
    Local(TaskId),
    Remote(RemoteInput),
}

/// A result to fetch from the peer at `address`, with the ticket it asks for.
pub(crate) struct RemoteInput {
    pub(crate) task: TaskId,
    pub(crate) address: String,
    pub(crate) ticket: Vec<u8>,
    /// The peer's certificate (DER; empty: plain).
    pub(crate) certificate: Vec<u8>,
}

/// An assignment as received, before its module and inputs are all here.
pub(crate) struct Pending<'a> {
    pub(crate) task: TaskId,
    pub(crate) digest: ModuleDigest,
    pub(crate) name: String,
    pub(crate) inputs: Vec<PendingInput<'a>>,
    pub(crate) limits: TaskLimits,
}

impl<'a> Pending<'a> {
    /// Reads an assignment; `Err` is the message of the task's failure.
    pub(crate) fn decode(a: assignment::Reader<'a>) -> Result<Pending<'a>, (TaskId, String)> {
        let task = TaskId(a.get_task());
        let bad = |e: capnp::Error| (task, format!("a malformed assignment: {e}"));
        let digest = <[u8; 32]>::try_from(a.get_module().map_err(bad)?)
            .map(ModuleDigest)
            .map_err(|_| {
                (
                    task,
                    "the assignment's module digest is not 32 bytes".to_owned(),
                )
            })?;
        let mut inputs = Vec::new();
        for i in a.get_inputs().map_err(bad)?.iter() {
            inputs.push(match i.which().map_err(|e| bad(e.into()))? {
                input::Which::Value(bytes) => {
                    PendingInput::Value(Cow::Borrowed(bytes.map_err(bad)?))
                }
                input::Which::Local(dep) => PendingInput::Local(TaskId(dep)),
                input::Which::Remote(remote) => PendingInput::Remote(RemoteInput {
                    task: TaskId(remote.get_task()),
                    address: remote
                        .get_address()
                        .and_then(|a| Ok(a.to_str()?.to_owned()))
                        .map_err(bad)?,
                    ticket: remote.get_ticket().map_err(bad)?.to_vec(),
                    certificate: remote.get_certificate().map_err(bad)?.to_vec(),
                }),
            });
        }
        Ok(Pending {
            task,
            digest,
            name: a
                .get_name()
                .and_then(|n| Ok(n.to_str()?.to_owned()))
                .map_err(bad)?,
            inputs,
            limits: wrun_proto::limits::read(a.get_limits().map_err(bad)?),
        })
    }

    /// Whether every input is here already.
    pub(crate) fn all_local(&self) -> bool {
        !self
            .inputs
            .iter()
            .any(|i| matches!(i, PendingInput::Remote(..)))
    }

    /// The same assignment, owning its bytes (to outlive its message).
    pub(crate) fn into_owned(self) -> Pending<'static> {
        Pending {
            task: self.task,
            digest: self.digest,
            name: self.name,
            inputs: self
                .inputs
                .into_iter()
                .map(|i| match i {
                    PendingInput::Value(bytes) => {
                        PendingInput::Value(Cow::Owned(bytes.into_owned()))
                    }
                    PendingInput::Local(dep) => PendingInput::Local(dep),
                    PendingInput::Remote(remote) => PendingInput::Remote(remote),
                })
                .collect(),
            limits: self.limits,
        }
    }

    /// The job to queue: the argument array assembled from the inputs,
    /// with `remote` holding the values fetched from peers.
    pub(crate) fn assemble(
        self,
        results: &ResultStore,
        remote: &HashMap<TaskId, Vec<u8>>,
    ) -> Result<Job, String> {
        let mut args = Vec::new();
        array_header(self.inputs.len(), &mut args);
        for input in &self.inputs {
            match input {
                PendingInput::Value(bytes) => args.extend_from_slice(bytes),
                PendingInput::Local(task) => {
                    let value = results
                        .get(*task)
                        .ok_or_else(|| format!("input {task} is not on this worker"))?;
                    args.extend_from_slice(&value);
                }
                PendingInput::Remote(input) => {
                    let task = input.task;
                    let value = remote
                        .get(&task)
                        .ok_or_else(|| format!("input {task} was not fetched"))?;
                    args.extend_from_slice(value);
                }
            }
        }
        Ok(Job {
            task: self.task,
            digest: self.digest,
            name: self.name,
            args,
            limits: self.limits,
        })
    }
}

/// Encodes the MessagePack array header for `n` elements.
fn array_header(n: usize, out: &mut Vec<u8>) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if n <= u16::MAX as usize {
        out.push(0xdc);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_headers_match_the_encoder() {
        for n in [0usize, 1, 15, 16, 65_535, 65_536] {
            let mut ours = Vec::new();
            array_header(n, &mut ours);
            let theirs =
                wrun_abi::encode_value(&wrun_abi::Value::Array(vec![wrun_abi::Value::Nil; n]));
            assert_eq!(ours[..], theirs[..ours.len()], "{n}");
        }
    }
}

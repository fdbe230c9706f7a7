//! An assignment's inputs: literal values, results this worker holds, and
//! results to fetch from the peers that hold them; assembled into the
//! MessagePack argument array the task is called with.

use std::borrow::Cow;
use std::collections::HashMap;

use wrun_abi::{ModuleDigest, TaskLimits};
use wrun_proto::TaskId;
use wrun_proto::wrun_capnp::{assignment, input};

use crate::queue::{Job, Share};
use crate::results::ResultStore;

pub(crate) enum PendingInput<'a> {
    Value(Cow<'a, [u8]>),
    Local(TaskId),
    Remote(RemoteInput),
    /// A large literal to read from the scheduler, by digest.
    Stored(ModuleDigest),
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
    pub(crate) share: Share,
    /// Send a small result with `finished` (`Assignment.shareResult`).
    pub(crate) share_result: bool,
    /// Staged: wait for missing local inputs (`Assignment.waitForInputs`).
    pub(crate) wait_for_inputs: bool,
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
                input::Which::Stored(digest) => PendingInput::Stored(
                    <[u8; 32]>::try_from(digest.map_err(bad)?)
                        .map(ModuleDigest)
                        .map_err(|_| {
                            (task, "a stored value's digest is not 32 bytes".to_owned())
                        })?,
                ),
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
            share: Share {
                tenant: a.get_tenant(),
                weight: a.get_weight().max(1),
            },
            share_result: a.get_share_result(),
            wait_for_inputs: a.get_wait_for_inputs(),
        })
    }

    /// Whether every input is here already.
    pub(crate) fn all_local(&self) -> bool {
        !self
            .inputs
            .iter()
            .any(|i| matches!(i, PendingInput::Remote(..) | PendingInput::Stored(..)))
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
                    PendingInput::Stored(digest) => PendingInput::Stored(digest),
                })
                .collect(),
            limits: self.limits,
            share: self.share,
            share_result: self.share_result,
            wait_for_inputs: self.wait_for_inputs,
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
        let mut local_inputs = Vec::new();
        array_header(self.inputs.len(), &mut args);
        for input in &self.inputs {
            match input {
                PendingInput::Value(bytes) => args.extend_from_slice(bytes),
                PendingInput::Local(task) => {
                    // A staged task's input may still be on its way: the
                    // queue parks it (`TaskQueue::push_when_ready`).
                    if !self.wait_for_inputs && !results.contains(*task) {
                        return Err(format!("input {task} is not on this worker"));
                    }
                    local_inputs.push((args.len(), *task));
                }
                PendingInput::Remote(input) => {
                    let task = input.task;
                    let value = remote
                        .get(&task)
                        .ok_or_else(|| format!("input {task} was not fetched"))?;
                    args.extend_from_slice(value);
                }
                PendingInput::Stored(digest) => {
                    return Err(format!("the stored value {digest} was not fetched"));
                }
            }
        }
        Ok(Job {
            task: self.task,
            digest: self.digest,
            name: self.name,
            args,
            local_inputs,
            limits: self.limits,
            share: self.share,
            share_result: self.share_result,
            transfer: Default::default(),
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
    use proptest::prelude::Strategy;

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

    /// An input of a fuzzed assignment: a literal, a local or a remote id.
    #[derive(Debug, Clone)]
    enum FuzzInput {
        Value(Vec<u8>),
        Local(u64),
        Remote(u64, String),
    }

    fn assignment_message(digest_len: usize, inputs: &[FuzzInput]) -> Vec<u8> {
        let mut message = capnp::message::Builder::new_default();
        let mut a = message.init_root::<assignment::Builder<'_>>();
        a.set_task(7);
        a.set_module(&vec![3u8; digest_len]);
        a.set_name("add");
        wrun_proto::limits::write(&TaskLimits::DEFAULT, a.reborrow().init_limits());
        let mut list = a.init_inputs(inputs.len() as u32);
        for (i, input) in inputs.iter().enumerate() {
            let mut slot = list.reborrow().get(i as u32);
            match input {
                FuzzInput::Value(bytes) => slot.set_value(bytes),
                FuzzInput::Local(id) => slot.set_local(*id),
                FuzzInput::Remote(id, address) => {
                    let mut remote = slot.init_remote();
                    remote.set_task(*id);
                    remote.set_address(address);
                    remote.set_ticket(&[1; 32]);
                }
            }
        }
        capnp::serialize::write_message_to_words(&message)
    }

    /// Reads, decodes and assembles `bytes` as an assignment with nothing
    /// held locally: a panic fails the test; an error is the task's failure.
    fn prepare(bytes: &[u8]) -> Result<Job, String> {
        let mut slice = bytes;
        let message = capnp::serialize::read_message_from_flat_slice(
            &mut slice,
            wrun_proto::reader_options(),
        )
        .map_err(|e| e.to_string())?;
        let root = message
            .get_root::<assignment::Reader<'_>>()
            .map_err(|e| e.to_string())?;
        let pending = Pending::decode(root).map_err(|(_, e)| e)?.into_owned();
        let count = pending.inputs.len();
        let job = pending.assemble(&ResultStore::default(), &HashMap::new())?;
        // Only literals can be assembled here, each after the array header.
        let mut header = Vec::new();
        array_header(count, &mut header);
        assert!(job.args.starts_with(&header));
        Ok(job)
    }

    #[test]
    fn an_assignment_of_literals_is_assembled_and_a_short_digest_refused() {
        let inputs = [FuzzInput::Value(vec![1]), FuzzInput::Value(vec![2])];
        assert_eq!(
            prepare(&assignment_message(32, &inputs)).unwrap().args,
            vec![0x92, 1, 2]
        );
        assert_eq!(
            prepare(&assignment_message(31, &inputs)).err().unwrap(),
            "the assignment's module digest is not 32 bytes"
        );
        assert_eq!(
            prepare(&assignment_message(32, &[FuzzInput::Local(9)]))
                .err()
                .unwrap(),
            "input t9 is not on this worker"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Random inputs, byte overwrites and truncation of an assignment:
        /// decoding and assembling never panic.
        #[test]
        fn mutated_assignments_fail_the_task_or_assemble(
            digest_len in proptest::prop_oneof![9 => proptest::strategy::Just(32usize), 1 => 0usize..40],
            inputs in proptest::collection::vec(
                proptest::prop_oneof![
                    3 => proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12)
                        .prop_map(FuzzInput::Value),
                    1 => proptest::prelude::any::<u64>().prop_map(FuzzInput::Local),
                    1 => (proptest::prelude::any::<u64>(), "[a-z0-9.:]{0,20}")
                        .prop_map(|(id, a)| FuzzInput::Remote(id, a)),
                ],
                0..6),
            overwrites in proptest::collection::vec(
                (proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..6),
            keep in proptest::prelude::any::<proptest::sample::Index>(),
            truncate in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = assignment_message(digest_len, &inputs);
            for (at, byte) in overwrites {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            if truncate {
                bytes.truncate(keep.index(bytes.len()));
            }
            let _ = prepare(&bytes);
        }
    }
}

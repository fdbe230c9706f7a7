//! A submission, decoded then decided: [`decode`] turns the message into
//! [`TaskRequest`]s (borrowing its bytes), [`validate`] checks them against
//! the session and the modules and makes the core's task specs, or names
//! the first thing wrong. Nothing is accepted unless everything is.

use std::collections::HashMap;
use std::rc::Rc;

use wrun_abi::{EncodedMismatch, ModuleDigest, TaskLimits};
use wrun_core::{Arg, ClientId, TaskId, TaskSpec};
use wrun_proto::TaskKey;
use wrun_proto::wrun_capnp::{arg, task_submission};

use crate::modules::{ModuleRegistry, digest_from};
use crate::state::{Payload, Template};

/// One task as a client submitted it.
pub(crate) struct TaskRequest<'a> {
    pub(crate) key: TaskKey,
    pub(crate) module: &'a [u8],
    pub(crate) task: &'a str,
    pub(crate) args: Vec<ArgRequest<'a>>,
    pub(crate) retries: u32,
    pub(crate) limits: TaskLimits,
}

/// An argument as submitted: a MessagePack value, or the result of the
/// session's task with this key.
pub(crate) enum ArgRequest<'a> {
    Value(&'a [u8]),
    Result(TaskKey),
}

/// Reads a `submit` message.
pub(crate) fn decode<'a>(
    list: capnp::struct_list::Reader<'a, task_submission::Owned>,
) -> Result<Vec<TaskRequest<'a>>, capnp::Error> {
    let mut requests = Vec::with_capacity(list.len() as usize);
    for sub in list.iter() {
        let args = sub
            .get_args()?
            .iter()
            .map(|a| {
                Ok(match a.which()? {
                    arg::Which::Value(bytes) => ArgRequest::Value(bytes?),
                    arg::Which::Result(key) => ArgRequest::Result(TaskKey(key)),
                })
            })
            .collect::<Result<_, capnp::Error>>()?;
        requests.push(TaskRequest {
            key: TaskKey(sub.get_key()),
            module: sub.get_module()?,
            task: sub.get_task()?.to_str()?,
            args,
            retries: sub.get_retries(),
            limits: wrun_proto::limits::read(sub.get_limits()?),
        });
    }
    Ok(requests)
}

/// Why a submission was refused; each names the offending task by key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SubmitError {
    #[error("task key {0} is already used in this session")]
    DuplicateKey(TaskKey),
    #[error("task {key}: {reason}")]
    BadDigest { key: TaskKey, reason: String },
    #[error("task {key}: unknown module digest {digest}; upload it first")]
    UnknownModule { key: TaskKey, digest: ModuleDigest },
    #[error("task {key}: unknown task `{name}`; the module has: {available}")]
    UnknownTask {
        key: TaskKey,
        name: String,
        available: String,
    },
    #[error("task {key}: `{signature}` takes {expected} argument(s), got {given}")]
    ArgumentCount {
        key: TaskKey,
        signature: String,
        expected: usize,
        given: usize,
    },
    #[error("task {key}: argument `{param}`: {reason}")]
    MalformedArgument {
        key: TaskKey,
        param: String,
        reason: String,
    },
    #[error("task {key}: argument `{param}` of task `{task}`: {mismatch}")]
    ArgumentType {
        key: TaskKey,
        param: String,
        task: String,
        mismatch: String,
    },
    #[error(
        "task {key}: argument `{param}` refers to task key {dependency}, which is not submitted before it"
    )]
    UnknownDependency {
        key: TaskKey,
        param: String,
        dependency: TaskKey,
    },
}

/// A checked submission: the core's specs, and the keys they answer to.
pub(crate) struct Accepted {
    pub(crate) specs: Vec<TaskSpec<Payload>>,
    pub(crate) keys: Vec<(TaskKey, TaskId)>,
}

/// Checks every request and makes its task spec. Ids come from `next_id`.
/// Tasks that share module, name and limits share one [`Template`].
pub(crate) fn validate(
    requests: &[TaskRequest<'_>],
    client: ClientId,
    session_keys: &HashMap<TaskKey, TaskId>,
    modules: &ModuleRegistry,
    next_id: &mut u64,
) -> Result<Accepted, SubmitError> {
    let mut new_keys: HashMap<TaskKey, TaskId> = HashMap::with_capacity(requests.len());
    let mut specs = Vec::with_capacity(requests.len());
    let mut keys = Vec::with_capacity(requests.len());
    let mut templates: HashMap<(&[u8], &str, TaskLimits), Rc<Template>> = HashMap::new();
    for request in requests {
        let key = request.key;
        if session_keys.contains_key(&key) || new_keys.contains_key(&key) {
            return Err(SubmitError::DuplicateKey(key));
        }
        let template = match templates.get(&(request.module, request.task, request.limits)) {
            Some(template) => template.clone(),
            None => {
                let template = Rc::new(template_for(request, modules)?);
                templates.insert(
                    (request.module, request.task, request.limits),
                    template.clone(),
                );
                template
            }
        };
        let signature = template
            .module
            .signatures
            .iter()
            .find(|s| s.name == template.name)
            .expect("the template was made for a declared task");
        if request.args.len() != signature.params.len() {
            return Err(SubmitError::ArgumentCount {
                key,
                signature: signature.to_string(),
                expected: signature.params.len(),
                given: request.args.len(),
            });
        }
        let mut args = Vec::with_capacity(request.args.len());
        for (arg, param) in request.args.iter().zip(&signature.params) {
            args.push(match arg {
                ArgRequest::Value(bytes) => {
                    wrun_abi::check_encoded(&param.ty, bytes).map_err(
                        |mismatch| match mismatch {
                            EncodedMismatch::Malformed(reason) => SubmitError::MalformedArgument {
                                key,
                                param: param.name.clone(),
                                reason,
                            },
                            EncodedMismatch::Type(mismatch) => SubmitError::ArgumentType {
                                key,
                                param: param.name.clone(),
                                task: signature.name.clone(),
                                mismatch: mismatch.to_string(),
                            },
                        },
                    )?;
                    Arg::Value((*bytes).into())
                }
                ArgRequest::Result(dependency) => Arg::Result(
                    session_keys
                        .get(dependency)
                        .or_else(|| new_keys.get(dependency))
                        .copied()
                        .ok_or_else(|| SubmitError::UnknownDependency {
                            key,
                            param: param.name.clone(),
                            dependency: *dependency,
                        })?,
                ),
            });
        }
        *next_id += 1;
        let id = TaskId(*next_id);
        new_keys.insert(key, id);
        keys.push((key, id));
        specs.push(TaskSpec {
            id,
            client,
            args: args.into(),
            retries: request.retries,
            payload: Payload { template, key },
        });
    }
    Ok(Accepted { specs, keys })
}

/// The module and task a request names, checked.
fn template_for(
    request: &TaskRequest<'_>,
    modules: &ModuleRegistry,
) -> Result<Template, SubmitError> {
    let key = request.key;
    let digest = digest_from(request.module).map_err(|e| SubmitError::BadDigest {
        key,
        reason: e.to_string(),
    })?;
    let module = modules
        .get(&digest)
        .ok_or(SubmitError::UnknownModule { key, digest })?
        .clone();
    if !module.signatures.iter().any(|s| s.name == request.task) {
        let available: Vec<&str> = module.signatures.iter().map(|s| s.name.as_str()).collect();
        return Err(SubmitError::UnknownTask {
            key,
            name: request.task.to_owned(),
            available: available.join(", "),
        });
    }
    Ok(Template {
        module,
        name: request.task.to_owned(),
        limits: request.limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (ModuleRegistry, ModuleDigest) {
        let bytes = wat::parse_str(
            r#"(module (memory (export "memory") 1)
                 (func (export "wrun_alloc") (param i32) (result i32) (i32.const 0))
                 (func (export "wrun.task.add") (param i32 i32) (result i32) (i32.const 0))
                 (@custom "wrun.tasks" "{\"abi\":1,\"name\":\"add\",\"params\":[{\"name\":\"x\",\"type\":\"i64\"},{\"name\":\"y\",\"type\":\"i64\"}],\"returns\":\"i64\"}"))"#,
        )
        .unwrap();
        let digest = ModuleDigest::of(&bytes);
        let mut registry = ModuleRegistry::default();
        assert_eq!(
            registry.upload_chunk(ClientId(1), digest, 0, bytes.len() as u64, &bytes),
            Ok(true)
        );
        (registry, digest)
    }

    fn add<'a>(key: u64, digest: &'a ModuleDigest, args: Vec<ArgRequest<'a>>) -> TaskRequest<'a> {
        TaskRequest {
            key: TaskKey(key),
            module: &digest.0,
            task: "add",
            args,
            retries: 0,
            limits: TaskLimits::DEFAULT,
        }
    }

    const ONE: &[u8] = &[0x01];
    const STRING_X: &[u8] = &[0xa1, b'x'];

    #[test]
    fn a_valid_batch_becomes_specs_that_share_one_template() {
        let (modules, digest) = registry();
        let requests = vec![
            add(
                1,
                &digest,
                vec![ArgRequest::Value(ONE), ArgRequest::Value(ONE)],
            ),
            add(
                2,
                &digest,
                vec![ArgRequest::Result(TaskKey(1)), ArgRequest::Value(ONE)],
            ),
        ];
        let mut next = 0;
        let accepted =
            validate(&requests, ClientId(7), &HashMap::new(), &modules, &mut next).unwrap();
        assert_eq!(
            accepted.keys,
            vec![(TaskKey(1), TaskId(1)), (TaskKey(2), TaskId(2))]
        );
        assert_eq!(accepted.specs[1].args[0], Arg::Result(TaskId(1)));
        assert_eq!(accepted.specs[1].client, ClientId(7));
        assert!(Rc::ptr_eq(
            &accepted.specs[0].payload.template,
            &accepted.specs[1].payload.template
        ));
    }

    #[test]
    fn each_bad_request_is_refused_by_name() {
        let (modules, digest) = registry();
        let unknown = ModuleDigest([7; 32]);
        let mut session = HashMap::new();
        session.insert(TaskKey(5), TaskId(50));
        let check = |requests: Vec<TaskRequest<'_>>| {
            let mut next = 100;
            validate(&requests, ClientId(1), &session, &modules, &mut next)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let two = || vec![ArgRequest::Value(ONE), ArgRequest::Value(ONE)];
        assert_eq!(
            check(vec![add(5, &digest, two())]),
            "task key 5 is already used in this session"
        );
        assert_eq!(
            check(vec![add(1, &digest, two()), add(1, &digest, two())]),
            "task key 1 is already used in this session"
        );
        assert!(
            check(vec![add(1, &unknown, two())]).starts_with("task 1: unknown module digest 0707")
        );
        let mut wrong_name = add(1, &digest, two());
        wrong_name.task = "mul";
        assert_eq!(
            check(vec![wrong_name]),
            "task 1: unknown task `mul`; the module has: add"
        );
        assert_eq!(
            check(vec![add(1, &digest, vec![ArgRequest::Value(ONE)])]),
            "task 1: `add(x: i64, y: i64) -> i64` takes 2 argument(s), got 1"
        );
        assert_eq!(
            check(vec![add(
                1,
                &digest,
                vec![ArgRequest::Value(ONE), ArgRequest::Value(STRING_X)]
            )]),
            "task 1: argument `y` of task `add`: expected i64, got string \"x\""
        );
        assert!(
            check(vec![add(
                1,
                &digest,
                vec![ArgRequest::Value(&[0xc1]), ArgRequest::Value(ONE)]
            )])
            .starts_with("task 1: argument `x`: malformed MessagePack")
        );
        assert_eq!(
            check(vec![add(
                1,
                &digest,
                vec![ArgRequest::Result(TaskKey(9)), ArgRequest::Value(ONE)]
            )]),
            "task 1: argument `x` refers to task key 9, which is not submitted before it"
        );
        let mut short = add(1, &digest, two());
        short.module = &[1, 2, 3];
        assert_eq!(
            check(vec![short]),
            "task 1: a module digest is 32 bytes, not 3"
        );
    }
}

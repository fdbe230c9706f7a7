//! A submission, decoded then decided: [`decode`] turns the message into
//! [`TaskRequest`]s (borrowing its bytes), [`validate`] checks them against
//! the session and the modules and makes the core's task specs, or names
//! the first thing wrong. Nothing is accepted unless everything is.

use std::collections::HashMap;
use std::rc::Rc;

use wrun_abi::{EncodedMismatch, ModuleDigest, TaskLimits, humanize_bytes, humanize_duration};
use wrun_core::{Arg, ClientId, TaskId, TaskSpec, TenantId, TenantUsage};
use wrun_proto::TaskKey;
use wrun_proto::wrun_capnp::{arg, task_submission};

use crate::modules::{ModuleRegistry, digest_from};
use crate::state::{Payload, Template};
use crate::tenants::{TaskCaps, Tenant, caps};

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
    /// A value put with `putValue`, by its digest.
    Stored(&'a [u8]),
}

/// The digests of the stored values among `args`.
pub(crate) fn stored_args(args: &[Arg]) -> Vec<ModuleDigest> {
    args.iter()
        .filter_map(|a| match a {
            Arg::Stored(d) => Some(ModuleDigest(**d)),
            _ => None,
        })
        .collect()
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
                    arg::Which::Stored(digest) => ArgRequest::Stored(digest?),
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
        "task {key}: argument `{param}` names a value that was not put (putValue) by this tenant"
    )]
    UnknownValue { key: TaskKey, param: String },
    #[error(
        "task {key}: argument `{param}` refers to task key {dependency}, which is not submitted before it"
    )]
    UnknownDependency {
        key: TaskKey,
        param: String,
        dependency: TaskKey,
    },
    #[error("task {key}: {what} {asked} is over {whose} of {cap} ({name})")]
    OverCap {
        key: TaskKey,
        what: &'static str,
        asked: String,
        whose: String,
        cap: String,
        name: &'static str,
    },
    #[error("task {key}: {what} of {asked} cannot travel in one message (at most {cap}); {hint}")]
    TooLargeForAMessage {
        key: TaskKey,
        what: &'static str,
        asked: String,
        cap: String,
        hint: &'static str,
    },
    #[error(
        "tenant `{tenant}` has {pending} task(s) pending; {more} more would exceed its quota of {quota} (max_pending)"
    )]
    PendingQuota {
        tenant: String,
        pending: u64,
        more: usize,
        quota: u64,
    },
    #[error(
        "tenant `{tenant}` keeps {stored} of results on workers, at its quota of {quota} (max_stored): gather or release some first"
    )]
    StoredQuota {
        tenant: String,
        stored: String,
        quota: String,
    },
}

/// Who submits: the session's tenant (its record, `None` for the
/// operator), what it uses now, and the cluster's caps on a task.
pub(crate) struct Submitter<'a> {
    pub(crate) client: ClientId,
    pub(crate) tenant: TenantId,
    pub(crate) record: Option<&'a Tenant>,
    pub(crate) usage: TenantUsage,
    pub(crate) caps: TaskCaps,
}

impl Submitter<'_> {
    /// Quotas on the whole submission, checked before anything else.
    fn check_quotas(&self, count: usize) -> Result<(), SubmitError> {
        let Some(tenant) = self.record else {
            return Ok(());
        };
        if let Some(quota) = tenant.quotas.max_pending
            && self.usage.active + count as u64 > quota
        {
            return Err(SubmitError::PendingQuota {
                tenant: tenant.name.clone(),
                pending: self.usage.active,
                more: count,
                quota,
            });
        }
        if let Some(quota) = tenant.quotas.max_stored
            && self.usage.stored_bytes >= quota.0
        {
            return Err(SubmitError::StoredQuota {
                tenant: tenant.name.clone(),
                stored: humanize_bytes(self.usage.stored_bytes),
                quota: humanize_bytes(quota.0),
            });
        }
        Ok(())
    }

    /// A task's limits against the tenant's quotas and the cluster's maxima.
    fn check_limits(&self, key: TaskKey, limits: &TaskLimits) -> Result<(), SubmitError> {
        let (cap, whose) = match self.record {
            Some(tenant) => (
                caps(&tenant.quotas, &self.caps),
                format!("tenant `{}`'s quota", tenant.name),
            ),
            None => (self.caps, "the cluster's maximum".to_owned()),
        };
        let tenant_memory = self.record.and_then(|t| t.quotas.max_memory).map(|m| m.0);
        if limits.memory_bytes > cap.memory_bytes {
            let by_tenant = tenant_memory.is_some_and(|m| m == cap.memory_bytes);
            return Err(SubmitError::OverCap {
                key,
                what: "memory limit",
                asked: humanize_bytes(limits.memory_bytes),
                whose: if by_tenant {
                    whose
                } else {
                    "the cluster's maximum".into()
                },
                cap: humanize_bytes(cap.memory_bytes),
                name: if by_tenant {
                    "max_memory"
                } else {
                    "--max-task-memory"
                },
            });
        }
        for (what, asked) in [
            ("a stdout capture limit", limits.stdout_bytes),
            ("a stderr capture limit", limits.stderr_bytes),
        ] {
            if asked > wrun_proto::MAX_CAPTURED_BYTES {
                return Err(SubmitError::TooLargeForAMessage {
                    key,
                    what,
                    asked: humanize_bytes(asked),
                    cap: humanize_bytes(wrun_proto::MAX_CAPTURED_BYTES),
                    hint: "write large output as the task's result",
                });
            }
        }
        let tenant_timeout = self.record.and_then(|t| t.quotas.max_timeout).map(|t| t.0);
        if limits.timeout > cap.timeout {
            let by_tenant = tenant_timeout.is_some_and(|t| t == cap.timeout);
            return Err(SubmitError::OverCap {
                key,
                what: "time limit",
                asked: humanize_duration(limits.timeout),
                whose: if by_tenant {
                    whose
                } else {
                    "the cluster's maximum".into()
                },
                cap: humanize_duration(cap.timeout),
                name: if by_tenant {
                    "max_timeout"
                } else {
                    "--max-task-timeout"
                },
            });
        }
        Ok(())
    }
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
    submitter: &Submitter<'_>,
    session_keys: &HashMap<TaskKey, TaskId>,
    modules: &ModuleRegistry,
    values: &crate::values::ValueStore,
    next_id: &mut u64,
) -> Result<Accepted, SubmitError> {
    submitter.check_quotas(requests.len())?;
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
                submitter.check_limits(request.key, &request.limits)?;
                let template = Rc::new(template_for(request, submitter.tenant, modules)?);
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
            .find(|s| *s.name == *template.name)
            .expect("the template was made for a declared task");
        if request.args.len() != signature.params.len() {
            return Err(SubmitError::ArgumentCount {
                key,
                signature: signature.to_string(),
                expected: signature.params.len(),
                given: request.args.len(),
            });
        }
        if request.args.len() > wrun_proto::MAX_TASK_ARGUMENTS {
            return Err(SubmitError::TooLargeForAMessage {
                key,
                what: "a call",
                asked: format!("{} arguments", request.args.len()),
                cap: wrun_proto::MAX_TASK_ARGUMENTS.to_string(),
                hint: "pass the inputs as one list, or reduce them in a tree of tasks",
            });
        }
        let literal_bytes: u64 = request
            .args
            .iter()
            .map(|a| match a {
                ArgRequest::Value(bytes) => bytes.len() as u64,
                ArgRequest::Result(_) | ArgRequest::Stored(_) => 0,
            })
            .sum();
        if literal_bytes > wrun_proto::MAX_TASK_LITERAL_BYTES {
            return Err(SubmitError::TooLargeForAMessage {
                key,
                what: "literal arguments",
                asked: humanize_bytes(literal_bytes),
                cap: humanize_bytes(wrun_proto::MAX_TASK_LITERAL_BYTES),
                hint: "produce large inputs with a task and pass its result",
            });
        }
        let mut args = Vec::with_capacity(request.args.len());
        for (arg, param) in request.args.iter().zip(&signature.params) {
            let check = |bytes: &[u8]| {
                wrun_abi::check_encoded(&param.ty, bytes).map_err(|mismatch| match mismatch {
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
                })
            };
            args.push(match arg {
                ArgRequest::Stored(digest) => {
                    let unknown = || SubmitError::UnknownValue {
                        key,
                        param: param.name.clone(),
                    };
                    let digest = crate::values::digest_from(digest).map_err(|_| unknown())?;
                    let bytes = values
                        .known_to(submitter.tenant, &digest)
                        .ok_or_else(unknown)?;
                    check(bytes)?;
                    Arg::Stored(Box::new(digest.0))
                }
                ArgRequest::Value(bytes) => {
                    check(bytes)?;
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
            client: submitter.client,
            tenant: submitter.tenant,
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
    tenant: TenantId,
    modules: &ModuleRegistry,
) -> Result<Template, SubmitError> {
    let key = request.key;
    let digest = digest_from(request.module).map_err(|e| SubmitError::BadDigest {
        key,
        reason: e.to_string(),
    })?;
    let module = modules
        .get_for(tenant, &digest)
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
        name: request.task.into(),
        limits: request.limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> (ModuleRegistry, ModuleDigest) {
        registry_of("add", &["x", "y"])
    }

    /// A module with one task `name` taking i64 parameters `params`.
    fn registry_of(name: &str, params: &[&str]) -> (ModuleRegistry, ModuleDigest) {
        let params: Vec<String> = params
            .iter()
            .map(|p| format!(r#"{{\"name\":\"{p}\",\"type\":\"i64\"}}"#))
            .collect();
        let bytes = wat::parse_str(format!(
            r#"(module (memory (export "memory") 1)
                 (func (export "wrun_alloc") (param i32) (result i32) (i32.const 0))
                 (func (export "wrun.task.{name}") (param i32 i32) (result i32) (i32.const 0))
                 (@custom "wrun.tasks" "{{\"abi\":1,\"name\":\"{name}\",\"params\":[{}],\"returns\":\"i64\"}}"))"#,
            params.join(",")
        ))
        .unwrap();
        let digest = ModuleDigest::of(&bytes);
        let mut registry = ModuleRegistry::default();
        let quota = crate::modules::UploadQuota {
            tenant: TENANT,
            name: "t",
            max_bytes: None,
        };
        let now = std::time::Instant::now();
        assert_eq!(
            registry.upload_chunk(
                ClientId(1),
                &quota,
                crate::modules::UploadChunk {
                    digest,
                    offset: 0,
                    total: bytes.len() as u64,
                    data: &bytes,
                },
                now
            ),
            Ok(true)
        );
        (registry, digest)
    }

    const TENANT: TenantId = TenantId(3);

    fn operator(client: u64) -> Submitter<'static> {
        Submitter {
            client: ClientId(client),
            tenant: TENANT,
            record: None,
            usage: TenantUsage::default(),
            caps: TaskCaps::default(),
        }
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
        let accepted = validate(
            &requests,
            &operator(7),
            &HashMap::new(),
            &modules,
            &crate::values::ValueStore::default(),
            &mut next,
        )
        .unwrap();
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
            validate(
                &requests,
                &operator(1),
                &session,
                &modules,
                &crate::values::ValueStore::default(),
                &mut next,
            )
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

    #[test]
    fn quotas_and_caps_are_named_when_a_submission_would_pass_them() {
        let (modules, digest) = registry();
        let tenant = Tenant {
            id: TENANT,
            name: "alice".into(),
            token_hash: [0; 32],
            weight: 1,
            quotas: crate::tenants::Quotas {
                max_pending: Some(2),
                max_stored: Some(wrun_abi::units::ByteSize(1000)),
                max_memory: Some(wrun_abi::units::ByteSize(512 << 20)),
                max_timeout: Some(wrun_abi::units::HumanDuration(
                    std::time::Duration::from_secs(100),
                )),
                ..Default::default()
            },
            sees_all: false,
        };
        let check = |usage: TenantUsage, requests: Vec<TaskRequest<'_>>| {
            let submitter = Submitter {
                record: Some(&tenant),
                usage,
                ..operator(1)
            };
            validate(
                &requests,
                &submitter,
                &HashMap::new(),
                &modules,
                &crate::values::ValueStore::default(),
                &mut 0,
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        let two = || vec![ArgRequest::Value(ONE), ArgRequest::Value(ONE)];
        assert_eq!(
            check(TenantUsage::default(), vec![add(1, &digest, two())]),
            ""
        );
        assert_eq!(
            check(
                TenantUsage {
                    active: 2,
                    ..Default::default()
                },
                vec![add(1, &digest, two())]
            ),
            "tenant `alice` has 2 task(s) pending; 1 more would exceed its quota of 2 (max_pending)"
        );
        assert_eq!(
            check(
                TenantUsage {
                    stored_bytes: 1000,
                    ..Default::default()
                },
                vec![add(1, &digest, two())]
            ),
            "tenant `alice` keeps 1000 B of results on workers, at its quota of 1000 B (max_stored): gather or release some first"
        );
        let mut greedy = add(1, &digest, two());
        greedy.limits.memory_bytes = 1 << 30;
        assert_eq!(
            check(TenantUsage::default(), vec![greedy]),
            "task 1: memory limit 1 GiB is over tenant `alice`'s quota of 512 MiB (max_memory)"
        );
        let mut slow = add(1, &digest, two());
        slow.limits.timeout = std::time::Duration::from_secs(200);
        assert_eq!(
            check(TenantUsage::default(), vec![slow]),
            "task 1: time limit 200 s is over tenant `alice`'s quota of 100 s (max_timeout)"
        );
        // The cluster's own maximum holds for the operator too.
        let mut huge = add(1, &digest, two());
        huge.limits.memory_bytes = 8 << 30;
        let error = validate(
            &[huge],
            &operator(1),
            &HashMap::new(),
            &modules,
            &crate::values::ValueStore::default(),
            &mut 0,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert_eq!(
            error,
            "task 1: memory limit 8 GiB is over the cluster's maximum of 4 GiB (--max-task-memory)"
        );
        // What could not travel to a worker in one message is refused here.
        let mut chatty = add(1, &digest, two());
        chatty.limits.stdout_bytes = 18 << 20;
        let error = validate(
            &[chatty],
            &operator(1),
            &HashMap::new(),
            &modules,
            &crate::values::ValueStore::default(),
            &mut 0,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert_eq!(
            error,
            "task 1: a stdout capture limit of 18 MiB cannot travel in one message (at most 4 MiB); \
             write large output as the task's result"
        );
        let big = vec![0u8; 7 << 20];
        let fat = add(
            1,
            &digest,
            vec![ArgRequest::Value(&big), ArgRequest::Value(&big)],
        );
        let error = validate(
            &[fat],
            &operator(1),
            &HashMap::new(),
            &modules,
            &crate::values::ValueStore::default(),
            &mut 0,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert_eq!(
            error,
            "task 1: literal arguments of 14 MiB cannot travel in one message (at most 12 MiB); \
             produce large inputs with a task and pass its result"
        );
        // Another tenant's module is not found.
        let other = Submitter {
            tenant: TenantId(9),
            ..operator(1)
        };
        let error = validate(
            &[add(1, &digest, two())],
            &other,
            &HashMap::new(),
            &modules,
            &crate::values::ValueStore::default(),
            &mut 0,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(error.contains("unknown module digest"), "{error}");
    }

    /// A submit message: `tasks` of (key, args as MessagePack, dependency
    /// keys), all calling `add` of the test module.
    /// A task of a fuzzed submission: key, literal arguments, result keys.
    type FuzzTask = (u64, Vec<Vec<u8>>, Vec<u64>);

    fn submit_message(digest: &ModuleDigest, tasks: &[FuzzTask]) -> Vec<u8> {
        use wrun_proto::wrun_capnp::client_session::submit_params;
        let mut message = capnp::message::Builder::new_default();
        let root = message.init_root::<submit_params::Builder<'_>>();
        let mut list = root.init_tasks(tasks.len() as u32);
        for (i, (key, values, results)) in tasks.iter().enumerate() {
            let mut t = list.reborrow().get(i as u32);
            t.set_key(*key);
            t.set_module(&digest.0);
            t.set_task("add");
            wrun_proto::limits::write(&TaskLimits::DEFAULT, t.reborrow().init_limits());
            let mut args = t.init_args((values.len() + results.len()) as u32);
            for (j, v) in values.iter().enumerate() {
                args.reborrow().get(j as u32).set_value(v);
            }
            for (j, r) in results.iter().enumerate() {
                args.reborrow()
                    .get((values.len() + j) as u32)
                    .set_result(*r);
            }
        }
        capnp::serialize::write_message_to_words(&message)
    }

    /// Decodes and validates `bytes` as a submit message; a panic anywhere
    /// fails the test, an error is the precise refusal a client gets.
    fn decide(bytes: &[u8], modules: &ModuleRegistry) -> Result<usize, String> {
        use wrun_proto::wrun_capnp::client_session::submit_params;
        let mut slice = bytes;
        let message = capnp::serialize::read_message_from_flat_slice(
            &mut slice,
            wrun_proto::reader_options(),
        )
        .map_err(|e| e.to_string())?;
        let root = message
            .get_root::<submit_params::Reader<'_>>()
            .map_err(|e| e.to_string())?;
        let requests =
            decode(root.get_tasks().map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        let accepted = validate(
            &requests,
            &operator(1),
            &HashMap::new(),
            modules,
            &crate::values::ValueStore::default(),
            &mut 0,
        )
        .map_err(|e| e.to_string())?;
        // Whatever got through is whole: one spec per request, each typed.
        assert_eq!(accepted.specs.len(), requests.len());
        for spec in &accepted.specs {
            assert_eq!(spec.args.len(), 2);
        }
        Ok(accepted.specs.len())
    }

    #[test]
    fn the_unmutated_message_is_accepted() {
        let (modules, digest) = registry();
        let tasks = vec![
            (
                1,
                vec![vec![0x01], vec![0xd3, 0, 0, 0, 0, 0, 0, 0, 9]],
                vec![],
            ),
            (2, vec![vec![0x02]], vec![1]),
        ];
        assert_eq!(decide(&submit_message(&digest, &tasks), &modules), Ok(2));
    }

    use proptest::prelude::Strategy;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Random arguments, random byte overwrites, random truncation of a
        /// submit message: decoding then deciding never panics, and what it
        /// accepts is whole.
        #[test]
        fn mutated_submissions_are_refused_or_accepted_whole(
            tasks in proptest::collection::vec(
                (0u64..8,
                 proptest::collection::vec(
                     proptest::prop_oneof![
                         // Valid integers most of the time, any bytes else.
                         3 => (0u8..0x80).prop_map(|b| vec![b]),
                         1 => proptest::prelude::any::<i64>().prop_map(|v| {
                             let mut b = vec![0xd3];
                             b.extend_from_slice(&v.to_be_bytes());
                             b
                         }),
                         1 => proptest::collection::vec(proptest::prelude::any::<u8>(), 0..10),
                     ],
                     0..3),
                 proptest::collection::vec(0u64..8, 0..2)),
                0..6),
            overwrites in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..4),
            keep in proptest::prelude::any::<proptest::sample::Index>(),
            truncate in proptest::prelude::any::<bool>(),
        ) {
            let (modules, digest) = registry();
            let mut bytes = submit_message(&digest, &tasks);
            for (at, byte) in overwrites {
                let at = at % bytes.len();
                bytes[at] = byte;
            }
            if truncate {
                bytes.truncate(keep.index(bytes.len()));
            }
            let _ = decide(&bytes, &modules);
        }
    }

    #[test]
    fn a_call_with_more_arguments_than_one_assignment_carries_is_refused_by_name() {
        let names: Vec<String> = (0..=wrun_proto::MAX_TASK_ARGUMENTS)
            .map(|i| format!("p{i}"))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let (modules, digest) = registry_of("wide", &names);
        let request = TaskRequest {
            key: TaskKey(1),
            module: &digest.0,
            task: "wide",
            args: names.iter().map(|_| ArgRequest::Value(ONE)).collect(),
            retries: 0,
            limits: TaskLimits::DEFAULT,
        };
        let mut next = 0;
        let error = validate(
            &[request],
            &operator(1),
            &HashMap::new(),
            &modules,
            &crate::values::ValueStore::default(),
            &mut next,
        )
        .err()
        .unwrap()
        .to_string();
        assert_eq!(
            error,
            "task 1: a call of 1025 arguments cannot travel in one message (at most 1024); pass the inputs as one list, or reduce them in a tree of tasks"
        );
    }
}

//! # wrun-abi: the guest ABI seen from the host
//!
//! Everything the host must know about a task module without running it:
//! the module digest, the task signatures in the `wrun.tasks` custom section,
//! the type descriptors, and the conversion of argument and result values
//! between JSON (the shell) and MessagePack (inside the cluster), checked
//! against the declared types. `guest-sdk/ABI.md` is the specification this
//! crate implements.
//!
//! It must not depend on wasmtime: the client library and `wrun submit` use
//! it to check arguments before anything is sent, and they must stay small.

#![deny(missing_docs)]

mod encoded;
mod limits;
mod types;
pub mod units;
mod values;

use std::fmt;

use serde::Deserialize;
use sha2::{Digest, Sha256};

pub use encoded::{EncodedMismatch, check_encoded};
pub use limits::{MIB, TaskLimits};
pub use rmpv::Value;
pub use types::{Type, TypeParseError};
pub use units::{humanize_bytes, humanize_duration};
pub use values::{
    MAX_VALUE_DEPTH, Mismatch, check_value, decode_value, encode_value, json_to_value,
    json_to_value_untyped, value_to_json,
};

/// The ABI version this host implements; each task record carries it.
pub const ABI_VERSION: u32 = 1;
/// The custom section holding the task records.
pub const TASKS_SECTION: &str = "wrun.tasks";
/// Prefix of a task's export name: task `inc` is exported as `wrun.task.inc`.
pub const TASK_EXPORT_PREFIX: &str = "wrun.task.";
/// The export the host calls to get a buffer for the encoded arguments.
pub const ALLOC_EXPORT: &str = "wrun_alloc";
/// The linear memory export.
pub const MEMORY_EXPORT: &str = "memory";
/// The optional export the host calls once after instantiation.
pub const INITIALIZE_EXPORT: &str = "_initialize";
/// Module name of the host functions a guest may import.
pub const HOST_MODULE: &str = "wrun";
/// Reply status: the payload is the MessagePack result.
pub const STATUS_OK: u32 = 0;
/// Reply status: the payload is the UTF-8 message of a task error.
pub const STATUS_TASK_ERROR: u32 = 1;
/// Reply status: the payload is the UTF-8 reason the guest rejected the arguments.
pub const STATUS_BAD_ARGUMENTS: u32 = 2;
/// Size of the reply record (three little-endian u32: status, ptr, len).
pub const REPLY_SIZE: usize = 12;

/// Bounds on what a module may declare; the module is untrusted input.
const MAX_SECTION_BYTES: usize = 1 << 20;
const MAX_TASKS: usize = 4096;
const MAX_NAME_LEN: usize = 128;

/// The SHA-256 of a module's bytes: the module's identity in the cluster.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleDigest(pub [u8; 32]);

impl ModuleDigest {
    /// The digest of these module bytes.
    pub fn of(bytes: &[u8]) -> ModuleDigest {
        ModuleDigest(Sha256::digest(bytes).into())
    }

    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ModuleDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ModuleDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ModuleDigest({})", &self.to_hex()[..12])
    }
}

/// One parameter of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// The parameter's name, used in error messages.
    pub name: String,
    /// Its declared type.
    pub ty: Type,
}

/// A task as its module declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSignature {
    /// The task's name; its export is `wrun.task.<name>`.
    pub name: String,
    /// Parameters in order.
    pub params: Vec<Param>,
    /// The result type.
    pub returns: Type,
}

impl TaskSignature {
    /// The export that runs this task.
    pub fn export_name(&self) -> String {
        format!("{TASK_EXPORT_PREFIX}{}", self.name)
    }
}

impl fmt::Display for TaskSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}(", self.name)?;
        for (i, param) in self.params.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}: {}", param.name, param.ty)?;
        }
        write!(f, ") -> {}", self.returns)
    }
}

/// Why a module cannot be used as a task module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    /// The bytes are not a WebAssembly module at all.
    #[error("not a WebAssembly module: {0}")]
    NotWasm(String),
    /// The module is WebAssembly but does not follow the wrun ABI.
    #[error("not a wrun task module: {0} (see guest-sdk/ABI.md)")]
    NotWrunModule(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordJson {
    abi: u32,
    name: String,
    params: Vec<ParamJson>,
    returns: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamJson {
    name: String,
    #[serde(rename = "type")]
    ty: String,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// Reads the task signatures from a module's `wrun.tasks` custom sections,
/// in name order. Does not compile or validate the code.
pub fn read_task_signatures(module: &[u8]) -> Result<Vec<TaskSignature>, ModuleError> {
    if module.len() < 8 || &module[..4] != b"\0asm" {
        return Err(ModuleError::NotWasm(
            "it does not start with the `\\0asm` magic".to_owned(),
        ));
    }
    if module[4..8] != [1, 0, 0, 0] {
        return Err(ModuleError::NotWasm(
            "it is not a core module of version 1 (a component, or a future format?)".to_owned(),
        ));
    }
    let mut section = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        let payload = payload.map_err(|error| ModuleError::NotWasm(error.to_string()))?;
        if let wasmparser::Payload::CustomSection(reader) = payload
            && reader.name() == TASKS_SECTION
        {
            section.extend_from_slice(reader.data());
            if section.len() > MAX_SECTION_BYTES {
                return Err(ModuleError::NotWrunModule(format!(
                    "its `{TASKS_SECTION}` section is larger than {MAX_SECTION_BYTES} bytes"
                )));
            }
        }
    }
    if section.is_empty() {
        return Err(ModuleError::NotWrunModule(format!(
            "it has no `{TASKS_SECTION}` custom section, so it declares no tasks"
        )));
    }
    parse_task_records(&section)
}

/// Parses the concatenated JSON records of a `wrun.tasks` section.
pub fn parse_task_records(section: &[u8]) -> Result<Vec<TaskSignature>, ModuleError> {
    let bad = |reason: String| {
        ModuleError::NotWrunModule(format!("bad `{TASKS_SECTION}` section: {reason}"))
    };
    let mut tasks: Vec<TaskSignature> = Vec::new();
    for record in serde_json::Deserializer::from_slice(section).into_iter::<RecordJson>() {
        let record = record.map_err(|error| bad(error.to_string()))?;
        if record.abi != ABI_VERSION {
            return Err(bad(format!(
                "task `{}` uses ABI version {}, this host implements version {ABI_VERSION}",
                record.name, record.abi
            )));
        }
        if !valid_name(&record.name) {
            return Err(bad(format!("{:?} is not a valid task name", record.name)));
        }
        let mut params = Vec::with_capacity(record.params.len());
        for param in record.params {
            if !valid_name(&param.name) {
                return Err(bad(format!(
                    "{:?} is not a valid parameter name",
                    param.name
                )));
            }
            let ty = Type::parse(&param.ty).map_err(|error| bad(error.to_string()))?;
            params.push(Param {
                name: param.name,
                ty,
            });
        }
        let returns = Type::parse(&record.returns).map_err(|error| bad(error.to_string()))?;
        tasks.push(TaskSignature {
            name: record.name,
            params,
            returns,
        });
        if tasks.len() > MAX_TASKS {
            return Err(bad(format!("more than {MAX_TASKS} tasks")));
        }
    }
    tasks.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(pair) = tasks.windows(2).find(|pair| pair[0].name == pair[1].name) {
        return Err(bad(format!("task `{}` is declared twice", pair[0].name)));
    }
    if tasks.is_empty() {
        return Err(bad("it declares no tasks".to_owned()));
    }
    Ok(tasks)
}

/// Arguments that do not fit a task's signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    /// Too many or too few arguments.
    #[error("task `{signature}` takes {expected} argument(s), got {given}")]
    Count {
        /// The whole signature, for the message.
        signature: String,
        /// Parameters declared.
        expected: usize,
        /// Arguments given.
        given: usize,
    },
    /// One argument has the wrong type.
    #[error("argument `{param}` of task `{task}`: {mismatch}")]
    Type {
        /// Task name.
        task: String,
        /// Parameter name.
        param: String,
        /// What was expected and found.
        mismatch: String,
    },
    /// The argument bytes are not a MessagePack array.
    #[error("arguments of task `{task}` are not a MessagePack array: {detail}")]
    Malformed {
        /// Task name.
        task: String,
        /// Why.
        detail: String,
    },
    /// The guest's own decoder rejected the arguments (types the host cannot see into).
    #[error("task `{task}` rejected its arguments: {detail}")]
    RejectedByGuest {
        /// Task name.
        task: String,
        /// The guest's message, which names the parameter.
        detail: String,
    },
}

/// Converts JSON arguments to the MessagePack argument array of `task`,
/// checking count and types.
pub fn encode_args_from_json(
    task: &TaskSignature,
    args: &[serde_json::Value],
) -> Result<Vec<u8>, ArgError> {
    check_count(task, args.len())?;
    let values = task
        .params
        .iter()
        .zip(args)
        .map(|(param, json)| {
            json_to_value(&param.ty, json).map_err(|mismatch| ArgError::Type {
                task: task.name.clone(),
                param: param.name.clone(),
                mismatch: mismatch.to_string(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(encode_value(&Value::Array(values)))
}

/// Checks an encoded argument array against `task`'s signature.
pub fn check_args(task: &TaskSignature, args: &[u8]) -> Result<(), ArgError> {
    // The common case, without building a value tree.
    if encoded::array_fits(task.params.iter().map(|p| &p.ty), args) {
        return Ok(());
    }
    let malformed = |detail: String| ArgError::Malformed {
        task: task.name.clone(),
        detail,
    };
    let Value::Array(items) = decode_value(args).map_err(malformed)? else {
        return Err(malformed("the value is not an array".to_owned()));
    };
    check_count(task, items.len())?;
    for (param, item) in task.params.iter().zip(&items) {
        check_value(&param.ty, item).map_err(|mismatch| ArgError::Type {
            task: task.name.clone(),
            param: param.name.clone(),
            mismatch: mismatch.to_string(),
        })?;
    }
    Ok(())
}

/// A result that is not a value of the task's declared return type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("result does not match the declared type {expected}: {mismatch}")]
pub struct ResultMismatch {
    /// The declared return type.
    pub expected: Type,
    /// What is wrong.
    pub mismatch: EncodedMismatch,
}

/// Checks an encoded result against `task`'s declared return type.
pub fn check_result(task: &TaskSignature, result: &[u8]) -> Result<(), ResultMismatch> {
    check_encoded(&task.returns, result).map_err(|mismatch| ResultMismatch {
        expected: task.returns.clone(),
        mismatch,
    })
}

fn check_count(task: &TaskSignature, given: usize) -> Result<(), ArgError> {
    if given == task.params.len() {
        Ok(())
    } else {
        Err(ArgError::Count {
            signature: task.to_string(),
            expected: task.params.len(),
            given,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn module_with_section(section: &[u8]) -> Vec<u8> {
        let mut module = b"\0asm\x01\0\0\0".to_vec();
        let name = TASKS_SECTION.as_bytes();
        let mut body = vec![name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(section);
        module.push(0);
        let mut len = body.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            module.push(if len == 0 { byte } else { byte | 0x80 });
            if len == 0 {
                break;
            }
        }
        module.extend_from_slice(&body);
        module
    }

    #[test]
    fn reads_concatenated_records() {
        let section = br#"{"abi":1,"name":"inc","params":[{"name":"x","type":"i64"}],"returns":"i64"}
{"abi":1,"name":"add","params":[{"name":"x","type":"i64"},{"name":"y","type":"i64"}],"returns":"i64"}"#;
        let tasks = read_task_signatures(&module_with_section(section)).unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[0].to_string(), "add(x: i64, y: i64) -> i64");
        assert_eq!(tasks[1].export_name(), "wrun.task.inc");
    }

    #[test]
    fn rejects_non_wasm_and_modules_without_tasks() {
        assert!(matches!(
            read_task_signatures(b"hello world"),
            Err(ModuleError::NotWasm(_))
        ));
        let err = read_task_signatures(b"\0asm\x01\0\0\0").unwrap_err();
        assert!(
            err.to_string().contains("no `wrun.tasks` custom section"),
            "{err}"
        );
        let dup = br#"{"abi":1,"name":"a","params":[],"returns":"unit"}{"abi":1,"name":"a","params":[],"returns":"unit"}"#;
        assert!(
            read_task_signatures(&module_with_section(dup))
                .unwrap_err()
                .to_string()
                .contains("declared twice")
        );
        let v2 = br#"{"abi":2,"name":"a","params":[],"returns":"unit"}"#;
        assert!(
            read_task_signatures(&module_with_section(v2))
                .unwrap_err()
                .to_string()
                .contains("ABI version 2")
        );
    }

    #[test]
    fn argument_errors_name_the_parameter() {
        let section = br#"{"abi":1,"name":"add","params":[{"name":"x","type":"i64"},{"name":"y","type":"i64"}],"returns":"i64"}"#;
        let add = &read_task_signatures(&module_with_section(section)).unwrap()[0];
        let err = encode_args_from_json(add, &[json!(1)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "task `add(x: i64, y: i64) -> i64` takes 2 argument(s), got 1"
        );
        let err = encode_args_from_json(add, &[json!(1), json!("two")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "argument `y` of task `add`: expected i64, got string \"two\""
        );
        let bytes = encode_args_from_json(add, &[json!(1), json!(2)]).unwrap();
        check_args(add, &bytes).unwrap();
        assert!(matches!(
            check_args(add, &[0xc1]),
            Err(ArgError::Malformed { .. })
        ));
    }
}

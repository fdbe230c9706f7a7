//! The client's errors: its own (typed), and a task's failure as the
//! scheduler reported it.

use wrun_abi::ArgError;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The scheduler could not be reached.
    #[error(transparent)]
    Connect(#[from] wrun_proto::ConnectError),
    /// Arguments that do not fit the task's signature.
    #[error(transparent)]
    Arguments(#[from] ArgError),
    /// The module has no such task.
    #[error("unknown task `{name}`; the module has: {}", available.join(", "))]
    UnknownTask {
        /// The name asked for.
        name: String,
        /// The module's tasks.
        available: Vec<String>,
    },
    /// The module is not a wrun task module.
    #[error(transparent)]
    Module(#[from] wrun_abi::ModuleError),
    /// The scheduler refused a request; its message says why.
    #[error("{0}")]
    Refused(String),
    /// No token to open a session with.
    #[error(
        "no token: pass --token (or set WRUN_TOKEN), or use a scheduler file (the cluster's own, or one with a token)"
    )]
    NoToken,
    /// The connection is gone.
    #[error("disconnected from the scheduler: {0}")]
    Disconnected(String),
}

/// Why a task has no result, as the scheduler reported it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TaskFailure {
    /// A short kind: "panic", "time-limit", "dependency", "suspicious", ...
    pub kind: String,
    /// The full message (for dependencies, the first failure in the chain).
    pub message: String,
}

/// A failed call, as the client's error, in the scheduler's own words
/// (capnp-rpc prefixes an error raised by the other side with "remote
/// exception: ", which tells a user nothing).
pub(crate) fn rpc_error(error: capnp::Error) -> ClientError {
    let message = match error.extra.strip_prefix("remote exception: ") {
        Some(message) => message.to_owned(),
        None => error.extra,
    };
    match error.kind {
        capnp::ErrorKind::Disconnected => ClientError::Disconnected(message),
        _ => ClientError::Refused(message),
    }
}

/// Unreadable text in an answer.
pub(crate) fn utf8_error(error: std::str::Utf8Error) -> ClientError {
    ClientError::Refused(error.to_string())
}

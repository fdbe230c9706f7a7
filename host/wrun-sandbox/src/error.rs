//! Typed errors: why a module cannot be loaded, why a task did not produce a result.

use std::time::Duration;

use wrun_abi::{ArgError, ModuleError, humanize_bytes, humanize_duration};

/// Why a module cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// Not WebAssembly, or not a wrun task module.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// WebAssembly that does not validate or compile.
    #[error("invalid WebAssembly module: {0}")]
    Invalid(String),
    /// A module that imports something the sandbox does not provide.
    #[error("the module needs an import the sandbox does not provide: {0}")]
    UnknownImport(String),
}

/// Why a task run produced no result. `Display` gives the message a user sees.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TaskError {
    /// The module has no task of that name.
    #[error("unknown task `{name}`; the module has: {}", available.join(", "))]
    UnknownTask {
        /// The name asked for.
        name: String,
        /// The tasks the module declares.
        available: Vec<String>,
    },
    /// Arguments that do not fit the signature.
    #[error(transparent)]
    Arguments(#[from] ArgError),
    /// Limits the sandbox cannot grant.
    #[error("invalid limits: {0}")]
    InvalidLimits(String),
    /// The guest panicked.
    #[error("task panicked at {location}: {message}")]
    Panic {
        /// The panic message.
        message: String,
        /// `file:line:column` in the task's source.
        location: String,
    },
    /// The task returned an error (`Err` of a `Result`).
    #[error("task failed: {0}")]
    Failed(String),
    /// The guest trapped (other than by a limit).
    #[error("task trapped: {kind}")]
    Trap {
        /// The trap, as wasmtime describes it (e.g. "call stack exhausted").
        kind: String,
    },
    /// The wall-time limit passed.
    #[error("task exceeded its time limit of {}", humanize_duration(*limit))]
    TimeLimit {
        /// The limit.
        limit: Duration,
    },
    /// The guest tried to grow memory past its limit and then failed.
    #[error("task exceeded its memory limit of {} ({detail})", humanize_bytes(*limit_bytes))]
    MemoryLimit {
        /// The limit in bytes.
        limit_bytes: u64,
        /// What failed afterwards (the trap, or the instantiation error).
        detail: String,
    },
    /// The fuel ran out.
    #[error("task ran out of fuel ({limit} units)")]
    OutOfFuel {
        /// The fuel given.
        limit: u64,
    },
    /// The encoded result is larger than allowed.
    #[error("task result is {} bytes, over the limit of {}", size, humanize_bytes(*limit))]
    ResultTooLarge {
        /// The result's size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The result is not a value of the task's declared return type.
    #[error("task {0}")]
    BadResult(#[from] wrun_abi::ResultMismatch),
    /// The guest called `proc_exit`.
    #[error("task exited with code {0} instead of returning")]
    Exited(i32),
    /// Stopped while running because its work was cancelled.
    #[error("task was cancelled while it ran")]
    Cancelled,
    /// The guest broke the ABI (bad reply pointer, unknown status, ...).
    #[error("task broke the wrun ABI: {0}")]
    Abi(String),
    /// A failure of the host itself (e.g. the instance pool is full).
    #[error("sandbox error: {0}")]
    Host(String),
}

impl TaskError {
    /// A short stable name for the kind of error, for logs and the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            TaskError::UnknownTask { .. } => "unknown-task",
            TaskError::Arguments(_) => "bad-arguments",
            TaskError::InvalidLimits(_) => "invalid-limits",
            TaskError::Panic { .. } => "panic",
            TaskError::Failed(_) => "failed",
            TaskError::Trap { .. } => "trap",
            TaskError::TimeLimit { .. } => "time-limit",
            TaskError::MemoryLimit { .. } => "memory-limit",
            TaskError::OutOfFuel { .. } => "out-of-fuel",
            TaskError::ResultTooLarge { .. } => "result-too-large",
            TaskError::BadResult(_) => "bad-result",
            TaskError::Exited(_) => "exited",
            TaskError::Cancelled => "cancelled",
            TaskError::Abi(_) => "abi",
            TaskError::Host(_) => "host",
        }
    }

    /// Whether running the same task again could give another outcome. Guest
    /// behaviour is deterministic (docs/ARCHITECTURE.md), so only host failures are.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TaskError::Host(_))
    }
}

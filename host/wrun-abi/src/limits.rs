//! The limits of one task call: the one definition that the command line,
//! the client library, the wire (`wrun_proto::limits`), the scheduler and
//! the sandbox all use. ABI.md §7 lists them for task authors.
//!
//! Adding a limit touches this type, the `Limits` struct of the schema and
//! its read/write pair in `wrun-proto`, and the sandbox that enforces it.

use std::time::Duration;

/// One MiB.
pub const MIB: u64 = 1 << 20;

/// Limits of one task run. Every limit hit is a task error, never a
/// crashed host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TaskLimits {
    /// Linear memory, in bytes (default 256 MiB).
    pub memory_bytes: u64,
    /// Wall time (default 60 s), enforced by epoch interruption.
    pub timeout: Duration,
    /// Fuel (roughly, Wasm instructions); `None` for no fuel limit.
    pub fuel: Option<u64>,
    /// The encoded result's size (default 64 MiB).
    pub result_bytes: u64,
    /// Captured stdout kept; the rest is dropped and counted (default 1 MiB).
    pub stdout_bytes: u64,
    /// Captured stderr kept, likewise (default 1 MiB).
    pub stderr_bytes: u64,
}

impl TaskLimits {
    /// The defaults, as a constant (flags show them in `--help`).
    pub const DEFAULT: TaskLimits = TaskLimits {
        memory_bytes: 256 * MIB,
        timeout: Duration::from_secs(60),
        fuel: None,
        result_bytes: 64 * MIB,
        stdout_bytes: MIB,
        stderr_bytes: MIB,
    };
}

impl Default for TaskLimits {
    fn default() -> Self {
        TaskLimits::DEFAULT
    }
}

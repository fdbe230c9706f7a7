//! The task-limit flags shared by every command that runs tasks.

use std::time::Duration;

use clap::Args;
use wrun_sandbox::TaskLimits;

use crate::units::{parse_duration, parse_size};

/// Limits of each task run; every flag has a `WRUN_*` environment fallback.
#[derive(Debug, Clone, Args)]
pub(crate) struct LimitArgs {
    /// Wall-time limit per task (e.g. 500ms, 10s, 2m).
    #[arg(long, env = "WRUN_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,
    /// Linear-memory limit per task (e.g. 64MiB, 1GiB).
    #[arg(long, env = "WRUN_MEMORY", default_value = "256MiB", value_parser = parse_size)]
    pub(crate) memory: u64,
    /// Fuel limit per task (about one unit per Wasm instruction); turns on metering.
    #[arg(long, env = "WRUN_FUEL")]
    pub(crate) fuel: Option<u64>,
    /// Largest encoded result a task may return.
    #[arg(long, env = "WRUN_MAX_RESULT", default_value = "64MiB", value_parser = parse_size)]
    pub(crate) max_result: u64,
    /// Captured stdout kept per task; the rest is dropped with a marker.
    #[arg(long, env = "WRUN_MAX_STDOUT", default_value = "1MiB", value_parser = parse_size)]
    pub(crate) max_stdout: u64,
    /// Captured stderr kept per task; the rest is dropped with a marker.
    #[arg(long, env = "WRUN_MAX_STDERR", default_value = "1MiB", value_parser = parse_size)]
    pub(crate) max_stderr: u64,
}

impl LimitArgs {
    pub(crate) fn to_limits(&self) -> TaskLimits {
        TaskLimits {
            memory_bytes: self.memory,
            timeout: self.timeout,
            fuel: self.fuel,
            result_bytes: self.max_result,
            stdout_bytes: self.max_stdout,
            stderr_bytes: self.max_stderr,
        }
    }
}

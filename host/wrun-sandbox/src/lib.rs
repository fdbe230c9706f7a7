//! # wrun-sandbox: run one wrun task in a fresh wasmtime instance
//!
//! Given module bytes, a task name, MessagePack arguments and
//! [`TaskLimits`], a [`Sandbox`] returns the encoded result, the captured
//! stdout and stderr, and [`Usage`] (wall time, peak linear memory, fuel), or
//! a typed [`TaskError`]. No guest can escape, crash or exhaust the host:
//!
//! - **Isolation.** Every run gets a new `Store` and instance from a
//!   pre-linked `InstancePre`, so nothing passes from one task to the next.
//!   WASI preview 1 offers clocks, random numbers and the captured
//!   stdout/stderr; no files, no environment, no arguments, no network.
//! - **Limits.** Linear memory through a `ResourceLimiter` (and the pooling
//!   allocator's hard cap), wall time through epoch interruption (and a
//!   `poll_oneoff` of our own, so a guest cannot sleep past it), optional
//!   fuel, result size, and captured output that is truncated with a marker
//!   rather than refused.
//! - **Speed.** One `Engine` with wasmtime's pooling allocator and
//!   copy-on-write memory images: an instance costs microseconds. Modules are
//!   compiled once, kept in memory, and cached on disk as precompiled
//!   artifacts keyed by digest and engine settings, checksummed so that a
//!   damaged cache file is recompiled rather than trusted.
//!
//! This crate knows nothing of the network, the CLI or the scheduler; it
//! depends on `wrun-abi` for the ABI and on wasmtime.

#![deny(missing_docs)]

mod cache;
mod capture;
mod config;
mod error;
mod sandbox;
mod sleep;

pub use capture::Captured;
pub use config::{SandboxConfig, default_cache_dir};
pub use error::{LoadError, TaskError};
pub use sandbox::{CompiledModule, LoadSource, Sandbox, TaskRun, Usage};
pub use wrun_abi::{
    ArgError, MIB, ModuleDigest, ModuleError, TaskLimits, TaskSignature, humanize_bytes,
    humanize_duration,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Sandbox>();
        assert_send_sync::<CompiledModule>();
    }
}

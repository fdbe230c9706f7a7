//! # wrun-proto: the wire of wrun
//!
//! The Cap'n Proto schema (`schema/wrun.capnp`, compiled by build.rs with
//! the `capnp` compiler that scripts/setup.sh installs), plus what every
//! process needs to use it:
//!
//! - [`connect`]: bounded reader options for every connection, connection
//!   set-up with retries, and the RPC system of one connection;
//! - [`SchedulerFile`]: the file a scheduler writes and workers and clients
//!   read;
//! - [`chunks`]: chunked reads of large values and modules;
//! - [`limits`]: the one read/write pair of [`TaskLimits`] on the wire;
//! - [`status`]: the typed cluster status (`wrun status`, its `--json`);
//! - [`stream`]: the typed task stream (`wrun events`, `wrun report`);
//! - ids: [`TaskId`] and [`WorkerId`] (the scheduler's, from `wrun-core`)
//!   and [`TaskKey`] (a client's name for its task).
//!
//! Capabilities are `!Send`: everything here runs on a current-thread tokio
//! runtime inside a `LocalSet`. This crate must not depend on wasmtime.

#![deny(missing_docs)]

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
/// Code generated from `schema/wrun.capnp`.
pub mod wrun_capnp {
    include!(concat!(env!("OUT_DIR"), "/wrun_capnp.rs"));
}

pub mod chunks;
pub mod connect;
mod ids;
pub mod limits;
mod scheduler_file;
pub mod status;
pub mod stream;
pub mod tickets;
pub mod tls;

pub use capnp;
pub use capnp_rpc;
pub use chunks::{chunk_at, fetch_chunked};
pub use connect::{
    ConnectError, Reservation, WriteMeter, connect_with_retry, reader_options, rpc_system,
    rpc_system_metered,
};
pub use ids::TaskKey;
pub use scheduler_file::{SchedulerFile, new_secret, write_private_file};
pub use wrun_abi::TaskLimits;
pub use wrun_core::{IdHash, TaskId, WorkerId};

/// The protocol version in the scheduler file and `Cluster.info`.
pub const PROTOCOL_VERSION: u32 = wrun_capnp::PROTOCOL_VERSION;
/// Values and modules travel in chunks of at most this many bytes.
pub const CHUNK_BYTES: usize = wrun_capnp::CHUNK_BYTES as usize;
/// Largest message any peer may send us, in 8-byte words (16 MiB): a few
/// chunks, or a batch of small tasks. capnp-futures refuses a larger frame
/// from its segment table before reading the body.
pub const MAX_MESSAGE_WORDS: usize = 2 << 20;
/// Largest whole value assembled from chunks (a task result or module).
pub const MAX_VALUE_BYTES: u64 = 4 << 30;
/// The most bytes of literal arguments one task may carry. Its assignment
/// to a worker is one message, so this leaves room under
/// [`MAX_MESSAGE_WORDS`] for the rest of it; the scheduler's batches to a
/// worker are split so that each stays under the limit too.
pub const MAX_TASK_LITERAL_BYTES: u64 = 12 << 20;
/// The most arguments one task may take: each result it reads travels in
/// its assignment with the holder's address, ticket and certificate (up
/// to 2 KiB), and the assignment is one message.
pub const MAX_TASK_ARGUMENTS: usize = 1024;
/// The most captured stdout (and, apart, stderr) a task may ask to keep:
/// its `finished` event and a `logs` answer carry both in one message.
pub const MAX_CAPTURED_BYTES: u64 = 4 << 20;
/// The bytes of one batch of run assignments, events or task lists a
/// sender aims at: half the reader's limit. A batch closes before the item
/// that would take it past this; an item larger than this on its own (at
/// most [`MAX_TASK_LITERAL_BYTES`] or twice [`MAX_CAPTURED_BYTES`] and a
/// little) travels alone, still under the limit.
pub const BATCH_BYTES: usize = 8 << 20;

/// The largest result a worker sends with its `finished` event when the
/// assignment asks it to share it (`Assignment.shareResult`): the scheduler
/// passes such results to dependents on other workers inline, saving each
/// a peer fetch. Larger results always travel worker to worker.
pub const SMALL_RESULT_BYTES: usize = 4096;

/// Results this small travel with `finished` even unasked: a dependent
/// submitted after its input was assigned (futures, one call at a time)
/// still gets them inline, and a map's scalars cost a few bytes more.
pub const ALWAYS_SHARED_BYTES: usize = 64;

/// The failure kind of a run stopped by the scheduler's own cancel (the
/// sandbox's `TaskError::Cancelled`). The scheduler took the task back when
/// it sent the cancel, so it does not count such an end against the task.
pub const CANCELLED_KIND: &str = "cancelled";

/// Turns any displayable error into a capnp error for the caller.
pub fn failed(error: impl std::fmt::Display) -> capnp::Error {
    capnp::Error::failed(error.to_string())
}

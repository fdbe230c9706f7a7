//! # wrun-scheduler: the scheduler service
//!
//! A thin Cap'n Proto shell around [`wrun_core::Core`]. The bootstrap
//! capability (`Cluster`) hands out sessions: a client gets a
//! `ClientSession` that sees only its own tasks; a worker registers with the
//! cluster secret and gets a `WorkerSession`. Each RPC turns into core
//! events; the core's decisions are gathered per worker and per client and
//! sent as one batched call each when the handler ends, so a map of 100,000
//! tasks is a handful of messages, not 100,000.
//!
//! A dropped session is a disconnect: a worker's tasks are rescheduled, a
//! client's tasks are cancelled and their results freed.
//!
//! It runs on one thread (capabilities are `!Send`); task execution happens
//! in the workers. It must not depend on wasmtime.

#![deny(missing_docs)]

mod service;

pub use service::{SchedulerConfig, SchedulerHandle, run_scheduler, start_scheduler};

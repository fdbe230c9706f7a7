//! # wrun-local: a whole cluster on this machine
//!
//! - [`EmbeddedCluster`]: a scheduler and workers in this process, on
//!   loopback. `wrun submit` with no scheduler named runs one for the call,
//!   and the in-process test tier (`tests/tests/service.rs`) drives the
//!   real scheduler, workers and client through it without spawning
//!   binaries.
//! - [`LocalCluster`]: `wrun local`: the scheduler in this process and each
//!   worker a process of its own, under its nanny.
//!
//! It joins the scheduler and worker crates; neither depends on it.

#![deny(missing_docs)]

mod embedded;
mod processes;

pub use embedded::{EmbeddedCluster, EmbeddedConfig};
pub use processes::{LocalCluster, LocalConfig};

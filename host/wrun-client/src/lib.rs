//! # wrun-client: submit work to a wrun cluster from Rust
//!
//! ```no_run
//! use serde_json::json;
//! use wrun_client::{Client, Target};
//!
//! let client = Client::connect(&Target::File("sched.json".into()), std::time::Duration::from_secs(30))?;
//! let module = client.upload(&std::fs::read("seed_tasks.wasm")?)?;
//! let x = client.submit(&module, "inc", vec![json!(41).into()])?;
//! let y = client.submit(&module, "add", vec![(&x).into(), json!(1).into()])?; // x moves worker to worker
//! assert_eq!(client.gather(&[y])?[0].as_ref().unwrap(), &json!(43));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A [`TaskFuture`] is a handle to a task's result, which stays on the
//! worker that made it until gathered or released; dropping the last handle
//! releases it (in batches). A [`Graph`] builds tasks lazily and computes
//! them in one submission.
//!
//! The API blocks; a background thread runs the Cap'n Proto connection
//! (`connection.rs`). The rest is one concept per file: `client.rs` (the
//! [`Client`]), `upload.rs`, `submit.rs`, `task_future.rs` (futures, and waiting for them),
//! `gather.rs`, `graph.rs`, `jobs.rs` (detached jobs, cancel, logs).
//!
//! This crate must not depend on wasmtime: programs that only submit work
//! stay small and build fast.

#![deny(missing_docs)]

mod client;
mod connection;
mod error;
mod gather;
mod graph;
mod jobs;
mod submit;
mod task_future;
mod upload;

pub use client::Client;
pub use connection::{Credentials, Target};
pub use error::{ClientError, TaskFailure};
pub use graph::{Delayed, Graph, GraphArg};
pub use jobs::TaskStream;
pub use submit::{Argument, TaskOptions};
pub use task_future::TaskFuture;
pub use upload::Module;
pub use wrun_abi::TaskLimits;
pub use wrun_proto::TaskKey;
pub use wrun_proto::status::{ClusterStatus, JobStatus, TaskCounts, WorkerStatus};
pub use wrun_proto::stream::{TaskRecord, TransferRecord};

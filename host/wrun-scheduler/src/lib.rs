//! # wrun-scheduler: the scheduler service
//!
//! A thin Cap'n Proto shell around [`wrun_core::Core`]. The bootstrap
//! capability (`Cluster`) hands out sessions: a client gets a
//! `ClientSession` that sees only its own tasks; a worker registers with the
//! cluster secret and gets a `WorkerSession`. Each RPC is decoded, decided
//! by a plain function or by the core, and the core's decisions are
//! gathered per worker and per client and sent as one batched call each
//! when the handler ends, so a map of 100,000 tasks is a handful of
//! messages, not 100,000.
//!
//! The parts, one file each:
//!
//! | file | what |
//! |---|---|
//! | `server.rs` | binding, the scheduler file, the serving loop, the clock, shutting down |
//! | `state.rs` | the state (core, workers, clients, logs) and the `Comm` outbox |
//! | `encode.rs` | the outbox sent as batched calls |
//! | `cluster.rs` | the bootstrap capability: sessions, shutdown |
//! | `worker_session.rs` | a worker's events, heartbeats, retirement, module fetches |
//! | `client_session.rs` | a client's calls, each decoded and handed on |
//! | `submit.rs` | a submission decoded and validated into task specs |
//! | `modules.rs` | module uploads and the module registry |
//! | `jobs.rs` | detached jobs |
//! | `fetch.rs` | results fetched from workers for clients |
//! | `status.rs` | the typed cluster status, filtered for tenants |
//! | `tenants.rs` | the tenants file, tokens, quotas |
//! | `listener.rs` | accepting connections, bounded |
//! | `journal.rs` | the journal file: checksummed records, group commit, compaction |
//! | `recovery.rs` | journal records of the state, replay after a restart, workers rejoining |
//! | `task_stream.rs` | the newest task runs (`wrun events`) and each tenant's totals |
//! | `observe.rs` | the dashboard's views and `/metrics`, published a few times a second |
//!
//! A dropped session is a disconnect: a worker's tasks are rescheduled, a
//! client's tasks are cancelled and their results freed.
//!
//! It runs on one thread (capabilities are `!Send`); task execution happens
//! in the workers. It must not depend on wasmtime.

#![deny(missing_docs)]

mod client_session;
mod cluster;
mod encode;
mod fetch;
mod jobs;
mod journal;
mod listener;
mod modules;
mod observe;
mod recovery;
mod server;
mod small_results;
mod state;
mod status;
mod submit;
mod task_stream;
mod tenants;
mod values;
mod worker_session;

pub use journal::JournalError;

/// The exit code of a scheduler that could not start on its journal.
pub const EXIT_JOURNAL: i32 = 2;
pub use listener::ConnectionLimits;
pub use server::{
    DashboardAddress, SchedulerConfig, SchedulerHandle, TlsMode, run_scheduler, start_scheduler,
};
pub use task_stream::DEFAULT_TASK_STREAM;
pub use tenants::{
    OPERATOR, Quotas, TaskCaps, TenantEntry, TenantsError, TenantsFile, hash_token, new_token,
};

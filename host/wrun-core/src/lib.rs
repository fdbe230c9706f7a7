//! # wrun-core: the scheduling core, a pure state machine
//!
//! The [`Core`] holds the task graph and the workers. It takes events (tasks
//! submitted, worker joined, task started/finished/failed, worker lost, time
//! passed, results released) and says what should happen through one trait,
//! [`Comm`]: run task T on worker W (fetching its inputs from the workers
//! that hold them), tell the client T is done or failed, free a result, ask a
//! worker to give back queued tasks. It reads no clock (time is passed in),
//! opens no socket and starts no thread, so tests drive it with event
//! sequences and check every decision; [`Core::sanity_check`] verifies the
//! invariants after each step.
//!
//! Scheduling policy:
//! - A task is *ready* when every dependency has a result on some worker.
//! - Ready tasks wait in the scheduler, one queue per tenant. Whose task
//!   goes next is weighted fair queueing on slots: among tenants with
//!   queued work and below their slot quota, the one with the fewest tasks
//!   on workers for its weight.
//! - A worker is given tasks while it has fewer than
//!   `slots × queue_per_slot` assigned, so work is pushed ahead only as far
//!   as it helps hide round trips.
//! - Among workers with room, a task goes to the one holding the most bytes
//!   of its inputs, then the one with the shortest queue for its slots.
//!   Only the holders of its inputs are examined, and the least loaded
//!   worker is the first of a load-ordered set, so placing a task costs
//!   O(inputs × holders + log workers), not O(workers).
//! - A worker with room and nothing left in the scheduler's queue steals:
//!   the core asks a loaded worker (the one with most to give among the
//!   most loaded few) to give back tasks it has queued but not started.
//!   At most 16 thieves per turn.
//! - A lost worker's queued tasks return to the queue; its running tasks
//!   count a death, and a task that was running at `max_deaths` worker deaths
//!   fails as suspicious. Results only it held are recomputed from their
//!   lineage if anything still needs them.
//! - A retiring worker (its end time is near, or it was asked to stop) gets
//!   no new tasks; its queued ones are asked back, and every needed result
//!   only it holds is copied to the staying worker holding fewest results
//!   ([`Comm::replicate`]). Once it has no tasks and no copy is pending it
//!   may leave ([`Core::retirement_complete`]) without anything recomputed,
//!   and without counting deaths for its tasks.
//! - A task error is deterministic: the task is retried only if its spec
//!   asks; otherwise it fails and so do its dependents, naming the cause.
//!
//! It depends on nothing but `std`.

#![deny(missing_docs)]

mod core;
mod events;
mod lineage;
mod placement;
mod ready;
mod recovery;
mod retirement;
mod sanity;
mod staging;
mod task;
mod tenants;
mod worker;

pub use crate::core::{Core, CoreConfig, Phase, StateCounts};
pub use crate::recovery::Outcome;
pub use crate::task::{IdHash, IdHasher};
pub use crate::tenants::{TenantShare, TenantUsage};

use std::fmt;
use std::sync::Arc;

/// A task, unique in one scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u64);

/// A worker, unique in one scheduler (a restarted worker gets a new id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

/// A client session; its tasks are its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub u64);

/// A tenant: who a task belongs to, for fair sharing and quotas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(pub u32);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}", self.0)
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "w{}", self.0)
    }
}

/// An argument of a task: a literal (encoded) value, or another task's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// A MessagePack value given by the client.
    Value(Box<[u8]>),
    /// The result of this task, fetched from a worker that holds it.
    Result(TaskId),
    /// A large value the client put in the scheduler (by its SHA-256),
    /// which the worker reads from the scheduler. Boxed: it is rare, and
    /// inline it made every argument of every task 40 bytes, not 16.
    Stored(Box<[u8; 32]>),
}

/// What to run. The core reads only `id`, `client`, `tenant`, `args` (for
/// dependencies) and `retries`; the rest travels to the worker untouched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskSpec<P> {
    /// The task's id.
    pub id: TaskId,
    /// The client that submitted it.
    pub client: ClientId,
    /// The tenant it belongs to.
    pub tenant: TenantId,
    /// Its arguments, in order.
    pub args: Box<[Arg]>,
    /// How many times to run it again after a task error.
    pub retries: u32,
    /// What the worker needs besides the arguments (module, task name, limits).
    pub payload: P,
}

impl<P> TaskSpec<P> {
    /// The tasks whose results this one needs, without repeats, in order.
    pub fn dependencies(&self) -> Vec<TaskId> {
        let mut deps: Vec<TaskId> = Vec::new();
        for arg in &self.args {
            if let Arg::Result(dep) = arg
                && !deps.contains(dep)
            {
                deps.push(*dep);
            }
        }
        deps
    }
}

/// Why a task has no result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The task ran and failed (guest panic, limit, task error...).
    Error {
        /// A short stable kind ("panic", "time-limit", ...).
        kind: String,
        /// The message.
        message: String,
    },
    /// A dependency failed; `cause` is the first failure in the chain.
    Dependency {
        /// The dependency that failed.
        dependency: TaskId,
        /// The original failure.
        cause: Arc<Failure>,
        /// The task that failed first.
        origin: TaskId,
    },
    /// Each of the last `deaths` times a worker died, this task was running on it.
    Suspicious {
        /// How many worker deaths.
        deaths: u32,
    },
    /// The client cancelled it.
    Cancelled,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Error { message, .. } => f.write_str(message),
            Failure::Dependency {
                dependency,
                cause,
                origin,
            } => {
                write!(
                    f,
                    "dependency {dependency} failed (first failure: {origin}: {cause})"
                )
            }
            Failure::Suspicious { deaths } => write!(
                f,
                "suspicious: the task was running on a worker each of the {deaths} times a worker died, so it is not run again"
            ),
            Failure::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// Everything the core tells the world. The service implements it with
/// messages; tests implement it with a log.
pub trait Comm<P> {
    /// Run `task` on `worker`. `inputs` names, for each dependency, a worker
    /// that holds its result (the worker itself, or a peer to fetch from).
    fn assign(&mut self, worker: WorkerId, task: &TaskSpec<P>, inputs: &[(TaskId, WorkerId)]);
    /// Ask `worker` to give back `tasks` it has queued and not started
    /// (answered with [`Core::steal_response`]).
    fn steal(&mut self, worker: WorkerId, tasks: &[TaskId]);
    /// Ask `worker` to stop `task` (cancelled): drop it if queued.
    fn cancel(&mut self, worker: WorkerId, task: TaskId);
    /// `worker` may drop its copy of `task`'s result.
    fn free(&mut self, worker: WorkerId, task: TaskId);
    /// `to` should copy `task`'s result from `from`, which is retiring
    /// (answered with [`Core::replicated`]).
    fn replicate(&mut self, to: WorkerId, task: TaskId, from: WorkerId);
    /// `task` of `client` has a result, `size` bytes, on `worker`.
    fn done(&mut self, client: ClientId, task: TaskId, worker: WorkerId, size: u64);
    /// `task` of `client` failed for good.
    fn failed(&mut self, client: ClientId, task: TaskId, failure: &Failure);
    /// The core forgot `task`: nobody can ask for it any more (a journal
    /// records it; nothing else needs telling).
    fn forgotten(&mut self, task: TaskId) {
        let _ = task;
    }
}

/// A submission the core refuses, naming the offending task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubmitError {
    /// The id is already in use.
    DuplicateId(TaskId),
    /// A dependency is neither known nor earlier in the same batch.
    UnknownDependency {
        /// The task that refers to it.
        task: TaskId,
        /// The unknown dependency.
        dependency: TaskId,
    },
    /// A dependency belongs to another client.
    ForeignDependency {
        /// The task that refers to it.
        task: TaskId,
        /// The dependency.
        dependency: TaskId,
    },
}

impl fmt::Display for SubmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitError::DuplicateId(id) => write!(f, "task id {id} is already in use"),
            SubmitError::UnknownDependency { task, dependency } => {
                write!(
                    f,
                    "task {task} depends on {dependency}, which is not known (or not submitted before it)"
                )
            }
            SubmitError::ForeignDependency { task, dependency } => {
                write!(
                    f,
                    "task {task} depends on {dependency}, which belongs to another client"
                )
            }
        }
    }
}

impl std::error::Error for SubmitError {}

#[cfg(test)]
mod tests;

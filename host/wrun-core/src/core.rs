//! The [`Core`]: its state, its tunables and what can be asked of it.
//!
//! What changes it lives beside this file, one concept each: `events.rs`
//! (the handlers of what happens in the cluster), `placement.rs` (which
//! worker runs a ready task, and stealing), `lineage.rs` (failures, freeing
//! and recomputing results), `retirement.rs` (workers leaving gracefully)
//! and `sanity.rs` (the invariants every test checks).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::ready::ReadyQueues;
use crate::task::{State, Task};
use crate::tenants::TenantLoad;
use crate::worker::Worker;
use crate::{Failure, TaskId, TaskSpec, TenantId, WorkerId};

/// Where a task is, from [`Core::task_phases`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Some dependency has no result yet.
    Waiting,
    /// Ready, in the scheduler's queue.
    Queued,
    /// Sent to a worker, not reported running.
    OnWorker,
    /// Running on a worker.
    Running,
    /// Has a result (or had one, now freed).
    Done,
    /// Failed for good.
    Failed,
}

/// Tasks by state, from [`Core::state_counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// Waiting for a dependency's result.
    pub waiting: usize,
    /// Ready, in the scheduler's queue.
    pub queued: usize,
    /// Sent to a worker (queued there or running).
    pub on_workers: usize,
    /// Of those, reported running.
    pub running: usize,
    /// Finished, result kept until released.
    pub done: usize,
    /// Failed for good.
    pub failed: usize,
}

/// Tunables of the scheduling policy.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Tasks a worker may have assigned per slot (running plus queued);
    /// more hides round trips, fewer keeps work stealable in the scheduler.
    /// 128 keeps two 1-thread workers busy with 20 µs tasks (16 left them
    /// waiting for assignments: 66k no-op tasks/s instead of 110k).
    /// Idle workers steal from deep queues, so balance does not suffer.
    pub queue_per_slot: u32,
    /// Worker deaths during which a task was running before it is failed as suspicious.
    pub max_deaths: u32,
    /// A worker silent for longer than this is removed by [`Core::tick`].
    pub heartbeat_timeout: Duration,
    /// Send a task to the worker making all its inputs before they are
    /// made, so the worker starts it without a round trip (`staging.rs`).
    /// On by default (`wrun scheduler --no-staging` turns it off).
    pub staging: bool,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            queue_per_slot: 128,
            max_deaths: 3,
            heartbeat_timeout: Duration::from_secs(3),
            staging: true,
        }
    }
}

/// The scheduling state machine; see the crate docs for the policy.
pub struct Core<P> {
    pub(crate) config: CoreConfig,
    /// Boxed: the table grows by doubling and holds its entries inline, so
    /// a million ~130-byte tasks took a 2M-entry table (and the old one
    /// while it grew): 400 MB at the peak instead of 160.
    pub(crate) tasks: HashMap<TaskId, Box<Task<P>>, crate::task::IdHash>,
    pub(crate) workers: BTreeMap<WorkerId, Worker>,
    pub(crate) ready: ReadyQueues,
    /// Workers that take tasks (not retiring), ordered by load: the least
    /// loaded first.
    pub(crate) by_load: BTreeSet<(u64, WorkerId)>,
    /// Each tenant's share and usage.
    pub(crate) tenants: BTreeMap<TenantId, TenantLoad>,
    /// Results being copied off retiring workers: task -> (from, to).
    pub(crate) handoffs: BTreeMap<TaskId, (WorkerId, WorkerId)>,
    /// Results that were lost with a worker and had to be computed again.
    pub(crate) recomputed: u64,
    /// No task is placed while set: a restarted scheduler waits for its
    /// workers to rejoin with the results they kept (`recovery.rs`).
    pub(crate) placement_held: bool,
    /// Set between [`Core::defer_placement`] and [`Core::place_deferred`]:
    /// a batch of events is placed once, at its end.
    pub(crate) placement_deferred: bool,
    /// Something asked for placement while it was deferred.
    pub(crate) placement_wanted: bool,
    /// Staged tasks whose worker reported them finished (with this many
    /// bytes) before the core heard that all their inputs were made: an
    /// input made on another worker reached them peer to peer while its
    /// own report was still on the way. Recorded once the inputs are
    /// (`staging.rs`); forgotten if the task leaves its worker first.
    pub(crate) early_finishes: HashMap<TaskId, u64, crate::task::IdHash>,
}

impl<P> Core<P> {
    /// An empty core.
    pub fn new(config: CoreConfig) -> Core<P> {
        Core {
            config,
            tasks: HashMap::default(),
            workers: BTreeMap::new(),
            ready: ReadyQueues::default(),
            by_load: BTreeSet::new(),
            tenants: BTreeMap::new(),
            handoffs: BTreeMap::new(),
            recomputed: 0,
            placement_held: false,
            placement_deferred: false,
            placement_wanted: false,
            early_finishes: HashMap::default(),
        }
    }

    /// How many results were lost with a worker and computed again.
    pub fn recomputed(&self) -> u64 {
        self.recomputed
    }

    /// Whether the worker is retiring (see [`Core::retire_worker`]).
    pub fn is_retiring(&self, worker: WorkerId) -> bool {
        self.workers.get(&worker).is_some_and(|w| w.retiring)
    }

    /// Number of tasks the core knows (any state).
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Tasks in the ready queue, not yet on a worker.
    pub fn queued_count(&self) -> usize {
        self.ready.len()
    }

    /// How many tasks are in each state (one pass over the tasks; for
    /// status displays, not for hot paths).
    pub fn state_counts(&self) -> StateCounts {
        self.state_counts_of(None)
    }

    /// [`Core::state_counts`] of one tenant's tasks (all, for `None`).
    pub fn state_counts_of(&self, tenant: Option<TenantId>) -> StateCounts {
        let mut counts = StateCounts::default();
        let mine = |t: &Task<P>| tenant.is_none_or(|tenant| t.spec.tenant == tenant);
        for t in self.tasks.values().filter(|t| mine(t)) {
            match t.state {
                State::Waiting => counts.waiting += 1,
                State::Ready => counts.queued += 1,
                State::Assigned(_) => counts.on_workers += 1,
                State::Done => counts.done += 1,
                State::Failed(_) => counts.failed += 1,
            }
        }
        counts.running = self
            .workers
            .values()
            .flat_map(|w| w.running.iter())
            .filter(|task| self.tasks.get(task).is_some_and(|t| mine(t)))
            .count();
        counts
    }

    /// A worker's assigned and running tasks of one tenant (all, for `None`).
    pub fn worker_load_of(&self, worker: WorkerId, tenant: Option<TenantId>) -> (usize, usize) {
        let Some(w) = self.workers.get(&worker) else {
            return (0, 0);
        };
        let Some(tenant) = tenant else {
            return (w.assigned.len(), w.running.len());
        };
        let of = |set: &std::collections::BTreeSet<TaskId>| {
            set.iter()
                .filter(|t| self.tasks.get(t).is_some_and(|t| t.spec.tenant == tenant))
                .count()
        };
        (of(&w.assigned), of(&w.running))
    }

    /// The workers, with their slots, assigned and running task counts.
    pub fn workers(&self) -> impl Iterator<Item = (WorkerId, u32, usize, usize)> + '_ {
        self.workers
            .iter()
            .map(|(id, w)| (*id, w.slots, w.assigned.len(), w.running.len()))
    }

    /// Whether the core knows this worker.
    pub fn has_worker(&self, worker: WorkerId) -> bool {
        self.workers.contains_key(&worker)
    }

    /// The workers holding `task`'s result (empty if none).
    pub fn holders(&self, task: TaskId) -> &[WorkerId] {
        self.tasks
            .get(&task)
            .map(|t| t.holders.as_slice())
            .unwrap_or(&[])
    }

    /// The worker `task` is assigned to, if it is, and whether it is
    /// staged there (sent ahead of inputs still being made).
    pub fn assignment(&self, task: TaskId) -> Option<(WorkerId, bool)> {
        let t = self.tasks.get(&task)?;
        match t.state {
            State::Assigned(worker) => Some((worker, t.staged)),
            _ => None,
        }
    }

    /// Whether a task still to be computed will read `task`'s result.
    pub fn has_pending_dependents(&self, task: TaskId) -> bool {
        self.tasks.get(&task).is_some_and(|t| t.pending > 0)
    }

    /// Whether the task is still to be computed (waiting, queued or running),
    /// e.g. again after its result was lost with a worker.
    pub fn is_active(&self, task: TaskId) -> bool {
        self.tasks.get(&task).is_some_and(|t| t.state.is_active())
    }

    /// Moves a task to another client (a detached job adopted by a new session).
    pub fn set_client(&mut self, task: TaskId, client: crate::ClientId) {
        if let Some(t) = self.tasks.get_mut(&task) {
            t.spec.client = client;
        }
    }

    /// `Some(Ok(size))` if the task has a result, `Some(Err(..))` if it
    /// failed for good, `None` while it is still to be computed.
    pub fn outcome(&self, task: TaskId) -> Option<Result<u64, Arc<Failure>>> {
        match &self.tasks.get(&task)?.state {
            State::Done => Some(Ok(self.tasks[&task].size)),
            State::Failed(failure) => Some(Err(failure.clone())),
            _ => None,
        }
    }

    /// A one-line account of a task's state, for logs and test failures.
    pub fn describe(&self, task: TaskId) -> String {
        match self.tasks.get(&task) {
            None => format!("{task}: forgotten"),
            Some(t) => format!(
                "{task}: {:?}, deps {:?} (missing {}), dependents {:?}, pending {}, wanted {}, holders {:?}, stealing {}",
                t.state,
                t.deps,
                self.missing(task),
                t.dependents,
                t.pending,
                t.wanted,
                t.holders,
                t.stealing
            ),
        }
    }

    /// Every task the core knows, with where it is and what it reads, in
    /// no particular order (one pass; for the dashboard's views, not for
    /// hot paths).
    pub fn task_phases(&self) -> impl Iterator<Item = (&TaskSpec<P>, Phase, &[TaskId])> + '_ {
        self.tasks.values().map(|t| {
            let phase = match &t.state {
                State::Waiting => Phase::Waiting,
                State::Ready => Phase::Queued,
                State::Assigned(worker) => {
                    if self
                        .workers
                        .get(worker)
                        .is_some_and(|w| w.running.contains(&t.spec.id))
                    {
                        Phase::Running
                    } else {
                        Phase::OnWorker
                    }
                }
                State::Done => Phase::Done,
                State::Failed(_) => Phase::Failed,
            };
            (&t.spec, phase, t.deps.as_slice())
        })
    }

    /// The task's spec, if the core still has it.
    pub fn spec(&self, task: TaskId) -> Option<&TaskSpec<P>> {
        self.tasks.get(&task).map(|t| &t.spec)
    }
}

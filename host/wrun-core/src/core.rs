//! The [`Core`]: tasks, workers, the ready queue, and the event handlers.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thin_vec::ThinVec;

use crate::{Comm, Failure, SubmitError, TaskId, TaskSpec, WorkerId};

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
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            queue_per_slot: 128,
            max_deaths: 3,
            heartbeat_timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Some dependency has no result yet.
    Waiting,
    /// In the ready queue.
    Ready,
    /// Sent to a worker (queued there or running).
    Assigned(WorkerId),
    /// Computed; `holders` lists who has the result (empty once freed).
    Done,
    /// No result, for good.
    Failed(Arc<Failure>),
}

impl State {
    fn is_active(&self) -> bool {
        matches!(self, State::Waiting | State::Ready | State::Assigned(_))
    }
}

struct Task<P> {
    spec: TaskSpec<P>,
    deps: ThinVec<TaskId>,
    dependents: ThinVec<TaskId>,
    state: State,
    /// Active dependents (they will read this task's result).
    pending: u32,
    /// The client still holds a handle.
    wanted: bool,
    holders: ThinVec<WorkerId>,
    size: u64,
    deaths: u32,
    errors: u32,
    stealing: bool,
}

struct Worker {
    slots: u32,
    assigned: BTreeSet<TaskId>,
    running: BTreeSet<TaskId>,
    holds: BTreeSet<TaskId>,
    last_seen: Instant,
    /// Leaving gracefully: takes no new tasks; its results go to peers.
    retiring: bool,
}

/// The scheduling state machine; see the crate docs for the policy.
pub struct Core<P> {
    config: CoreConfig,
    tasks: HashMap<TaskId, Task<P>>,
    workers: BTreeMap<WorkerId, Worker>,
    ready: VecDeque<TaskId>,
    /// Results being copied off retiring workers: task -> (from, to).
    handoffs: BTreeMap<TaskId, (WorkerId, WorkerId)>,
    /// Results that were lost with a worker and had to be computed again.
    recomputed: u64,
}

impl<P> Core<P> {
    /// An empty core.
    pub fn new(config: CoreConfig) -> Core<P> {
        Core {
            config,
            tasks: HashMap::new(),
            workers: BTreeMap::new(),
            ready: VecDeque::new(),
            handoffs: BTreeMap::new(),
            recomputed: 0,
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

    /// Whether a retiring worker may leave now without losing anything: it
    /// has no tasks and every result only it held was copied to a peer (or
    /// there is no peer to copy to).
    pub fn retirement_complete(&self, worker: WorkerId) -> bool {
        self.workers.get(&worker).is_some_and(|w| {
            w.retiring
                && w.assigned.is_empty()
                && !self.handoffs.values().any(|(from, _)| *from == worker)
        })
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
        let mut counts = StateCounts::default();
        for t in self.tasks.values() {
            match t.state {
                State::Waiting => counts.waiting += 1,
                State::Ready => counts.queued += 1,
                State::Assigned(_) => counts.on_workers += 1,
                State::Done => counts.done += 1,
                State::Failed(_) => counts.failed += 1,
            }
        }
        counts.running = self.workers.values().map(|w| w.running.len()).sum();
        counts
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

    /// The task's spec, if the core still has it.
    pub fn spec(&self, task: TaskId) -> Option<&TaskSpec<P>> {
        self.tasks.get(&task).map(|t| &t.spec)
    }

    // ---- events ----

    /// Adds tasks. Each dependency must be known already or come earlier in
    /// `batch`, and belong to the same client. Nothing is added on error.
    pub fn submit(
        &mut self,
        batch: Vec<TaskSpec<P>>,
        comm: &mut impl Comm<P>,
    ) -> Result<(), SubmitError> {
        let mut new_ids = BTreeSet::new();
        for spec in &batch {
            if self.tasks.contains_key(&spec.id) || !new_ids.insert(spec.id) {
                return Err(SubmitError::DuplicateId(spec.id));
            }
        }
        let mut seen: BTreeMap<TaskId, crate::ClientId> = BTreeMap::new();
        for spec in &batch {
            for dep in spec.dependencies() {
                let client = match (self.tasks.get(&dep), seen.get(&dep)) {
                    (Some(task), _) => task.spec.client,
                    (None, Some(client)) => *client,
                    (None, None) => {
                        return Err(SubmitError::UnknownDependency {
                            task: spec.id,
                            dependency: dep,
                        });
                    }
                };
                if client != spec.client {
                    return Err(SubmitError::ForeignDependency {
                        task: spec.id,
                        dependency: dep,
                    });
                }
            }
            seen.insert(spec.id, spec.client);
        }
        let mut needs_refresh = false;
        for spec in batch {
            let id = spec.id;
            let deps: ThinVec<TaskId> = spec.dependencies().into_iter().collect();
            for dep in &deps {
                self.tasks
                    .get_mut(dep)
                    .expect("checked")
                    .dependents
                    .push(id);
            }
            self.tasks.insert(
                id,
                Task {
                    spec,
                    deps,
                    dependents: ThinVec::new(),
                    state: State::Done, // inactive; activated just below
                    pending: 0,
                    wanted: true,
                    holders: ThinVec::new(),
                    size: 0,
                    deaths: 0,
                    errors: 0,
                    stealing: false,
                },
            );
            // A failed dependency fails the task at once.
            let failed_dep = self.tasks[&id]
                .deps
                .iter()
                .find_map(|d| match &self.tasks[d].state {
                    State::Failed(failure) => Some((*d, failure.clone())),
                    _ => None,
                });
            self.set_state(id, State::Waiting, comm);
            if let Some((dep, failure)) = failed_dep {
                self.fail(id, dependency_failure(dep, &failure), comm);
            } else if self.missing(id) == 0 {
                self.make_ready(id);
            } else {
                // A dependency whose result was freed must be computed again.
                needs_refresh |= self.tasks[&id].deps.iter().any(|d| {
                    let d = &self.tasks[d];
                    d.state == State::Done && d.holders.is_empty()
                });
            }
        }
        if needs_refresh {
            self.refresh(comm);
        }
        self.schedule(comm);
        Ok(())
    }

    /// A worker joined with `slots` task threads.
    pub fn add_worker(
        &mut self,
        worker: WorkerId,
        slots: u32,
        now: Instant,
        comm: &mut impl Comm<P>,
    ) {
        self.workers.insert(
            worker,
            Worker {
                slots: slots.max(1),
                assigned: BTreeSet::new(),
                running: BTreeSet::new(),
                holds: BTreeSet::new(),
                last_seen: now,
                retiring: false,
            },
        );
        // Retiring workers with nowhere to put their results have a peer now.
        self.hand_off_all(comm);
        self.schedule(comm);
    }

    /// The worker is leaving (walltime ahead, or asked to stop): it gets no
    /// new tasks, its queued tasks are taken back, and the results only it
    /// holds are copied to peers. It may leave once
    /// [`Core::retirement_complete`] says so; leaving then costs nothing.
    pub fn retire_worker(&mut self, worker: WorkerId, comm: &mut impl Comm<P>) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        w.retiring = true;
        let queued: Vec<TaskId> = w
            .assigned
            .iter()
            .filter(|t| !w.running.contains(t) && !self.tasks[*t].stealing)
            .copied()
            .collect();
        for task in &queued {
            self.tasks.get_mut(task).expect("assigned").stealing = true;
        }
        if !queued.is_empty() {
            comm.steal(worker, &queued);
        }
        self.hand_off(worker, comm);
        self.schedule(comm);
    }

    /// [`Core::hand_off`] for every retiring worker (after the set of
    /// workers changed).
    fn hand_off_all(&mut self, comm: &mut impl Comm<P>) {
        let retiring: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.retiring)
            .map(|(id, _)| *id)
            .collect();
        for worker in retiring {
            self.hand_off(worker, comm);
        }
    }

    /// Starts copying each needed result that only `worker` holds to the
    /// least-loaded worker that is staying.
    fn hand_off(&mut self, worker: WorkerId, comm: &mut impl Comm<P>) {
        let Some(w) = self.workers.get(&worker) else {
            return;
        };
        let sole: Vec<TaskId> = w
            .holds
            .iter()
            .filter(|task| {
                let t = &self.tasks[*task];
                t.holders.len() == 1 && Self::needed(t) && !self.handoffs.contains_key(*task)
            })
            .copied()
            .collect();
        for task in sole {
            let target = self
                .workers
                .iter()
                .filter(|(id, w)| **id != worker && !w.retiring)
                .min_by_key(|(id, w)| (w.holds.len(), **id))
                .map(|(id, _)| *id);
            let Some(target) = target else {
                return;
            };
            self.handoffs.insert(task, (worker, target));
            // Counted as held by the target from now on for balance only.
            comm.replicate(target, task, worker);
        }
    }

    /// `worker` copied (`ok`) or failed to copy `task`'s result from a
    /// retiring peer, as asked by [`Comm::replicate`].
    pub fn replicated(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        ok: bool,
        comm: &mut impl Comm<P>,
    ) {
        let Some((from, to)) = self.handoffs.get(&task).copied() else {
            if ok {
                comm.free(worker, task);
            }
            return;
        };
        if to != worker {
            if ok {
                comm.free(worker, task);
            }
            return;
        }
        self.handoffs.remove(&task);
        let keep = ok
            && self.workers.contains_key(&worker)
            && self
                .tasks
                .get(&task)
                .is_some_and(|t| t.state == State::Done && Self::needed(t));
        if keep {
            let t = self.tasks.get_mut(&task).expect("checked");
            if !t.holders.contains(&worker) {
                t.holders.push(worker);
            }
            self.workers
                .get_mut(&worker)
                .expect("checked")
                .holds
                .insert(task);
        } else if ok {
            comm.free(worker, task);
        } else if self.workers.get(&from).is_some_and(|w| w.retiring) {
            // Try once more, possibly to another peer.
            self.hand_off(from, comm);
        }
    }

    /// The worker is alive.
    pub fn heartbeat(&mut self, worker: WorkerId, now: Instant) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.last_seen = w.last_seen.max(now);
        }
    }

    /// Removes workers silent for longer than the heartbeat timeout and returns them.
    pub fn tick(&mut self, now: Instant, comm: &mut impl Comm<P>) -> Vec<WorkerId> {
        let timeout = self.config.heartbeat_timeout;
        let silent: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| now.saturating_duration_since(w.last_seen) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for worker in &silent {
            self.remove_worker(*worker, comm);
        }
        silent
    }

    /// `worker` started running `task` (it counts a death if the worker dies now).
    pub fn task_started(&mut self, worker: WorkerId, task: TaskId) {
        if self
            .tasks
            .get(&task)
            .is_some_and(|t| t.state == State::Assigned(worker))
            && let Some(w) = self.workers.get_mut(&worker)
        {
            w.running.insert(task);
        }
    }

    /// `worker` finished `task` with a result of `size` bytes.
    pub fn task_finished(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        size: u64,
        comm: &mut impl Comm<P>,
    ) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        if !self
            .tasks
            .get(&task)
            .is_some_and(|t| t.state == State::Assigned(worker))
        {
            // Stale: cancelled, failed meanwhile, or reassigned. Drop the copy.
            w.assigned.remove(&task);
            w.running.remove(&task);
            comm.free(worker, task);
            return;
        }
        w.assigned.remove(&task);
        w.running.remove(&task);
        w.holds.insert(task);
        let t = self.tasks.get_mut(&task).expect("checked");
        t.holders = thin_vec::thin_vec![worker];
        t.size = size;
        t.stealing = false;
        let client = t.spec.client;
        comm.done(client, task, worker, size);
        self.set_state(task, State::Done, comm);
        let dependents = self.tasks[&task].dependents.clone();
        for dependent in dependents {
            if self.tasks[&dependent].state == State::Waiting && self.missing(dependent) == 0 {
                self.make_ready(dependent);
            }
        }
        self.maybe_free(task, comm);
        if self.is_retiring(worker) {
            self.hand_off(worker, comm);
        }
        self.schedule(comm);
    }

    /// `worker` ran `task` and it failed with `failure` (deterministic).
    pub fn task_failed(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        failure: Failure,
        comm: &mut impl Comm<P>,
    ) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        w.assigned.remove(&task);
        w.running.remove(&task);
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        if t.state != State::Assigned(worker) {
            return;
        }
        t.stealing = false;
        if t.errors < t.spec.retries {
            t.errors += 1;
            t.state = State::Ready;
            self.ready.push_front(task);
        } else {
            self.fail(task, failure, comm);
        }
        self.schedule(comm);
    }

    /// The answer to a [`Comm::steal`]: `given_back` if the worker dropped
    /// the task from its queue, false if it had already started it.
    pub fn steal_response(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        given_back: bool,
        comm: &mut impl Comm<P>,
    ) {
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        if t.state != State::Assigned(worker) {
            return;
        }
        t.stealing = false;
        if given_back {
            t.state = State::Ready;
            self.ready.push_front(task);
            if let Some(w) = self.workers.get_mut(&worker) {
                w.assigned.remove(&task);
                w.running.remove(&task);
            }
            self.schedule(comm);
        }
    }

    /// A worker is gone (connection lost, heartbeats missed, or retired).
    pub fn remove_worker(&mut self, worker: WorkerId, comm: &mut impl Comm<P>) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        for task in w.holds {
            if let Some(t) = self.tasks.get_mut(&task) {
                t.holders.retain(|h| *h != worker);
            }
        }
        // Copies from or to it will not complete.
        self.handoffs
            .retain(|_, (from, to)| *from != worker && *to != worker);
        // A worker that retired was not killed by its tasks.
        let max_deaths = if w.retiring {
            u32::MAX
        } else {
            self.config.max_deaths
        };
        for task in w.assigned {
            let Some(t) = self.tasks.get_mut(&task) else {
                continue;
            };
            if t.state != State::Assigned(worker) {
                continue;
            }
            t.stealing = false;
            if w.running.contains(&task) && max_deaths != u32::MAX {
                t.deaths += 1;
                if t.deaths >= max_deaths {
                    let deaths = t.deaths;
                    self.fail(task, Failure::Suspicious { deaths }, comm);
                    continue;
                }
            }
            let t = self.tasks.get_mut(&task).expect("present");
            t.state = State::Ready;
            self.ready.push_front(task);
        }
        // Retiring workers may now be the only holders of results the
        // removed worker also had, and copies to it must go elsewhere.
        self.hand_off_all(comm);
        self.refresh(comm);
        self.schedule(comm);
    }

    /// The client dropped its last handle to `task`: its result may be freed
    /// once no other task needs it, and the record forgotten.
    pub fn release(&mut self, task: TaskId, comm: &mut impl Comm<P>) {
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        t.wanted = false;
        self.maybe_free(task, comm);
        self.maybe_forget(task);
    }

    /// Cancels `tasks` (all of one client): stops them, frees their results,
    /// forgets them. Used when a client disconnects or cancels a job.
    pub fn cancel(&mut self, tasks: &[TaskId], comm: &mut impl Comm<P>) {
        let doomed: BTreeSet<TaskId> = tasks
            .iter()
            .copied()
            .filter(|t| self.tasks.contains_key(t))
            .collect();
        // Other tasks that depend on the doomed ones are doomed too.
        let mut closure = doomed.clone();
        let mut stack: Vec<TaskId> = doomed.into_iter().collect();
        while let Some(t) = stack.pop() {
            for d in &self.tasks[&t].dependents {
                if closure.insert(*d) {
                    stack.push(*d);
                }
            }
        }
        // One pass over the ready queue, not one per cancelled task: a client
        // leaving with 100k queued tasks must not stall the scheduler.
        self.ready.retain(|r| !closure.contains(r));
        for task in &closure {
            let t = &self.tasks[task];
            if let State::Assigned(worker) = t.state {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.assigned.remove(task);
                    w.running.remove(task);
                }
                comm.cancel(worker, *task);
            }
            for holder in t.holders.clone() {
                if let Some(w) = self.workers.get_mut(&holder) {
                    w.holds.remove(task);
                }
                comm.free(holder, *task);
            }
        }
        for task in &closure {
            let deps = self.tasks[task].deps.clone();
            let active = self.tasks[task].state.is_active();
            for dep in deps {
                if closure.contains(&dep) {
                    continue;
                }
                if let Some(d) = self.tasks.get_mut(&dep) {
                    d.dependents.retain(|x| x != task);
                    if active {
                        d.pending -= 1;
                    }
                }
                self.maybe_free(dep, comm);
                self.maybe_forget(dep);
            }
        }
        for task in closure {
            self.tasks.remove(&task);
        }
        self.schedule(comm);
    }

    // ---- internals ----

    fn has_result(&self, task: TaskId) -> bool {
        self.tasks
            .get(&task)
            .is_some_and(|t| t.state == State::Done && !t.holders.is_empty())
    }

    fn missing(&self, task: TaskId) -> usize {
        self.tasks[&task]
            .deps
            .iter()
            .filter(|d| !self.has_result(**d))
            .count()
    }

    fn make_ready(&mut self, task: TaskId) {
        self.tasks.get_mut(&task).expect("known").state = State::Ready;
        self.ready.push_back(task);
    }

    /// Changes a task's state, keeping dependencies' `pending` counts right.
    fn set_state(&mut self, task: TaskId, state: State, comm: &mut impl Comm<P>) {
        let t = self.tasks.get_mut(&task).expect("known");
        let (was, will) = (t.state.is_active(), state.is_active());
        t.state = state;
        if was == will {
            return;
        }
        let deps = t.deps.clone();
        for dep in deps {
            let d = self.tasks.get_mut(&dep).expect("dependency known");
            if will {
                d.pending += 1;
            } else {
                d.pending -= 1;
                self.maybe_free(dep, comm);
            }
        }
    }

    fn needed(t: &Task<P>) -> bool {
        t.wanted || t.pending > 0
    }

    /// Frees a result nobody will read.
    fn maybe_free(&mut self, task: TaskId, comm: &mut impl Comm<P>) {
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        if t.state != State::Done || Self::needed(t) || t.holders.is_empty() {
            return;
        }
        for holder in std::mem::take(&mut t.holders) {
            if let Some(w) = self.workers.get_mut(&holder) {
                w.holds.remove(&task);
            }
            comm.free(holder, task);
        }
    }

    /// Forgets a task nobody can ask about any more: released, not active,
    /// and no remaining task depends on it (lineage may need it otherwise).
    fn maybe_forget(&mut self, task: TaskId) {
        let mut stack = vec![task];
        while let Some(task) = stack.pop() {
            let Some(t) = self.tasks.get(&task) else {
                continue;
            };
            if t.wanted || t.state.is_active() || !t.dependents.is_empty() || !t.holders.is_empty()
            {
                continue;
            }
            let t = self.tasks.remove(&task).expect("present");
            for dep in t.deps {
                if let Some(d) = self.tasks.get_mut(&dep) {
                    d.dependents.retain(|x| *x != task);
                    stack.push(dep);
                }
            }
        }
    }

    /// Fails `task` and, transitively, every active task that depends on it.
    fn fail(&mut self, task: TaskId, failure: Failure, comm: &mut impl Comm<P>) {
        let origin_failure = Arc::new(failure);
        let mut work = vec![(task, origin_failure.clone())];
        while let Some((task, failure)) = work.pop() {
            let t = &self.tasks[&task];
            match t.state {
                State::Ready => self.ready.retain(|r| *r != task),
                State::Assigned(worker) => {
                    // Only a worker that still has it needs telling.
                    if let Some(w) = self.workers.get_mut(&worker)
                        && w.assigned.remove(&task)
                    {
                        w.running.remove(&task);
                        comm.cancel(worker, task);
                    }
                }
                State::Waiting => {}
                State::Done | State::Failed(_) => continue,
            }
            let client = t.spec.client;
            let dependents = t.dependents.clone();
            self.set_state(task, State::Failed(failure.clone()), comm);
            comm.failed(client, task, &failure);
            for dependent in dependents {
                if self.tasks[&dependent].state.is_active() {
                    work.push((dependent, Arc::new(dependency_failure(task, &failure))));
                }
            }
        }
    }

    /// After results were lost: recompute what is still needed and move
    /// tasks whose inputs vanished back to waiting (cancelling them on their
    /// workers). Runs to a fixpoint; only worker loss needs it.
    fn refresh(&mut self, comm: &mut impl Comm<P>) {
        loop {
            let lost: Vec<TaskId> = self
                .tasks
                .iter()
                .filter(|(_, t)| t.state == State::Done && t.holders.is_empty() && Self::needed(t))
                .map(|(id, _)| *id)
                .collect();
            self.recomputed += lost.len() as u64;
            for task in &lost {
                self.set_state(*task, State::Waiting, comm);
            }
            let active: Vec<TaskId> = self
                .tasks
                .iter()
                .filter(|(_, t)| t.state.is_active())
                .map(|(id, _)| *id)
                .collect();
            for task in active {
                if !self.tasks[&task].state.is_active() {
                    continue; // failed earlier in this pass
                }
                // A task restarted for its lost result may depend on one
                // that has failed for good since: it fails too.
                let failed_dep =
                    self.tasks[&task]
                        .deps
                        .iter()
                        .find_map(|d| match &self.tasks[d].state {
                            State::Failed(failure) => Some((*d, failure.clone())),
                            _ => None,
                        });
                if let Some((dep, failure)) = failed_dep {
                    self.fail(task, dependency_failure(dep, &failure), comm);
                    continue;
                }
                let missing = self.missing(task);
                match self.tasks[&task].state {
                    State::Waiting if missing == 0 => self.make_ready(task),
                    State::Ready if missing > 0 => {
                        self.ready.retain(|r| *r != task);
                        self.tasks.get_mut(&task).expect("known").state = State::Waiting;
                    }
                    State::Assigned(worker) if missing > 0 => {
                        if let Some(w) = self.workers.get_mut(&worker) {
                            w.assigned.remove(&task);
                            w.running.remove(&task);
                        }
                        comm.cancel(worker, task);
                        let t = self.tasks.get_mut(&task).expect("known");
                        t.state = State::Waiting;
                        t.stealing = false;
                    }
                    _ => {}
                }
            }
            if lost.is_empty() {
                break;
            }
        }
    }

    /// Assigns ready tasks to workers with room, then lets idle workers steal.
    fn schedule(&mut self, comm: &mut impl Comm<P>) {
        let per_slot = self.config.queue_per_slot.max(1) as usize;
        let mut inputs = Vec::new();
        while let Some(&task) = self.ready.front() {
            let deps = &self.tasks[&task].deps;
            let mut best: Option<(WorkerId, u64, usize)> = None;
            for (id, w) in &self.workers {
                let queued = w.assigned.len();
                if w.retiring || queued >= w.slots as usize * per_slot {
                    continue;
                }
                let local_bytes: u64 = deps
                    .iter()
                    .filter(|d| self.tasks[*d].holders.contains(id))
                    .map(|d| self.tasks[d].size)
                    .sum();
                // Prefer more local bytes, then the emptier queue relative to slots.
                let better = match best {
                    None => true,
                    Some((_, bytes, q)) => {
                        local_bytes > bytes
                            || (local_bytes == bytes && queued * 1000 / (w.slots as usize) < q)
                    }
                };
                if better {
                    best = Some((*id, local_bytes, queued * 1000 / w.slots as usize));
                }
            }
            let Some((worker, _, _)) = best else { break };
            self.ready.pop_front();
            inputs.clear();
            for dep in &self.tasks[&task].deps {
                let holders = &self.tasks[dep].holders;
                let from = if holders.contains(&worker) {
                    worker
                } else {
                    holders[0]
                };
                inputs.push((*dep, from));
            }
            let t = self.tasks.get_mut(&task).expect("known");
            t.state = State::Assigned(worker);
            self.workers
                .get_mut(&worker)
                .expect("chosen")
                .assigned
                .insert(task);
            comm.assign(worker, &self.tasks[&task].spec, &inputs);
        }
        if self.ready.is_empty() {
            self.steal(comm);
        }
    }

    /// An idle worker (fewer tasks than slots) takes half the surplus of the
    /// most loaded worker's not-yet-started queue.
    fn steal(&mut self, comm: &mut impl Comm<P>) {
        let idle: Vec<(WorkerId, usize)> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.retiring && w.assigned.len() < w.slots as usize)
            .map(|(id, w)| (*id, w.assigned.len()))
            .collect();
        for (thief, thief_load) in idle {
            let stealable = |w: &Worker| -> Vec<TaskId> {
                w.assigned
                    .iter()
                    .filter(|t| !w.running.contains(t) && !self.tasks[*t].stealing)
                    .copied()
                    .collect()
            };
            let victim = self
                .workers
                .iter()
                .filter(|(id, _)| **id != thief)
                .map(|(id, w)| (*id, stealable(w), w.slots as usize))
                .filter(|(_, queued, slots)| queued.len() > *slots)
                .max_by_key(|(id, queued, _)| (queued.len(), std::cmp::Reverse(*id)));
            let Some((victim, queued, _)) = victim else {
                continue;
            };
            let count = (queued.len().saturating_sub(thief_load)) / 2;
            if count == 0 {
                continue;
            }
            // The most recently queued ones: the victim would reach them last.
            let taken: Vec<TaskId> = queued.into_iter().rev().take(count).collect();
            for task in &taken {
                self.tasks.get_mut(task).expect("known").stealing = true;
            }
            comm.steal(victim, &taken);
        }
    }

    /// Checks every invariant; panics with the first violation. Tests call
    /// it after each event.
    pub fn sanity_check(&self) {
        let mut in_queue = BTreeSet::new();
        for task in &self.ready {
            assert!(in_queue.insert(*task), "{task} queued twice");
            assert_eq!(
                self.tasks[task].state,
                State::Ready,
                "{task} queued but not ready"
            );
        }
        for (id, t) in &self.tasks {
            for dep in &t.deps {
                let d = self
                    .tasks
                    .get(dep)
                    .unwrap_or_else(|| panic!("{id} depends on forgotten {dep}"));
                assert!(
                    d.dependents.contains(id),
                    "{dep} does not list dependent {id}"
                );
            }
            for dependent in &t.dependents {
                assert!(
                    self.tasks[dependent].deps.contains(id),
                    "{dependent} listed as dependent of {id}"
                );
            }
            let active_dependents = t
                .dependents
                .iter()
                .filter(|d| self.tasks[*d].state.is_active())
                .count() as u32;
            assert_eq!(t.pending, active_dependents, "{id}: pending count");
            match &t.state {
                State::Ready => {
                    assert!(in_queue.contains(id), "{id} ready but not queued");
                    assert_eq!(self.missing(*id), 0, "{id} ready with missing inputs");
                }
                State::Waiting => assert!(self.missing(*id) > 0, "{id} waiting with all inputs"),
                State::Assigned(worker) => {
                    let w = self
                        .workers
                        .get(worker)
                        .unwrap_or_else(|| panic!("{id} on unknown {worker}"));
                    assert!(w.assigned.contains(id), "{worker} does not list {id}");
                    assert_eq!(self.missing(*id), 0, "{id} assigned with missing inputs");
                }
                State::Done => {
                    for holder in &t.holders {
                        assert!(
                            self.workers[holder].holds.contains(id),
                            "{holder} does not hold {id}"
                        );
                    }
                    if Self::needed(t) {
                        assert!(!t.holders.is_empty(), "{id} needed but its result is gone");
                    }
                }
                State::Failed(_) => assert!(t.holders.is_empty(), "failed {id} has holders"),
            }
            if !matches!(t.state, State::Done) {
                assert!(t.holders.is_empty(), "{id} not done but held");
            }
        }
        for (task, (from, to)) in &self.handoffs {
            assert!(
                self.workers.get(from).is_some_and(|w| w.retiring),
                "{task} handed off from {from}, which is not retiring"
            );
            assert!(
                self.workers.contains_key(to),
                "{task} handed to unknown {to}"
            );
        }
        for (id, w) in &self.workers {
            for task in &w.assigned {
                assert_eq!(
                    self.tasks[task].state,
                    State::Assigned(*id),
                    "{id} lists {task} wrongly"
                );
            }
            assert!(
                w.running.is_subset(&w.assigned),
                "{id}: running but not assigned"
            );
            for task in &w.holds {
                assert!(
                    self.tasks[task].holders.contains(id),
                    "{id} holds {task} unknown to it"
                );
            }
            assert!(
                w.assigned.len() <= w.slots as usize * self.config.queue_per_slot.max(1) as usize
            );
        }
    }
}

fn dependency_failure(dependency: TaskId, failure: &Arc<Failure>) -> Failure {
    match &**failure {
        Failure::Dependency { cause, origin, .. } => Failure::Dependency {
            dependency,
            cause: cause.clone(),
            origin: *origin,
        },
        _ => Failure::Dependency {
            dependency,
            cause: failure.clone(),
            origin: dependency,
        },
    }
}

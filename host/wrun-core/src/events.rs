//! The handlers of what happens in the cluster: tasks submitted, workers
//! joining and leaving, tasks started, finished, failed or given back,
//! results released, tasks cancelled, time passing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use thin_vec::ThinVec;

use crate::lineage::dependency_failure;
use crate::task::{State, Task};
use crate::worker::Worker;
use crate::{Comm, Core, Failure, SubmitError, TaskId, TaskSpec, WorkerId};

impl<P> Core<P> {
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
                Box::new(Task {
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
                    staged: false,
                }),
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
                being_stolen: 0,
                staged: 0,
            },
        );
        self.by_load.insert((0, worker));
        // Retiring workers with nowhere to put their results have a peer now.
        self.hand_off_all(comm);
        self.schedule(comm);
    }

    /// The worker is alive.
    pub fn heartbeat(&mut self, worker: WorkerId, now: Instant) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.last_seen = w.last_seen.max(now);
        }
    }

    /// The scheduler's own loop could not listen for `stall` (it was busy,
    /// or the machine did not run it): heartbeats sent meanwhile are still
    /// unread, so that time does not count against any worker.
    pub fn loop_stalled(&mut self, stall: Duration, now: Instant) {
        for w in self.workers.values_mut() {
            w.last_seen = (w.last_seen + stall).min(now);
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
        if !self.workers.contains_key(&worker) {
            return;
        }
        if !self
            .tasks
            .get(&task)
            .is_some_and(|t| t.state == State::Assigned(worker))
        {
            // Stale: cancelled, failed meanwhile, or reassigned. Drop the
            // copy, unless this worker holds the task's result: a worker
            // keeps one copy per task, so the stale run replaced the copy
            // the core counts on (a run cancelled too late and assigned
            // here again, which finished twice) and a free would lose it.
            self.unassign(worker, task);
            let holds = self
                .tasks
                .get(&task)
                .is_some_and(|t| t.state == State::Done && t.holders.contains(&worker));
            if !holds {
                comm.free(worker, task);
            }
            return;
        }
        if self.tasks[&task].staged && self.missing(task) > 0 {
            // Staged, and it ran on an input made on another worker whose
            // report has not come yet: recorded when it does.
            self.early_finishes.insert(task, size);
            return;
        }
        self.unassign(worker, task);
        self.tasks.get_mut(&task).expect("checked").staged = false;
        self.record_result(worker, task, size, comm);
        if self.is_retiring(worker) {
            self.hand_off(worker, comm);
        }
        self.schedule(comm);
    }

    /// `task` (active, not on a worker's books) has its result, `size`
    /// bytes, on `worker`: it is done, and its dependents may be ready.
    pub(crate) fn record_result(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        size: u64,
        comm: &mut impl Comm<P>,
    ) {
        self.workers
            .get_mut(&worker)
            .expect("checked")
            .holds
            .insert(task);
        let t = self.tasks.get_mut(&task).expect("checked");
        t.holders = thin_vec::thin_vec![worker];
        t.size = size;
        t.stealing = false;
        let (client, tenant) = (t.spec.client, t.spec.tenant);
        self.tenant_mut(tenant).stored_bytes += size;
        comm.done(client, task, worker, size);
        self.set_state(task, State::Done, comm);
        let dependents = self.tasks[&task].dependents.clone();
        for dependent in dependents {
            if self.tasks[&dependent].state == State::Waiting && self.missing(dependent) == 0 {
                self.make_ready(dependent);
            }
        }
        self.staged_inputs_made(task, comm);
        self.maybe_free(task, comm);
    }

    /// `worker` ran `task` and it failed with `failure` (deterministic).
    pub fn task_failed(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        failure: Failure,
        comm: &mut impl Comm<P>,
    ) {
        if !self.workers.contains_key(&worker) {
            return;
        }
        let staged = self.tasks.get(&task).is_some_and(|t| t.staged);
        self.unassign(worker, task);
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        if t.state != State::Assigned(worker) {
            return;
        }
        t.stealing = false;
        t.staged = false;
        if staged && self.missing(task) > 0 {
            // A staged task that ended before its inputs were made (it
            // could not be prepared, or its report overtook theirs) waits
            // for them again; it is not counted as an error.
            self.tasks.get_mut(&task).expect("checked").state = State::Waiting;
            self.unstage_dependents(task, comm);
            self.schedule(comm);
            return;
        }
        let t = self.tasks.get_mut(&task).expect("checked");
        if t.errors < t.spec.retries {
            t.errors += 1;
            t.state = State::Ready;
            let tenant = t.spec.tenant;
            self.ready.push_front(tenant, task);
            // It may run elsewhere now.
            self.unstage_dependents(task, comm);
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
        if std::mem::take(&mut t.stealing) {
            self.workers
                .get_mut(&worker)
                .expect("assigned to a known worker")
                .being_stolen -= 1;
        }
        let t = self.tasks.get_mut(&task).expect("checked");
        if given_back {
            t.state = State::Ready;
            let tenant = t.spec.tenant;
            self.unassign(worker, task);
            self.ready.push_front(tenant, task);
            self.unstage_dependents(task, comm);
            self.schedule(comm);
        }
    }

    /// A worker is gone (connection lost, heartbeats missed, or retired).
    pub fn remove_worker(&mut self, worker: WorkerId, comm: &mut impl Comm<P>) {
        let Some(w) = self.workers.get(&worker) else {
            return;
        };
        // Off the worker's books first, so the tenants' counts stay right.
        let assigned: Vec<TaskId> = w.assigned.iter().copied().collect();
        let running = w.running.clone();
        for task in &assigned {
            self.unassign(worker, *task);
        }
        let w = self.workers.remove(&worker).expect("checked");
        self.by_load.remove(&(w.load_key(), worker));
        for task in w.holds {
            if let Some(t) = self.tasks.get_mut(&task) {
                t.holders.retain(|h| *h != worker);
                if t.holders.is_empty() && t.state == State::Done {
                    let (tenant, size) = (t.spec.tenant, t.size);
                    self.tenant_mut(tenant).stored_bytes -= size;
                }
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
        for &task in &assigned {
            let Some(t) = self.tasks.get_mut(&task) else {
                continue;
            };
            if t.state != State::Assigned(worker) {
                continue;
            }
            t.stealing = false;
            if std::mem::take(&mut t.staged) {
                // Its inputs went with the worker: it waits for them again.
                t.state = State::Waiting;
                continue;
            }
            if running.contains(&task) && max_deaths != u32::MAX {
                t.deaths += 1;
                if t.deaths >= max_deaths {
                    let deaths = t.deaths;
                    self.fail(task, Failure::Suspicious { deaths }, comm);
                    continue;
                }
            }
            let t = self.tasks.get_mut(&task).expect("present");
            t.state = State::Ready;
            let tenant = t.spec.tenant;
            self.ready.push_front(tenant, task);
        }
        // Tasks staged on other workers waited for what it was making.
        for task in &assigned {
            if self.tasks.contains_key(task) {
                self.unstage_dependents(*task, comm);
            }
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
        self.maybe_forget(task, comm);
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
            let (tenant, size, active) = (t.spec.tenant, t.size, t.state.is_active());
            if let State::Assigned(worker) = t.state {
                self.unassign(worker, *task);
                comm.cancel(worker, *task);
            }
            let t = &self.tasks[task];
            let holders = t.holders.clone();
            if !holders.is_empty() && t.state == State::Done {
                self.tenant_mut(tenant).stored_bytes -= size;
            }
            for holder in holders {
                if let Some(w) = self.workers.get_mut(&holder) {
                    w.holds.remove(task);
                }
                comm.free(holder, *task);
            }
            if active {
                self.tenant_mut(tenant).active -= 1;
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
                self.maybe_forget(dep, comm);
            }
        }
        for task in closure {
            self.tasks.remove(&task);
            comm.forgotten(task);
        }
        self.schedule(comm);
    }
}

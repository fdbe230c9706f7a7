//! Lineage: keeping each dependency's count of active readers, freeing
//! results nobody will read, forgetting what nobody can ask about, failing
//! dependents, and recomputing results lost with a worker.

use std::sync::Arc;

use crate::task::{State, Task};
use crate::{Comm, Core, Failure, TaskId};

impl<P> Core<P> {
    pub(crate) fn has_result(&self, task: TaskId) -> bool {
        self.tasks
            .get(&task)
            .is_some_and(|t| t.state == State::Done && !t.holders.is_empty())
    }

    pub(crate) fn missing(&self, task: TaskId) -> usize {
        self.tasks[&task]
            .deps
            .iter()
            .filter(|d| !self.has_result(**d))
            .count()
    }

    pub(crate) fn make_ready(&mut self, task: TaskId) {
        let t = self.tasks.get_mut(&task).expect("known");
        t.state = State::Ready;
        let tenant = t.spec.tenant;
        self.ready.push_back(tenant, task);
    }

    /// Changes a task's state, keeping dependencies' `pending` counts right.
    pub(crate) fn set_state(&mut self, task: TaskId, state: State, comm: &mut impl Comm<P>) {
        let t = self.tasks.get_mut(&task).expect("known");
        let (was, will) = (t.state.is_active(), state.is_active());
        t.state = state;
        if was == will {
            return;
        }
        let deps = t.deps.clone();
        let tenant = t.spec.tenant;
        let usage = self.tenant_mut(tenant);
        if will {
            usage.active += 1;
        } else {
            usage.active -= 1;
        }
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

    pub(crate) fn needed(t: &Task<P>) -> bool {
        t.wanted || t.pending > 0
    }

    /// Frees a result nobody will read.
    pub(crate) fn maybe_free(&mut self, task: TaskId, comm: &mut impl Comm<P>) {
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        if t.state != State::Done || Self::needed(t) || t.holders.is_empty() {
            return;
        }
        let holders = std::mem::take(&mut t.holders);
        let (tenant, size) = (t.spec.tenant, t.size);
        self.tenant_mut(tenant).stored_bytes -= size;
        for holder in holders {
            if let Some(w) = self.workers.get_mut(&holder) {
                w.holds.remove(&task);
            }
            comm.free(holder, task);
        }
    }

    /// Forgets a task nobody can ask about any more: released, not active,
    /// and no remaining task depends on it (lineage may need it otherwise).
    pub(crate) fn maybe_forget(&mut self, task: TaskId, comm: &mut impl Comm<P>) {
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
            comm.forgotten(task);
            for dep in t.deps {
                if let Some(d) = self.tasks.get_mut(&dep) {
                    d.dependents.retain(|x| *x != task);
                    stack.push(dep);
                }
            }
        }
    }

    /// Fails `task` and, transitively, every active task that depends on it.
    pub(crate) fn fail(&mut self, task: TaskId, failure: Failure, comm: &mut impl Comm<P>) {
        let origin_failure = Arc::new(failure);
        let mut work = vec![(task, origin_failure.clone())];
        while let Some((task, failure)) = work.pop() {
            let t = &self.tasks[&task];
            let (client, tenant) = (t.spec.client, t.spec.tenant);
            match t.state {
                State::Ready => self.ready.remove(tenant, task),
                State::Assigned(worker) => {
                    // Only a worker that still has it needs telling.
                    if self.unassign(worker, task) {
                        comm.cancel(worker, task);
                    }
                    self.tasks.get_mut(&task).expect("known").staged = false;
                }
                State::Waiting => {}
                State::Done | State::Failed(_) => continue,
            }
            let dependents = self.tasks[&task].dependents.clone();
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
    pub(crate) fn refresh(&mut self, comm: &mut impl Comm<P>) {
        // A restart holds this until its workers have rejoined with the
        // results they kept (`recovery.rs`).
        if self.placement_held {
            return;
        }
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
                        let tenant = self.tasks[&task].spec.tenant;
                        self.ready.remove(tenant, task);
                        self.tasks.get_mut(&task).expect("known").state = State::Waiting;
                    }
                    // A staged task whose inputs are still on their way
                    // stays.
                    State::Assigned(worker)
                        if missing > 0
                            && !(self.tasks[&task].staged && self.inputs_on_their_way(task)) =>
                    {
                        self.unassign(worker, task);
                        comm.cancel(worker, task);
                        let t = self.tasks.get_mut(&task).expect("known");
                        t.state = State::Waiting;
                        t.stealing = false;
                        t.staged = false;
                        // What was staged behind it waits too.
                        self.unstage_dependents(task, comm);
                    }
                    _ => {}
                }
            }
            if lost.is_empty() {
                break;
            }
        }
    }
}

pub(crate) fn dependency_failure(dependency: TaskId, failure: &Arc<Failure>) -> Failure {
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

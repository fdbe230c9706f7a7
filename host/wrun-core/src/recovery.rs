//! A scheduler restarted on its journal: the tasks come back with what had
//! become of them (finished, failed, forgotten), placement is held while
//! the workers rejoin with the results they kept, and only then is what no
//! worker kept recomputed, where something still needs it.

use std::sync::Arc;

use crate::task::State;
use crate::{Comm, Core, Failure, TaskId, TaskSpec, WorkerId};

/// What became of a task: its result's size, or its failure.
pub type Outcome = Result<u64, Arc<Failure>>;

impl<P> Core<P> {
    /// Holds placement: tasks become ready as usual, but none goes to a
    /// worker and no lost result is recomputed until
    /// [`Core::resume_placement`].
    pub fn hold_placement(&mut self) {
        self.placement_held = true;
    }

    /// Whether placement is held.
    pub fn is_placement_held(&self) -> bool {
        self.placement_held
    }

    /// Ends a hold: results that no rejoined worker had are computed again
    /// where something still needs them (they count as recomputed), and
    /// ready tasks are placed.
    pub fn resume_placement(&mut self, comm: &mut impl Comm<P>) {
        self.placement_held = false;
        self.refresh(comm);
        self.hand_off_all(comm);
        self.schedule(comm);
    }

    /// A restored task had finished, with a result of `size` bytes, before
    /// the restart: it is done, its result on no worker until one rejoins
    /// with it.
    pub fn restore_done(&mut self, task: TaskId, size: u64, comm: &mut impl Comm<P>) {
        let Some(t) = self.tasks.get_mut(&task) else {
            return;
        };
        let tenant = t.spec.tenant;
        match t.state {
            State::Ready => self.ready.remove(tenant, task),
            State::Waiting => {}
            _ => return,
        }
        self.tasks.get_mut(&task).expect("known").size = size;
        self.set_state(task, State::Done, comm);
    }

    /// A restored task had failed for good (and so its active dependents).
    pub fn restore_failed(&mut self, task: TaskId, failure: Failure, comm: &mut impl Comm<P>) {
        if self.is_active(task) {
            self.fail(task, failure, comm);
        }
    }

    /// The journal says the core had forgotten `task` (cancelled, or
    /// released and no longer needed).
    pub fn restore_forgotten(&mut self, task: TaskId, comm: &mut impl Comm<P>) {
        if self.is_active(task) {
            self.cancel(&[task], comm);
        } else if let Some(t) = self.tasks.get_mut(&task) {
            t.wanted = false;
            self.maybe_free(task, comm);
            self.maybe_forget(task, comm);
        }
    }

    /// `worker` rejoined holding these results (task, size) from before: a
    /// result the core awaits or would compute is taken as done there; one
    /// it does not need is freed.
    pub fn results_held(
        &mut self,
        worker: WorkerId,
        results: &[(TaskId, u64)],
        comm: &mut impl Comm<P>,
    ) {
        if !self.workers.contains_key(&worker) {
            return;
        }
        for &(task, size) in results {
            let Some(t) = self.tasks.get_mut(&task) else {
                comm.free(worker, task);
                continue;
            };
            let tenant = t.spec.tenant;
            match t.state {
                State::Done if t.holders.contains(&worker) => {}
                State::Done if !t.holders.is_empty() => {
                    // A second copy, as a replica would be.
                    t.holders.push(worker);
                    self.workers
                        .get_mut(&worker)
                        .expect("checked")
                        .holds
                        .insert(task);
                }
                State::Done if Self::needed(t) => {
                    t.holders.push(worker);
                    t.size = size;
                    self.tenant_mut(tenant).stored_bytes += size;
                    self.workers
                        .get_mut(&worker)
                        .expect("checked")
                        .holds
                        .insert(task);
                    let dependents = self.tasks[&task].dependents.clone();
                    for dependent in dependents {
                        if self.tasks[&dependent].state == State::Waiting
                            && self.missing(dependent) == 0
                        {
                            self.make_ready(dependent);
                        }
                    }
                }
                State::Ready | State::Waiting => {
                    if t.state == State::Ready {
                        self.ready.remove(tenant, task);
                    }
                    self.record_result(worker, task, size, comm);
                }
                // Freed already, failed, or being computed elsewhere.
                State::Done | State::Failed(_) | State::Assigned(_) => comm.free(worker, task),
            }
        }
        self.schedule(comm);
    }

    /// Results that had been computed and are still needed, but that no
    /// worker has (yet): what a restart waits for its workers to bring.
    pub fn results_awaited(&self) -> Vec<TaskId> {
        self.tasks
            .iter()
            .filter(|(_, t)| t.state == State::Done && t.holders.is_empty() && Self::needed(t))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Every task, in id order (dependencies first), with its outcome so
    /// far: what a journal snapshot writes.
    pub fn tasks_in_order(&self) -> Vec<(&TaskSpec<P>, Option<Outcome>)> {
        let mut ids: Vec<TaskId> = self.tasks.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|id| (&self.tasks[&id].spec, self.outcome(id)))
            .collect()
    }
}

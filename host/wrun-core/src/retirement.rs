//! Workers that leave gracefully (a walltime ahead, or asked to stop): no
//! new tasks, their queue taken back, and every needed result only they
//! hold copied to a staying worker before they may go.

use crate::task::State;
use crate::{Comm, Core, TaskId, WorkerId};

impl<P> Core<P> {
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

    /// The worker is leaving (walltime ahead, or asked to stop): it gets no
    /// new tasks, its queued tasks are taken back, and the results only it
    /// holds are copied to peers. It may leave once
    /// [`Core::retirement_complete`] says so; leaving then costs nothing.
    pub fn retire_worker(&mut self, worker: WorkerId, comm: &mut impl Comm<P>) {
        let Some(w) = self.workers.get_mut(&worker) else {
            return;
        };
        if !w.retiring {
            self.by_load.remove(&(w.load_key(), worker));
        }
        w.retiring = true;
        self.unstage_all(worker, comm);
        let w = self.workers.get(&worker).expect("checked");
        let queued: Vec<TaskId> = w
            .assigned
            .iter()
            .filter(|t| !w.running.contains(t) && !self.tasks[*t].stealing)
            .copied()
            .collect();
        self.mark_stealing(worker, &queued);
        if !queued.is_empty() {
            comm.steal(worker, &queued);
        }
        // Asked back, they may run elsewhere: what waits for them on other
        // workers waits again.
        for task in &queued {
            self.unstage_dependents(*task, comm);
        }
        self.hand_off(worker, comm);
        self.schedule(comm);
    }

    /// [`Core::hand_off`] for every retiring worker (after the set of
    /// workers changed).
    pub(crate) fn hand_off_all(&mut self, comm: &mut impl Comm<P>) {
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
    pub(crate) fn hand_off(&mut self, worker: WorkerId, comm: &mut impl Comm<P>) {
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
            if t.holders.is_empty() {
                let (tenant, size) = (t.spec.tenant, t.size);
                self.tenant_mut(tenant).stored_bytes += size;
            }
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
}

//! Placement: which worker runs a ready task, and idle workers stealing
//! queued work from loaded ones.

use crate::task::State;
use crate::worker::Worker;
use crate::{Comm, Core, TaskId, WorkerId};

impl<P> Core<P> {
    /// Assigns ready tasks to workers with room, then lets idle workers steal.
    pub(crate) fn schedule(&mut self, comm: &mut impl Comm<P>) {
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
    pub(crate) fn steal(&mut self, comm: &mut impl Comm<P>) {
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
}

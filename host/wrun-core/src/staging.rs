//! Staging: a task whose inputs are all made, or being made, goes to a
//! worker at once, before they are done. The worker parks it and starts it
//! the moment its last input is in hand: inputs made on that worker are
//! taken from its store, and inputs being made on another worker are
//! fetched from that peer, which answers as soon as it has made them
//! (`Assignment.waitForInputs`). Without staging every dependency level
//! waited for the finished event to reach the scheduler and a run message
//! to come back (a chain of 10,000 no-op tasks spent about 140 µs a step on
//! that, and Task Bench's stencil, whose every step reads results of two
//! workers, 300 µs).
//!
//! A staged task is `Assigned` with `staged` set; it counts in its worker's
//! load (so staging stops when the worker's queue is full, and resumes from
//! the tasks that become ordinary as their inputs finish), is never
//! stolen, nor are the inputs it waits for, and is taken back (cancelled on
//! the worker, waiting again) if an input will not be made after all:
//! given back to a steal, retried, lost with its worker, or its worker
//! retiring.
//!
//! Reports from different workers travel on different connections, so a
//! staged task may be reported finished before an input made on another
//! worker is: that finish is kept in `early_finishes` and recorded when
//! the input's report comes.

use crate::task::State;
use crate::{Comm, Core, TaskId, WorkerId};

impl<P> Core<P> {
    /// Whether every input of `task` is made (held by a worker) or being
    /// made (assigned to a worker, and not being asked back).
    pub(crate) fn inputs_on_their_way(&self, task: TaskId) -> bool {
        self.tasks[&task].deps.iter().all(|d| {
            let d = &self.tasks[d];
            match d.state {
                State::Done => !d.holders.is_empty(),
                State::Assigned(_) => !d.stealing,
                _ => false,
            }
        })
    }

    /// Where each input of `task` comes from when it runs on `worker`:
    /// that worker if it holds or makes it, else the worker making it, or
    /// one that holds it.
    pub(crate) fn input_sources(&self, task: TaskId, worker: WorkerId) -> Vec<(TaskId, WorkerId)> {
        self.tasks[&task]
            .deps
            .iter()
            .map(|d| {
                let t = &self.tasks[d];
                let from = match t.state {
                    State::Assigned(on) => on,
                    _ if t.holders.contains(&worker) => worker,
                    _ => t.holders[0],
                };
                (*d, from)
            })
            .collect()
    }

    /// The worker to stage `task` on, if it may be staged now: among the
    /// workers with room that make or hold its inputs, the one with most
    /// of them (the rest come from peers), then the least loaded (a step of
    /// a stencil reads two workers' results, and its tasks must not all go
    /// to one of them), then the lowest id.
    fn stage_target(&self, task: TaskId) -> Option<WorkerId> {
        let t = &self.tasks[&task];
        if !self.config.staging || self.placement_held || t.state != State::Waiting {
            return None;
        }
        let has_slot = self
            .tenants
            .get(&t.spec.tenant)
            .is_none_or(|load| load.has_slot());
        if !has_slot || !self.inputs_on_their_way(task) {
            return None;
        }
        let full_key = u64::from(self.config.queue_per_slot.max(1)) * 1000;
        let mut best: Option<(usize, u64, WorkerId)> = None;
        for dep in &t.deps {
            let d = &self.tasks[dep];
            let makers = match d.state {
                State::Assigned(on) => std::slice::from_ref(&on).to_vec(),
                _ => d.holders.to_vec(),
            };
            for worker in makers {
                let w = &self.workers[&worker];
                let key = w.load_key();
                if w.retiring || key >= full_key {
                    continue;
                }
                let count = t
                    .deps
                    .iter()
                    .filter(|d| {
                        let d = &self.tasks[*d];
                        d.state == State::Assigned(worker) || d.holders.contains(&worker)
                    })
                    .count();
                let better = best.is_none_or(|(c, k, id)| {
                    (count, std::cmp::Reverse(key), std::cmp::Reverse(worker))
                        > (c, std::cmp::Reverse(k), std::cmp::Reverse(id))
                });
                if better {
                    best = Some((count, key, worker));
                }
            }
        }
        best.map(|(_, _, worker)| worker)
    }

    /// `task` was just assigned or staged, or became an ordinary task on
    /// its worker: stages the dependents that may go now, and theirs, while
    /// the workers have room.
    pub(crate) fn stage_dependents(&mut self, task: TaskId, comm: &mut impl Comm<P>) {
        if !self.config.staging {
            return;
        }
        let mut stack = vec![task];
        while let Some(task) = stack.pop() {
            let dependents = self.tasks[&task].dependents.clone();
            for dependent in dependents {
                let Some(worker) = self.stage_target(dependent) else {
                    continue;
                };
                let inputs = self.input_sources(dependent, worker);
                let t = self.tasks.get_mut(&dependent).expect("known");
                t.state = State::Assigned(worker);
                t.staged = true;
                self.assign_to(worker, dependent);
                self.workers.get_mut(&worker).expect("known").staged += 1;
                comm.assign(worker, &self.tasks[&dependent].spec, &inputs);
                stack.push(dependent);
            }
        }
    }

    /// After `task`'s result was recorded: its staged dependents whose
    /// inputs are now all made are ordinary assigned tasks (their workers
    /// start them on their own), staging goes on from them, and one that
    /// was reported finished already is recorded now.
    pub(crate) fn staged_inputs_made(&mut self, task: TaskId, comm: &mut impl Comm<P>) {
        let dependents = self.tasks[&task].dependents.clone();
        for dependent in dependents {
            let t = &self.tasks[&dependent];
            let State::Assigned(worker) = t.state else {
                continue;
            };
            if !t.staged || self.missing(dependent) > 0 {
                continue;
            }
            self.tasks.get_mut(&dependent).expect("known").staged = false;
            self.workers.get_mut(&worker).expect("assigned").staged -= 1;
            self.stage_dependents(dependent, comm);
            if let Some(size) = self.early_finishes.remove(&dependent) {
                self.task_finished(worker, dependent, size, comm);
            }
        }
    }

    /// `task` will not make its result where its staged dependents wait
    /// for it: they (and the staged tasks waiting on them) are cancelled on
    /// their workers and wait again.
    pub(crate) fn unstage_dependents(&mut self, task: TaskId, comm: &mut impl Comm<P>) {
        let mut stack = vec![task];
        while let Some(task) = stack.pop() {
            let dependents = self.tasks[&task].dependents.clone();
            for dependent in dependents {
                let t = &self.tasks[&dependent];
                let State::Assigned(worker) = t.state else {
                    continue;
                };
                if !t.staged {
                    continue;
                }
                self.unassign(worker, dependent);
                comm.cancel(worker, dependent);
                let t = self.tasks.get_mut(&dependent).expect("known");
                t.staged = false;
                t.state = State::Waiting;
                stack.push(dependent);
            }
        }
    }

    /// Takes back every task staged on `worker` (it is retiring), and
    /// those staged elsewhere that wait for them.
    pub(crate) fn unstage_all(&mut self, worker: WorkerId, comm: &mut impl Comm<P>) {
        let Some(w) = self.workers.get(&worker) else {
            return;
        };
        let staged: Vec<TaskId> = w
            .assigned
            .iter()
            .filter(|t| self.tasks[*t].staged)
            .copied()
            .collect();
        for task in staged {
            if self.tasks[&task].state != State::Assigned(worker) {
                continue; // taken back already, as a dependent of another
            }
            self.unassign(worker, task);
            comm.cancel(worker, task);
            let t = self.tasks.get_mut(&task).expect("known");
            t.staged = false;
            t.state = State::Waiting;
            self.unstage_dependents(task, comm);
        }
    }
}

//! Placement: which worker runs a ready task, and idle workers stealing
//! queued work from loaded ones. The cost per task does not grow with the
//! number of workers: workers are kept in one set ordered by load, so the
//! least loaded is the first; for locality only the holders of a task's
//! inputs are examined (nothing else can have local bytes); and stealing
//! looks at a bounded number of thieves and victims per turn. A batch of
//! events from a worker is placed once, at its end (`defer_placement`).

use crate::task::State;
use crate::{Comm, Core, TaskId, WorkerId};

/// Idle workers that may steal in one turn.
const THIEVES_PER_TURN: usize = 16;
/// The most loaded workers a thief looks at for a victim.
const VICTIMS_LOOKED_AT: usize = 4;

impl<P> Core<P> {
    /// Records `task` as assigned to `worker`.
    pub(crate) fn assign_to(&mut self, worker: WorkerId, task: TaskId) {
        let tenant = self.tasks[&task].spec.tenant;
        let w = self.workers.get_mut(&worker).expect("a known worker");
        let before = w.load_key();
        w.assigned.insert(task);
        let after = w.load_key();
        if !w.retiring {
            self.by_load.remove(&(before, worker));
            self.by_load.insert((after, worker));
        }
        self.tenant_mut(tenant).on_workers += 1;
    }

    /// Takes `task` off `worker` (finished, failed, given back, cancelled or
    /// reassigned); returns whether the worker had it.
    pub(crate) fn unassign(&mut self, worker: WorkerId, task: TaskId) -> bool {
        let stealing = self.tasks.get(&task).is_some_and(|t| t.stealing);
        let staged = self.tasks.get(&task).is_some_and(|t| t.staged);
        let Some(w) = self.workers.get_mut(&worker) else {
            return false;
        };
        let before = w.load_key();
        if !w.assigned.remove(&task) {
            return false;
        }
        // A finish reported early was this assignment's only.
        self.early_finishes.remove(&task);
        if stealing {
            w.being_stolen -= 1;
        }
        if staged {
            w.staged -= 1;
        }
        w.running.remove(&task);
        let after = w.load_key();
        if !w.retiring {
            self.by_load.remove(&(before, worker));
            self.by_load.insert((after, worker));
        }
        if let Some(t) = self.tasks.get(&task) {
            let tenant = t.spec.tenant;
            self.tenant_mut(tenant).on_workers -= 1;
        }
        true
    }

    /// The worker for a ready task: among those with room, the one holding
    /// the most bytes of its inputs, then the one with the emptiest queue
    /// for its slots, then the lowest id.
    fn choose_worker(&self, task: TaskId) -> Option<WorkerId> {
        let full_key = u64::from(self.config.queue_per_slot.max(1)) * 1000;
        let deps = &self.tasks[&task].deps;
        let mut best: Option<(u64, u64, WorkerId)> = None;
        for dep in deps {
            for holder in &self.tasks[dep].holders {
                let w = &self.workers[holder];
                let key = w.load_key();
                if w.retiring || key >= full_key {
                    continue;
                }
                let bytes: u64 = deps
                    .iter()
                    .filter(|d| self.tasks[*d].holders.contains(holder))
                    .map(|d| self.tasks[d].size)
                    .sum();
                let better = match best {
                    None => true,
                    Some((b, k, id)) => {
                        (bytes, std::cmp::Reverse(key), std::cmp::Reverse(*holder))
                            > (b, std::cmp::Reverse(k), std::cmp::Reverse(id))
                    }
                };
                if better {
                    best = Some((bytes, key, *holder));
                }
            }
        }
        match best {
            Some((bytes, _, worker)) if bytes > 0 => Some(worker),
            // No input bytes anywhere with room: the least loaded worker.
            _ => self
                .by_load
                .first()
                .filter(|(key, _)| *key < full_key)
                .map(|(_, worker)| *worker),
        }
    }

    /// Defers placement until [`Core::place_deferred`]: the events of one
    /// batch from a worker are decided together. Placing after each of
    /// them cost a steal turn per finished task at the end of a map over
    /// many workers, and placed nothing the batch's end would not.
    pub fn defer_placement(&mut self) {
        self.placement_deferred = true;
    }

    /// Ends a [`Core::defer_placement`]: places what became ready (and lets
    /// idle workers steal) if any event in between asked for it.
    pub fn place_deferred(&mut self, comm: &mut impl Comm<P>) {
        self.placement_deferred = false;
        if std::mem::take(&mut self.placement_wanted) {
            self.schedule(comm);
        }
    }

    /// Ends a [`Core::defer_placement`] without placing: the next event
    /// that asks for placement gets it. For a batch abandoned half-way (a
    /// panic while applying it), when placing at once is not safe.
    pub fn lift_deferral(&mut self) {
        self.placement_deferred = false;
    }

    /// Assigns ready tasks to workers with room, tenant by tenant in
    /// weighted turns, then lets idle workers steal.
    pub(crate) fn schedule(&mut self, comm: &mut impl Comm<P>) {
        if self.placement_held {
            return;
        }
        if self.placement_deferred {
            self.placement_wanted = true;
            return;
        }
        let mut inputs = Vec::new();
        while let Some(tenant) = self.next_tenant() {
            let task = self.ready.front(tenant).expect("a tenant with queued work");
            let Some(worker) = self.choose_worker(task) else {
                break;
            };
            self.ready.pop_front(tenant);
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
            self.tasks.get_mut(&task).expect("known").state = State::Assigned(worker);
            self.assign_to(worker, task);
            comm.assign(worker, &self.tasks[&task].spec, &inputs);
            self.stage_dependents(task, comm);
        }
        if self.ready.is_empty() {
            self.steal(comm);
        }
    }

    /// An idle worker (fewer tasks than slots) takes half the surplus of a
    /// loaded worker's not-yet-started queue: the idle workers are the
    /// least loaded, the victim the one with most to give among the most
    /// loaded. The victims are looked at once a turn, not once per thief:
    /// at the end of a map over many workers this runs at every event,
    /// mostly to find that nobody has anything to give.
    pub(crate) fn steal(&mut self, comm: &mut impl Comm<P>) {
        let thieves: Vec<(WorkerId, usize)> = self
            .by_load
            .iter()
            .take_while(|(key, _)| *key < 1000)
            .take(THIEVES_PER_TURN)
            .map(|(_, id)| (*id, self.workers[id].assigned.len()))
            .collect();
        if thieves.is_empty() {
            return;
        }
        // Only a worker with more tasks than slots can give any. One steal
        // at a time from a victim: the tasks it was asked for are its
        // newest, and another thief's walk would pass over all of them.
        let mut victims: Vec<(WorkerId, usize)> = self
            .by_load
            .iter()
            .rev()
            .take_while(|(key, _)| *key > 1000)
            .take(VICTIMS_LOOKED_AT + thieves.len())
            .filter(|(_, id)| self.workers[id].being_stolen == 0)
            .map(|(_, id)| (*id, self.stealable_count(*id)))
            .filter(|(id, queued)| *queued > self.workers[id].slots as usize)
            .collect();
        for (thief, thief_load) in thieves {
            // Counted, not listed: a victim's whole queue is walked only
            // for the tasks taken (this ran at every turn with an idle
            // worker, and walking queues of 128 per slot dominated).
            let Some(at) = victims
                .iter()
                .enumerate()
                .filter(|(_, (id, _))| *id != thief)
                .max_by_key(|(_, (id, queued))| (*queued, std::cmp::Reverse(*id)))
                .map(|(at, _)| at)
            else {
                break;
            };
            let (victim, queued) = victims[at];
            let count = queued.saturating_sub(thief_load) / 2;
            if count == 0 {
                continue;
            }
            victims.swap_remove(at);
            // The most recently queued ones: the victim would reach them last.
            let taken = self.stealable_newest(victim, count);
            self.mark_stealing(victim, &taken);
            comm.steal(victim, &taken);
        }
    }

    /// Marks queued tasks of `worker` as asked back.
    pub(crate) fn mark_stealing(&mut self, worker: WorkerId, tasks: &[TaskId]) {
        for task in tasks {
            self.tasks.get_mut(task).expect("assigned").stealing = true;
        }
        self.workers
            .get_mut(&worker)
            .expect("a known worker")
            .being_stolen += tasks.len();
    }

    /// How many of a worker's tasks are queued there, not started, not
    /// asked back already and not staged (a count: no walk of the queue).
    fn stealable_count(&self, worker: WorkerId) -> usize {
        let w = &self.workers[&worker];
        w.assigned
            .len()
            .saturating_sub(w.running.len())
            .saturating_sub(w.being_stolen)
            .saturating_sub(w.staged)
    }

    /// The `count` most recently queued of a worker's stealable tasks.
    fn stealable_newest(&self, worker: WorkerId, count: usize) -> Vec<TaskId> {
        let w = &self.workers[&worker];
        w.assigned
            .iter()
            .rev()
            .filter(|t| {
                let task = &self.tasks[*t];
                // Nor one a staged task waits for here.
                !task.stealing
                    && !task.staged
                    && !w.running.contains(t)
                    && !task.dependents.iter().any(|d| self.tasks[d].staged)
            })
            .take(count)
            .copied()
            .collect()
    }
}

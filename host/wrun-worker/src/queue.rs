//! The queue between the RPC thread and the executor threads: tasks ready
//! to run, the cancel flags of the running ones, and the assignments still
//! being prepared (module or inputs on their way). One lock guards all
//! three, so a cancel finds a task in exactly one of them.
//!
//! Ready tasks wait in one queue per tenant and are taken in weighted turns
//! (stride scheduling): the scheduler keeps up to `queue_per_slot` tasks
//! queued on each worker, and with one FIFO a tenant that floods the
//! cluster would put a hundred tasks ahead of another tenant's single one.
//! Here that one waits for at most the tasks already running.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use wrun_abi::{ModuleDigest, TaskLimits};
use wrun_proto::TaskId;

use crate::results::ResultStore;

/// A task ready to run: its arguments assembled, but for the results of
/// this worker it reads, which are put in when it runs.
pub(crate) struct Job {
    pub(crate) task: TaskId,
    pub(crate) digest: ModuleDigest,
    pub(crate) name: String,
    /// The argument array without this worker's own results.
    pub(crate) args: Vec<u8>,
    /// Results of this worker that go into `args` at these offsets: read
    /// (back from disk, if spilled) by the executor that runs the job, so
    /// a queued job holds no copy of them and the RPC thread reads no disk.
    pub(crate) local_inputs: Vec<(usize, TaskId)>,
    pub(crate) limits: TaskLimits,
    pub(crate) share: Share,
    /// Send a small result with `finished` (`Assignment.shareResult`).
    pub(crate) share_result: bool,
    /// Its inputs' fetch from peers (for the task stream).
    pub(crate) transfer: crate::outbox::Transfer,
}

impl Job {
    /// The whole argument array.
    pub(crate) fn arguments(&self, results: &ResultStore) -> Result<Cow<'_, [u8]>, String> {
        if self.local_inputs.is_empty() {
            return Ok(Cow::Borrowed(&self.args));
        }
        let mut whole = Vec::new();
        let mut copied = 0;
        for &(offset, task) in &self.local_inputs {
            whole.extend_from_slice(&self.args[copied..offset]);
            copied = offset;
            let value = results
                .get(task)
                .ok_or_else(|| format!("input {task} is not on this worker"))?
                .bytes()
                .map_err(|e| format!("reading input {task} back from disk: {e}"))?;
            whole.extend_from_slice(&value);
        }
        whole.extend_from_slice(&self.args[copied..]);
        Ok(Cow::Owned(whole))
    }
}

/// Whose turn a job waits for: its tenant's number (from the scheduler)
/// and the tenant's weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Share {
    pub(crate) tenant: u32,
    pub(crate) weight: u32,
}

/// The pass a tenant's turn advances by, divided by its weight.
const STRIDE: u64 = 1 << 20;

/// One tenant's queued jobs and its place in the turns.
struct TenantQueue {
    jobs: VecDeque<Job>,
    /// Where its next turn falls: the tenant with the lowest pass goes next.
    pass: u64,
}

/// The ready jobs of every tenant, taken in weighted turns.
#[derive(Default)]
struct FairQueue {
    /// Tenants with queued jobs.
    tenants: BTreeMap<u32, TenantQueue>,
    /// The passes of tenants whose queue ran empty, so that one that
    /// refills at once does not start a turn early (one task at a time
    /// must not starve the others).
    idle: HashMap<u32, u64>,
    /// The pass of the last turn taken. A tenant that was idle starts at
    /// its own pass or here, whichever is later: it saves no credit while
    /// idle, and it does not wait behind the turns the others already had.
    now: u64,
    len: usize,
}

impl FairQueue {
    fn push(&mut self, job: Job) {
        let tenant = job.share.tenant;
        let queue = match self.tenants.entry(tenant) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                let pass = self.idle.remove(&tenant).unwrap_or(0).max(self.now);
                e.insert(TenantQueue {
                    jobs: VecDeque::new(),
                    pass,
                })
            }
        };
        queue.jobs.push_back(job);
        self.len += 1;
    }

    /// The next job: the front of the queue of the tenant with the lowest
    /// pass (ties to the lower number).
    fn pop(&mut self) -> Option<Job> {
        let (&tenant, _) = self.tenants.iter().min_by_key(|(_, q)| q.pass)?;
        let queue = self.tenants.get_mut(&tenant).expect("just found");
        let job = queue
            .jobs
            .pop_front()
            .expect("only non-empty queues are kept");
        self.now = queue.pass;
        // At least 1: a weight above STRIDE must not stop the tenant's pass
        // (it would always go next and starve the others).
        queue.pass += (STRIDE / u64::from(job.share.weight.max(1))).max(1);
        if queue.jobs.is_empty() {
            let pass = queue.pass;
            self.tenants.remove(&tenant);
            self.idle.insert(tenant, pass);
        }
        self.len -= 1;
        Some(job)
    }

    /// Takes out the queued job of `task`, if it is queued.
    fn remove(&mut self, task: TaskId) -> bool {
        let found = self.tenants.iter_mut().find_map(|(tenant, queue)| {
            let at = queue.jobs.iter().position(|job| job.task == task)?;
            queue.jobs.remove(at);
            Some((*tenant, queue.jobs.is_empty()))
        });
        match found {
            Some((tenant, emptied)) => {
                if emptied && let Some(queue) = self.tenants.remove(&tenant) {
                    self.idle.insert(tenant, queue.pass);
                }
                self.len -= 1;
                true
            }
            None => false,
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// Queued: taken out, it will not run.
    Dequeued,
    /// Running: its flag is set; the sandbox stops it within a tick.
    Interrupted,
    /// Still being prepared: it is dropped when ready.
    WhilePreparing,
    /// Not here (finished, or never assigned).
    Unknown,
}

#[derive(Default)]
struct Inner {
    queued: FairQueue,
    /// Running jobs and their cancel flags. A list, as long as the
    /// executors are many: a task cancelled while running and assigned
    /// here again can run on two executors at once.
    running: Vec<(TaskId, Arc<AtomicBool>)>,
    /// Assignments being prepared, and whether a cancel came meanwhile.
    preparing: HashMap<TaskId, bool>,
    /// Staged jobs waiting for local inputs still being made here, with
    /// the inputs they still wait for (a set: a job cancelled and parked
    /// again leaves stale entries in `waiters`, which must not count).
    parked: HashMap<TaskId, (Job, std::collections::HashSet<TaskId>)>,
    /// Which parked jobs wait for each input.
    waiters: HashMap<TaskId, Vec<TaskId>>,
    stopped: bool,
}

impl Inner {
    fn is_running(&self, task: TaskId) -> bool {
        self.running.iter().any(|(t, _)| *t == task)
    }

    /// `task`'s result is made: queues the parked jobs that waited only
    /// for it, and returns how many.
    fn release_waiters(&mut self, task: TaskId) -> usize {
        let Some(waiting) = self.waiters.remove(&task) else {
            return 0;
        };
        let mut queued = 0;
        for parked in waiting {
            // Gone if it was cancelled meanwhile; a stale entry of a job
            // parked again finds the input already gone from its set.
            let Some((_, left)) = self.parked.get_mut(&parked) else {
                continue;
            };
            if !left.remove(&task) {
                continue;
            }
            if left.is_empty() {
                let (job, _) = self.parked.remove(&parked).expect("just seen");
                self.queued.push(job);
                queued += 1;
            }
        }
        queued
    }
}

#[derive(Default)]
pub(crate) struct TaskQueue {
    inner: Mutex<Inner>,
    ready: Condvar,
}

impl TaskQueue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An assignment whose module or inputs must be fetched first.
    pub(crate) fn preparing(&self, task: TaskId) {
        self.lock().preparing.insert(task, false);
    }

    /// Its preparation failed: forget it.
    pub(crate) fn abandon(&self, task: TaskId) {
        self.lock().preparing.remove(&task);
    }

    /// Queues a job; `false` if it was cancelled while being prepared
    /// (then it is dropped).
    #[cfg(test)]
    pub(crate) fn push(&self, job: Job) -> bool {
        let mut inner = self.lock();
        if inner.preparing.remove(&job.task) == Some(true) {
            return false;
        }
        inner.queued.push(job);
        drop(inner);
        self.ready.notify_one();
        true
    }

    /// Queues a job whose local inputs are all made, or parks it until
    /// they are (a staged task); `false` if it was cancelled while being
    /// prepared. An input is made once it is in `results` and no executor
    /// is running it: its executor stores it before it pushes its
    /// `finished`, and a dependent must not report before the scheduler
    /// heard of its input. Checked under the queue's lock, which
    /// [`TaskQueue::finished`] and [`TaskQueue::made`] take too: an input
    /// made meanwhile is either seen here or announced after the job is
    /// parked.
    pub(crate) fn push_when_ready(&self, job: Job, results: &crate::results::ResultStore) -> bool {
        let mut inner = self.lock();
        if inner.preparing.remove(&job.task) == Some(true) {
            return false;
        }
        let mut missing: Vec<TaskId> = job
            .local_inputs
            .iter()
            .map(|(_, input)| *input)
            .filter(|input| !results.contains(*input) || inner.is_running(*input))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            inner.queued.push(job);
            drop(inner);
            self.ready.notify_one();
            return true;
        }
        let task = job.task;
        for input in &missing {
            inner.waiters.entry(*input).or_default().push(task);
        }
        inner
            .parked
            .insert(task, (job, missing.into_iter().collect()));
        true
    }

    /// Whether a parked job waits for `task`'s result.
    #[cfg(test)]
    pub(crate) fn has_waiters(&self, task: TaskId) -> bool {
        self.lock().waiters.contains_key(&task)
    }

    /// `task`'s result came into the store other than by running it here
    /// (a copy from a peer): the parked jobs that waited only for it are
    /// queued.
    pub(crate) fn made(&self, task: TaskId) {
        let mut inner = self.lock();
        let queued = inner.release_waiters(task);
        drop(inner);
        for _ in 0..queued {
            self.ready.notify_one();
        }
    }

    /// The next job and its cancel flag, waiting for one; `None` once stopped.
    pub(crate) fn take(&self) -> Option<(Job, Arc<AtomicBool>)> {
        let mut inner = self.lock();
        loop {
            if inner.stopped {
                return None;
            }
            if let Some(job) = inner.queued.pop() {
                let cancel = Arc::new(AtomicBool::new(false));
                inner.running.push((job.task, cancel.clone()));
                return Some((job, cancel));
            }
            inner = self.ready.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether the worker is about to idle once the running `task` ends
    /// (`made`: with its result): nothing is queued, and no parked job
    /// waits for that result (it would run next).
    pub(crate) fn idle_after(&self, task: TaskId, made: bool) -> bool {
        let inner = self.lock();
        inner.queued.is_empty() && !(made && inner.waiters.contains_key(&task))
    }

    /// A job taken with [`TaskQueue::take`] (with the cancel flag `flag`)
    /// ended and its event is pushed (`made`: it stored its result): the
    /// parked jobs that waited only for that result are queued.
    pub(crate) fn finished(&self, task: TaskId, flag: &Arc<AtomicBool>, made: bool) {
        let mut inner = self.lock();
        if let Some(at) = inner.running.iter().position(|(_, f)| Arc::ptr_eq(f, flag)) {
            inner.running.swap_remove(at);
        }
        let queued = if made { inner.release_waiters(task) } else { 0 };
        drop(inner);
        for _ in 0..queued {
            self.ready.notify_one();
        }
    }

    pub(crate) fn cancel(&self, task: TaskId) -> Cancelled {
        let mut inner = self.lock();
        let mut interrupted = false;
        for (_, flag) in inner.running.iter().filter(|(t, _)| *t == task) {
            flag.store(true, Ordering::Relaxed);
            interrupted = true;
        }
        if inner.queued.remove(task) || inner.parked.remove(&task).is_some() {
            Cancelled::Dequeued
        } else if interrupted {
            Cancelled::Interrupted
        } else if let Some(cancelled) = inner.preparing.get_mut(&task) {
            *cancelled = true;
            Cancelled::WhilePreparing
        } else {
            Cancelled::Unknown
        }
    }

    /// Gives back a task that has not started: `true` if it was queued.
    pub(crate) fn steal(&self, task: TaskId) -> bool {
        self.lock().queued.remove(task)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().queued.is_empty()
    }

    /// The scheduler that assigned everything here is gone: queued jobs
    /// are dropped, running ones are told to stop, and those still being
    /// prepared are dropped when ready. Results already made stay.
    pub(crate) fn abandon_all(&self) {
        let mut inner = self.lock();
        inner.queued = FairQueue::default();
        inner.parked.clear();
        inner.waiters.clear();
        for (_, flag) in &inner.running {
            flag.store(true, Ordering::Relaxed);
        }
        for cancelled in inner.preparing.values_mut() {
            *cancelled = true;
        }
    }

    /// How many jobs the executors are running now.
    pub(crate) fn running(&self) -> usize {
        self.lock().running.len()
    }

    /// Wakes every executor to end.
    pub(crate) fn stop(&self) {
        self.lock().stopped = true;
        self.ready.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(task: u64) -> Job {
        job_of(task, 0, 1)
    }

    fn job_of(task: u64, tenant: u32, weight: u32) -> Job {
        Job {
            task: TaskId(task),
            digest: ModuleDigest([0; 32]),
            name: "t".into(),
            args: Vec::new(),
            local_inputs: Vec::new(),
            limits: TaskLimits::DEFAULT,
            share: Share { tenant, weight },
            share_result: false,
            transfer: Default::default(),
        }
    }

    /// The tasks in the order the executors take them.
    fn drain(queue: &TaskQueue) -> Vec<u64> {
        let mut order = Vec::new();
        while !queue.is_empty() {
            let (job, flag) = queue.take().unwrap();
            queue.finished(job.task, &flag, false);
            order.push(job.task.0);
        }
        order
    }

    #[test]
    fn a_staged_job_waits_for_its_local_inputs_and_a_cancel_takes_it_out() {
        let results = crate::results::ResultStore::default();
        let queue = TaskQueue::default();
        let staged = |task: u64, inputs: &[u64]| Job {
            local_inputs: inputs.iter().map(|i| (1, TaskId(*i))).collect(),
            ..job(task)
        };
        results.insert(TaskId(1), vec![0x01]).unwrap();
        // Its input is here: queued at once.
        assert!(queue.push_when_ready(staged(10, &[1]), &results));
        assert_eq!(drain(&queue), vec![10]);
        // Waits for two inputs (one named twice), then for the last one.
        queue.push_when_ready(staged(11, &[2, 3, 2]), &results);
        queue.push_when_ready(staged(12, &[3]), &results);
        assert!(queue.is_empty() && queue.has_waiters(TaskId(2)));
        results.insert(TaskId(2), vec![0x02]).unwrap();
        queue.made(TaskId(2));
        assert!(queue.is_empty(), "11 still waits for 3");
        assert_eq!(queue.cancel(TaskId(12)), Cancelled::Dequeued);
        results.insert(TaskId(3), vec![0x03]).unwrap();
        queue.made(TaskId(3));
        assert_eq!(drain(&queue), vec![11], "12 was cancelled while parked");
        assert!(!queue.has_waiters(TaskId(3)));
    }

    #[test]
    fn an_input_stored_but_not_yet_announced_holds_its_staged_job_back() {
        // The executor stores a result before it pushes its `finished`: a
        // staged job that reads it must not start (and report) before.
        let results = crate::results::ResultStore::default();
        let queue = TaskQueue::default();
        queue.push(job(1));
        let (running, flag) = queue.take().unwrap();
        results.insert(TaskId(1), vec![0x01]).unwrap();
        let staged = Job {
            local_inputs: vec![(1, TaskId(1))],
            ..job(2)
        };
        assert!(queue.push_when_ready(staged, &results));
        assert!(queue.is_empty(), "parked while 1 is still running");
        assert!(!queue.idle_after(running.task, true), "2 runs next");
        queue.finished(running.task, &flag, true);
        assert_eq!(drain(&queue), vec![2]);
    }

    #[test]
    fn a_task_running_twice_is_cancelled_on_both_executors() {
        let queue = TaskQueue::default();
        queue.push(job(1));
        let (first, first_flag) = queue.take().unwrap();
        queue.push(job(1));
        let (_, second_flag) = queue.take().unwrap();
        assert_eq!(queue.cancel(TaskId(1)), Cancelled::Interrupted);
        assert!(first_flag.load(Ordering::Relaxed) && second_flag.load(Ordering::Relaxed));
        queue.finished(first.task, &first_flag, false);
        assert_eq!(queue.running(), 1, "the other run is still running");
        // The other run's flag is still the one a cancel reaches.
        second_flag.store(false, Ordering::Relaxed);
        queue.cancel(TaskId(1));
        assert!(second_flag.load(Ordering::Relaxed));
    }

    #[test]
    fn abandoning_drops_the_queue_and_stops_what_runs() {
        let queue = TaskQueue::default();
        queue.push(job(1));
        queue.push(job(2));
        queue.preparing(TaskId(3));
        let (running, flag) = queue.take().unwrap();
        queue.abandon_all();
        assert!(
            flag.load(Ordering::Relaxed),
            "the running job is told to stop"
        );
        assert!(queue.is_empty());
        assert!(
            !queue.push(job(3)),
            "a job prepared for the old scheduler is dropped"
        );
        assert_eq!(queue.running(), 1);
        queue.finished(running.task, &flag, false);
        assert_eq!(queue.running(), 0);
        queue.push(job(4));
        assert_eq!(drain(&queue), vec![4]);
    }

    #[test]
    fn one_tenant_s_tasks_run_in_the_order_they_came() {
        let queue = TaskQueue::default();
        for t in [5, 3, 9, 1] {
            queue.push(job(t));
        }
        assert_eq!(drain(&queue), [5, 3, 9, 1]);
    }

    #[test]
    fn a_task_that_arrives_behind_a_flood_runs_next() {
        let queue = TaskQueue::default();
        for t in 0..100 {
            queue.push(job_of(t, 1, 1));
        }
        // Two of the flood have run; then the quiet tenant's task comes.
        let (first, _) = queue.take().unwrap();
        let (second, _) = queue.take().unwrap();
        assert_eq!((first.task.0, second.task.0), (0, 1));
        queue.push(job_of(1000, 2, 1));
        let (next, _) = queue.take().unwrap();
        assert_eq!(next.task.0, 1000);
        // And the flood goes on in its own order.
        assert_eq!(drain(&queue), (2..100).collect::<Vec<_>>());
    }

    #[test]
    fn tenants_with_queued_work_take_turns_by_weight() {
        let queue = TaskQueue::default();
        for t in 0..40 {
            queue.push(job_of(t, 1, 1));
            queue.push(job_of(100 + t, 2, 3));
        }
        let first: Vec<u64> = drain(&queue).into_iter().take(40).collect();
        let heavy = first.iter().filter(|t| **t >= 100).count();
        assert_eq!((heavy, 40 - heavy), (30, 10), "{first:?}");
    }

    #[test]
    fn an_idle_tenant_does_not_save_up_turns() {
        let queue = TaskQueue::default();
        // Tenant 1 had many turns alone; then tenant 2 and 1 both queue.
        for t in 0..50 {
            queue.push(job_of(t, 1, 1));
        }
        assert_eq!(drain(&queue).len(), 50);
        queue.push(job_of(100, 2, 1));
        queue.push(job_of(101, 2, 1));
        queue.push(job_of(200, 1, 1));
        queue.push(job_of(201, 1, 1));
        // Tenant 2 came after tenant 1's last turn: they alternate, and 2
        // does not get 50 turns in a row for tenant 1's past ones.
        assert_eq!(drain(&queue), [100, 200, 101, 201]);
    }

    #[test]
    fn a_weight_above_the_stride_still_takes_turns() {
        let queue = TaskQueue::default();
        for t in 0..4 {
            queue.push(job_of(t, 1, u32::MAX));
        }
        queue.push(job_of(100, 2, 1));
        // Tenant 1's pass moves by at least 1 a turn: tenant 2 is not
        // starved for as long as tenant 1 has work.
        let order = drain(&queue);
        assert_eq!(order.len(), 5);
        assert!(order[..2].contains(&100), "{order:?}");
    }

    #[test]
    fn cancel_and_steal_find_a_queued_task_of_any_tenant() {
        let queue = TaskQueue::default();
        queue.push(job_of(1, 1, 1));
        queue.push(job_of(2, 2, 1));
        queue.push(job_of(3, 2, 1));
        assert_eq!(queue.cancel(TaskId(3)), Cancelled::Dequeued);
        assert!(queue.steal(TaskId(1)));
        assert!(!queue.steal(TaskId(1)));
        assert_eq!(drain(&queue), [2]);
    }

    #[test]
    fn a_cancel_finds_a_task_queued_running_or_being_prepared() {
        let queue = TaskQueue::default();
        queue.push(job(1));
        queue.push(job(2));
        queue.preparing(TaskId(3));
        // 1 starts; 2 stays queued; 3 is on its way.
        let (running, flag) = queue.take().unwrap();
        assert_eq!(running.task, TaskId(1));
        assert_eq!(queue.cancel(TaskId(2)), Cancelled::Dequeued);
        assert_eq!(queue.cancel(TaskId(1)), Cancelled::Interrupted);
        assert!(flag.load(Ordering::Relaxed));
        assert_eq!(queue.cancel(TaskId(3)), Cancelled::WhilePreparing);
        assert_eq!(queue.cancel(TaskId(4)), Cancelled::Unknown);
        // The prepared task arrives after its cancel: dropped.
        assert!(!queue.push(job(3)));
        assert!(queue.idle_after(TaskId(1), false));
        queue.finished(TaskId(1), &flag, false);
        assert!(queue.is_empty());
        // Once finished, a late cancel finds nothing.
        assert_eq!(queue.cancel(TaskId(1)), Cancelled::Unknown);
    }

    #[test]
    fn a_prepared_task_that_was_not_cancelled_is_queued_and_abandoned_ones_are_forgotten() {
        let queue = TaskQueue::default();
        queue.preparing(TaskId(1));
        assert!(queue.push(job(1)));
        queue.preparing(TaskId(2));
        queue.abandon(TaskId(2));
        assert_eq!(queue.cancel(TaskId(2)), Cancelled::Unknown);
        assert!(!queue.steal(TaskId(9)));
        assert!(queue.steal(TaskId(1)));
        assert!(queue.is_empty());
    }

    #[test]
    fn stop_wakes_a_waiting_executor() {
        let queue = Arc::new(TaskQueue::default());
        let waiting = {
            let queue = queue.clone();
            std::thread::spawn(move || queue.take().is_none())
        };
        queue.stop();
        assert!(waiting.join().unwrap());
    }
}

//! The queue between the RPC thread and the executor threads: tasks ready
//! to run, the cancel flags of the running ones, and the assignments still
//! being prepared (module or inputs on their way). One lock guards all
//! three, so a cancel finds a task in exactly one of them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use wrun_abi::{ModuleDigest, TaskLimits};
use wrun_proto::TaskId;

/// A task ready to run: its arguments assembled.
pub(crate) struct Job {
    pub(crate) task: TaskId,
    pub(crate) digest: ModuleDigest,
    pub(crate) name: String,
    pub(crate) args: Vec<u8>,
    pub(crate) limits: TaskLimits,
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
    queued: VecDeque<Job>,
    running: HashMap<TaskId, Arc<AtomicBool>>,
    /// Assignments being prepared, and whether a cancel came meanwhile.
    preparing: HashMap<TaskId, bool>,
    stopped: bool,
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
    pub(crate) fn push(&self, job: Job) -> bool {
        let mut inner = self.lock();
        if inner.preparing.remove(&job.task) == Some(true) {
            return false;
        }
        inner.queued.push_back(job);
        drop(inner);
        self.ready.notify_one();
        true
    }

    /// The next job and its cancel flag, waiting for one; `None` once stopped.
    pub(crate) fn take(&self) -> Option<(Job, Arc<AtomicBool>)> {
        let mut inner = self.lock();
        loop {
            if inner.stopped {
                return None;
            }
            if let Some(job) = inner.queued.pop_front() {
                let cancel = Arc::new(AtomicBool::new(false));
                inner.running.insert(job.task, cancel.clone());
                return Some((job, cancel));
            }
            inner = self.ready.wait(inner).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A job taken with [`TaskQueue::take`] ended; returns whether nothing
    /// is left queued (the worker is about to idle).
    pub(crate) fn finished(&self, task: TaskId) -> bool {
        let mut inner = self.lock();
        inner.running.remove(&task);
        inner.queued.is_empty()
    }

    pub(crate) fn cancel(&self, task: TaskId) -> Cancelled {
        let mut inner = self.lock();
        if let Some(position) = inner.queued.iter().position(|job| job.task == task) {
            inner.queued.remove(position);
            Cancelled::Dequeued
        } else if let Some(flag) = inner.running.get(&task) {
            flag.store(true, Ordering::Relaxed);
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
        let mut inner = self.lock();
        match inner.queued.iter().position(|job| job.task == task) {
            Some(position) => {
                inner.queued.remove(position);
                true
            }
            None => false,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lock().queued.is_empty()
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
        Job {
            task: TaskId(task),
            digest: ModuleDigest([0; 32]),
            name: "t".into(),
            args: Vec::new(),
            limits: TaskLimits::DEFAULT,
        }
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
        assert!(queue.finished(TaskId(1)));
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

//! Results a peer waits for. A task staged on another worker reads an input
//! this worker is still making: its `Peer.fetch` asks to wait (`waitMs`),
//! and is answered the moment the result is made, or when it will not be
//! made here after all (the run failed, was cancelled or given back), with
//! no round trip through the scheduler.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;
use wrun_proto::TaskId;

/// Peers that may wait at once: each holds a call open on its connection.
/// Past this a fetch answers at once (the consumer then waits for the
/// scheduler, as without staging).
pub(crate) const MAX_WAITING: usize = 4096;

#[derive(Default)]
struct Waiting {
    by_task: HashMap<TaskId, Vec<oneshot::Sender<()>>>,
    count: usize,
}

/// Who waits for which result.
#[derive(Default)]
pub(crate) struct Awaited {
    waiting: Mutex<Waiting>,
}

impl Awaited {
    /// Somebody to wake when `task` ends here; `None` when too many wait
    /// already.
    pub(crate) fn wait_for(&self, task: TaskId) -> Option<oneshot::Receiver<()>> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.count >= MAX_WAITING {
            // Waiters that gave up (timed out, or answered at once) leave
            // their senders behind: drop those before refusing.
            let mut count = 0;
            waiting.by_task.retain(|_, senders| {
                senders.retain(|s| !s.is_closed());
                count += senders.len();
                !senders.is_empty()
            });
            waiting.count = count;
            if count >= MAX_WAITING {
                return None;
            }
        }
        let (wake, woken) = oneshot::channel();
        waiting.by_task.entry(task).or_default().push(wake);
        waiting.count += 1;
        Some(woken)
    }

    /// `task` ended here (made, failed, cancelled or given back): whoever
    /// waits for it looks again.
    pub(crate) fn ended(&self, task: TaskId) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(senders) = waiting.by_task.remove(&task) {
            waiting.count -= senders.len();
            drop(waiting);
            for wake in senders {
                let _ = wake.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_are_woken_by_their_task_and_bounded() {
        let awaited = Awaited::default();
        let mut first = awaited.wait_for(TaskId(1)).unwrap();
        let mut other = awaited.wait_for(TaskId(2)).unwrap();
        awaited.ended(TaskId(1));
        assert!(first.try_recv().is_ok());
        assert!(other.try_recv().is_err(), "2 has not ended");
        let mut held = Vec::new();
        while let Some(waiter) = awaited.wait_for(TaskId(3)) {
            held.push(waiter);
        }
        assert_eq!(held.len() + 1, MAX_WAITING, "2 still waits");
        // Those that gave up make room again.
        held.truncate(10);
        assert!(awaited.wait_for(TaskId(4)).is_some());
    }
}

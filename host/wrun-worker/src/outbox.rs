//! Task events on their way to the scheduler: gathered here by the
//! executors (and the RPC thread), sent in batches by the RPC thread
//! (`session.rs`).
//!
//! Waking the RPC thread for every event cost each task a thread wake-up on
//! the worker and a message the scheduler woke up for. So it is woken by
//! the first event of a batch (to start its clock), by a full batch, and by
//! anything urgent: an executor that found no more queued work (the worker
//! needs tasks, or a chain waits on this result) or an answer to the
//! scheduler. Otherwise a batch waits at most [`EVENT_COALESCE`].

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use wrun_proto::TaskId;
use wrun_proto::wrun_capnp::worker_event;

/// How many gathered events make a batch worth sending at once.
pub(crate) const EVENT_BATCH: usize = 64;

/// How long a busy worker lets task events gather before sending them.
pub(crate) const EVENT_COALESCE: Duration = Duration::from_millis(1);

/// How far back a `finished` looks for its task's unsent `started`.
const STARTED_WINDOW: usize = 8;

/// When and where a task ran, for the scheduler's task stream: Unix µs on
/// this worker's clock, the executor thread, and the fetch of its inputs
/// from peers before it (zeros: none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Timing {
    pub(crate) start_us: u64,
    pub(crate) end_us: u64,
    pub(crate) thread: u32,
    pub(crate) transfer: Transfer,
}

/// Inputs fetched from peers for one task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Transfer {
    pub(crate) start_us: u64,
    pub(crate) end_us: u64,
    pub(crate) bytes: u64,
}

/// Now, as Unix µs.
pub(crate) fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What a worker tells the scheduler about a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Started(TaskId),
    Finished {
        task: TaskId,
        size: u64,
        /// The result's bytes when the scheduler asked for them and they
        /// are small (`Assignment.shareResult`); empty otherwise.
        value: Vec<u8>,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        timing: Timing,
    },
    Failed {
        task: TaskId,
        kind: String,
        message: String,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        timing: Timing,
    },
    /// The answer to a steal: true if given back.
    Stolen(TaskId, bool),
    /// The answer to a replicate: true if the copy is here.
    Replicated(TaskId, bool),
}

impl Event {
    /// Roughly the bytes it takes in a message.
    fn encoded_size(&self) -> usize {
        32 + match self {
            Event::Finished {
                value,
                stdout,
                stderr,
                ..
            } => value.len() + stdout.len() + stderr.len(),
            Event::Failed {
                kind,
                message,
                stdout,
                stderr,
                ..
            } => kind.len() + message.len() + stdout.len() + stderr.len(),
            Event::Started(_) | Event::Stolen(..) | Event::Replicated(..) => 0,
        }
    }

    /// A failure before the task ran (its module or an input could not be had).
    pub(crate) fn failed_before_running(task: TaskId, kind: &str, message: String) -> Event {
        let now = unix_micros();
        Event::Failed {
            task,
            kind: kind.to_owned(),
            message,
            stdout: Vec::new(),
            stderr: Vec::new(),
            timing: Timing {
                start_us: now,
                end_us: now,
                ..Timing::default()
            },
        }
    }

    /// Writes the event into its schema struct.
    pub(crate) fn write(&self, mut e: worker_event::Builder<'_>) {
        match self {
            Event::Started(task) => {
                e.set_task(task.0);
                e.set_started(());
            }
            Event::Finished {
                task,
                size,
                value,
                stdout,
                stderr,
                timing,
            } => {
                e.set_task(task.0);
                timing.write(e.reborrow());
                let mut f = e.init_finished();
                f.set_size(*size);
                f.set_value(value);
                f.set_stdout(stdout);
                f.set_stderr(stderr);
            }
            Event::Failed {
                task,
                kind,
                message,
                stdout,
                stderr,
                timing,
            } => {
                e.set_task(task.0);
                timing.write(e.reborrow());
                let mut f = e.init_failed();
                f.set_kind(kind);
                f.set_message(message);
                f.set_stdout(stdout);
                f.set_stderr(stderr);
            }
            Event::Stolen(task, given) => {
                e.set_task(task.0);
                e.set_stolen(*given);
            }
            Event::Replicated(task, ok) => {
                e.set_task(task.0);
                e.set_replicated(*ok);
            }
        }
    }
}

impl Timing {
    fn write(&self, mut e: worker_event::Builder<'_>) {
        e.set_start_us(self.start_us);
        e.set_end_us(self.end_us);
        e.set_thread(self.thread);
        e.set_transfer_start_us(self.transfer.start_us);
        e.set_transfer_end_us(self.transfer.end_us);
        e.set_transfer_bytes(self.transfer.bytes);
    }
}

#[derive(Default)]
pub(crate) struct EventOutbox {
    pending: Mutex<Vec<Event>>,
    /// Wakes the RPC thread's sending loop.
    pub(crate) wake: tokio::sync::Notify,
}

impl EventOutbox {
    fn lock(&self) -> MutexGuard<'_, Vec<Event>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an event; `urgent` wakes the sender at once.
    pub(crate) fn push(&self, event: Event, urgent: bool) {
        let count = {
            let mut pending = self.lock();
            // A task that ends before its `started` was sent needs no
            // `started`: the scheduler would only mark it running to unmark
            // it in the same batch. Half the events of a map of short tasks.
            if let Event::Finished { task, .. } | Event::Failed { task, .. } = &event {
                let from = pending.len().saturating_sub(STARTED_WINDOW);
                if let Some(i) = pending[from..]
                    .iter()
                    .rposition(|e| matches!(e, Event::Started(t) if t == task))
                {
                    pending.remove(from + i);
                }
            }
            pending.push(event);
            pending.len()
        };
        if urgent || count == 1 || count >= EVENT_BATCH {
            self.wake.notify_one();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Drops every event not yet sent (they were for a scheduler that is gone).
    pub(crate) fn clear(&self) {
        self.lock().clear();
    }

    /// The oldest events gathered so far, in order, up to
    /// [`wrun_proto::BATCH_BYTES`] of them (at least one), so that a batch
    /// of chatty tasks' captured output never exceeds what the scheduler
    /// reads in one message. The rest waits for the next batch.
    pub(crate) fn take(&self) -> Vec<Event> {
        let mut pending = self.lock();
        let mut bytes = 0;
        let count = pending
            .iter()
            .position(|event| {
                bytes += event.encoded_size();
                bytes > wrun_proto::BATCH_BYTES
            })
            .unwrap_or(pending.len())
            .max(1)
            .min(pending.len());
        if count == pending.len() {
            std::mem::take(&mut *pending)
        } else {
            pending.drain(..count).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn finished(task: u64) -> Event {
        Event::Finished {
            task: TaskId(task),
            size: 1,
            value: Vec::new(),
            stdout: Vec::new(),
            stderr: Vec::new(),
            timing: Timing::default(),
        }
    }

    fn woken(outbox: &EventOutbox) -> bool {
        outbox.wake.notified().now_or_never().is_some()
    }

    #[test]
    fn a_started_overtaken_by_its_finished_is_dropped() {
        let outbox = EventOutbox::default();
        outbox.push(Event::Started(TaskId(1)), false);
        outbox.push(Event::Started(TaskId(2)), false);
        outbox.push(finished(1), false);
        let failed = Event::failed_before_running(TaskId(2), "host", "x".into());
        outbox.push(failed.clone(), false);
        assert_eq!(outbox.take(), vec![finished(1), failed]);
        // A `started` already sent stays sent: the `finished` goes alone.
        outbox.push(finished(1), false);
        assert_eq!(outbox.take(), vec![finished(1)]);
    }

    #[test]
    fn chatty_tasks_output_is_sent_in_batches_that_fit_a_message() {
        let outbox = EventOutbox::default();
        let chatty = |task: u64| Event::Finished {
            task: TaskId(task),
            size: 1,
            value: Vec::new(),
            stdout: vec![b'x'; 3 << 20],
            stderr: Vec::new(),
            timing: Timing::default(),
        };
        for task in 0..6 {
            outbox.push(chatty(task), false);
        }
        outbox.push(finished(9), false);
        let mut batches = Vec::new();
        while outbox.len() > 0 {
            let batch = outbox.take();
            let bytes: usize = batch.iter().map(Event::encoded_size).sum();
            assert!(
                batch.len() == 1 || bytes <= wrun_proto::BATCH_BYTES,
                "{bytes}"
            );
            batches.push(batch.len());
        }
        assert_eq!(batches, [2, 2, 3]);
        // One event over the budget still goes, alone.
        outbox.push(
            Event::Finished {
                task: TaskId(1),
                size: 1,
                value: Vec::new(),
                stdout: vec![0; wrun_proto::BATCH_BYTES + 1],
                stderr: Vec::new(),
                timing: Timing::default(),
            },
            false,
        );
        outbox.push(finished(2), false);
        assert_eq!(outbox.take().len(), 1);
        assert_eq!(outbox.take(), vec![finished(2)]);
    }

    #[test]
    fn a_started_far_back_is_kept() {
        let outbox = EventOutbox::default();
        outbox.push(Event::Started(TaskId(1)), false);
        for task in 10..10 + STARTED_WINDOW as u64 {
            outbox.push(Event::Stolen(TaskId(task), true), false);
        }
        outbox.push(finished(1), false);
        let events = outbox.take();
        assert_eq!(events[0], Event::Started(TaskId(1)));
        assert_eq!(events.len(), STARTED_WINDOW + 2);
    }

    #[test]
    fn the_sender_is_woken_by_the_first_event_a_full_batch_or_an_urgent_one() {
        let outbox = EventOutbox::default();
        outbox.push(Event::Started(TaskId(1)), false);
        assert!(woken(&outbox), "the first event starts the clock");
        outbox.push(Event::Started(TaskId(2)), false);
        assert!(!woken(&outbox));
        outbox.push(Event::Stolen(TaskId(3), true), true);
        assert!(woken(&outbox), "urgent");
        for task in 4..EVENT_BATCH as u64 {
            outbox.push(Event::Started(TaskId(task)), false);
            assert!(!woken(&outbox), "{task}");
        }
        outbox.push(Event::Started(TaskId(999)), false);
        assert_eq!(outbox.len(), EVENT_BATCH);
        assert!(woken(&outbox), "a full batch");
    }
}

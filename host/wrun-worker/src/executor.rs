//! The executor threads: each takes a job from the queue, runs it in a
//! fresh sandbox instance, keeps the result, and reports the outcome.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::outbox::{Event, Timing, unix_micros};
use crate::queue::Job;
use crate::state::WorkerState;

/// One executor thread's loop (thread number `thread`), until the queue stops.
pub(crate) fn executor(state: Arc<WorkerState>, thread: u32) {
    while let Some((job, cancel)) = state.queue.take() {
        state.events.push(Event::Started(job.task), false);
        let mut event = run_job(&state, &job, &cancel);
        if let Event::Finished { timing, .. } | Event::Failed { timing, .. } = &mut event {
            timing.thread = thread;
            timing.transfer = job.transfer;
        }
        let made = matches!(event, Event::Finished { .. });
        // The result's event goes out before anything that read it can
        // report: the scheduler must hear of an input before its dependent.
        // So the job stays running (and its result unannounced: a staged
        // job arriving now is parked on it) until its event is pushed.
        let idle = state.queue.idle_after(job.task, made);
        state.events.push(event, idle);
        // Parked jobs go once the result is here, from this run or an
        // earlier one (a run cancelled too late and assigned here again).
        state
            .queue
            .finished(job.task, &cancel, made || state.results.contains(job.task));
        // A peer waiting for this result gets it now (or hears it failed).
        state.awaited.ended(job.task);
    }
}

fn run_job(state: &WorkerState, job: &Job, cancel: &Arc<AtomicBool>) -> Event {
    let fail = |kind: &str, message: String| Event::failed_before_running(job.task, kind, message);
    let module = match state.sandbox.loaded(&job.digest) {
        Some(module) => module,
        None => {
            let Some(bytes) = state.modules.get(&job.digest) else {
                return fail("host", "the module is not on this worker".to_owned());
            };
            match state.sandbox.load(&bytes) {
                Ok((module, _)) => module,
                Err(error) => return fail("bad-module", error.to_string()),
            }
        }
    };
    let args = match job.arguments(&state.results) {
        Ok(args) => args,
        Err(message) => return fail("host", message),
    };
    let start_us = unix_micros();
    let run = state
        .sandbox
        .run_cancellable(&module, &job.name, &args, &job.limits, cancel);
    let timing = Timing {
        start_us,
        end_us: unix_micros(),
        ..Timing::default()
    };
    drop(args);
    match run.result {
        Ok(bytes) => {
            let size = bytes.len() as u64;
            let shared = (bytes.len() <= wrun_proto::ALWAYS_SHARED_BYTES
                || job.share_result && bytes.len() <= wrun_proto::SMALL_RESULT_BYTES)
                .then(|| bytes.clone());
            match state.results.insert(job.task, bytes) {
                Ok(()) => Event::Finished {
                    task: job.task,
                    size,
                    value: shared.unwrap_or_default(),
                    stdout: run.stdout.bytes,
                    stderr: run.stderr.bytes,
                    timing,
                },
                Err(no_room) => Event::Failed {
                    task: job.task,
                    kind: "no-room".to_owned(),
                    message: no_room.to_string(),
                    stdout: run.stdout.bytes,
                    stderr: run.stderr.bytes,
                    timing,
                },
            }
        }
        Err(error) => Event::Failed {
            task: job.task,
            kind: error.kind().to_owned(),
            message: error.to_string(),
            stdout: run.stdout.bytes,
            stderr: run.stderr.bytes,
            timing,
        },
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cancelled_run_ends_with_the_kind_the_scheduler_knows() {
        assert_eq!(
            wrun_sandbox::TaskError::Cancelled.kind(),
            wrun_proto::CANCELLED_KIND
        );
    }
}

//! `wrun events JOB`: the task stream of a detached job, one run per line
//! (as Dask's `get_task_stream`), or JSON lines with `--json`.

use crate::args::{SchedulerArgs, client_failure};
use crate::exit::CommandResult;
use crate::output::outln;

/// Print the task stream of a detached job: when and where each task ran.
#[derive(Debug, clap::Args)]
pub(crate) struct EventsCommand {
    /// The job id `--detach` printed (it stays detached).
    job: String,
    /// One JSON object per run: task, name, worker, thread, start_us,
    /// end_us, status, bytes, and transfer when inputs came from peers.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

impl EventsCommand {
    pub(crate) fn execute(self) -> CommandResult {
        let client = self.scheduler.connect()?;
        let stream = client.task_stream(&self.job).map_err(client_failure)?;
        if self.json {
            for record in &stream.records {
                outln!("{}", serde_json::to_string(record).expect("serializable"));
            }
        } else {
            let begin = stream.records.iter().map(|r| r.start_us).min().unwrap_or(0);
            outln!(
                "{:>8} {:<20} {:<16} {:>6} {:>12} {:>12} {:<10} {:>10}",
                "task",
                "name",
                "worker",
                "thread",
                "start ms",
                "took ms",
                "status",
                "bytes"
            );
            for r in &stream.records {
                outln!(
                    "{:>8} {:<20} {:<16} {:>6} {:>12.3} {:>12.3} {:<10} {:>10}",
                    r.task,
                    r.name,
                    r.worker,
                    r.thread,
                    r.start_us.saturating_sub(begin) as f64 / 1000.0,
                    r.end_us.saturating_sub(r.start_us) as f64 / 1000.0,
                    r.status,
                    r.bytes
                );
            }
        }
        if stream.dropped > 0 {
            eprintln!(
                "wrun events: {} finished task(s) of {} ran before the scheduler's newest runs (--task-stream) and are not shown",
                stream.dropped, self.job
            );
        }
        Ok(())
    }
}

//! `wrun gather`, `wrun logs`, `wrun cancel`: a detached job from any
//! process that can reach the cluster.

use anyhow::anyhow;

use crate::args::{SchedulerArgs, client_failure};
use crate::commands::submit::print_results;
use crate::exit::{CommandResult, Failure};
use crate::output::outln;
use crate::progress::Progress;

/// Wait for a detached job (`wrun submit --detach`) and print its results in order.
#[derive(Debug, clap::Args)]
pub(crate) struct GatherCommand {
    /// The job id `--detach` printed.
    job: String,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

impl GatherCommand {
    pub(crate) fn execute(self) -> CommandResult {
        let client = self.scheduler.connect()?;
        let futures = client.adopt(&self.job).map_err(client_failure)?;
        let progress = Progress::new(futures.len(), true);
        client
            .wait_with_progress(&futures, |done, _| progress.set(done))
            .map_err(client_failure)?;
        let results = client.gather(&futures).map_err(client_failure)?;
        let job = &self.job;
        let failures = print_results(&results, |i| format!("{job}:{i}"));
        if failures > 0 {
            return Err(Failure::task(anyhow!(
                "{failures} of {} task(s) failed",
                results.len()
            )));
        }
        Ok(())
    }
}

/// Print the captured stdout and stderr of a detached job's tasks.
#[derive(Debug, clap::Args)]
pub(crate) struct LogsCommand {
    /// JOB for every task, or JOB:N for the N-th (from 0).
    task: String,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

impl LogsCommand {
    /// The job stays detached: it is adopted to read its logs, then handed back.
    pub(crate) fn execute(self) -> CommandResult {
        let task = &self.task;
        let (job, index) = match task.rsplit_once(':') {
            Some((job, n)) => {
                let n: usize = n
                    .parse()
                    .map_err(|_| Failure::input(anyhow!("`{task}`: expected JOB or JOB:N")))?;
                (job.to_owned(), Some(n))
            }
            None => (task.clone(), None),
        };
        let client = self.scheduler.connect()?;
        let futures = client.adopt(&job).map_err(client_failure)?;
        let shown = match index {
            Some(n) if n >= futures.len() => {
                let count = futures.len();
                client.detach(futures, &job).map_err(client_failure)?;
                return Err(Failure::input(anyhow!(
                    "job `{job}` has {count} task(s); there is no task {n}"
                )));
            }
            Some(n) => vec![n],
            None => (0..futures.len()).collect(),
        };
        let wanted: Vec<_> = shown.iter().map(|n| futures[*n].clone()).collect();
        client.wait(&wanted).map_err(client_failure)?;
        drop(wanted);
        for n in shown {
            let (stdout, stderr) = client.logs(&futures[n]).map_err(client_failure)?;
            if index.is_none() {
                outln!("== {job}:{n}");
            }
            for line in String::from_utf8_lossy(&stdout).lines() {
                outln!("[stdout] {line}");
            }
            for line in String::from_utf8_lossy(&stderr).lines() {
                outln!("[stderr] {line}");
            }
        }
        client.detach(futures, &job).map_err(client_failure)?;
        Ok(())
    }
}

/// Cancel a detached job: stop its tasks and free their results.
#[derive(Debug, clap::Args)]
pub(crate) struct CancelCommand {
    /// The job id.
    job: String,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

impl CancelCommand {
    pub(crate) fn execute(self) -> CommandResult {
        let client = self.scheduler.connect()?;
        let futures = client.adopt(&self.job).map_err(client_failure)?;
        let count = futures.len();
        client.cancel(futures).map_err(client_failure)?;
        outln!("cancelled {count} task(s) of {}", self.job);
        Ok(())
    }
}

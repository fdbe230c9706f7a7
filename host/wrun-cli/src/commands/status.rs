//! `wrun status`: the cluster's workers and tasks.

use std::time::{Duration, SystemTime};

use wrun_client::ClusterStatus;

use crate::args::{SchedulerArgs, client_failure};
use crate::exit::CommandResult;
use crate::output::outln;

/// Show the cluster's workers and tasks.
#[derive(Debug, clap::Args)]
pub(crate) struct StatusCommand {
    #[command(flatten)]
    scheduler: SchedulerArgs,
    /// Print JSON (the typed status, serialised).
    #[arg(long)]
    json: bool,
}

impl StatusCommand {
    pub(crate) fn execute(self) -> CommandResult {
        let client = self.scheduler.connect()?;
        let status = client.status().map_err(client_failure)?;
        if self.json {
            outln!(
                "{}",
                serde_json::to_string(&status).expect("a status serialises")
            );
            return Ok(());
        }
        print_status(&status);
        Ok(())
    }
}

fn print_status(status: &ClusterStatus) {
    let tasks = &status.tasks;
    outln!(
        "{} worker(s), {} task(s) known, {} queued in the scheduler",
        status.workers.len(),
        tasks.total,
        tasks.queued
    );
    outln!(
        "tasks: {} waiting, {} queued, {} on workers ({} running), {} done, {} failed",
        tasks.waiting,
        tasks.queued,
        tasks.on_workers,
        tasks.running,
        tasks.done,
        tasks.failed
    );
    if !status.jobs.is_empty() {
        let list: Vec<String> = status
            .jobs
            .iter()
            .map(|job| format!("{} ({} tasks)", job.name, job.tasks))
            .collect();
        outln!("detached jobs: {}", list.join(", "));
    }
    if status.recomputed > 0 {
        outln!(
            "{} result(s) were lost with workers and computed again",
            status.recomputed
        );
    }
    outln!(
        "{:<6} {:<20} {:>7} {:>10} {:>10} {:>10} {:>9} {:>8} {:>8} {:>10} {:>12}",
        "id",
        "name",
        "threads",
        "memory",
        "held",
        "spilled",
        "pid",
        "assigned",
        "running",
        "slurm job",
        "walltime left"
    );
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    for w in &status.workers {
        let left = w
            .end_time_ms
            .map(|end| {
                wrun_slurm::format_duration(Duration::from_millis(end.saturating_sub(now_ms)))
            })
            .unwrap_or_else(|| "-".to_owned());
        let mut name = w.name.clone();
        if w.retiring {
            name.push_str(" (retiring)");
        }
        outln!(
            "{:<6} {:<20} {:>7} {:>10} {:>10} {:>10} {:>9} {:>8} {:>8} {:>10} {:>12}",
            w.id,
            name,
            w.threads,
            wrun_abi::humanize_bytes(w.memory_bytes),
            wrun_abi::humanize_bytes(w.held_bytes),
            wrun_abi::humanize_bytes(w.spilled_bytes),
            w.pid,
            w.assigned,
            w.running,
            w.slurm_job_id.as_deref().unwrap_or("-"),
            left
        );
    }
}

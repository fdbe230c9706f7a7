//! `wrun scheduler`: the scheduler alone; workers and clients find it
//! through its scheduler file.

use std::path::PathBuf;

use anyhow::{Context, anyhow};

use crate::args::ServeArgs;
use crate::exit::{CommandResult, Failure, clamp_code};
use crate::output::outln;

/// Run a scheduler; it writes the scheduler file once it listens.
#[derive(Debug, clap::Args)]
pub(crate) struct SchedulerCommand {
    /// Where to write the address and cluster secret (atomically).
    #[arg(long, env = "WRUN_SCHEDULER_FILE")]
    scheduler_file: Option<PathBuf>,
    #[command(flatten)]
    serve: ServeArgs,
}

impl SchedulerCommand {
    pub(crate) fn execute(self) -> CommandResult {
        let config = self.serve.config(self.scheduler_file.clone());
        let code = wrun_scheduler::run_scheduler(config, |address| {
            outln!("wrun scheduler listening on {address}");
            if let Some(path) = &self.scheduler_file {
                outln!("scheduler file: {}", path.display());
            }
        })
        .context("running the scheduler")?;
        match code {
            Some(code) if code != 0 => Err(Failure::with_code(
                clamp_code(code),
                anyhow!("the cluster was shut down with exit code {code}"),
            )),
            _ => Ok(()),
        }
    }
}

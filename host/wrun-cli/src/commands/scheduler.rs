//! `wrun scheduler`: the scheduler alone; workers and clients find it
//! through its scheduler file.

use std::path::PathBuf;

use anyhow::anyhow;

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
        let code = wrun_scheduler::run_scheduler(config, |handle| {
            outln!("wrun scheduler listening on {}", handle.address);
            if let Some(path) = &self.scheduler_file {
                outln!("scheduler file: {}", path.display());
            }
            if let Some(url) = &handle.dashboard_url {
                outln!("dashboard: {url}");
            }
        })
        .map_err(|error| {
            // A journal that is not one is the caller's to fix, like a bad flag.
            let journal = error
                .get_ref()
                .is_some_and(|e| e.is::<wrun_scheduler::JournalError>());
            let error = anyhow::Error::new(error).context("starting the scheduler");
            if journal {
                Failure::with_code(2, error)
            } else {
                Failure::from(error)
            }
        })?;
        match code {
            Some(code) if code != 0 => Err(Failure::with_code(
                clamp_code(code),
                anyhow!("the cluster was shut down with exit code {code}"),
            )),
            _ => Ok(()),
        }
    }
}

//! `wrun scheduler`: the scheduler alone; workers and clients find it
//! through its scheduler file.

use std::path::PathBuf;

use anyhow::{Context, anyhow};

use crate::args::PolicyArgs;
use crate::exit::{CommandResult, Failure, clamp_code};
use crate::output::outln;

/// Run a scheduler; it writes the scheduler file once it listens.
#[derive(Debug, clap::Args)]
pub(crate) struct SchedulerCommand {
    /// Interface to listen on.
    #[arg(long, env = "WRUN_HOST", default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one).
    #[arg(long, env = "WRUN_PORT", default_value_t = 0)]
    port: u16,
    /// Where to write the address and cluster secret (atomically).
    #[arg(long, env = "WRUN_SCHEDULER_FILE")]
    scheduler_file: Option<PathBuf>,
    #[command(flatten)]
    policy: PolicyArgs,
}

impl SchedulerCommand {
    pub(crate) fn execute(self) -> CommandResult {
        let config = wrun_scheduler::SchedulerConfig {
            host: self.host,
            port: self.port,
            scheduler_file: self.scheduler_file.clone(),
            core: self.policy.core(),
            ..Default::default()
        };
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

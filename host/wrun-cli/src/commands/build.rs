//! `wrun build`: a task crate into a Wasm module.

use std::path::PathBuf;

use crate::exit::{CommandResult, Failure};
use crate::output::outln;

/// Build a task crate into a Wasm module (cargo, wasm32-wasip1, release).
/// Prints the module's path as the last line.
#[derive(Debug, clap::Args)]
pub(crate) struct BuildCommand {
    /// The task crate's directory.
    #[arg(default_value = ".")]
    path: PathBuf,
}

impl BuildCommand {
    pub(crate) fn execute(self) -> CommandResult {
        let modules = wrun_build::build_task_crate(&self.path).map_err(Failure::input)?;
        for module in modules {
            outln!("{}", module.display());
        }
        Ok(())
    }
}

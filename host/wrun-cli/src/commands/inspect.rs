//! `wrun inspect`: a module's tasks and their signatures.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

use crate::exit::{CommandResult, Failure};
use crate::output::outln;

/// List the tasks of a module with their signatures.
#[derive(Debug, clap::Args)]
pub(crate) struct InspectCommand {
    /// The .wasm module.
    module: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Reads a module file, as an input error when it cannot be read.
pub(crate) fn read_module(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .with_context(|| format!("cannot read the module {}", path.display()))
        .map_err(Failure::input)
}

impl InspectCommand {
    pub(crate) fn execute(self) -> CommandResult {
        let bytes = read_module(&self.module)?;
        let tasks = wrun_abi::read_task_signatures(&bytes)
            .with_context(|| self.module.display().to_string())
            .map_err(Failure::input)?;
        let digest = wrun_abi::ModuleDigest::of(&bytes);
        if self.json {
            let tasks: Vec<_> = tasks
                .iter()
                .map(|t| {
                    json!({
                        "name": t.name,
                        "params": t.params.iter().map(|p| json!({"name": p.name, "type": p.ty.to_string()})).collect::<Vec<_>>(),
                        "returns": t.returns.to_string(),
                    })
                })
                .collect();
            outln!(
                "{}",
                json!({ "digest": digest.to_hex(), "bytes": bytes.len(), "tasks": tasks })
            );
            return Ok(());
        }
        outln!("module  {}", self.module.display());
        outln!("digest  sha256:{digest}");
        outln!(
            "size    {} ({} bytes)",
            wrun_abi::humanize_bytes(bytes.len() as u64),
            bytes.len()
        );
        outln!("tasks   {}", tasks.len());
        for task in &tasks {
            outln!("  {task}");
        }
        Ok(())
    }
}

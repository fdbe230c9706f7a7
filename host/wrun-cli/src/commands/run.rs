//! `wrun run`: one task in the sandbox on this machine, no cluster.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use serde_json::Value as Json;
use wrun_sandbox::{Sandbox, SandboxConfig, TaskError, humanize_bytes};

use crate::args::{CacheArgs, LimitArgs};
use crate::commands::inspect::read_module;
use crate::exit::{CommandResult, Failure};
use crate::output::outln;

/// Run one task in the sandbox on this machine and print its JSON result.
///
/// Each ARG is a JSON value: `wrun run seed.wasm add 1 2` prints 3;
/// strings need JSON quotes: `wrun run m.wasm greet '"Ada"'`.
/// Exit codes: 0 success, 1 task error, 2 usage or input error.
#[derive(Debug, clap::Args)]
pub(crate) struct RunCommand {
    /// The .wasm module.
    module: PathBuf,
    /// The task to run.
    task: String,
    /// The arguments, one JSON value each.
    #[arg(allow_negative_numbers = true, conflicts_with = "args")]
    arg: Vec<String>,
    /// All arguments as one JSON array, instead of ARGs.
    #[arg(long)]
    args: Option<String>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Print wall time, peak memory and fuel to stderr.
    #[arg(long)]
    usage: bool,
    #[command(flatten)]
    cache: CacheArgs,
}

/// Parses the shell's arguments: each a JSON value, or one JSON array.
fn parse_json_args(args: &[String], array: Option<&str>) -> Result<Vec<Json>, Failure> {
    if let Some(array) = array {
        return match serde_json::from_str::<Json>(array) {
            Ok(Json::Array(items)) => Ok(items),
            Ok(_) => Err(Failure::input(anyhow!(
                "--args must be a JSON array, like '[1, 2]'"
            ))),
            Err(error) => Err(Failure::input(anyhow!("--args is not valid JSON: {error}"))),
        };
    }
    args.iter()
        .enumerate()
        .map(|(i, text)| {
            serde_json::from_str(text).map_err(|error| {
                Failure::input(anyhow!(
                    "argument {} ({text:?}) is not valid JSON: {error}; strings need quotes, e.g. '\"{text}\"'",
                    i + 1
                ))
            })
        })
        .collect()
}

fn print_captured(label: &str, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let mut stderr = std::io::stderr().lock();
    for line in String::from_utf8_lossy(bytes).lines() {
        let _ = writeln!(stderr, "[{label}] {line}");
    }
}

impl RunCommand {
    pub(crate) fn execute(self) -> CommandResult {
        let args = parse_json_args(&self.arg, self.args.as_deref())?;
        let bytes = read_module(&self.module)?;
        let limits = self.limits.limits();
        let config = SandboxConfig {
            max_concurrent_tasks: 1,
            fuel_metering: limits.fuel.is_some(),
            cache_dir: self.cache.dir(),
            ..SandboxConfig::default()
        };
        let sandbox = Sandbox::new(config).map_err(|e| Failure::input(anyhow!("{e}")))?;
        let (module, _) = sandbox
            .load(&bytes)
            .with_context(|| format!("{}", self.module.display()))
            .map_err(Failure::input)?;
        let task = self.task.as_str();
        let Some(signature) = module.task(task) else {
            let available: Vec<_> = module.tasks().iter().map(|t| t.name.clone()).collect();
            return Err(Failure::input(TaskError::UnknownTask {
                name: task.to_owned(),
                available,
            }));
        };
        let encoded = wrun_abi::encode_args_from_json(signature, &args).map_err(Failure::input)?;
        let run = sandbox.run(&module, task, &encoded, &limits);
        print_captured("stdout", &run.stdout.bytes);
        print_captured("stderr", &run.stderr.bytes);
        if self.usage {
            let fuel = run
                .usage
                .fuel_consumed
                .map(|f| format!(", fuel {f}"))
                .unwrap_or_default();
            eprintln!(
                "usage: wall {:.3} ms, peak memory {}{fuel}",
                run.usage.wall.as_secs_f64() * 1e3,
                humanize_bytes(run.usage.peak_memory_bytes)
            );
        }
        match run.result {
            Ok(result) => {
                // The sandbox checked it against the declared type.
                let value = wrun_abi::decode_value(&result).map_err(|e| {
                    Failure::task(anyhow!("task `{task}` returned a malformed result: {e}"))
                })?;
                outln!("{}", wrun_abi::value_to_json(&value));
                Ok(())
            }
            Err(
                error @ (TaskError::Arguments(_)
                | TaskError::UnknownTask { .. }
                | TaskError::InvalidLimits(_)),
            ) => Err(Failure::input(error)),
            Err(error) => Err(Failure::task(error)),
        }
    }
}

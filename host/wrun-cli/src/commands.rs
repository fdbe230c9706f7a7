//! `wrun build`, `wrun inspect`, `wrun run`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use serde_json::Value as Json;
use wrun_sandbox::{Sandbox, SandboxConfig, TaskError, humanize_bytes};

use crate::exit::{CommandResult, Failure};
use crate::limits::LimitArgs;

pub(crate) fn build(path: &Path) -> CommandResult {
    let modules = wrun_build::build_task_crate(path).map_err(Failure::input)?;
    for module in modules {
        println!("{}", module.display());
    }
    Ok(())
}

fn read_module(path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .with_context(|| format!("cannot read the module {}", path.display()))
        .map_err(Failure::input)
}

pub(crate) fn inspect(path: &Path, json: bool) -> CommandResult {
    let bytes = read_module(path)?;
    let tasks = wrun_abi::read_task_signatures(&bytes)
        .with_context(|| format!("{}", path.display()))
        .map_err(Failure::input)?;
    let digest = wrun_abi::ModuleDigest::of(&bytes);
    if json {
        let tasks: Vec<Json> = tasks
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "params": t.params.iter().map(|p| serde_json::json!({"name": p.name, "type": p.ty.to_string()})).collect::<Vec<_>>(),
                    "returns": t.returns.to_string(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "digest": digest.to_hex(), "bytes": bytes.len(), "tasks": tasks })
        );
    } else {
        println!("module  {}", path.display());
        println!("digest  sha256:{digest}");
        println!(
            "size    {} ({} bytes)",
            humanize_bytes(bytes.len() as u64),
            bytes.len()
        );
        println!("tasks   {}", tasks.len());
        for task in &tasks {
            println!("  {task}");
        }
    }
    Ok(())
}

/// Parses the shell's arguments: each a JSON value, or one JSON array.
pub(crate) fn parse_json_args(args: &[String], array: Option<&str>) -> Result<Vec<Json>, Failure> {
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

pub(crate) fn run(
    module_path: &Path,
    task: &str,
    arg_texts: &[String],
    args_array: Option<&str>,
    limits: &LimitArgs,
    show_usage: bool,
    cache_dir: Option<PathBuf>,
) -> CommandResult {
    let args = parse_json_args(arg_texts, args_array)?;
    let bytes = read_module(module_path)?;
    let limits = limits.to_limits();
    let config = SandboxConfig {
        max_concurrent_tasks: 1,
        fuel_metering: limits.fuel.is_some(),
        cache_dir,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(config).map_err(|e| Failure::input(anyhow!("{e}")))?;
    let (module, _) = sandbox
        .load(&bytes)
        .with_context(|| format!("{}", module_path.display()))
        .map_err(Failure::input)?;
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
    if show_usage {
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
            let value = wrun_abi::decode_value(&result).map_err(|e| {
                Failure::task(anyhow!("task `{task}` returned a malformed result: {e}"))
            })?;
            println!("{}", wrun_abi::value_to_json(&value));
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

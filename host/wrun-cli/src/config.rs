//! `--config wrun.toml`: the same settings as the flags, from a file.
//!
//! Every flag has a `WRUN_*` environment fallback; a config file sets those
//! variables before the flags are parsed, unless the environment already has
//! them. So the precedence is: flag, then environment, then file, then
//! default. A key is the variable's name without `WRUN_`, in any case, with
//! `-` or `_`: `threads = 4`, `scheduler_file = "sched.json"`,
//! `timeout = "10s"`, `worker-memory = "8GiB"`. A list of strings feeds a
//! repeatable flag: `slurm_extra_directives = ["--gres=gpu:1", "--exclusive"]`.

use std::path::Path;

use anyhow::{Context, anyhow};

/// Finds `--config FILE` (or `--config=FILE`, or `WRUN_CONFIG`) in the
/// arguments and applies the file; returns the arguments without it.
pub(crate) fn apply_config_file(args: Vec<String>) -> anyhow::Result<Vec<String>> {
    let mut rest = Vec::with_capacity(args.len());
    let mut path = std::env::var("WRUN_CONFIG").ok();
    let mut iter = args.into_iter();
    while let Some(arg) = iter.next() {
        if arg == "--config" {
            path = Some(
                iter.next()
                    .ok_or_else(|| anyhow!("--config needs a file"))?,
            );
        } else if let Some(file) = arg.strip_prefix("--config=") {
            path = Some(file.to_owned());
        } else {
            rest.push(arg);
        }
    }
    if let Some(path) = path {
        apply(Path::new(&path))?;
    }
    Ok(rest)
}

fn apply(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    for (key, value) in table {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(x) => x.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            // Lists feed repeatable flags, which split their variable at newlines.
            toml::Value::Array(items) if items.iter().all(|i| i.is_str()) => items
                .iter()
                .filter_map(|i| i.as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            other => {
                return Err(anyhow!(
                    "{}: `{key}` must be a string, number, boolean or list of strings, not {}",
                    path.display(),
                    other.type_str()
                ));
            }
        };
        let variable = format!("WRUN_{}", key.to_ascii_uppercase().replace('-', "_"));
        if std::env::var_os(&variable).is_none() {
            // SAFETY: `set_var` is unsafe because other threads may read the
            // environment concurrently; this runs first thing in `main`,
            // before any thread is started.
            unsafe { std::env::set_var(&variable, text) };
        }
    }
    Ok(())
}

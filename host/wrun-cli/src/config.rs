//! `--config wrun.toml`: the same settings as the flags, from a file.
//!
//! Every flag has a `WRUN_*` environment fallback; a config file sets those
//! variables before the flags are parsed, unless the environment already has
//! them. So the precedence is: flag, then environment, then file, then
//! default. A key is the variable's name without `WRUN_`, in any case, with
//! `-` or `_`: `threads = 4`, `scheduler_file = "sched.json"`,
//! `timeout = "10s"`, `worker-memory = "8GiB"`. A list of strings feeds a
//! repeatable flag: `slurm_extra_directives = ["--gres=gpu:1", "--exclusive"]`.
//! A key that no flag reads is an error naming the closest one that does,
//! so a typo (`thread = 4`) is not silently ignored.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, anyhow};

/// Finds `--config FILE` (or `--config=FILE`, or `WRUN_CONFIG`) in the
/// arguments and applies the file; returns the arguments without it.
/// `command` is the whole command line's definition: its flags' variables
/// are the keys a file may set.
pub(crate) fn apply_config_file(
    args: Vec<String>,
    command: &clap::Command,
) -> anyhow::Result<Vec<String>> {
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
        apply(Path::new(&path), &known_variables(command))?;
    }
    Ok(rest)
}

/// Every `WRUN_*` variable some flag of `command` (or of a subcommand) reads,
/// and `WRUN_LOG`, which the log filter reads.
fn known_variables(command: &clap::Command) -> BTreeSet<String> {
    let mut known = BTreeSet::from(["WRUN_LOG".to_owned()]);
    let mut stack = vec![command];
    while let Some(command) = stack.pop() {
        for arg in command.get_arguments() {
            if let Some(env) = arg.get_env().and_then(|e| e.to_str()) {
                known.insert(env.to_owned());
            }
        }
        stack.extend(command.get_subcommands());
    }
    known.remove("WRUN_CONFIG");
    known
}

fn variable_of(key: &str) -> String {
    format!("WRUN_{}", key.to_ascii_uppercase().replace('-', "_"))
}

/// The key of `variable`, as a file spells it.
fn key_of(variable: &str) -> String {
    variable.trim_start_matches("WRUN_").to_ascii_lowercase()
}

fn apply(path: &Path, known: &BTreeSet<String>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let mut settings = Vec::with_capacity(table.len());
    for (key, value) in table {
        let variable = variable_of(&key);
        if !known.contains(&variable) {
            let closest = known
                .iter()
                .map(|v| key_of(v))
                .min_by_key(|k| strsim::levenshtein(k, &key.to_ascii_lowercase().replace('-', "_")))
                .unwrap_or_default();
            return Err(anyhow!(
                "{}: unknown setting `{key}`; did you mean `{closest}`?",
                path.display()
            ));
        }
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
        settings.push((variable, text));
    }
    // Only once every key is known: a bad file changes nothing.
    for (variable, text) in settings {
        if std::env::var_os(&variable).is_none() {
            // SAFETY: `set_var` is unsafe because other threads may read the
            // environment concurrently; this runs first thing in `main`,
            // before any thread is started.
            unsafe { std::env::set_var(&variable, text) };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn every_flag_variable_is_a_key_and_typos_name_the_closest() {
        let known = known_variables(&crate::Cli::command());
        for variable in [
            "WRUN_THREADS",
            "WRUN_TIMEOUT",
            "WRUN_SCHEDULER_FILE",
            "WRUN_SLURM_EXTRA_DIRECTIVES",
            "WRUN_LOG",
        ] {
            assert!(known.contains(variable), "{variable}");
        }
        assert!(!known.contains("WRUN_THREAD"));
        let dir = std::env::temp_dir().join(format!("wrun-config-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("typo.toml");
        std::fs::write(&path, "thread = 4\n").unwrap();
        let error = apply(&path, &known).unwrap_err().to_string();
        assert!(
            error.ends_with("unknown setting `thread`; did you mean `threads`?"),
            "{error}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The Slurm client commands, run as processes.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::time::parse_duration;

/// Why a Slurm command did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    /// The command is not installed (or not on PATH).
    #[error(
        "`{0}` was not found on PATH: wrun slurm needs Slurm's client commands (sbatch, squeue, scancel)"
    )]
    Missing(&'static str),
    /// The command ran and refused; `message` is what Slurm printed.
    #[error("{command} failed ({status}): {message}")]
    Refused {
        /// The command line, shortened.
        command: String,
        /// Its exit status.
        status: String,
        /// Slurm's message (stderr, else stdout).
        message: String,
    },
    /// It could not be run at all.
    #[error("running {command}: {error}")]
    Io {
        /// The command.
        command: &'static str,
        /// What went wrong.
        error: std::io::Error,
    },
    /// It printed something this crate does not understand.
    #[error("{command} printed {output:?}, which is not what wrun expected")]
    Unexpected {
        /// The command.
        command: &'static str,
        /// What it printed.
        output: String,
    },
}

fn run(program: &'static str, args: &[&str], stdin: Option<&str>) -> Result<String, SlurmError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => SlurmError::Missing(program),
            _ => SlurmError::Io {
                command: program,
                error,
            },
        })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|error| SlurmError::Io {
                command: program,
                error,
            })?;
    }
    let output = child.wait_with_output().map_err(|error| SlurmError::Io {
        command: program,
        error,
    })?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        return Err(SlurmError::Refused {
            command: format!("{program} {}", args.join(" ")).trim().to_owned(),
            status: output.status.to_string(),
            message: if stderr.is_empty() { stdout } else { stderr },
        });
    }
    Ok(stdout)
}

/// Submits a batch script (on stdin) and returns the job id.
pub fn sbatch(script: &str) -> Result<String, SlurmError> {
    let out = run("sbatch", &["--parsable"], Some(script))?;
    // `--parsable` prints `ID` or `ID;CLUSTER`.
    let id = out
        .lines()
        .last()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("");
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return Err(SlurmError::Unexpected {
            command: "sbatch",
            output: out,
        });
    }
    Ok(id.to_owned())
}

/// Cancels jobs (SIGTERM to their processes; workers retire on it).
pub fn scancel(ids: &[String]) -> Result<(), SlurmError> {
    if ids.is_empty() {
        return Ok(());
    }
    let args: Vec<&str> = ids.iter().map(String::as_str).collect();
    run("scancel", &args, None).map(|_| ())
}

/// A job's state as squeue shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    /// `PENDING`, `RUNNING`, `COMPLETING`, ...
    pub state: String,
    /// Why it pends (`Resources`, `Priority`, `None`, ...).
    pub reason: String,
}

impl JobState {
    /// Waiting to start.
    pub fn is_pending(&self) -> bool {
        self.state == "PENDING" || self.state == "CONFIGURING"
    }
}

/// The states of many jobs from one `squeue` call; jobs Slurm no longer
/// lists (ended) are absent. One process however many jobs a cluster has.
pub fn job_states(ids: &[String]) -> Result<HashMap<String, JobState>, SlurmError> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let list = ids.join(",");
    let out = match run("squeue", &["-h", "-j", &list, "-o", "%i|%T|%r"], None) {
        Ok(out) => out,
        // With one id, an ended job is an error rather than an empty list.
        Err(SlurmError::Refused { message, .. }) if message.contains("Invalid job id") => {
            return Ok(HashMap::new());
        }
        Err(error) => return Err(error),
    };
    Ok(out
        .lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, '|');
            let (id, state, reason) = (fields.next()?, fields.next()?, fields.next()?);
            Some((
                id.trim().to_owned(),
                JobState {
                    state: state.trim().to_owned(),
                    reason: reason.trim().to_owned(),
                },
            ))
        })
        .collect())
}

/// How long the job has left before Slurm stops it: from
/// `SLURM_JOB_END_TIME` when Slurm sets it (Unix seconds, newer Slurm),
/// else from `squeue -o %L`. `None` for a job without a limit.
pub fn time_left(id: &str) -> Result<Option<Duration>, SlurmError> {
    if let Some(end) = std::env::var("SLURM_JOB_END_TIME")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        return Ok(Some(Duration::from_secs(end.saturating_sub(now))));
    }
    let out = run("squeue", &["-h", "-j", id, "-o", "%L"], None)?;
    let line = out.lines().next().unwrap_or("").trim();
    match line {
        "UNLIMITED" | "NOT_SET" | "INVALID" => Ok(None),
        _ => parse_duration(line)
            .map(Some)
            .ok_or(SlurmError::Unexpected {
                command: "squeue",
                output: out,
            }),
    }
}

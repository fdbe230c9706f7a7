//! Worker job scripts: the `#SBATCH` header and the command that starts
//! the workers, with the meaning of dask-jobqueue's SLURMCluster options.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::time::format_duration;

/// The `wrun worker` command a job runs.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The wrun binary (on a shared file system, as the scheduler file is).
    pub wrun: PathBuf,
    /// The scheduler file the workers wait for and read.
    pub scheduler_file: PathBuf,
    /// Network interface for the workers' peer address (`None`: the node's address).
    pub interface: Option<String>,
    /// How long before the job's end the workers retire.
    pub retire_margin: Duration,
}

/// One worker job, as `wrun slurm up` submits it.
#[derive(Debug, Clone)]
pub struct JobScript {
    /// `#SBATCH -J`.
    pub job_name: String,
    /// Cores of the job (`--cpus-per-task`), shared by its worker processes.
    pub cores: u32,
    /// Worker processes in the job; each gets cores/processes threads.
    pub processes: u32,
    /// Memory of the job (`--mem`); each process may use memory/processes.
    pub memory_bytes: u64,
    /// `#SBATCH -t`.
    pub walltime: Duration,
    /// `#SBATCH -p`.
    pub partition: Option<String>,
    /// `#SBATCH -A`.
    pub account: Option<String>,
    /// Where the job's output goes (`#SBATCH -o DIR/NAME-%j.out`).
    pub log_dir: PathBuf,
    /// Extra `#SBATCH` lines, e.g. `--gres=gpu:1` (added after skipping).
    pub extra_directives: Vec<String>,
    /// Generated header lines containing any of these are left out
    /// (dask-jobqueue's `job_directives_skip`).
    pub skip_directives: Vec<String>,
    /// Shell lines run before the workers start (`module load ...`).
    pub prologue: Vec<String>,
    /// The workers.
    pub worker: WorkerCommand,
}

/// Quotes a word for bash (single quotes).
fn quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl JobScript {
    /// Threads of each worker process.
    pub fn threads_per_process(&self) -> u32 {
        (self.cores / self.processes.max(1)).max(1)
    }

    /// The generated `#SBATCH` lines, before skipping.
    fn directives(&self) -> Vec<String> {
        let mut lines = vec![format!("#SBATCH -J {}", quote(&self.job_name))];
        if let Some(partition) = &self.partition {
            lines.push(format!("#SBATCH -p {}", quote(partition)));
        }
        if let Some(account) = &self.account {
            lines.push(format!("#SBATCH -A {}", quote(account)));
        }
        lines.push("#SBATCH -n 1".to_owned());
        lines.push(format!("#SBATCH --cpus-per-task={}", self.cores.max(1)));
        lines.push(format!(
            "#SBATCH --mem={}M",
            self.memory_bytes.div_ceil(1 << 20).max(1)
        ));
        lines.push(format!("#SBATCH -t {}", format_duration(self.walltime)));
        lines.push(format!(
            "#SBATCH -o {}",
            quote(
                &self
                    .log_dir
                    .join(format!("{}-%j.out", self.job_name))
                    .to_string_lossy()
            )
        ));
        lines
    }

    /// The whole batch script.
    pub fn render(&self) -> String {
        let mut out = String::from("#!/usr/bin/env bash\n\n");
        for line in self.directives() {
            if !self
                .skip_directives
                .iter()
                .any(|skip| !skip.is_empty() && line.contains(skip.as_str()))
            {
                out.push_str(&line);
                out.push('\n');
            }
        }
        for extra in &self.extra_directives {
            let _ = writeln!(out, "#SBATCH {extra}");
        }
        out.push('\n');
        for line in &self.prologue {
            out.push_str(line);
            out.push('\n');
        }
        let processes = self.processes.max(1);
        let memory = (self.memory_bytes / processes as u64).max(1);
        let mut command = format!(
            "{} worker --scheduler-file {} --threads {} --memory {} --retire-margin {}s",
            quote(&self.worker.wrun.to_string_lossy()),
            quote(&self.worker.scheduler_file.to_string_lossy()),
            self.threads_per_process(),
            memory,
            self.worker.retire_margin.as_secs()
        );
        if let Some(interface) = &self.worker.interface {
            let _ = write!(command, " --interface {}", quote(interface));
        } else {
            command.push_str(" --peer-host auto");
        }
        if processes == 1 {
            let _ = writeln!(out, "exec {command} --name \"slurm-$SLURM_JOB_ID\"");
        } else {
            // Slurm signals every process of the job; the shell waits for
            // the workers to retire instead of ending the job under them.
            out.push_str("trap 'wait' TERM INT\n");
            let _ = writeln!(out, "for i in $(seq 1 {processes}); do");
            let _ = writeln!(out, "  {command} --name \"slurm-$SLURM_JOB_ID-$i\" &");
            out.push_str("done\nwait\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script() -> JobScript {
        JobScript {
            job_name: "wrun-worker".into(),
            cores: 4,
            processes: 1,
            memory_bytes: 8 << 30,
            walltime: Duration::from_secs(3600),
            partition: Some("debug".into()),
            account: Some("proj 1".into()),
            log_dir: "/shared/logs".into(),
            extra_directives: vec!["--gres=gpu:1".into()],
            skip_directives: vec![],
            prologue: vec!["module load foo".into()],
            worker: WorkerCommand {
                wrun: "/opt/wrun/bin/wrun".into(),
                scheduler_file: "/shared/s.json".into(),
                interface: None,
                retire_margin: Duration::from_secs(60),
            },
        }
    }

    #[test]
    fn the_header_has_every_option_and_the_command_execs_the_worker() {
        let text = script().render();
        for line in [
            "#SBATCH -J wrun-worker",
            "#SBATCH -p debug",
            "#SBATCH -A 'proj 1'",
            "#SBATCH -n 1",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --mem=8192M",
            "#SBATCH -t 01:00:00",
            "#SBATCH -o /shared/logs/wrun-worker-%j.out",
            "#SBATCH --gres=gpu:1",
            "module load foo",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.contains(
            "exec /opt/wrun/bin/wrun worker --scheduler-file /shared/s.json --threads 4 --memory 8589934592 --retire-margin 60s --peer-host auto --name \"slurm-$SLURM_JOB_ID\""
        ), "{text}");
        // Directives come before the first command (sbatch stops reading there).
        let lines: Vec<&str> = text.lines().collect();
        let last_directive = lines
            .iter()
            .rposition(|l| l.starts_with("#SBATCH"))
            .unwrap();
        let first_command = text.lines().position(|l| l == "module load foo").unwrap();
        assert!(last_directive < first_command);
    }

    #[test]
    fn skipped_directives_go_and_extra_ones_stay() {
        let mut s = script();
        s.skip_directives = vec!["--mem".into(), "-A".into()];
        s.extra_directives = vec!["--mem-per-cpu=1G".into()];
        let text = s.render();
        assert!(!text.contains("--mem=8192M"), "{text}");
        assert!(!text.contains("#SBATCH -A"), "{text}");
        assert!(text.contains("#SBATCH --mem-per-cpu=1G"), "{text}");
    }

    #[test]
    fn several_processes_share_the_cores_and_memory() {
        let mut s = script();
        s.processes = 2;
        s.worker.interface = Some("ib0".into());
        let text = s.render();
        assert!(text.contains("--threads 2 --memory 4294967296"), "{text}");
        assert!(text.contains("--interface ib0"), "{text}");
        assert!(text.contains("for i in $(seq 1 2); do"), "{text}");
        assert!(text.contains("trap 'wait' TERM INT"), "{text}");
    }
}

//! `wrun mpi`: one command for every rank of an MPI (or srun) launch, like
//! dask-mpi. Rank 0 runs the scheduler, rank 1 the client command, the
//! others workers; when the client command ends, it shuts the cluster down
//! and every rank exits, so the job ends with the client's exit code.
//!
//! No MPI library is used: ranks come from the launcher's environment, and
//! the ranks meet through the scheduler file (on a shared file system).

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow};
use clap::Args;

use wrun_abi::units::{ByteSize, HumanDuration};

use crate::exit::{CommandResult, Failure, clamp_code};

/// Every rank of an MPI or srun launch (like dask-mpi): rank 0 runs the
/// scheduler, rank 1 the client command, the rest workers. When the
/// command ends, every rank exits with its exit code.
///
/// `mpiexec -n 4 wrun mpi -- wrun submit m.wasm --map inc 1 2 3`
#[derive(Debug, Args)]
pub(crate) struct MpiCommand {
    /// Where rank 0 writes the scheduler file and the others read it; on a
    /// file system all nodes share [default: wrun-mpi-<job>.json here].
    #[arg(long, env = "WRUN_SCHEDULER_FILE")]
    scheduler_file: Option<PathBuf>,
    /// Task threads per worker rank.
    #[arg(long, env = "WRUN_THREADS", default_value_t = 1)]
    threads: u32,
    /// Memory per worker rank (its nanny restarts it above this).
    #[arg(long, env = "WRUN_WORKER_MEMORY", default_value = "4GiB")]
    memory: ByteSize,
    /// Network interface for the scheduler and workers (e.g. ib0).
    #[arg(long, env = "WRUN_INTERFACE")]
    interface: Option<String>,
    /// How long ranks wait for the scheduler.
    #[arg(long, env = "WRUN_CONNECT_TIMEOUT", default_value = "60s")]
    connect_timeout: HumanDuration,
    /// The client command rank 1 runs, with WRUN_SCHEDULER_FILE set.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// This process's rank and the number of ranks, from the launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rank {
    pub(crate) rank: u32,
    pub(crate) size: Option<u32>,
}

/// Reads the rank the way each launcher sets it (deploy/slurm/README.md, "MPI"):
/// Open MPI, then MPICH/PMI (and srun --mpi=pmi2), then PMIx, then srun.
pub(crate) fn rank_from(env: impl Fn(&str) -> Option<String>) -> Option<Rank> {
    let number = |name: &str| env(name).and_then(|v| v.trim().parse::<u32>().ok());
    for (rank, size) in [
        ("OMPI_COMM_WORLD_RANK", Some("OMPI_COMM_WORLD_SIZE")),
        ("PMI_RANK", Some("PMI_SIZE")),
        ("PMIX_RANK", None),
        ("SLURM_PROCID", Some("SLURM_NTASKS")),
    ] {
        if let Some(r) = number(rank) {
            return Some(Rank {
                rank: r,
                size: size.and_then(number),
            });
        }
    }
    None
}

fn default_file() -> PathBuf {
    // Every rank must arrive at the same name without talking: use what
    // the launcher shares, else a fixed name (staleness is checked by time).
    let job = std::env::var("SLURM_JOB_ID")
        .ok()
        .map(|job| match std::env::var("SLURM_STEP_ID") {
            Ok(step) => format!("{job}.{step}"),
            Err(_) => job,
        })
        .unwrap_or_else(|| "scheduler".to_owned());
    PathBuf::from(format!("wrun-mpi-{job}.json"))
}

/// Waits for a scheduler file written after `since` (an older one is left
/// from an earlier run and names a scheduler that is gone).
fn wait_for_fresh_file(path: &Path, since: SystemTime, timeout: Duration) -> Result<(), Failure> {
    let started = Instant::now();
    loop {
        let fresh = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified >= since);
        if fresh {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(Failure::unreachable(anyhow!(
                "rank 0 did not write the scheduler file {} within {} s (is it on a file system all ranks share?)",
                path.display(),
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl MpiCommand {
    pub(crate) fn execute(self) -> CommandResult {
        mpi(self)
    }
}

fn mpi(args: MpiCommand) -> CommandResult {
    let started = SystemTime::now() - Duration::from_secs(30);
    let Some(Rank { rank, size }) = rank_from(|name| std::env::var(name).ok()) else {
        return Err(Failure::input(anyhow!(
            "wrun mpi runs under an MPI launcher or srun: none of OMPI_COMM_WORLD_RANK, PMI_RANK, PMIX_RANK or SLURM_PROCID is set (try `mpiexec -n 4 wrun mpi -- COMMAND`)"
        )));
    };
    if let Some(size) = size
        && size < 3
    {
        return Err(Failure::input(anyhow!(
            "wrun mpi needs at least 3 ranks (scheduler, client, a worker); this launch has {size}"
        )));
    }
    let file = std::path::absolute(args.scheduler_file.clone().unwrap_or_else(default_file))
        .context("resolving the scheduler file path")?;
    let exe = std::env::current_exe().context("finding the wrun binary")?;
    match rank {
        0 => {
            // A file left by an earlier run must not be mistaken for ours.
            let _ = std::fs::remove_file(&file);
            let host = match &args.interface {
                Some(interface) => wrun_slurm::address_of_interface(interface)
                    .map_err(|e| Failure::input(anyhow!(e)))?,
                None => wrun_slurm::default_address(),
            };
            eprintln!("wrun mpi: rank 0 runs the scheduler ({})", file.display());
            let error = Command::new(&exe)
                .arg("scheduler")
                .arg("--host")
                .arg(host.to_string())
                .arg("--scheduler-file")
                .arg(&file)
                // The job's stdout is the client's: the banner goes to stderr.
                .stdout(std::io::stderr())
                .exec();
            Err(anyhow!("starting the scheduler: {error}").into())
        }
        1 => {
            wait_for_fresh_file(&file, started, args.connect_timeout.0)?;
            eprintln!("wrun mpi: rank 1 runs {:?}", args.command.join(" "));
            // The user's program starts with the system's huge-page setting,
            // not the one `main` chose for wrun's own processes.
            crate::transparent_huge_pages(true);
            let status = Command::new(&args.command[0])
                .args(&args.command[1..])
                .env("WRUN_SCHEDULER_FILE", &file)
                .status();
            let code = match &status {
                Ok(status) => status.code().unwrap_or(1),
                Err(error) => {
                    eprintln!("error: cannot run {:?}: {error}", args.command[0]);
                    127
                }
            };
            if let Err(error) =
                crate::commands::shutdown::shutdown_cluster(&file, code, args.connect_timeout.0)
            {
                eprintln!("wrun mpi: could not shut the cluster down: {error:#}");
            }
            if code == 0 {
                Ok(())
            } else {
                Err(Failure::with_code(
                    clamp_code(code),
                    anyhow!("the client command exited with code {code}"),
                ))
            }
        }
        _ => {
            wait_for_fresh_file(&file, started, args.connect_timeout.0)?;
            let mut worker = Command::new(&exe);
            worker
                .arg("worker")
                .arg("--scheduler-file")
                .arg(&file)
                .arg("--threads")
                .arg(args.threads.to_string())
                .arg("--memory")
                .arg(args.memory.0.to_string())
                .arg("--name")
                .arg(format!("mpi-rank-{rank}"))
                .arg("--connect-timeout")
                .arg(args.connect_timeout.to_string());
            match &args.interface {
                Some(interface) => worker.arg("--interface").arg(interface),
                None => worker.arg("--peer-host").arg("auto"),
            };
            let error = worker.exec();
            Err(anyhow!("starting the worker: {error}").into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn each_launcher_s_rank_is_read() {
        let r = |rank, size| Some(Rank { rank, size });
        assert_eq!(
            rank_from(env(&[("PMI_RANK", "2"), ("PMI_SIZE", "4")])),
            r(2, Some(4))
        );
        assert_eq!(
            rank_from(env(&[
                ("OMPI_COMM_WORLD_RANK", "1"),
                ("OMPI_COMM_WORLD_SIZE", "3"),
                ("PMIX_RANK", "1")
            ])),
            r(1, Some(3))
        );
        assert_eq!(rank_from(env(&[("PMIX_RANK", "5")])), r(5, None));
        // srun --mpi=pmi2 sets both; they agree.
        assert_eq!(
            rank_from(env(&[
                ("SLURM_PROCID", "3"),
                ("SLURM_NTASKS", "4"),
                ("PMI_RANK", "3"),
                ("PMI_SIZE", "4")
            ])),
            r(3, Some(4))
        );
        assert_eq!(
            rank_from(env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "8")])),
            r(0, Some(8))
        );
        assert_eq!(rank_from(env(&[])), None);
        assert_eq!(rank_from(env(&[("PMI_RANK", "x")])), None);
    }
}

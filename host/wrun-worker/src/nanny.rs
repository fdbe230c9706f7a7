//! The nanny: the parent process of a worker. It starts the worker, and
//! restarts it with back-off after a crash, a kill, or its resident memory
//! passing the limit; the scheduler sees the old worker's connection drop
//! and the new one register. It stops when asked (passing SIGTERM on, so
//! the worker retires), when the worker leaves cleanly (exit 0: it retired
//! or the cluster shut down), or when the scheduler's file is gone (the
//! cluster was stopped, not crashed).

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How a nanny ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NannyExit {
    /// Asked to stop; the worker was stopped (it retires on SIGTERM).
    Stopped,
    /// The worker exited cleanly (it retired, or the cluster shut down).
    WorkerLeft,
    /// The worker lost its scheduler, whose file is gone.
    SchedulerGone,
}

/// Watches one worker process.
pub struct Nanny {
    /// The program to run (the `wrun` binary).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Resident memory above which the worker is killed and restarted.
    pub memory_limit: u64,
    /// How long a worker asked to stop may take to retire before it is killed.
    pub stop_grace: Duration,
    /// The scheduler file the worker uses: gone means the cluster stopped.
    pub scheduler_file: Option<PathBuf>,
    /// How many times the worker was restarted.
    pub restarts: Arc<AtomicU32>,
    /// Where the worker spills results: a worker that dies leaves its
    /// spill directory there, and the nanny removes it.
    pub spill_dir: Option<PathBuf>,
}

/// How often the nanny looks at its worker.
const WATCH_EVERY: Duration = Duration::from_millis(50);

impl Nanny {
    /// Runs the worker until one of the [`NannyExit`] reasons; `stop` is
    /// set (by a signal handler) to stop.
    pub fn run(&self, stop: &AtomicBool) -> std::io::Result<NannyExit> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            let mut child = Command::new(&self.program)
                .args(&self.args)
                .stdin(Stdio::null())
                .spawn()?;
            let pid = child.id();
            let reason = loop {
                if stop.load(Ordering::SeqCst) {
                    self.stop_worker(&mut child);
                    self.clean_up_after(pid);
                    return Ok(NannyExit::Stopped);
                }
                if let Some(status) = child.try_wait()? {
                    self.clean_up_after(pid);
                    if status.success() {
                        return Ok(NannyExit::WorkerLeft);
                    }
                    if let Some(file) = &self.scheduler_file
                        && !file.exists()
                    {
                        eprintln!(
                            "wrun nanny: the scheduler stopped and removed {}; exiting",
                            file.display()
                        );
                        return Ok(NannyExit::SchedulerGone);
                    }
                    break format!("worker exited ({status})");
                }
                if let Some(rss) = rss_bytes(child.id())
                    && rss > self.memory_limit
                {
                    let _ = child.kill();
                    let _ = child.wait();
                    self.clean_up_after(pid);
                    break format!(
                        "worker used {} of memory, over --memory {}; killed",
                        wrun_abi::humanize_bytes(rss),
                        wrun_abi::humanize_bytes(self.memory_limit)
                    );
                }
                std::thread::sleep(WATCH_EVERY);
            };
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(100);
            }
            eprintln!(
                "wrun nanny: {reason}; restarting in {} ms",
                backoff.as_millis()
            );
            let until = Instant::now() + backoff;
            while Instant::now() < until {
                if stop.load(Ordering::SeqCst) {
                    return Ok(NannyExit::Stopped);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.restarts.fetch_add(1, Ordering::SeqCst);
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Removes what a worker that ended left behind: its spill directory
    /// (a worker removes its own when it ends cleanly, not when killed).
    fn clean_up_after(&self, pid: u32) {
        if let Some(dir) = &self.spill_dir {
            crate::results::remove_spill_dirs_of(dir, pid);
        }
    }

    /// SIGTERM (the worker retires), then SIGKILL after the grace period.
    fn stop_worker(&self, child: &mut Child) {
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + self.stop_grace;
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The resident set size of a process, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nanny(script: &str, memory_limit: u64) -> Nanny {
        Nanny {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            memory_limit,
            stop_grace: Duration::from_secs(5),
            scheduler_file: None,
            restarts: Arc::new(AtomicU32::new(0)),
            spill_dir: None,
        }
    }

    #[test]
    fn a_crashing_worker_is_restarted_until_it_leaves_cleanly() {
        let counter = std::env::temp_dir().join(format!("wrun-nanny-{}", std::process::id()));
        let _ = std::fs::remove_file(&counter);
        let script = format!("echo x >> {0}; [ $(wc -l < {0}) -ge 3 ]", counter.display());
        let nanny = nanny(&script, u64::MAX);
        let exit = nanny.run(&AtomicBool::new(false)).unwrap();
        assert_eq!(exit, NannyExit::WorkerLeft);
        assert_eq!(nanny.restarts.load(Ordering::SeqCst), 2);
        let _ = std::fs::remove_file(&counter);
    }

    #[test]
    fn a_worker_over_its_memory_is_killed_and_restarted_and_stop_ends_it() {
        let nanny = Arc::new(nanny("exec sleep 30", 1));
        let stop = Arc::new(AtomicBool::new(false));
        let running = {
            let (nanny, stop) = (nanny.clone(), stop.clone());
            std::thread::spawn(move || nanny.run(&stop).unwrap())
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while nanny.restarts.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "no restarts");
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::SeqCst);
        assert_eq!(running.join().unwrap(), NannyExit::Stopped);
    }

    #[test]
    fn a_worker_whose_scheduler_file_is_gone_is_not_restarted() {
        let mut nanny = nanny("exit 3", u64::MAX);
        nanny.scheduler_file = Some(std::env::temp_dir().join("wrun-nanny-no-such-file.json"));
        assert_eq!(
            nanny.run(&AtomicBool::new(false)).unwrap(),
            NannyExit::SchedulerGone
        );
        assert_eq!(nanny.restarts.load(Ordering::SeqCst), 0);
    }
}

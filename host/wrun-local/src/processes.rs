//! `wrun local`: the scheduler in this process, each worker a process of
//! its own under its nanny.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wrun_scheduler::{SchedulerConfig, SchedulerHandle};

/// What `wrun local` runs.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Worker processes.
    pub workers: u32,
    /// Task threads per worker.
    pub threads: u32,
    /// Memory per worker process (its nanny restarts it above this).
    pub memory_bytes: u64,
    /// Workers serve their peers over TLS, even on loopback.
    pub tls: bool,
    /// The scheduler's settings; its scheduler file is where the workers
    /// find it.
    pub scheduler: SchedulerConfig,
}

/// A running local cluster; [`LocalCluster::stop`] (or dropping it) stops
/// every process it started.
pub struct LocalCluster {
    scheduler: Option<SchedulerHandle>,
    file: PathBuf,
    children: Vec<Child>,
}

/// How long worker processes get to stop before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

impl LocalCluster {
    /// Starts the scheduler, writes its file at `file`, and starts each
    /// worker as `wrun worker` from the binary `wrun`.
    pub fn start(
        mut config: LocalConfig,
        wrun: &Path,
        file: PathBuf,
    ) -> std::io::Result<LocalCluster> {
        config.scheduler.scheduler_file = Some(file.clone());
        let scheduler = wrun_scheduler::start_scheduler(config.scheduler)?;
        let mut cluster = LocalCluster {
            scheduler: Some(scheduler),
            file,
            children: Vec::new(),
        };
        for i in 0..config.workers {
            let mut command = Command::new(wrun);
            command.arg("worker");
            if config.tls {
                command.arg("--tls");
            }
            let child = command
                .arg("--scheduler-file")
                .arg(&cluster.file)
                .arg("--threads")
                .arg(config.threads.to_string())
                .arg("--memory")
                .arg(config.memory_bytes.to_string())
                .arg("--name")
                .arg(format!("local-{i}"))
                .arg("--exit-with-parent")
                .stdin(Stdio::null())
                .spawn()?;
            cluster.children.push(child);
        }
        Ok(cluster)
    }

    /// The scheduler's address.
    pub fn address(&self) -> &str {
        &self
            .scheduler
            .as_ref()
            .expect("running until stopped")
            .address
    }

    /// The dashboard's URL, when the scheduler serves one.
    pub fn dashboard_url(&self) -> Option<&str> {
        self.scheduler
            .as_ref()
            .and_then(|s| s.dashboard_url.as_deref())
    }

    /// The scheduler file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Stops the workers (SIGTERM: they retire; killed after a grace
    /// period), then the scheduler, and removes the scheduler file.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        for child in &self.children {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for child in &mut self.children {
            while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.stop();
            let _ = std::fs::remove_file(&self.file);
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.shut_down();
    }
}

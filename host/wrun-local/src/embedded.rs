//! A scheduler and its workers in one process.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use wrun_client::{Client, ClientError, Credentials, Target};
use wrun_sandbox::SandboxConfig;
use wrun_scheduler::{SchedulerConfig, SchedulerHandle};
use wrun_worker::{Departure, SchedulerTarget, WorkerConfig, WorkerError};

/// What an embedded cluster runs.
#[derive(Debug, Clone)]
pub struct EmbeddedConfig {
    /// Workers at start.
    pub workers: u32,
    /// Task threads per worker.
    pub threads: u32,
    /// The scheduler's settings (its port is chosen freely on 127.0.0.1
    /// unless set).
    pub scheduler: SchedulerConfig,
    /// The workers' sandbox settings (module cache, fuel).
    pub sandbox: SandboxConfig,
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            workers: 1,
            threads: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            scheduler: SchedulerConfig::default(),
            sandbox: SandboxConfig::default(),
        }
    }
}

struct EmbeddedWorker {
    thread: Option<JoinHandle<Result<Departure, WorkerError>>>,
    retire: Arc<tokio::sync::Notify>,
}

/// A running embedded cluster; dropping it stops everything.
pub struct EmbeddedCluster {
    scheduler: Option<SchedulerHandle>,
    workers: Vec<EmbeddedWorker>,
    threads: u32,
    sandbox: SandboxConfig,
}

impl EmbeddedCluster {
    /// Starts the scheduler and the workers (they register in the
    /// background; [`EmbeddedCluster::wait_for_workers`] waits for them).
    pub fn start(config: EmbeddedConfig) -> std::io::Result<EmbeddedCluster> {
        let scheduler = wrun_scheduler::start_scheduler(config.scheduler)?;
        let mut cluster = EmbeddedCluster {
            scheduler: Some(scheduler),
            workers: Vec::new(),
            threads: config.threads,
            sandbox: config.sandbox,
        };
        for _ in 0..config.workers {
            cluster.add_worker()?;
        }
        Ok(cluster)
    }

    /// The scheduler's address.
    pub fn address(&self) -> &str {
        &self.handle().address
    }

    /// The cluster secret.
    pub fn secret(&self) -> &str {
        &self.handle().secret
    }

    fn handle(&self) -> &SchedulerHandle {
        self.scheduler.as_ref().expect("running until dropped")
    }

    /// Where a client finds the scheduler.
    pub fn target(&self) -> Target {
        Target::Address(self.address().to_owned())
    }

    /// The token of the cluster's one tenant (its scheduler has no tenants file).
    pub fn token(&self) -> Option<&str> {
        self.handle().token.as_deref()
    }

    /// A new client session, as the cluster's one tenant (or, with a
    /// tenants file, as the operator).
    pub fn client(&self) -> Result<Client, ClientError> {
        Client::connect_with(&self.target(), self.credentials(), Duration::from_secs(10))
    }

    /// What a client opens a session of this cluster with: its one tenant's
    /// token (or the secret, with a tenants file) and its certificate.
    pub fn credentials(&self) -> Credentials {
        let handle = self.handle();
        Credentials {
            token: Some(self.token().unwrap_or(self.secret()).to_owned()),
            certificate: handle
                .certificate
                .as_deref()
                .and_then(|pem| wrun_proto::tls::certificate_from_pem(pem).ok()),
        }
    }

    /// Starts one more worker; returns its index.
    pub fn add_worker(&mut self) -> std::io::Result<usize> {
        let index = self.workers.len();
        let retire = Arc::new(tokio::sync::Notify::new());
        let mut config = WorkerConfig::new(
            SchedulerTarget::Address {
                address: self.address().to_owned(),
                secret: self.secret().to_owned(),
                certificate: self.credentials().certificate,
            },
            self.threads,
        );
        config.name = format!("embedded-{index}");
        config.connect_timeout = Duration::from_secs(10);
        config.sandbox = self.sandbox.clone();
        config.retire_margin = Duration::ZERO;
        config.retire_when = Some(retire.clone());
        let thread = std::thread::Builder::new()
            .name(format!("wrun-embedded-worker-{index}"))
            .spawn(move || wrun_worker::run_worker(config))?;
        self.workers.push(EmbeddedWorker {
            thread: Some(thread),
            retire,
        });
        Ok(index)
    }

    /// Waits until `count` workers have registered (bounded by `timeout`).
    pub fn wait_for_workers(&self, count: usize, timeout: Duration) -> Result<(), ClientError> {
        let client = self.client()?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if client.status()?.workers.len() >= count {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(ClientError::Refused(format!(
                    "fewer than {count} workers registered within {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Retires worker `index` (as SIGTERM would a worker process) and waits
    /// for it to leave; returns how it left.
    pub fn retire_worker(&mut self, index: usize) -> Result<Departure, WorkerError> {
        let worker = &mut self.workers[index];
        worker.retire.notify_one();
        match worker.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(WorkerError::Setup("the worker thread panicked".into()))),
            None => Err(WorkerError::Setup("the worker already left".into())),
        }
    }

    /// Stops the scheduler; the workers end with their connections.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        if let Some(scheduler) = self.scheduler.take() {
            scheduler.stop();
        }
        for worker in &mut self.workers {
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for EmbeddedCluster {
    fn drop(&mut self) {
        self.shut_down();
    }
}

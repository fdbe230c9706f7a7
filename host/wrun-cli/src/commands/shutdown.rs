//! `wrun shutdown`: stops a cluster (workers, nannies, scheduler).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::anyhow;
use wrun_abi::units::HumanDuration;
use wrun_proto::capnp;
use wrun_proto::capnp_rpc::rpc_twoparty_capnp::Side;
use wrun_proto::wrun_capnp::cluster;

use crate::exit::{CommandResult, Failure};

/// Stop a cluster: its workers exit (their nannies too), then the
/// scheduler. Needs the scheduler file (it holds the cluster secret).
#[derive(Debug, clap::Args)]
pub(crate) struct ShutdownCommand {
    /// The scheduler file.
    #[arg(long, env = "WRUN_SCHEDULER_FILE")]
    scheduler_file: PathBuf,
    /// The exit code the scheduler process ends with.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    exit_code: i32,
    /// How long to wait for the scheduler.
    #[arg(long, env = "WRUN_CONNECT_TIMEOUT", default_value = "60s")]
    connect_timeout: HumanDuration,
}

impl ShutdownCommand {
    pub(crate) fn execute(self) -> CommandResult {
        shutdown_cluster(&self.scheduler_file, self.exit_code, self.connect_timeout.0).map_err(
            |error| match error.downcast_ref::<capnp::Error>() {
                // The scheduler answered, and refused.
                Some(e) if e.kind == capnp::ErrorKind::Failed => Failure::input(error),
                _ => Failure::unreachable(error),
            },
        )
    }
}

/// Asks the scheduler to shut the cluster down with `code` (`wrun shutdown`,
/// and `wrun mpi` when its client ends); the scheduler file holds the secret.
pub(crate) fn shutdown_cluster(path: &Path, code: i32, timeout: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let file = wrun_proto::SchedulerFile::wait_for(path, timeout).await?;
        let stream = wrun_proto::connect_with_retry(&file.address, timeout).await?;
        let stream = wrun_proto::tls::secure(stream, file.certificate_der()?.as_deref()).await?;
        let mut rpc = wrun_proto::rpc_system(stream, Side::Client, None);
        let cluster: cluster::Client = rpc.bootstrap(Side::Server);
        tokio::task::spawn_local(async move {
            let _ = rpc.await;
        });
        let mut request = cluster.shutdown_request();
        request.get().set_secret(&file.secret);
        request.get().set_exit_code(code);
        tokio::time::timeout(timeout, request.send().promise)
            .await
            .map_err(|_| anyhow!("the scheduler did not answer the shutdown"))??;
        anyhow::Ok(())
    })
}

//! The scheduler file: where a scheduler listens and the cluster secret,
//! for the workers and clients that may read it.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{ConnectError, PROTOCOL_VERSION};

/// What a scheduler writes once it listens, for workers and clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedulerFile {
    /// `host:port` of the scheduler.
    pub address: String,
    /// The cluster secret workers must present (never a tenant token).
    pub secret: String,
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The scheduler's process id.
    pub pid: u32,
}

impl SchedulerFile {
    /// Writes the file atomically (a temporary file, then a rename), readable by the owner only.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&tmp)?;
            file.write_all(
                serde_json::to_string_pretty(self)
                    .expect("serializable")
                    .as_bytes(),
            )?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }

    /// Waits for a readable scheduler file, polling with a bounded back-off.
    pub async fn wait_for(path: &Path, timeout: Duration) -> Result<SchedulerFile, ConnectError> {
        let started = Instant::now();
        // Short first waits: a scheduler started a moment ago writes its
        // file within milliseconds (this was 10 ms doubling, which made a
        // local start-up 13-80 ms depending on when the first look fell).
        let mut delay = Duration::from_millis(2);
        loop {
            let reason = match std::fs::read(path) {
                Ok(bytes) => match serde_json::from_slice::<SchedulerFile>(&bytes) {
                    Ok(file) if file.protocol != PROTOCOL_VERSION => {
                        return Err(ConnectError::Version {
                            theirs: file.protocol,
                        });
                    }
                    Ok(file) => return Ok(file),
                    Err(error) => format!("unreadable: {error}"),
                },
                Err(error) => error.to_string(),
            };
            if started.elapsed() >= timeout {
                return Err(ConnectError::NoSchedulerFile {
                    path: path.display().to_string(),
                    waited: started.elapsed(),
                    reason,
                });
            }
            tokio::time::sleep(delay.min(timeout.saturating_sub(started.elapsed()))).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }
}

/// A new random cluster secret (64 hex characters).
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

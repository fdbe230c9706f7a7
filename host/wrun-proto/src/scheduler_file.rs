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
    /// Empty in a file made for tenants (`--client-file`), which lets them
    /// find and trust the scheduler, not join it as a worker.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub secret: String,
    /// [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The scheduler's process id.
    pub pid: u32,
    /// The token of the cluster's one tenant, when it has no tenants file
    /// (whoever can read this file may use the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The scheduler's TLS certificate (PEM), when it speaks TLS: clients
    /// and workers accept exactly this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

impl SchedulerFile {
    /// The certificate to pin, DER, if the scheduler speaks TLS.
    pub fn certificate_der(&self) -> Result<Option<Vec<u8>>, ConnectError> {
        self.certificate
            .as_deref()
            .map(crate::tls::certificate_from_pem)
            .transpose()
            .map_err(|e| ConnectError::Tls(e.to_string()))
    }

    /// The same file for tenants: where the scheduler is and its
    /// certificate, without the cluster secret or any token.
    pub fn public(&self) -> SchedulerFile {
        SchedulerFile {
            secret: String::new(),
            token: None,
            ..self.clone()
        }
    }

    /// Writes the tenants' file ([`SchedulerFile::public`]), readable by all.
    pub fn write_public(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(&self.public()).expect("serializable");
        write_private_file(path, text.as_bytes())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
    }
}

impl SchedulerFile {
    /// Writes the file atomically, readable by the owner only
    /// ([`write_private_file`]).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = serde_json::to_string_pretty(self).expect("serializable");
        write_private_file(path, text.as_bytes())
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

/// Writes a file that holds secrets: into a temporary file beside it with a
/// random name, created new (`O_EXCL`, so a file planted under that name is
/// never reused) with mode 0600 before anything is written, synced, then
/// renamed over `path`.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut attempts = 0;
    let (tmp, mut file) = loop {
        attempts += 1;
        let suffix = &new_secret()[..16];
        let tmp = path.with_file_name(format!(".{name}.{suffix}.tmp"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(file) => break (tmp, file),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => {
                continue;
            }
            Err(error) => return Err(error),
        }
    };
    let written = file
        .write_all(bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_private_file_is_0600_even_over_a_planted_world_readable_one() {
        let dir = std::env::temp_dir().join(format!("wrun-private-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("scheduler.json");
        // A file planted where the old code put its temporary file.
        std::fs::write(
            path.with_extension(format!("tmp.{}", std::process::id())),
            b"",
        )
        .unwrap();
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_private_file(&path, b"secret").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

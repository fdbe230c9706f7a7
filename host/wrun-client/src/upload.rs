//! Modules: uploaded once per cluster, in chunks.

use std::sync::Arc;

use wrun_abi::{ModuleDigest, TaskSignature};

use crate::client::Client;
use crate::error::{ClientError, rpc_error};

/// An uploaded module and its tasks.
#[derive(Debug, Clone)]
pub struct Module {
    /// Its digest.
    pub digest: ModuleDigest,
    /// Its tasks.
    pub tasks: Arc<Vec<TaskSignature>>,
}

impl Module {
    pub(crate) fn task(&self, name: &str) -> Result<&TaskSignature, ClientError> {
        self.tasks
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| ClientError::UnknownTask {
                name: name.to_owned(),
                available: self.tasks.iter().map(|t| t.name.clone()).collect(),
            })
    }
}

impl Client {
    /// Uploads a module (skipped when the cluster has it) and reads its tasks.
    pub fn upload(&self, bytes: &[u8]) -> Result<Module, ClientError> {
        let tasks = wrun_abi::read_task_signatures(bytes)?;
        let digest = ModuleDigest::of(bytes);
        let bytes = Arc::new(bytes.to_vec());
        self.call(move |session| {
            let bytes = bytes.clone();
            Box::pin(async move {
                let mut request = session.has_module_request();
                request.get().set_digest(&digest.0);
                let known = request
                    .send()
                    .promise
                    .await
                    .map_err(rpc_error)?
                    .get()
                    .map_err(rpc_error)?
                    .get_known();
                if known {
                    return Ok(());
                }
                send_in_chunks(&bytes, "the module", |offset, chunk| {
                    let mut request = session.upload_module_request();
                    let mut p = request.get();
                    p.set_digest(&digest.0);
                    p.set_offset(offset);
                    p.set_total(bytes.len() as u64);
                    p.set_data(chunk);
                    async move {
                        let response = request.send().promise.await.map_err(rpc_error)?;
                        Ok(response.get().map_err(rpc_error)?.get_complete())
                    }
                })
                .await
            })
        })?;
        Ok(Module {
            digest,
            tasks: Arc::new(tasks),
        })
    }
}

/// Sends `bytes` in chunks at increasing offsets until the scheduler says
/// it has the whole (`send` answers `complete`).
pub(crate) async fn send_in_chunks<F, Fut>(
    bytes: &[u8],
    what: &str,
    mut send: F,
) -> Result<(), ClientError>
where
    F: FnMut(u64, &[u8]) -> Fut,
    Fut: std::future::Future<Output = Result<bool, ClientError>>,
{
    let mut offset = 0usize;
    loop {
        let end = (offset + wrun_proto::CHUNK_BYTES).min(bytes.len());
        let complete = send(offset as u64, &bytes[offset..end]).await?;
        offset = end;
        if complete {
            return Ok(());
        }
        if offset >= bytes.len() {
            return Err(ClientError::Refused(format!(
                "the scheduler did not accept {what}"
            )));
        }
    }
}

//! Task modules: uploaded once per cluster in chunks, checked (digest and
//! task section) when the last chunk arrives, then kept and served to
//! workers by digest.

use std::collections::HashMap;
use std::rc::Rc;

use wrun_abi::{ModuleDigest, TaskSignature};
use wrun_core::ClientId;

/// The largest module the scheduler takes.
pub(crate) const MAX_MODULE_BYTES: u64 = 256 << 20;

/// A checked module.
pub(crate) struct ModuleEntry {
    pub(crate) digest: ModuleDigest,
    pub(crate) bytes: Vec<u8>,
    pub(crate) signatures: Vec<TaskSignature>,
}

/// Why an upload chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UploadError {
    #[error("module of {0} bytes is over the 256 MiB limit")]
    TooLarge(u64),
    #[error("a module digest is 32 bytes, not {0}")]
    BadDigest(usize),
    #[error("module chunks out of order; start again at offset 0")]
    OutOfOrder,
    #[error("the chunks add up to more than the {0} bytes announced")]
    Overrun(u64),
    #[error("uploaded module has digest {actual}, not {announced}")]
    DigestMismatch {
        actual: ModuleDigest,
        announced: ModuleDigest,
    },
    #[error(transparent)]
    NotATaskModule(#[from] wrun_abi::ModuleError),
}

/// The modules a cluster has, and the uploads under way (per session, so
/// two clients uploading the same module do not mix their chunks).
#[derive(Default)]
pub(crate) struct ModuleRegistry {
    modules: HashMap<ModuleDigest, Rc<ModuleEntry>>,
    uploads: HashMap<(ClientId, ModuleDigest), Vec<u8>>,
}

/// Reads a digest from the wire.
pub(crate) fn digest_from(bytes: &[u8]) -> Result<ModuleDigest, UploadError> {
    <[u8; 32]>::try_from(bytes)
        .map(ModuleDigest)
        .map_err(|_| UploadError::BadDigest(bytes.len()))
}

impl ModuleRegistry {
    pub(crate) fn get(&self, digest: &ModuleDigest) -> Option<&Rc<ModuleEntry>> {
        self.modules.get(digest)
    }

    /// Takes one chunk of an upload; `Ok(true)` once the module is here
    /// (now, or already before).
    pub(crate) fn upload_chunk(
        &mut self,
        client: ClientId,
        digest: ModuleDigest,
        offset: u64,
        total: u64,
        data: &[u8],
    ) -> Result<bool, UploadError> {
        if total > MAX_MODULE_BYTES {
            return Err(UploadError::TooLarge(total));
        }
        if self.modules.contains_key(&digest) {
            return Ok(true);
        }
        let key = (client, digest);
        let buffer = self.uploads.entry(key).or_default();
        if offset != buffer.len() as u64 {
            self.uploads.remove(&key);
            return Err(UploadError::OutOfOrder);
        }
        if buffer.len() as u64 + data.len() as u64 > total {
            self.uploads.remove(&key);
            return Err(UploadError::Overrun(total));
        }
        buffer.extend_from_slice(data);
        if (buffer.len() as u64) < total {
            return Ok(false);
        }
        let bytes = self.uploads.remove(&key).unwrap_or_default();
        let actual = ModuleDigest::of(&bytes);
        if actual != digest {
            return Err(UploadError::DigestMismatch {
                actual,
                announced: digest,
            });
        }
        let signatures = wrun_abi::read_task_signatures(&bytes)?;
        tracing::info!(%digest, bytes = bytes.len(), tasks = signatures.len(), "module uploaded");
        self.modules.insert(
            digest,
            Rc::new(ModuleEntry {
                digest,
                bytes,
                signatures,
            }),
        );
        Ok(true)
    }

    /// Drops a session's unfinished uploads (it disconnected).
    pub(crate) fn forget_uploads_of(&mut self, client: ClientId) {
        self.uploads.retain(|(owner, _), _| *owner != client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module() -> Vec<u8> {
        wat::parse_str(
            r#"(module (memory (export "memory") 1)
                 (func (export "wrun_alloc") (param i32) (result i32) (i32.const 0))
                 (func (export "wrun.task.answer") (param i32 i32) (result i32) (i32.const 0))
                 (@custom "wrun.tasks" "{\"abi\":1,\"name\":\"answer\",\"params\":[],\"returns\":\"u64\"}"))"#,
        )
        .unwrap()
    }

    #[test]
    fn an_upload_in_chunks_is_checked_when_complete() {
        let bytes = module();
        let digest = ModuleDigest::of(&bytes);
        let mut registry = ModuleRegistry::default();
        let client = ClientId(1);
        let total = bytes.len() as u64;
        let (a, b) = bytes.split_at(10);
        assert_eq!(
            registry.upload_chunk(client, digest, 0, total, a),
            Ok(false)
        );
        assert!(registry.get(&digest).is_none());
        assert_eq!(
            registry.upload_chunk(client, digest, 10, total, b),
            Ok(true)
        );
        assert_eq!(registry.get(&digest).unwrap().signatures[0].name, "answer");
        // Known now: another session's upload is done at once.
        assert_eq!(
            registry.upload_chunk(ClientId(2), digest, 0, total, a),
            Ok(true)
        );
    }

    #[test]
    fn bad_uploads_are_refused_with_the_reason() {
        let bytes = module();
        let digest = ModuleDigest::of(&bytes);
        let total = bytes.len() as u64;
        let mut registry = ModuleRegistry::default();
        let client = ClientId(1);
        assert_eq!(
            registry.upload_chunk(client, digest, 5, total, &bytes[5..]),
            Err(UploadError::OutOfOrder)
        );
        assert_eq!(
            registry.upload_chunk(client, digest, 0, 300 << 20, &bytes),
            Err(UploadError::TooLarge(300 << 20))
        );
        assert_eq!(
            registry.upload_chunk(client, digest, 0, 4, &bytes),
            Err(UploadError::Overrun(4))
        );
        let other = ModuleDigest([7; 32]);
        assert!(matches!(
            registry.upload_chunk(client, other, 0, total, &bytes),
            Err(UploadError::DigestMismatch { .. })
        ));
        let junk = b"\0asm\x01\0\0\0".to_vec();
        assert!(matches!(
            registry.upload_chunk(client, ModuleDigest::of(&junk), 0, 8, &junk),
            Err(UploadError::NotATaskModule(_))
        ));
        assert_eq!(digest_from(&[1, 2]), Err(UploadError::BadDigest(2)));
        // An unfinished upload goes with its session.
        registry
            .upload_chunk(client, digest, 0, total, &bytes[..3])
            .unwrap();
        registry.forget_uploads_of(client);
        assert!(registry.uploads.is_empty());
    }
}

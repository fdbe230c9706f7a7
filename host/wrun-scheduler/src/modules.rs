//! Task modules: uploaded once per cluster in chunks, checked (digest and
//! task section) when the last chunk arrives, then kept and served to
//! workers by digest.

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use wrun_abi::{ModuleDigest, TaskSignature};
use wrun_core::{ClientId, TenantId};

/// The largest module the scheduler takes.
pub(crate) const MAX_MODULE_BYTES: u64 = 256 << 20;
/// Unfinished uploads of all sessions together.
pub(crate) const MAX_UPLOADING_BYTES: u64 = 1 << 30;
/// An upload with no chunk for this long is dropped.
pub(crate) const UPLOAD_IDLE: Duration = Duration::from_secs(60);

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
    #[error("this session has an unfinished upload already; finish it first")]
    OneAtATime,
    #[error("the scheduler is receiving too many uploads at once; try again shortly")]
    Busy,
    #[error(
        "tenant `{tenant}` has {used} bytes of modules; this one of {size} would exceed its quota of {quota} (max_module_bytes)"
    )]
    Quota {
        tenant: String,
        used: u64,
        size: u64,
        quota: u64,
    },
}

/// What an upload is checked against: its tenant's module quota.
pub(crate) struct UploadQuota<'a> {
    pub(crate) tenant: TenantId,
    pub(crate) name: &'a str,
    pub(crate) max_bytes: Option<u64>,
}

/// One chunk of an upload, as the client sent it.
pub(crate) struct UploadChunk<'a> {
    pub(crate) digest: ModuleDigest,
    pub(crate) offset: u64,
    pub(crate) total: u64,
    pub(crate) data: &'a [u8],
}

/// A module, and the tenants that uploaded it: only they may use it, or
/// even learn that it exists.
struct Owned {
    entry: Rc<ModuleEntry>,
    owners: BTreeSet<TenantId>,
}

struct Upload {
    tenant: TenantId,
    total: u64,
    bytes: Vec<u8>,
    last_chunk: Instant,
}

/// The modules a cluster has, and the uploads under way (one per session
/// at a time, so two clients uploading the same module do not mix their
/// chunks, and an abandoned upload holds at most one module's bytes).
#[derive(Default)]
pub(crate) struct ModuleRegistry {
    modules: HashMap<ModuleDigest, Owned>,
    uploads: HashMap<ClientId, (ModuleDigest, Upload)>,
}

/// Reads a digest from the wire.
pub(crate) fn digest_from(bytes: &[u8]) -> Result<ModuleDigest, UploadError> {
    <[u8; 32]>::try_from(bytes)
        .map(ModuleDigest)
        .map_err(|_| UploadError::BadDigest(bytes.len()))
}

impl ModuleRegistry {
    /// A module `tenant` uploaded (another tenant's is not found).
    pub(crate) fn get_for(
        &self,
        tenant: TenantId,
        digest: &ModuleDigest,
    ) -> Option<&Rc<ModuleEntry>> {
        self.modules
            .get(digest)
            .filter(|m| m.owners.contains(&tenant))
            .map(|m| &m.entry)
    }

    /// Any module, for workers (they run every tenant's tasks).
    pub(crate) fn get(&self, digest: &ModuleDigest) -> Option<&Rc<ModuleEntry>> {
        self.modules.get(digest).map(|m| &m.entry)
    }

    /// Every module with the tenants that own it (for a journal snapshot).
    pub(crate) fn all(&self) -> impl Iterator<Item = (&Rc<ModuleEntry>, &BTreeSet<TenantId>)> {
        self.modules.values().map(|m| (&m.entry, &m.owners))
    }

    /// A module read back from the journal, checked as an upload is.
    pub(crate) fn restore(
        &mut self,
        bytes: Vec<u8>,
        owners: impl IntoIterator<Item = TenantId>,
    ) -> Result<(), wrun_abi::ModuleError> {
        let digest = ModuleDigest::of(&bytes);
        if let Some(known) = self.modules.get_mut(&digest) {
            known.owners.extend(owners);
            return Ok(());
        }
        let signatures = wrun_abi::read_task_signatures(&bytes)?;
        self.modules.insert(
            digest,
            Owned {
                entry: Rc::new(ModuleEntry {
                    digest,
                    bytes,
                    signatures,
                }),
                owners: owners.into_iter().collect(),
            },
        );
        Ok(())
    }

    /// Bytes of the modules `tenant` owns.
    fn owned_bytes(&self, tenant: TenantId) -> u64 {
        self.modules
            .values()
            .filter(|m| m.owners.contains(&tenant))
            .map(|m| m.entry.bytes.len() as u64)
            .sum()
    }

    /// Takes one chunk of `client`'s upload; `Ok(true)` once the module is
    /// the tenant's. A tenant uploads a module another has too in full:
    /// having the bytes is what proves it may use them.
    pub(crate) fn upload_chunk(
        &mut self,
        client: ClientId,
        quota: &UploadQuota<'_>,
        chunk: UploadChunk<'_>,
        now: Instant,
    ) -> Result<bool, UploadError> {
        let UploadChunk {
            digest,
            offset,
            total,
            data,
        } = chunk;
        if total > MAX_MODULE_BYTES {
            return Err(UploadError::TooLarge(total));
        }
        if self.get_for(quota.tenant, &digest).is_some() {
            return Ok(true);
        }
        if offset == 0 {
            self.start_upload(client, quota, digest, total, now)?;
        }
        let Some((uploading, upload)) = self.uploads.get_mut(&client) else {
            return Err(UploadError::OutOfOrder);
        };
        if *uploading != digest || offset != upload.bytes.len() as u64 || total != upload.total {
            self.uploads.remove(&client);
            return Err(UploadError::OutOfOrder);
        }
        if upload.bytes.len() as u64 + data.len() as u64 > total {
            self.uploads.remove(&client);
            return Err(UploadError::Overrun(total));
        }
        upload.bytes.extend_from_slice(data);
        upload.last_chunk = now;
        if (upload.bytes.len() as u64) < total {
            return Ok(false);
        }
        let (_, upload) = self.uploads.remove(&client).expect("checked");
        let actual = ModuleDigest::of(&upload.bytes);
        if actual != digest {
            return Err(UploadError::DigestMismatch {
                actual,
                announced: digest,
            });
        }
        if let Some(known) = self.modules.get_mut(&digest) {
            known.owners.insert(upload.tenant);
            return Ok(true);
        }
        let signatures = wrun_abi::read_task_signatures(&upload.bytes)?;
        tracing::info!(%digest, bytes = upload.bytes.len(), tasks = signatures.len(), "module uploaded");
        self.modules.insert(
            digest,
            Owned {
                entry: Rc::new(ModuleEntry {
                    digest,
                    bytes: upload.bytes,
                    signatures,
                }),
                owners: BTreeSet::from([upload.tenant]),
            },
        );
        Ok(true)
    }

    fn start_upload(
        &mut self,
        client: ClientId,
        quota: &UploadQuota<'_>,
        digest: ModuleDigest,
        total: u64,
        now: Instant,
    ) -> Result<(), UploadError> {
        if self.uploads.get(&client).is_some_and(|(d, _)| *d != digest) {
            return Err(UploadError::OneAtATime);
        }
        self.uploads.remove(&client);
        let uploading: u64 = self.uploads.values().map(|(_, u)| u.total).sum();
        if uploading + total > MAX_UPLOADING_BYTES {
            return Err(UploadError::Busy);
        }
        if let Some(max) = quota.max_bytes {
            let used = self.owned_bytes(quota.tenant);
            if used + total > max {
                return Err(UploadError::Quota {
                    tenant: quota.name.to_owned(),
                    used,
                    size: total,
                    quota: max,
                });
            }
        }
        self.uploads.insert(
            client,
            (
                digest,
                Upload {
                    tenant: quota.tenant,
                    total,
                    bytes: Vec::with_capacity(total.min(wrun_proto::CHUNK_BYTES as u64) as usize),
                    last_chunk: now,
                },
            ),
        );
        Ok(())
    }

    /// Drops a session's unfinished upload (it disconnected).
    pub(crate) fn forget_uploads_of(&mut self, client: ClientId) {
        self.uploads.remove(&client);
    }

    /// Drops uploads with no chunk for [`UPLOAD_IDLE`]; returns how many.
    pub(crate) fn drop_stale_uploads(&mut self, now: Instant) -> usize {
        let before = self.uploads.len();
        self.uploads
            .retain(|_, (_, u)| now.saturating_duration_since(u.last_chunk) < UPLOAD_IDLE);
        before - self.uploads.len()
    }

    /// Bytes held by unfinished uploads.
    #[cfg(test)]
    pub(crate) fn uploading_bytes(&self) -> u64 {
        self.uploads
            .values()
            .map(|(_, u)| u.bytes.len() as u64)
            .sum()
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

    fn quota(tenant: u32) -> UploadQuota<'static> {
        UploadQuota {
            tenant: TenantId(tenant),
            name: "t",
            max_bytes: None,
        }
    }

    #[test]
    fn an_upload_in_chunks_is_checked_when_complete_and_owned_by_its_tenant() {
        let bytes = module();
        let digest = ModuleDigest::of(&bytes);
        let mut registry = ModuleRegistry::default();
        let now = Instant::now();
        let total = bytes.len() as u64;
        let (a, b) = bytes.split_at(10);
        let upload = |r: &mut ModuleRegistry, client, tenant, offset, data| {
            r.upload_chunk(
                ClientId(client),
                &quota(tenant),
                UploadChunk {
                    digest,
                    offset,
                    total,
                    data,
                },
                now,
            )
        };
        assert_eq!(upload(&mut registry, 1, 1, 0, a), Ok(false));
        assert!(registry.get(&digest).is_none());
        assert_eq!(upload(&mut registry, 1, 1, 10, b), Ok(true));
        assert_eq!(
            registry.get_for(TenantId(1), &digest).unwrap().signatures[0].name,
            "answer"
        );
        // Another tenant does not see it, and must upload it to use it.
        assert!(registry.get_for(TenantId(2), &digest).is_none());
        assert_eq!(upload(&mut registry, 2, 2, 0, a), Ok(false));
        assert_eq!(upload(&mut registry, 2, 2, 10, b), Ok(true));
        assert!(registry.get_for(TenantId(2), &digest).is_some());
        // A tenant that has it is done at once.
        assert_eq!(upload(&mut registry, 3, 1, 0, a), Ok(true));
    }

    #[test]
    fn bad_uploads_are_refused_with_the_reason() {
        let bytes = module();
        let digest = ModuleDigest::of(&bytes);
        let total = bytes.len() as u64;
        let mut registry = ModuleRegistry::default();
        let now = Instant::now();
        let client = ClientId(1);
        let q = quota(1);
        assert_eq!(
            registry.upload_chunk(
                client,
                &q,
                UploadChunk {
                    digest,
                    offset: 5,
                    total,
                    data: &bytes[5..]
                },
                now
            ),
            Err(UploadError::OutOfOrder)
        );
        assert_eq!(
            registry.upload_chunk(
                client,
                &q,
                UploadChunk {
                    digest,
                    offset: 0,
                    total: 300 << 20,
                    data: &bytes
                },
                now
            ),
            Err(UploadError::TooLarge(300 << 20))
        );
        assert_eq!(
            registry.upload_chunk(
                client,
                &q,
                UploadChunk {
                    digest,
                    offset: 0,
                    total: 4,
                    data: &bytes
                },
                now
            ),
            Err(UploadError::Overrun(4))
        );
        let other = ModuleDigest([7; 32]);
        assert!(matches!(
            registry.upload_chunk(
                client,
                &q,
                UploadChunk {
                    digest: other,
                    offset: 0,
                    total,
                    data: &bytes
                },
                now
            ),
            Err(UploadError::DigestMismatch { .. })
        ));
        let junk = b"\0asm\x01\0\0\0".to_vec();
        assert!(matches!(
            registry.upload_chunk(
                client,
                &q,
                UploadChunk {
                    digest: ModuleDigest::of(&junk),
                    offset: 0,
                    total: 8,
                    data: &junk
                },
                now
            ),
            Err(UploadError::NotATaskModule(_))
        ));
        assert_eq!(digest_from(&[1, 2]), Err(UploadError::BadDigest(2)));
        let small = UploadQuota {
            max_bytes: Some(10),
            ..quota(1)
        };
        assert!(matches!(
            registry.upload_chunk(
                client,
                &small,
                UploadChunk {
                    digest,
                    offset: 0,
                    total,
                    data: &bytes[..3]
                },
                now
            ),
            Err(UploadError::Quota { .. })
        ));
        // One unfinished upload per session; it goes with its session or
        // after a minute without a chunk.
        registry
            .upload_chunk(
                client,
                &q,
                UploadChunk {
                    digest,
                    offset: 0,
                    total,
                    data: &bytes[..3],
                },
                now,
            )
            .unwrap();
        assert_eq!(
            registry.upload_chunk(
                client,
                &q,
                UploadChunk {
                    digest: other,
                    offset: 0,
                    total: 100,
                    data: &[0; 3]
                },
                now
            ),
            Err(UploadError::OneAtATime)
        );
        assert_eq!(registry.uploading_bytes(), 3);
        registry.forget_uploads_of(client);
        assert_eq!(registry.uploading_bytes(), 0);
        registry
            .upload_chunk(
                client,
                &q,
                UploadChunk {
                    digest,
                    offset: 0,
                    total,
                    data: &bytes[..3],
                },
                now,
            )
            .unwrap();
        assert_eq!(registry.drop_stale_uploads(now + UPLOAD_IDLE), 1);
        // All sessions together are bounded too.
        for c in 10..14 {
            let _ = registry.upload_chunk(
                ClientId(c),
                &q,
                UploadChunk {
                    digest: ModuleDigest([c as u8; 32]),
                    offset: 0,
                    total: MAX_MODULE_BYTES,
                    data: &[0],
                },
                now,
            );
        }
        assert_eq!(
            registry.upload_chunk(
                ClientId(20),
                &q,
                UploadChunk {
                    digest: ModuleDigest([20; 32]),
                    offset: 0,
                    total: MAX_MODULE_BYTES,
                    data: &[0]
                },
                now
            ),
            Err(UploadError::Busy)
        );
    }
}

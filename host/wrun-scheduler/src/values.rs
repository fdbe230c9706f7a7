//! Large literal values (`putValue`): a client puts a value too large to
//! travel inside a `submit` message here, in chunks, and its tasks name it
//! by digest (`Arg::stored`); workers read it from the scheduler
//! (`fetchValue`) when they prepare such a task. A value is kept while a
//! task still names it or a session that put it is open.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use wrun_abi::ModuleDigest;
use wrun_core::{ClientId, TaskId, TenantId};

/// The largest value one may put.
pub(crate) const MAX_VALUE_BYTES: u64 = 256 << 20;
/// Values and unfinished puts of all tenants together, in memory.
pub(crate) const MAX_VALUES_BYTES: u64 = 4 << 30;

/// Why a chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ValueError {
    #[error("a value of {0} bytes is over the {MAX_VALUE_BYTES}-byte limit of putValue")]
    TooLarge(u64),
    #[error("a value digest is 32 bytes, not {0}")]
    BadDigest(usize),
    #[error("value chunks out of order; start again at offset 0")]
    OutOfOrder,
    #[error("the chunks add up to more than the {0} bytes announced")]
    Overrun(u64),
    #[error("the value put has digest {actual}, not {announced}")]
    DigestMismatch {
        actual: ModuleDigest,
        announced: ModuleDigest,
    },
    #[error("the scheduler holds too many large values now; try again once tasks have finished")]
    Full,
}

struct Stored {
    bytes: Rc<Vec<u8>>,
    /// The tenants that put it: only they may name it.
    owners: BTreeSet<TenantId>,
    /// Open sessions that put it (it waits for their submissions).
    holders: HashSet<ClientId>,
    /// Tasks that name it.
    users: usize,
}

struct Put {
    digest: ModuleDigest,
    total: u64,
    bytes: Vec<u8>,
}

/// The values a scheduler holds, and the puts under way (one per session).
#[derive(Default)]
pub(crate) struct ValueStore {
    values: HashMap<ModuleDigest, Stored>,
    puts: HashMap<ClientId, Put>,
    /// The values each task names, to let go of when it is forgotten.
    used_by: HashMap<TaskId, Vec<ModuleDigest>>,
    bytes: u64,
}

/// Reads a digest from the wire.
pub(crate) fn digest_from(bytes: &[u8]) -> Result<ModuleDigest, ValueError> {
    <[u8; 32]>::try_from(bytes)
        .map(ModuleDigest)
        .map_err(|_| ValueError::BadDigest(bytes.len()))
}

/// A chunk of a put, as the client sent it.
pub(crate) struct PutChunk<'a> {
    pub(crate) digest: ModuleDigest,
    pub(crate) offset: u64,
    pub(crate) total: u64,
    pub(crate) data: &'a [u8],
}

impl ValueStore {
    /// Takes a chunk; `Ok(Some(bytes))` when the value is complete and new
    /// to this tenant (to be journaled), `Ok(None)` for more to come,
    /// `Err` when refused (the put is dropped).
    pub(crate) fn put(
        &mut self,
        client: ClientId,
        tenant: TenantId,
        chunk: PutChunk<'_>,
    ) -> Result<PutOutcome, ValueError> {
        let PutChunk {
            digest,
            offset,
            total,
            data,
        } = chunk;
        if offset == 0 {
            self.drop_put(client);
            if let Some(v) = self.values.get_mut(&digest)
                && v.owners.contains(&tenant)
            {
                v.holders.insert(client);
                return Ok(PutOutcome::Complete(None));
            }
            if total > MAX_VALUE_BYTES {
                return Err(ValueError::TooLarge(total));
            }
            if self.bytes + total > MAX_VALUES_BYTES {
                return Err(ValueError::Full);
            }
            self.bytes += total;
            self.puts.insert(
                client,
                Put {
                    digest,
                    total,
                    bytes: Vec::with_capacity(total as usize),
                },
            );
        }
        let Some(put) = self.puts.get_mut(&client) else {
            return Err(ValueError::OutOfOrder);
        };
        if put.digest != digest || put.total != total || put.bytes.len() as u64 != offset {
            self.drop_put(client);
            return Err(ValueError::OutOfOrder);
        }
        if offset + data.len() as u64 > total {
            self.drop_put(client);
            return Err(ValueError::Overrun(total));
        }
        put.bytes.extend_from_slice(data);
        if (put.bytes.len() as u64) < total {
            return Ok(PutOutcome::More);
        }
        let put = self.puts.remove(&client).expect("just looked at");
        let actual = ModuleDigest::of(&put.bytes);
        if actual != digest {
            self.bytes -= put.total;
            return Err(ValueError::DigestMismatch {
                actual,
                announced: digest,
            });
        }
        let bytes = match self.values.get_mut(&digest) {
            // Another tenant put the same bytes: this one has proven it
            // has them too, and shares the one copy.
            Some(v) => {
                self.bytes -= put.total;
                v.owners.insert(tenant);
                v.holders.insert(client);
                v.bytes.clone()
            }
            None => {
                let bytes = Rc::new(put.bytes);
                self.values.insert(
                    digest,
                    Stored {
                        bytes: bytes.clone(),
                        owners: BTreeSet::from([tenant]),
                        holders: HashSet::from([client]),
                        users: 0,
                    },
                );
                bytes
            }
        };
        Ok(PutOutcome::Complete(Some(bytes)))
    }

    fn drop_put(&mut self, client: ClientId) {
        if let Some(put) = self.puts.remove(&client) {
            self.bytes -= put.total;
        }
    }

    /// Whether `tenant` may name the value.
    pub(crate) fn known_to(&self, tenant: TenantId, digest: &ModuleDigest) -> Option<&[u8]> {
        self.values
            .get(digest)
            .filter(|v| v.owners.contains(&tenant))
            .map(|v| v.bytes.as_slice())
    }

    /// Any value, for workers (they run every tenant's tasks).
    pub(crate) fn get(&self, digest: &ModuleDigest) -> Option<Rc<Vec<u8>>> {
        self.values.get(digest).map(|v| v.bytes.clone())
    }

    /// `task` names these values (until it is forgotten).
    pub(crate) fn use_by(&mut self, task: TaskId, digests: Vec<ModuleDigest>) {
        if digests.is_empty() {
            return;
        }
        for d in &digests {
            if let Some(v) = self.values.get_mut(d) {
                v.users += 1;
            }
        }
        self.used_by.insert(task, digests);
    }

    /// The task is gone: its values may go too.
    pub(crate) fn forgotten(&mut self, task: TaskId) {
        let Some(digests) = self.used_by.remove(&task) else {
            return;
        };
        for d in digests {
            if let Some(v) = self.values.get_mut(&d) {
                v.users = v.users.saturating_sub(1);
            }
            self.collect(&d);
        }
    }

    /// The session closed: its unfinished put goes, and what it put but no
    /// task names.
    pub(crate) fn session_closed(&mut self, client: ClientId) {
        self.drop_put(client);
        let held: Vec<ModuleDigest> = self
            .values
            .iter_mut()
            .filter_map(|(d, v)| v.holders.remove(&client).then_some(*d))
            .collect();
        for d in held {
            self.collect(&d);
        }
    }

    /// Restores a value from the journal (no session holds it then).
    pub(crate) fn restore(&mut self, owners: BTreeSet<TenantId>, bytes: Vec<u8>) {
        let digest = ModuleDigest::of(&bytes);
        if let Some(v) = self.values.get_mut(&digest) {
            v.owners.extend(owners);
            return;
        }
        self.bytes += bytes.len() as u64;
        self.values.insert(
            digest,
            Stored {
                bytes: Rc::new(bytes),
                owners,
                holders: HashSet::new(),
                users: 0,
            },
        );
    }

    /// After a replay: values no restored task names are let go (a client
    /// that put one and had not submitted yet puts it again when its call
    /// runs again).
    pub(crate) fn collect_unused(&mut self) {
        let unused: Vec<ModuleDigest> = self
            .values
            .iter()
            .filter(|(_, v)| v.users == 0 && v.holders.is_empty())
            .map(|(d, _)| *d)
            .collect();
        for d in unused {
            self.collect(&d);
        }
    }

    fn collect(&mut self, digest: &ModuleDigest) {
        if let Some(v) = self.values.get(digest)
            && v.users == 0
            && v.holders.is_empty()
        {
            self.bytes -= v.bytes.len() as u64;
            self.values.remove(digest);
        }
    }

    /// Every value with its owners (for a journal snapshot).
    pub(crate) fn all(&self) -> impl Iterator<Item = (&[u8], &BTreeSet<TenantId>)> {
        self.values
            .values()
            .map(|v| (v.bytes.as_slice(), &v.owners))
    }

    /// Bytes held (values and puts under way).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// What a chunk did.
pub(crate) enum PutOutcome {
    /// More chunks to come.
    More,
    /// The value is here; with its bytes when they are new to this tenant.
    Complete(Option<Rc<Vec<u8>>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(digest: ModuleDigest, offset: u64, total: u64, data: &[u8]) -> PutChunk<'_> {
        PutChunk {
            digest,
            offset,
            total,
            data,
        }
    }

    #[test]
    fn a_value_is_kept_while_a_session_or_a_task_needs_it() {
        let mut store = ValueStore::default();
        let bytes = vec![7u8; 1000];
        let d = ModuleDigest::of(&bytes);
        let (c, t) = (ClientId(1), TenantId(1));
        assert!(matches!(
            store.put(c, t, chunk(d, 0, 1000, &bytes[..600])),
            Ok(PutOutcome::More)
        ));
        assert!(matches!(
            store.put(c, t, chunk(d, 600, 1000, &bytes[600..])),
            Ok(PutOutcome::Complete(Some(_)))
        ));
        // Known now: a second put of the same value is done at once.
        assert!(matches!(
            store.put(c, t, chunk(d, 0, 1000, &bytes[..10])),
            Ok(PutOutcome::Complete(None))
        ));
        assert!(store.known_to(t, &d).is_some());
        assert!(
            store.known_to(TenantId(2), &d).is_none(),
            "another tenant's"
        );
        store.use_by(TaskId(5), vec![d]);
        store.session_closed(c);
        assert!(store.get(&d).is_some(), "a task still names it");
        store.forgotten(TaskId(5));
        assert!(store.get(&d).is_none());
        assert_eq!(store.bytes(), 0);
    }

    #[test]
    fn bad_puts_are_refused_and_hold_nothing() {
        let mut store = ValueStore::default();
        let bytes = vec![1u8; 100];
        let d = ModuleDigest::of(&bytes);
        let (c, t) = (ClientId(1), TenantId(1));
        assert_eq!(
            store.put(c, t, chunk(d, 0, MAX_VALUE_BYTES + 1, &[])).err(),
            Some(ValueError::TooLarge(MAX_VALUE_BYTES + 1))
        );
        assert!(matches!(
            store.put(c, t, chunk(d, 0, 100, &bytes[..50])),
            Ok(PutOutcome::More)
        ));
        assert_eq!(
            store.put(c, t, chunk(d, 60, 100, &bytes[60..])).err(),
            Some(ValueError::OutOfOrder)
        );
        assert_eq!(store.bytes(), 0);
        let wrong = ModuleDigest::of(b"other");
        assert!(matches!(
            store.put(c, t, chunk(wrong, 0, 100, &bytes)),
            Err(ValueError::DigestMismatch { .. })
        ));
        assert_eq!(
            store.put(c, t, chunk(d, 0, 10, &bytes[..20])).err(),
            Some(ValueError::Overrun(10))
        );
        assert_eq!(store.bytes(), 0);
        assert!(store.get(&d).is_none());
    }
}

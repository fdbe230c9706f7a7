//! Tenants: who may use a cluster, with what weight and quotas.
//!
//! The tenants file (TOML, `wrun tenant add|list|remove|rotate`) names each
//! tenant with the SHA-256 of its token, never the token, which is shown
//! once when made. Tokens are 256 random bits, so a plain hash is as hard
//! to reverse as the token is to guess. Without a tenants file a cluster
//! has one tenant, `default`, whose token the scheduler file carries.
//! Whoever presents the cluster secret is the operator: no quotas, and a
//! status with every worker's details.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wrun_abi::units::{ByteSize, HumanDuration};
use wrun_core::{TenantId, TenantShare};

/// Why a tenants file could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    /// The file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        error: std::io::Error,
    },
    /// The file is not a tenants file.
    #[error("{path} is not a valid tenants file: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A name that is not allowed, or already taken, or unknown.
    #[error("{0}")]
    Name(String),
}

/// What a tenant may use. Every quota is optional (none: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Tasks on workers at once (running or queued there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_slots: Option<u32>,
    /// Linear memory per task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<ByteSize>,
    /// Wall time per task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_timeout: Option<HumanDuration>,
    /// Bytes of results kept on workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_stored: Option<ByteSize>,
    /// Tasks not yet done (waiting, queued or on workers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending: Option<u64>,
    /// Bytes of modules uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_module_bytes: Option<ByteSize>,
}

/// One tenant as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantEntry {
    /// SHA-256 of the token, hex.
    pub token_sha256: String,
    /// Share of the slots when several tenants have queued work.
    #[serde(default = "one")]
    pub weight: u32,
    /// Its quotas.
    #[serde(flatten)]
    pub quotas: Quotas,
}

fn one() -> u32 {
    1
}

/// The tenants file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantsFile {
    /// Tenants by name.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantEntry>,
}

/// A fresh token: 256 random bits, as 64 hex characters.
pub fn new_token() -> String {
    wrun_proto::new_secret()
}

/// The hash a tenants file keeps of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        && name != OPERATOR
}

/// The name the operator's sessions go by.
pub const OPERATOR: &str = "operator";

impl TenantsFile {
    /// Reads a tenants file; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<TenantsFile, TenantsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(TenantsFile::default());
            }
            Err(error) => {
                return Err(TenantsError::Io {
                    path: path.display().to_string(),
                    error,
                });
            }
        };
        let file: TenantsFile = toml::from_str(&text).map_err(|e| TenantsError::Invalid {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        for (name, entry) in &file.tenants {
            let invalid = |reason: String| TenantsError::Invalid {
                path: path.display().to_string(),
                reason,
            };
            if !valid_name(name) {
                return Err(invalid(format!("`{name}` is not a tenant name")));
            }
            let hash = hex::decode(&entry.token_sha256).unwrap_or_default();
            if hash.len() != 32 {
                return Err(invalid(format!(
                    "tenant `{name}`: token_sha256 is not 64 hex characters"
                )));
            }
        }
        Ok(file)
    }

    /// Writes the file, readable and writable by its owner only, through a
    /// temporary file renamed into place.
    pub fn save(&self, path: &Path) -> Result<(), TenantsError> {
        let io = |error| TenantsError::Io {
            path: path.display().to_string(),
            error,
        };
        let text = format!(
            "# wrun tenants: made by `wrun tenant add`. Only each token's SHA-256 is kept;\n\
             # the token was shown once. `wrun scheduler --tenants` reloads this on SIGHUP.\n\n{}",
            toml::to_string(self).expect("a tenants file serialises")
        );
        wrun_proto::write_private_file(path, text.as_bytes()).map_err(io)
    }

    /// Adds a tenant with a fresh token; returns the token (shown once).
    pub fn add(&mut self, name: &str, weight: u32, quotas: Quotas) -> Result<String, TenantsError> {
        if !valid_name(name) {
            return Err(TenantsError::Name(format!(
                "`{name}` is not a tenant name: 1 to 64 of A-Z a-z 0-9 _ - . (and not `{OPERATOR}`)"
            )));
        }
        if self.tenants.contains_key(name) {
            return Err(TenantsError::Name(format!(
                "tenant `{name}` exists already (rotate its token with `wrun tenant rotate`)"
            )));
        }
        let token = new_token();
        self.tenants.insert(
            name.to_owned(),
            TenantEntry {
                token_sha256: hex::encode(hash_token(&token)),
                weight: weight.max(1),
                quotas,
            },
        );
        Ok(token)
    }

    /// Gives a tenant a fresh token; returns it (the old one stops working
    /// when the scheduler reloads the file).
    pub fn rotate(&mut self, name: &str) -> Result<String, TenantsError> {
        let entry = self
            .tenants
            .get_mut(name)
            .ok_or_else(|| TenantsError::Name(format!("no tenant `{name}`")))?;
        let token = new_token();
        entry.token_sha256 = hex::encode(hash_token(&token));
        Ok(token)
    }

    /// Removes a tenant.
    pub fn remove(&mut self, name: &str) -> Result<(), TenantsError> {
        self.tenants
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| TenantsError::Name(format!("no tenant `{name}`")))
    }
}

/// A tenant as the scheduler knows it.
#[derive(Debug, Clone)]
pub(crate) struct Tenant {
    pub(crate) id: TenantId,
    pub(crate) name: String,
    pub(crate) token_hash: [u8; 32],
    pub(crate) weight: u32,
    pub(crate) quotas: Quotas,
    /// Sees every worker's details in status (the operator, and the one
    /// tenant of a cluster without a tenants file, which holds the scheduler
    /// file and so the secret anyway).
    pub(crate) sees_all: bool,
}

impl Tenant {
    pub(crate) fn share(&self) -> TenantShare {
        TenantShare {
            weight: self.weight,
            max_slots: self.quotas.max_slots,
        }
    }
}

/// The tenants of a running scheduler. Ids stay with names across reloads,
/// so sessions of a tenant whose entry did not change carry on.
#[derive(Default)]
pub(crate) struct Tenants {
    by_id: HashMap<TenantId, Tenant>,
    by_hash: HashMap<[u8; 32], TenantId>,
    ids: HashMap<String, TenantId>,
    next: u32,
}

/// The operator's tenant id.
pub(crate) const OPERATOR_ID: TenantId = TenantId(0);

impl Tenants {
    /// The tenants of a cluster without a tenants file: one, `default`,
    /// with this token.
    pub(crate) fn single(token: &str) -> Tenants {
        let mut tenants = Tenants::default();
        tenants.set(vec![(
            "default".to_owned(),
            hash_token(token),
            1,
            Quotas::default(),
            true,
        )]);
        tenants
    }

    /// The tenants of a file.
    pub(crate) fn from_file(file: &TenantsFile) -> Tenants {
        let mut tenants = Tenants::default();
        tenants.reload(file);
        tenants
    }

    /// Takes a (re-read) file: returns the ids of tenants that were removed
    /// or whose token changed (their sessions must end).
    pub(crate) fn reload(&mut self, file: &TenantsFile) -> Vec<TenantId> {
        let entries = file
            .tenants
            .iter()
            .map(|(name, e)| {
                let mut hash = [0u8; 32];
                hash.copy_from_slice(&hex::decode(&e.token_sha256).unwrap_or_else(|_| vec![0; 32]));
                (name.clone(), hash, e.weight, e.quotas, false)
            })
            .collect();
        self.set(entries)
    }

    fn set(&mut self, entries: Vec<(String, [u8; 32], u32, Quotas, bool)>) -> Vec<TenantId> {
        let before: HashMap<TenantId, [u8; 32]> = self
            .by_id
            .iter()
            .map(|(id, t)| (*id, t.token_hash))
            .collect();
        self.by_id.clear();
        self.by_hash.clear();
        for (name, hash, weight, quotas, sees_all) in entries {
            let id = match self.ids.get(&name) {
                Some(id) => *id,
                None => {
                    self.next += 1;
                    let id = TenantId(self.next);
                    self.ids.insert(name.clone(), id);
                    id
                }
            };
            self.by_hash.insert(hash, id);
            self.by_id.insert(
                id,
                Tenant {
                    id,
                    name,
                    token_hash: hash,
                    weight: weight.max(1),
                    quotas,
                    sees_all,
                },
            );
        }
        before
            .into_iter()
            .filter(|(id, hash)| self.by_id.get(id).is_none_or(|t| t.token_hash != *hash))
            .map(|(id, _)| id)
            .collect()
    }

    /// The tenant whose token this is.
    pub(crate) fn authenticate(&self, token: &str) -> Option<&Tenant> {
        self.by_hash
            .get(&hash_token(token))
            .and_then(|id| self.by_id.get(id))
    }

    pub(crate) fn get(&self, id: TenantId) -> Option<&Tenant> {
        self.by_id.get(&id)
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Tenant> {
        self.by_id.values()
    }

    /// A tenant's name, as the journal records it (the operator's too).
    pub(crate) fn name_of(&self, id: TenantId) -> &str {
        if id == OPERATOR_ID {
            return OPERATOR;
        }
        self.by_id.get(&id).map_or("", |t| t.name.as_str())
    }

    /// The tenant named so now (a journal read after a reload may name one
    /// that is gone).
    pub(crate) fn id_of(&self, name: &str) -> Option<TenantId> {
        if name == OPERATOR {
            return Some(OPERATOR_ID);
        }
        self.ids
            .get(name)
            .copied()
            .filter(|id| self.by_id.contains_key(id))
    }
}

/// A tenant's record (`None` for the operator, who has no quotas).
pub(crate) fn tenant_record(tenants: &Tenants, id: TenantId) -> Option<&Tenant> {
    (id != OPERATOR_ID).then(|| tenants.get(id)).flatten()
}

/// Whether two byte strings are equal, in time that depends on their
/// lengths only (for comparing a presented secret).
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A tenant's caps on what a task may ask, with the cluster's own maxima.
pub(crate) fn caps(quotas: &Quotas, cluster: &TaskCaps) -> TaskCaps {
    TaskCaps {
        memory_bytes: quotas
            .max_memory
            .map_or(cluster.memory_bytes, |m| m.0.min(cluster.memory_bytes)),
        timeout: quotas
            .max_timeout
            .map_or(cluster.timeout, |t| t.0.min(cluster.timeout)),
    }
}

/// The most a task may ask for, cluster-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCaps {
    /// Linear memory per task.
    pub memory_bytes: u64,
    /// Wall time per task.
    pub timeout: Duration,
}

impl Default for TaskCaps {
    fn default() -> Self {
        TaskCaps {
            memory_bytes: 4 << 30,
            timeout: Duration::from_secs(24 * 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_keeps_hashes_and_reloads_keep_unchanged_tenants() {
        let mut file = TenantsFile::default();
        let alice = file.add("alice", 1, Quotas::default()).unwrap();
        let bob = file
            .add(
                "bob",
                3,
                Quotas {
                    max_slots: Some(2),
                    ..Quotas::default()
                },
            )
            .unwrap();
        assert_eq!(alice.len(), 64);
        let text = toml::to_string(&file).unwrap();
        assert!(!text.contains(&alice) && !text.contains(&bob), "{text}");
        assert!(file.add("alice", 1, Quotas::default()).is_err());
        assert!(file.add("operator", 1, Quotas::default()).is_err());
        assert!(file.add("no spaces", 1, Quotas::default()).is_err());

        let mut tenants = Tenants::from_file(&file);
        let a = tenants.authenticate(&alice).unwrap().id;
        let b = tenants.authenticate(&bob).unwrap();
        assert_eq!((b.weight, b.quotas.max_slots), (3, Some(2)));
        let b = b.id;
        assert!(tenants.authenticate("wrong").is_none());
        // Bob's token rotates, Alice stays: only Bob's sessions end.
        let bob2 = file.rotate("bob").unwrap();
        assert_eq!(tenants.reload(&file), vec![b]);
        assert!(tenants.authenticate(&bob).is_none());
        assert_eq!(tenants.authenticate(&bob2).unwrap().id, b, "same id");
        assert_eq!(tenants.authenticate(&alice).unwrap().id, a);
        file.remove("alice").unwrap();
        assert_eq!(tenants.reload(&file), vec![a]);
        assert!(tenants.authenticate(&alice).is_none());
    }

    #[test]
    fn quotas_read_as_people_write_them() {
        let file: TenantsFile = toml::from_str(
            "[tenants.a]\ntoken_sha256 = \"00\"\nmax_memory = \"512MiB\"\nmax_timeout = \"10m\"\nmax_pending = 5\n",
        )
        .unwrap();
        let q = file.tenants["a"].quotas;
        assert_eq!(q.max_memory, Some(ByteSize(512 << 20)));
        assert_eq!(q.max_timeout, Some(HumanDuration(Duration::from_secs(600))));
        assert_eq!(file.tenants["a"].weight, 1);
        let caps = caps(&q, &TaskCaps::default());
        assert_eq!(caps.memory_bytes, 512 << 20);
        assert!(
            toml::from_str::<TenantsFile>("[tenants.a]\ntoken_sha256 = \"00\"\nmax_slot = 1\n")
                .is_err()
        );
        assert!(
            same_secret(b"abc", b"abc")
                && !same_secret(b"abc", b"abd")
                && !same_secret(b"a", b"ab")
        );
    }
}

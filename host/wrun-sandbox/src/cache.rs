//! The on-disk cache of compiled modules.
//!
//! A file holds wasmtime's precompiled artifact (native code) behind a
//! small header: `MAGIC` (8 bytes), an HMAC-SHA256 (32 bytes), the
//! artifact. The HMAC is keyed with `cache.key`, 32 random bytes in the
//! cache directory readable by this user only (the directory is 0700), and
//! covers the engine's settings, the module digest and the artifact. It is
//! verified before the artifact reaches `Module::deserialize`, which runs
//! what it is given: whoever could write into the directory cannot make a
//! worker run their code without the key, and a truncated or altered file
//! is reported, removed and recompiled, never loaded.
//!
//! The cache is bounded (`max_bytes`): after a store, the least recently
//! used artifacts (by modification time, refreshed on every hit) go until
//! the rest fit.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};
use wrun_abi::ModuleDigest;

const MAGIC: &[u8; 8] = b"WRUNCWA2";
const HEADER_LEN: usize = MAGIC.len() + 32;
const KEY_FILE: &str = "cache.key";

/// Feeds `Hash` output into SHA-256, for a cache key that is stable across
/// processes and Rust versions (unlike `DefaultHasher`).
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn finish(&self) -> u64 {
        let digest = self.0.clone().finalize();
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// Why a cached artifact was not used.
#[derive(Debug)]
pub(crate) enum CacheMiss {
    /// No file: the normal first-time case.
    Absent,
    /// A file that is not a valid artifact; it has been removed.
    Corrupt(String),
}

pub(crate) struct DiskCache {
    dir: PathBuf,
    engine_key: String,
    /// The HMAC key; `None` if the directory could not be made private, and
    /// then nothing is read from or written to it.
    key: Option<[u8; 32]>,
    max_bytes: u64,
}

impl DiskCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine, max_bytes: u64) -> DiskCache {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let key = match private_key(&dir) {
            Ok(key) => Some(key),
            Err(error) => {
                tracing::warn!("not using the module cache {}: {error}", dir.display());
                None
            }
        };
        DiskCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
            key,
            max_bytes,
        }
    }

    fn mac(&self, key: &[u8; 32], digest: &ModuleDigest) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
        mac.update(self.engine_key.as_bytes());
        mac.update(&digest.0);
        mac
    }

    pub(crate) fn path_for(&self, digest: &ModuleDigest) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", digest.to_hex(), self.engine_key))
    }

    /// Loads a cached artifact, verifying it first.
    pub(crate) fn load(&self, engine: &Engine, digest: &ModuleDigest) -> Result<Module, CacheMiss> {
        let Some(key) = &self.key else {
            return Err(CacheMiss::Absent);
        };
        let path = self.path_for(digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(CacheMiss::Absent);
            }
            Err(error) => {
                return Err(CacheMiss::Corrupt(format!(
                    "cannot read {}: {error}",
                    path.display()
                )));
            }
        };
        let result = self.verify(key, digest, &bytes).and_then(|artifact| {
            // SAFETY: `Module::deserialize` trusts its input to be an artifact
            // produced by a compatible engine. This file carries an HMAC,
            // verified just now, made by `store` below with a key that only
            // this user can read (cache.key, 0600, in a 0700 directory), over
            // the engine's settings, the module digest and these bytes: it is
            // exactly what this user's wrun produced from `Module::serialize`
            // for this engine. wasmtime additionally checks version and settings.
            unsafe { Module::deserialize(engine, artifact) }
                .map_err(|error| format!("wasmtime refused it: {error}"))
        });
        match result {
            Ok(module) => {
                // Recently used: last to go when the cache is over its size.
                let _ = fs::File::options()
                    .append(true)
                    .open(&path)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                Ok(module)
            }
            Err(reason) => {
                let _ = fs::remove_file(&path);
                Err(CacheMiss::Corrupt(format!("{}: {reason}", path.display())))
            }
        }
    }

    fn verify<'a>(
        &self,
        key: &[u8; 32],
        digest: &ModuleDigest,
        bytes: &'a [u8],
    ) -> Result<&'a [u8], String> {
        if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
            return Err(format!("no valid header ({} bytes)", bytes.len()));
        }
        let artifact = &bytes[HEADER_LEN..];
        let mut mac = self.mac(key, digest);
        mac.update(artifact);
        mac.verify_slice(&bytes[MAGIC.len()..HEADER_LEN])
            .map_err(|_| "its authentication code does not match (altered, truncated, or not made by this user)".to_owned())?;
        Ok(artifact)
    }

    /// Writes an artifact atomically (temporary file, then rename), so a
    /// reader never sees half a file.
    pub(crate) fn store(&self, digest: &ModuleDigest, module: &Module) -> Result<(), String> {
        let Some(key) = &self.key else {
            return Ok(());
        };
        let artifact = module
            .serialize()
            .map_err(|error| format!("cannot serialize: {error}"))?;
        let mut mac = self.mac(key, digest);
        mac.update(&artifact);
        let code = mac.finalize().into_bytes();
        let path = self.path_for(digest);
        let tmp = tmp_path(&path);
        let write = || -> std::io::Result<()> {
            let mut file = private_options().create_new(true).open(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&code)?;
            file.write_all(&artifact)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|error| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write {}: {error}", path.display())
        })?;
        self.evict_over_size();
        Ok(())
    }

    /// Removes the least recently used artifacts until the rest fit in
    /// `max_bytes`.
    fn evict_over_size(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let mut artifacts: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), e.path()))
            })
            .collect();
        let mut total: u64 = artifacts.iter().map(|(_, len, _)| len).sum();
        artifacts.sort();
        for (_, len, path) in artifacts {
            if total <= self.max_bytes {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

fn private_options() -> fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = fs::OpenOptions::new();
    options.write(true).mode(0o600);
    options
}

/// Makes the cache directory private (0700) and returns its HMAC key,
/// creating one if there is none. A key that others could read is
/// replaced (and with it every artifact it signed becomes a miss).
fn private_key(dir: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    let path = dir.join(KEY_FILE);
    if let Ok(meta) = fs::metadata(&path) {
        let mut key = [0u8; 32];
        let private = meta.permissions().mode() & 0o077 == 0 && meta.len() == 32;
        if private && fs::File::open(&path)?.read_exact(&mut key).is_ok() {
            return Ok(key);
        }
        fs::remove_file(&path)?;
    }
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    let tmp = tmp_path(&path);
    let mut file = private_options().create_new(true).open(&tmp)?;
    file.write_all(&key)?;
    file.sync_all()?;
    // Another process may have made one meanwhile: the first one wins.
    match fs::hard_link(&tmp, &path) {
        Ok(()) => {
            let _ = fs::remove_file(&tmp);
            Ok(key)
        }
        Err(_) => {
            let _ = fs::remove_file(&tmp);
            let mut theirs = [0u8; 32];
            fs::File::open(&path)?.read_exact(&mut theirs)?;
            Ok(theirs)
        }
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}.{n}", std::process::id()));
    path.with_file_name(name)
}

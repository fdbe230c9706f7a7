//! The on-disk cache of compiled modules.
//!
//! A file holds wasmtime's precompiled artifact behind a small header:
//! `MAGIC` (8 bytes), the SHA-256 of the artifact (32 bytes), the artifact.
//! The file name carries the module digest and a hash of the engine's
//! compatibility settings, so an engine never sees another engine's
//! artifacts. The checksum is verified before the artifact is handed to
//! `Module::deserialize`, which trusts its input: a truncated or corrupted
//! file is reported, removed and recompiled, never loaded.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};
use wrun_abi::ModuleDigest;

const MAGIC: &[u8; 8] = b"WRUNCWA1";
const HEADER_LEN: usize = MAGIC.len() + 32;

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
}

impl DiskCache {
    pub(crate) fn new(dir: PathBuf, engine: &Engine) -> DiskCache {
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        DiskCache {
            dir,
            engine_key: format!("{:016x}", hasher.finish()),
        }
    }

    pub(crate) fn path_for(&self, digest: &ModuleDigest) -> PathBuf {
        self.dir
            .join(format!("{}-{}.cwasm", digest.to_hex(), self.engine_key))
    }

    /// Loads a cached artifact, verifying it first.
    pub(crate) fn load(&self, engine: &Engine, digest: &ModuleDigest) -> Result<Module, CacheMiss> {
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
        let result = Self::verify(&bytes).and_then(|artifact| {
            // SAFETY: `Module::deserialize` trusts its input to be an artifact
            // produced by a compatible engine. This file is in our own cache
            // directory, was written by `store` below from `Module::serialize`,
            // carries the engine's compatibility hash in its name, and its
            // SHA-256 matches the one written with it, so it is the exact bytes
            // we produced. wasmtime additionally checks version and settings.
            unsafe { Module::deserialize(engine, artifact) }
                .map_err(|error| format!("wasmtime refused it: {error}"))
        });
        result.map_err(|reason| {
            let _ = fs::remove_file(&path);
            CacheMiss::Corrupt(format!("{}: {reason}", path.display()))
        })
    }

    fn verify(bytes: &[u8]) -> Result<&[u8], String> {
        if bytes.len() < HEADER_LEN || &bytes[..MAGIC.len()] != MAGIC {
            return Err(format!("no valid header ({} bytes)", bytes.len()));
        }
        let artifact = &bytes[HEADER_LEN..];
        if Sha256::digest(artifact)[..] != bytes[MAGIC.len()..HEADER_LEN] {
            return Err("checksum mismatch (truncated or corrupted)".to_owned());
        }
        Ok(artifact)
    }

    /// Writes an artifact atomically (temporary file, then rename), so a
    /// reader never sees half a file.
    pub(crate) fn store(&self, digest: &ModuleDigest, module: &Module) -> Result<(), String> {
        let artifact = module
            .serialize()
            .map_err(|error| format!("cannot serialize: {error}"))?;
        fs::create_dir_all(&self.dir)
            .map_err(|error| format!("cannot create {}: {error}", self.dir.display()))?;
        let path = self.path_for(digest);
        let tmp = tmp_path(&path);
        let write = || -> std::io::Result<()> {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&Sha256::digest(&artifact))?;
            file.write_all(&artifact)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|error| {
            let _ = fs::remove_file(&tmp);
            format!("cannot write {}: {error}", path.display())
        })
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

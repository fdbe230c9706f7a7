//! # wrun-build: build a task crate into a Wasm module
//!
//! Runs `cargo build --release --target wasm32-wasip1` on a task crate and
//! returns the `.wasm` files cargo produced, read from cargo's JSON messages
//! rather than guessed from paths. `wrun build` uses it, and so does the test
//! build script that compiles the guest test programs from source.
//!
//! It depends on nothing of wrun: a build script can use it.

#![deny(missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target every task module is built for.
pub const WASM_TARGET: &str = "wasm32-wasip1";

/// Why a build did not produce a module.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// No `Cargo.toml` where the crate was expected.
    #[error("no Cargo.toml in {0}")]
    NoManifest(PathBuf),
    /// cargo could not be started.
    #[error("cannot run cargo: {0}")]
    Spawn(std::io::Error),
    /// cargo failed; its diagnostics went to stderr.
    #[error(
        "cargo build failed ({0}); see the messages above. Is the target installed? `rustup target add {WASM_TARGET}`"
    )]
    Failed(std::process::ExitStatus),
    /// cargo succeeded but built no cdylib.
    #[error("the build produced no .wasm module: is the crate's crate-type [\"cdylib\"]?")]
    NoModule,
}

/// Environment variables a build script's cargo sets that must not leak into
/// the nested guest build (they describe the host build, or wrap rustc with
/// clippy during `cargo clippy`).
const ENV_TO_CLEAR: &[&str] = &[
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
];
const ENV_PREFIXES_TO_CLEAR: &[&str] = &[
    "CARGO_PROFILE_",
    "CARGO_CFG_",
    "CARGO_FEATURE_",
    "CARGO_PKG_",
];

/// Builds the crate at `crate_dir` in release mode for [`WASM_TARGET`] and
/// returns the modules it produced (one per cdylib). Compiler output goes to
/// this process's stderr.
pub fn build_task_crate(crate_dir: &Path) -> Result<Vec<PathBuf>, BuildError> {
    let manifest = crate_dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(BuildError::NoManifest(crate_dir.to_path_buf()));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--message-format=json-render-diagnostics",
        ])
        .arg("--manifest-path")
        .arg(&manifest)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if ENV_TO_CLEAR.contains(&key.as_ref())
            || ENV_PREFIXES_TO_CLEAR.iter().any(|p| key.starts_with(p))
        {
            command.env_remove(key.as_ref());
        }
    }
    let mut child = command.spawn().map_err(BuildError::Spawn)?;
    let mut modules = Vec::new();
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = message["target"]["crate_types"]
            .as_array()
            .is_some_and(|types| types.iter().any(|t| t == "cdylib"));
        if !is_cdylib {
            continue;
        }
        for file in message["filenames"].as_array().into_iter().flatten() {
            if let Some(path) = file.as_str().filter(|p| p.ends_with(".wasm")) {
                modules.push(PathBuf::from(path));
            }
        }
    }
    let status = child.wait().map_err(BuildError::Spawn)?;
    if !status.success() {
        return Err(BuildError::Failed(status));
    }
    if modules.is_empty() {
        return Err(BuildError::NoModule);
    }
    Ok(modules)
}

//! Shared helpers of wrun's end-to-end tests: the guest modules built from
//! source by `build.rs`, the `wrun` binary, and child processes that are
//! cleaned up and whose output is shown when a test fails.

use std::path::{Path, PathBuf};

/// The seed-tasks module (examples/seed-tasks), built by build.rs.
pub const SEED_TASKS_WASM: &str = env!("WRUN_SEED_TASKS_WASM");
/// The test-guests module (tests/guests), built by build.rs.
pub const TEST_GUESTS_WASM: &str = env!("WRUN_TEST_GUESTS_WASM");

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The `wrun` binary of the same profile as this test binary. The test
/// command builds it first (`cargo build --release --bins`).
pub fn wrun_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join("wrun");
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build --release --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Reads a file that the build produced.
pub fn read_module(path: &str) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|error| panic!("reading {path}: {error}"))
}

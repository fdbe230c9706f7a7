//! Builds the guest programs the tests use from source, as wasmtime does:
//! `examples/seed-tasks` and `tests/guests`. Each module's path becomes a
//! compile-time constant (see `support/lib.rs`), so a guest no test names
//! is still built and a missing one fails the build.

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    for dir in [
        "guest-sdk",
        "examples/seed-tasks/src",
        "examples/seed-tasks/Cargo.toml",
        "tests/guests/src",
        "tests/guests/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for (env_name, crate_dir) in [
        ("WRUN_SEED_TASKS_WASM", "examples/seed-tasks"),
        ("WRUN_TEST_GUESTS_WASM", "tests/guests"),
    ] {
        let modules = wrun_build::build_task_crate(&root.join(crate_dir))
            .unwrap_or_else(|error| panic!("building {crate_dir}: {error}"));
        println!("cargo:rustc-env={env_name}={}", modules[0].display());
    }
}

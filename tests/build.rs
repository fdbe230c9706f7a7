//! Builds the guest programs the tests use from source, as wasmtime does:
//! `examples/seed-tasks` and `tests/guests` with cargo, and the C module
//! `tests/guests/c/tasks.c` with Debian's clang through exactly the recipe
//! of guest-sdk/ABI.md §8. Each module's path becomes a compile-time
//! constant (see `support/lib.rs`), so a guest no test names is still built
//! and a missing one fails the build.

use std::path::Path;
use std::process::Command;

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
        "tests/guests/c/tasks.c",
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
    build_c_guest(&root);
}

/// `clang --target=wasm32-wasi -mexec-model=reactor -O2 -o tasks.wasm tasks.c`,
/// the recipe ABI.md gives (clang, lld, wasi-libc and libclang-rt-dev-wasm32
/// come from `scripts/setup.sh --tests`).
fn build_c_guest(root: &Path) {
    let source = root.join("tests/guests/c/tasks.c");
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("c_tasks.wasm");
    let status = Command::new("clang")
        .args(["--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-o"])
        .arg(&out)
        .arg(&source)
        .status()
        .unwrap_or_else(|error| {
            panic!(
                "running clang for {}: {error}; run scripts/setup.sh --tests",
                source.display()
            )
        });
    assert!(
        status.success(),
        "clang could not build {} ({status}); scripts/setup.sh --tests installs clang, lld, wasi-libc and libclang-rt-dev-wasm32",
        source.display()
    );
    println!("cargo:rustc-env=WRUN_C_GUEST_WASM={}", out.display());
}

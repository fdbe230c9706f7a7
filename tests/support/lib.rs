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

/// What a finished `wrun` process left.
#[derive(Debug)]
pub struct Finished {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// Its peak resident set size in KiB, from `wait4`.
    pub max_rss_kib: u64,
}

/// Runs `wrun` with `args` to completion, with a private module cache, and
/// returns its exit code, output and peak memory.
pub fn wrun(args: &[&str]) -> Finished {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let cache = std::env::temp_dir().join(format!("wrun-test-cache-{}", std::process::id()));
    // Reaped with wait4 below, which std cannot see.
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(wrun_binary())
        .args(args)
        .env("WRUN_CACHE_DIR", &cache)
        .env_remove("WRUN_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting wrun");
    let mut stdout_pipe = child.stdout.take().expect("piped");
    let mut stderr_pipe = child.stderr.take().expect("piped");
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout_pipe.read_to_string(&mut text);
        text
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain FFI call with valid pointers to locals; `rusage` is a
    // C struct for which all-zero bytes are a valid value. We reap the child
    // ourselves (std's `Child` is then never waited on) to get its rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4 failed");
    let code = if libc::WIFEXITED(status) {
        Some(libc::WEXITSTATUS(status))
    } else {
        None
    };
    Finished {
        code,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
        max_rss_kib: usage.ru_maxrss as u64,
    }
}

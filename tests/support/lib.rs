//! Shared helpers of wrun's end-to-end tests: the guest modules built from
//! source by `build.rs`, the `wrun` binary, and child processes that are
//! cleaned up and whose output is shown when a test fails.

use std::path::{Path, PathBuf};

pub mod raw;

/// The seed-tasks module (examples/seed-tasks), built by build.rs.
pub const SEED_TASKS_WASM: &str = env!("WRUN_SEED_TASKS_WASM");
/// The test-guests module (tests/guests), built by build.rs.
pub const TEST_GUESTS_WASM: &str = env!("WRUN_TEST_GUESTS_WASM");
/// The C task module (tests/guests/c/tasks.c), built by build.rs with clang.
pub const C_GUEST_WASM: &str = env!("WRUN_C_GUEST_WASM");

/// The hand-written WAT module (tests/guests/hand-written.wat), assembled.
pub fn hand_written_wasm() -> Vec<u8> {
    let path = workspace_root().join("tests/guests/hand-written.wat");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

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
    wrun_with_env(args, &[])
}

/// [`wrun`] with extra environment variables.
pub fn wrun_with_env(args: &[&str], env: &[(&str, &str)]) -> Finished {
    wrun_in(
        &std::env::current_dir().expect("a working directory"),
        args,
        env,
    )
}

/// [`wrun`] in the working directory `dir`, with extra environment variables.
pub fn wrun_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Finished {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let cache = std::env::temp_dir().join(format!("wrun-test-cache-{}", std::process::id()));
    // Reaped with wait4 below, which std cannot see.
    #[allow(clippy::zombie_processes)]
    let mut child = Command::new(wrun_binary())
        .current_dir(dir)
        .args(args)
        .env("WRUN_CACHE_DIR", &cache)
        .env_remove("WRUN_LOG")
        .envs(env.iter().copied())
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

/// A process started by a test: its log file, killed on drop.
pub struct Proc {
    /// What it is, for the log dump.
    pub name: String,
    /// The child.
    pub child: std::process::Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

/// Processes of one test, with a scratch directory. On drop, every process
/// is killed, and if the test is failing, every log is printed.
pub struct Procs {
    /// Scratch directory (scheduler files, logs).
    pub dir: PathBuf,
    /// The processes.
    pub procs: Vec<Proc>,
}

impl Procs {
    /// A new scratch directory for `test`.
    pub fn new(test: &str) -> Procs {
        let dir = std::env::temp_dir().join(format!("wrun-e2e-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Procs {
            dir,
            procs: Vec::new(),
        }
    }

    /// Starts `wrun ARGS`, output to `<dir>/<name>.log`.
    pub fn start(&mut self, name: &str, args: &[&str]) -> usize {
        self.start_program(name, wrun_binary(), args)
    }

    /// Starts `PROGRAM ARGS` with the environment `start` gives `wrun`
    /// (a test that wraps `wrun` in `sh -c "ulimit ...; exec wrun ..."`).
    pub fn start_program(
        &mut self,
        name: &str,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
    ) -> usize {
        use std::process::{Command, Stdio};
        let log = self.dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(program)
            .args(args)
            .env("WRUN_CACHE_DIR", self.dir.join("cache"))
            .env("WRUN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .spawn()
            .expect("starting wrun");
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
            log,
        });
        self.procs.len() - 1
    }

    /// A path in the scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Prints every log (used on failure).
    pub fn dump(&self) {
        for proc in &self.procs {
            eprintln!("===== {} ({}) =====", proc.name, proc.log.display());
            eprintln!("{}", std::fs::read_to_string(&proc.log).unwrap_or_default());
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        // SIGTERM first, so `wrun local` and nannies stop what they started;
        // SIGKILL whatever is left after a bounded wait.
        for proc in &mut self.procs {
            if proc.child.try_wait().ok().flatten().is_some() {
                continue; // already ended (and reaped): nothing to signal
            }
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &proc.child.id().to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        for proc in &mut self.procs {
            while std::time::Instant::now() < deadline
                && proc.child.try_wait().ok().flatten().is_none()
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: std::time::Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Runs `work` on its own thread and returns what it returns, failing the
/// test if it takes longer than `timeout`: for calls that would otherwise
/// wait forever when the behaviour under test regresses.
pub fn within<T: Send + 'static>(
    what: &str,
    timeout: std::time::Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (done, result) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(work());
    });
    match result.recv_timeout(timeout) {
        Ok(value) => value,
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Asks a worker's peer port for results by id with no ticket, as someone
/// who can reach the port but holds no secret would; returns each answer
/// (an error's words, or "GOT n bytes").
pub fn peer_fetch_without_ticket(address: &str, tasks: std::ops::Range<u64>) -> Vec<String> {
    use wrun_proto::capnp_rpc::rpc_twoparty_capnp::Side;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let stream = wrun_proto::connect_with_retry(address, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        let mut rpc = wrun_proto::rpc_system(stream, Side::Client, None);
        let peer: wrun_proto::wrun_capnp::peer::Client = rpc.bootstrap(Side::Server);
        tokio::task::spawn_local(rpc);
        let mut answers = Vec::new();
        for task in tasks {
            let mut request = peer.fetch_request();
            request.get().set_task(task);
            request.get().set_offset(0);
            answers.push(match request.send().promise.await {
                Ok(response) => format!(
                    "GOT {} bytes",
                    response
                        .get()
                        .unwrap()
                        .get_chunk()
                        .unwrap()
                        .get_data()
                        .unwrap()
                        .len()
                ),
                Err(error) => error.to_string(),
            });
        }
        answers
    })
}

/// A process's resident memory in bytes, from /proc.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// A process's CPU time so far (user + system), from /proc.
pub fn cpu_time(pid: u32) -> std::time::Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 (11 and 12 after the name).
    std::time::Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

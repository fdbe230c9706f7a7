//! wrun on a real Slurm (slurmctld + slurmd + munge on this machine, started
//! by scripts/test.sh with deploy/slurm/dev/start-local-slurm.sh): `wrun
//! slurm up/scale/adapt/down`, walltime retirement, scancel, the batch
//! templates and `wrun mpi` under MPICH. The tests take one lock, so the
//! node's 8 Slurm CPUs are never oversubscribed by two tests at once.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value as Json, json};
use wrun_client::{Client, Target, WorkerStatus};
use wrun_tests::{
    SEED_TASKS_WASM, TEST_GUESTS_WASM, read_module, wait_until, workspace_root, wrun, wrun_binary,
    wrun_with_env,
};

const LONG: Duration = Duration::from_secs(90);

static SLURM: Mutex<()> = Mutex::new(());

/// One Slurm test at a time; checks that Slurm answers.
fn slurm() -> MutexGuard<'static, ()> {
    let guard = SLURM.lock().unwrap_or_else(|p| p.into_inner());
    let sinfo = Command::new("sinfo").arg("-h").output();
    assert!(
        sinfo.as_ref().is_ok_and(|o| o.status.success()),
        "these tests need a running Slurm: scripts/test.sh starts one with deploy/slurm/dev/start-local-slurm.sh ({sinfo:?})"
    );
    guard
}

fn partition() -> String {
    std::env::var("WRUN_SLURM_PARTITION").unwrap_or_else(|_| "debug".to_owned())
}

/// A `wrun slurm` cluster in a scratch directory; `down` on drop, and its
/// logs printed if the test failed.
struct SlurmCluster {
    dir: PathBuf,
    file: PathBuf,
}

impl SlurmCluster {
    fn new(test: &str) -> SlurmCluster {
        let dir = std::env::temp_dir().join(format!("wrun-slurm-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("scheduler.json");
        SlurmCluster { dir, file }
    }

    fn file(&self) -> &str {
        self.file.to_str().unwrap()
    }

    /// `wrun slurm up` with small jobs and `extra` flags.
    fn up(&self, extra: &[&str]) -> wrun_tests::Finished {
        let partition = partition();
        let mut args = vec![
            "slurm",
            "up",
            "--scheduler-file",
            self.file(),
            "--partition",
            &partition,
        ];
        // Defaults for what `extra` does not set (clap refuses a flag twice).
        for (flag, value) in [
            ("--start-timeout", "60s"),
            ("--cores", "1"),
            ("--memory", "512MiB"),
        ] {
            if !extra.contains(&flag) {
                args.extend_from_slice(&[flag, value]);
            }
        }
        args.extend_from_slice(extra);
        wrun(&args)
    }

    fn client(&self) -> Client {
        Client::connect(&Target::File(self.file.clone()), LONG).expect("connecting")
    }

    fn down(&self) -> wrun_tests::Finished {
        wrun(&["slurm", "down", "--scheduler-file", self.file()])
    }

    fn dump(&self) {
        for entry in walk(&self.dir) {
            if entry.extension().is_some_and(|e| e == "out" || e == "log") {
                eprintln!("===== {} =====", entry.display());
                eprintln!("{}", std::fs::read_to_string(&entry).unwrap_or_default());
            }
        }
    }
}

impl Drop for SlurmCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        let mut state = self.file.as_os_str().to_owned();
        state.push(".slurm");
        if Path::new(&state).exists() {
            let _ = self.down();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The job ids `up` printed ("submitted N worker job(s): 7 8").
fn job_ids(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .find_map(|l| l.split_once("worker job(s): ").map(|(_, ids)| ids))
        .map(|ids| ids.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Jobs of `ids` that squeue still lists.
fn listed(ids: &[String]) -> Vec<String> {
    ids.iter()
        .filter(|id| {
            Command::new("squeue")
                .args(["-h", "-j", id, "-o", "%i"])
                .output()
                .is_ok_and(|o| !String::from_utf8_lossy(&o.stdout).trim().is_empty())
        })
        .cloned()
        .collect()
}

/// `JobState=` and `ExitCode=` of a job from scontrol (kept for MinJobAge).
fn job_end(id: &str) -> (String, String) {
    let out = Command::new("scontrol")
        .args(["show", "job", id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or("")
            .to_owned()
    };
    (field("JobState="), field("ExitCode="))
}

fn slurm_workers(client: &Client) -> Vec<WorkerStatus> {
    client
        .status()
        .expect("status")
        .workers
        .into_iter()
        .filter(|w| w.slurm_job_id.is_some())
        .collect()
}

/// Processes whose command line mentions `needle` (none should outlive a test).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(entry.path().join("stat"))
            .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')));
        if cmdline.contains(needle) && !zombie {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn up_runs_the_seed_workloads_status_shows_jobs_and_down_leaves_nothing() {
    let _slurm = slurm();
    let cluster = SlurmCluster::new("up");
    let started = Instant::now();
    // Two jobs of 2 cores, each running 2 worker processes of 1 thread.
    let up = cluster.up(&[
        "--workers",
        "2",
        "--cores",
        "2",
        "--processes",
        "2",
        "--memory",
        "1GiB",
        "--walltime",
        "00:10:00",
    ]);
    assert_eq!(up.code, Some(0), "{up:?}");
    assert!(up.stdout.contains("4 worker(s) ready"), "{up:?}");
    eprintln!(
        "wrun slurm up, 2 jobs, to workers ready: {:?}",
        started.elapsed()
    );
    let jobs = job_ids(&up.stdout);
    assert_eq!(jobs.len(), 2, "{up:?}");

    let client = cluster.client();
    let workers = slurm_workers(&client);
    assert_eq!(workers.len(), 4);
    for w in &workers {
        assert_eq!((w.threads, w.memory_bytes), (1, 512 << 20), "{w:?}");
    }
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for w in &workers {
        assert!(jobs.contains(w.slurm_job_id.as_ref().unwrap()));
        // The end time comes from the job: 10 minutes, less what has passed.
        let left = w.end_time_ms.unwrap().saturating_sub(now_ms);
        assert!((540_000..=600_000).contains(&left), "{w:?}");
    }
    let status = wrun(&["status", "--scheduler-file", cluster.file()]);
    assert_eq!(status.code, Some(0), "{status:?}");
    for job in &jobs {
        assert!(
            status.stdout.contains(&format!(" {job} ")),
            "{}",
            status.stdout
        );
    }
    assert!(status.stdout.contains("00:09:"), "{}", status.stdout);

    // The seed graph, darts and the rest, each checked exactly.
    let module = client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    let answers = cluster_seed::run_all(&client, &module).unwrap();
    assert_eq!(answers.len(), 4);
    drop(client);

    let scheduler_pid = serde_json::from_str::<Json>(
        &std::fs::read_to_string(&cluster.file).unwrap(),
    )
    .unwrap()["pid"]
        .as_u64()
        .unwrap();
    let down = cluster.down();
    assert_eq!(down.code, Some(0), "{down:?}");
    assert!(listed(&jobs).is_empty(), "jobs left after down");
    assert!(
        !cluster.file.exists(),
        "the scheduler file stays after down"
    );
    assert!(
        !Path::new(&format!("/proc/{scheduler_pid}")).exists()
            || processes_mentioning(cluster.file()).is_empty(),
        "the scheduler outlived down"
    );
    assert!(
        processes_mentioning(cluster.file()).is_empty(),
        "{:?}",
        processes_mentioning(cluster.file())
    );
}

#[test]
fn the_job_script_has_the_options_asked_for_and_sbatch_accepts_it() {
    let _slurm = slurm();
    let cluster = SlurmCluster::new("script");
    let partition = partition();
    let out = wrun(&[
        "slurm",
        "job-script",
        "--scheduler-file",
        cluster.file(),
        "--cores",
        "4",
        "--processes",
        "2",
        "--memory",
        "2GiB",
        "--walltime",
        "1:30:00",
        "--partition",
        &partition,
        "--account",
        "proj42",
        "--skip-directive=--mem",
        "--extra-directive=--comment=wrun-test",
        "--extra-directive=--mem-per-cpu=256M",
        "--prologue",
        "echo prologue ran",
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let script = &out.stdout;
    let lines: Vec<&str> = script.lines().collect();
    for want in [
        "#SBATCH -A proj42",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH -t 01:30:00",
        "#SBATCH --comment=wrun-test",
        "#SBATCH --mem-per-cpu=256M",
        "echo prologue ran",
    ] {
        assert!(lines.contains(&want), "no {want:?} in\n{script}");
    }
    assert!(lines.contains(&format!("#SBATCH -p {partition}").as_str()));
    // Skipped: the generated --mem line, not the extra one.
    assert!(!script.contains("--mem=2048M"), "{script}");
    assert!(
        script.contains("--threads 2 --memory 1073741824"),
        "{script}"
    );
    // Slurm itself accepts it (validated, not run).
    let path = cluster.dir.join("job.sh");
    std::fs::write(&path, script).unwrap();
    let test = Command::new("sbatch")
        .arg("--test-only")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&test.stderr);
    assert!(
        test.status.success() && said.contains("to start at"),
        "{said}"
    );

    // The same settings from a TOML file, lists included.
    let config = cluster.dir.join("wrun-slurm.toml");
    std::fs::write(
        &config,
        "slurm_cores = 3\nslurm_walltime = \"00:20:00\"\nslurm_extra_directives = [\"--comment=from-toml\", \"--nice=5\"]\nslurm_skip_directives = [\"-J \"]\n",
    )
    .unwrap();
    let out = wrun(&[
        "--config",
        config.to_str().unwrap(),
        "slurm",
        "job-script",
        "--scheduler-file",
        cluster.file(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    for want in [
        "#SBATCH --cpus-per-task=3",
        "#SBATCH -t 00:20:00",
        "#SBATCH --comment=from-toml",
        "#SBATCH --nice=5",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == want),
            "no {want:?} in\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("#SBATCH -J"), "{}", out.stdout);
}

/// Writes `slow_square(i, micros)` calls, one JSON array per line.
fn slow_calls(dir: &Path, count: u64, micros: u64) -> PathBuf {
    let path = dir.join("calls.jsonl");
    let lines: Vec<String> = (0..count).map(|i| format!("[{i}, {micros}]")).collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn check_squares(stdout: &str, count: u64) {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len() as u64, count, "one result per call");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, (i * i).to_string(), "result {i}");
    }
}

#[test]
fn a_worker_whose_walltime_ends_mid_map_retires_first_and_nothing_is_lost() {
    let _slurm = slurm();
    let cluster = SlurmCluster::new("walltime");
    // One worker for the long run, one whose 1-minute job retires 45 s early.
    let long = cluster.up(&["--workers", "1", "--walltime", "00:10:00"]);
    assert_eq!(long.code, Some(0), "{long:?}");
    let short = cluster.up(&[
        "--workers",
        "1",
        "--walltime",
        "00:01:00",
        "--retire-margin",
        "45s",
    ]);
    assert_eq!(short.code, Some(0), "{short:?}");
    let short_job = job_ids(&short.stdout).pop().unwrap();
    let calls = slow_calls(&cluster.dir, 400, 100_000);
    let started = Instant::now();
    let out = wrun(&[
        "submit",
        "--scheduler-file",
        cluster.file(),
        TEST_GUESTS_WASM,
        "slow_square",
        "--args-file",
        calls.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    check_squares(&out.stdout, 400);
    eprintln!(
        "400 x 100 ms across the retirement: {:?}",
        started.elapsed()
    );
    // The short job retired in the middle and ended well before its walltime.
    wait_until("the short job to end", LONG, || {
        listed(std::slice::from_ref(&short_job)).is_empty()
    });
    let (state, exit) = job_end(&short_job);
    assert_eq!((state.as_str(), exit.as_str()), ("COMPLETED", "0:0"));
    let output = std::fs::read_to_string(
        cluster
            .dir
            .join(format!("logs/wrun-worker-{short_job}.out")),
    )
    .unwrap();
    assert!(
        output.contains("retired; its tasks and results were handed over"),
        "{output}"
    );
    // Its results were handed over, not recomputed.
    let status = cluster.client().status().unwrap();
    assert_eq!(status.recomputed, 0, "{status:?}");
    assert_eq!(cluster.down().code, Some(0));
}

#[test]
fn a_scheduler_killed_under_slurm_up_comes_back_on_its_journal_and_loses_nothing() {
    let _slurm = slurm();
    let cluster = SlurmCluster::new("journal");
    let up = cluster.up(&["--workers", "1", "--walltime", "00:10:00"]);
    assert_eq!(up.code, Some(0), "{up:?}");
    let job = job_ids(&up.stdout).pop().unwrap();
    let journal = PathBuf::from(format!("{}.journal", cluster.file()));
    assert!(journal.is_dir(), "no journal beside the scheduler file");
    let calls = slow_calls(&cluster.dir, 300, 1000);
    let detached = wrun(&[
        "submit",
        "--scheduler-file",
        cluster.file(),
        TEST_GUESTS_WASM,
        "slow_square",
        "--args-file",
        calls.to_str().unwrap(),
        "--detach",
        "--job",
        "squares",
    ]);
    assert_eq!(detached.code, Some(0), "{detached:?}");
    wait_until("the whole map", LONG, || {
        cluster.client().status().unwrap().tasks.done == 300
    });
    let pid = |file: &Path| -> u64 {
        serde_json::from_str::<Json>(&std::fs::read_to_string(file).unwrap()).unwrap()["pid"]
            .as_u64()
            .unwrap()
    };
    let first = pid(&cluster.file);
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until("the scheduler to die", LONG, || {
        !Path::new(&format!("/proc/{first}")).exists()
            || std::fs::read_to_string(format!("/proc/{first}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    // `up` again: the scheduler starts on its journal; no new job is needed,
    // the worker job's worker rejoins with what it kept.
    let again = cluster.up(&["--workers", "0"]);
    assert_eq!(again.code, Some(0), "{again:?}");
    assert_ne!(pid(&cluster.file), first);
    let gathered = wrun(&["gather", "--scheduler-file", cluster.file(), "squares"]);
    assert_eq!(gathered.code, Some(0), "{gathered:?}");
    check_squares(&gathered.stdout, 300);
    let status = cluster.client().status().unwrap();
    assert_eq!(status.recomputed, 0, "{status:?}");
    let workers = slurm_workers(&cluster.client());
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0].slurm_job_id.as_deref(), Some(job.as_str()));
    // `down` ends the cluster, and its journal with it.
    assert_eq!(cluster.down().code, Some(0));
    assert!(!journal.exists(), "the journal outlived down");
}

#[test]
fn scancel_of_a_worker_job_mid_map_loses_nothing() {
    let _slurm = slurm();
    let cluster = SlurmCluster::new("scancel");
    let up = cluster.up(&["--workers", "2", "--walltime", "00:10:00"]);
    assert_eq!(up.code, Some(0), "{up:?}");
    let client = cluster.client();
    let module = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let calls = (0..300u64)
        .map(|i| vec![json!(i).into(), json!(20_000).into()])
        .collect();
    let futures = client.map(&module, "slow_square", calls).unwrap();
    // Cancel a job while both workers are busy and hold results.
    let victim = slurm_workers(&client)[0].slurm_job_id.clone().unwrap();
    wait_until("both workers to be running tasks", LONG, || {
        let w = slurm_workers(&client);
        w.len() == 2 && w.iter().all(|w| w.running > 0)
    });
    let status = Command::new("scancel").arg(&victim).status().unwrap();
    assert!(status.success());
    let results = client.gather(&futures).unwrap();
    assert_eq!(results.len(), 300);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(
            result.as_ref().unwrap(),
            &json!((i * i) as u64),
            "result {i}"
        );
    }
    wait_until("the cancelled job to go", LONG, || {
        listed(std::slice::from_ref(&victim)).is_empty()
    });
    let output =
        std::fs::read_to_string(cluster.dir.join(format!("logs/wrun-worker-{victim}.out")))
            .unwrap();
    assert!(
        output.contains("retired; its tasks and results were handed over"),
        "{output}"
    );
    let status = client.status().unwrap();
    assert_eq!(status.recomputed, 0, "{status:?}");
    drop(futures);
    drop(client);
    assert_eq!(cluster.down().code, Some(0));
}

#[test]
fn adapt_grows_from_0_to_2_workers_under_load_and_back_to_0_when_idle() {
    let _slurm = slurm();
    let cluster = SlurmCluster::new("adapt");
    let up = cluster.up(&["--workers", "0", "--walltime", "00:10:00"]);
    assert_eq!(up.code, Some(0), "{up:?}");
    let adapt = wrun(&[
        "slurm",
        "adapt",
        "--scheduler-file",
        cluster.file(),
        "--min",
        "0",
        "--max",
        "2",
        "--interval",
        "300ms",
        "--idle-grace",
        "2s",
    ]);
    assert_eq!(adapt.code, Some(0), "{adapt:?}");
    let client = cluster.client();
    assert!(slurm_workers(&client).is_empty());
    let module = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let calls = (0..60u64)
        .map(|i| vec![json!(i).into(), json!(100_000).into()])
        .collect();
    let futures = client.map(&module, "slow_square", calls).unwrap();
    wait_until("2 workers under load", LONG, || {
        slurm_workers(&client).len() == 2
    });
    let results = client.gather(&futures).unwrap();
    for (i, result) in results.iter().enumerate() {
        assert_eq!(
            result.as_ref().unwrap(),
            &json!((i * i) as u64),
            "result {i}"
        );
    }
    drop(futures);
    wait_until("0 workers when idle", LONG, || {
        slurm_workers(&client).is_empty()
    });
    let state: Json = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.slurm", cluster.file())).unwrap(),
    )
    .unwrap();
    wait_until("the jobs to end", LONG, || {
        let ids: Vec<String> = state["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j.as_str().unwrap().to_owned())
            .collect();
        listed(&ids).is_empty()
    });
    assert_eq!(client.status().unwrap().recomputed, 0);
    drop(client);
    assert_eq!(cluster.down().code, Some(0));
    assert!(processes_mentioning(cluster.file()).is_empty());
}

/// sbatch's a template with `args`, waits for the job to end and returns
/// (state, exit code, output).
fn run_template(dir: &Path, template: &str, args: &[&str]) -> (String, String, String) {
    let template = workspace_root().join("deploy/slurm").join(template);
    let submitted = Instant::now();
    let out = Command::new("sbatch")
        .arg("--parsable")
        .arg("--chdir")
        .arg(dir)
        .arg("-o")
        .arg(dir.join("out-%j.txt"))
        .arg(&template)
        .args(args)
        .env("WRUN", wrun_binary())
        .env("WRUN_CACHE_DIR", dir.join("cache"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    wait_until("the job to end", LONG, || {
        listed(std::slice::from_ref(&id)).is_empty()
    });
    eprintln!("{} ran in {:?}", template.display(), submitted.elapsed());
    let (state, exit) = job_end(&id);
    let output = std::fs::read_to_string(dir.join(format!("out-{id}.txt"))).unwrap_or_default();
    (state, exit, output)
}

/// The job ended well and printed exactly these numbers (one per line).
fn assert_completed_with(state: &str, exit: &str, output: &str, numbers: &[&str]) {
    assert_eq!((state, exit), ("COMPLETED", "0:0"), "{output}");
    let printed: Vec<&str> = output
        .lines()
        .filter(|l| l.parse::<i64>().is_ok())
        .collect();
    assert_eq!(printed, numbers, "{output}");
}

#[test]
fn the_srun_batch_template_runs_scheduler_workers_and_client_in_one_job() {
    let _slurm = slurm();
    let cluster = SlurmCluster::new("template");
    let (state, exit, output) = run_template(
        &cluster.dir,
        "wrun-batch.sbatch",
        &[SEED_TASKS_WASM, "--map", "inc", "1", "2", "3"],
    );
    assert_completed_with(&state, &exit, &output, &["2", "3", "4"]);
    assert_eq!(
        output.matches("the cluster shut down").count(),
        2,
        "{output}"
    );
    // A failing client fails the job with its exit code.
    let (state, exit, output) = run_template(
        &cluster.dir,
        "wrun-batch.sbatch",
        &[SEED_TASKS_WASM, "add", "1", "\"x\""],
    );
    assert_eq!(
        (state.as_str(), exit.as_str()),
        ("FAILED", "2:0"),
        "{output}"
    );
    assert!(output.contains("argument `y` of task `add`"), "{output}");
    assert!(processes_mentioning(cluster.dir.to_str().unwrap()).is_empty());
}

#[test]
fn mpiexec_runs_wrun_mpi_with_mpich_and_under_srun() {
    let _slurm = slurm();
    let cluster = SlurmCluster::new("mpi");
    let file = cluster.dir.join("mpi.json");
    let mpi = |client: &[&str]| {
        let mut command = Command::new("mpiexec.mpich");
        command
            .args(["-n", "4"])
            .arg(wrun_binary())
            .args(["mpi", "--scheduler-file", file.to_str().unwrap(), "--"])
            .arg(wrun_binary())
            .args(client)
            .env("WRUN_CACHE_DIR", cluster.dir.join("cache"));
        let started = Instant::now();
        let out = command
            .output()
            .expect("mpiexec.mpich (apt-get install mpich)");
        (out, started.elapsed())
    };
    let graph = workspace_root().join("examples/graphs/seed-graph.toml");
    let expected = wrun(&["submit", graph.to_str().unwrap()]);
    assert_eq!(expected.code, Some(0), "{expected:?}");
    let (out, took) = mpi(&["submit", graph.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout.trim(), expected.stdout.trim(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.matches("the cluster shut down").count(),
        2,
        "{stderr}"
    );
    eprintln!("mpiexec -n 4 wrun mpi, seed graph: {took:?}");
    // The client's exit code is the job's.
    let (out, _) = mpi(&["submit", SEED_TASKS_WASM, "add", "1", "\"x\""]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(processes_mentioning(file.to_str().unwrap()).is_empty());
    assert!(!file.exists());

    // The same under srun (PMI via --mpi=pmi2), from the template.
    let (state, exit, output) = run_template(
        &cluster.dir,
        "wrun-mpi.sbatch",
        &[SEED_TASKS_WASM, "--map", "inc", "1", "2", "3"],
    );
    assert_completed_with(&state, &exit, &output, &["2", "3", "4"]);

    // Outside a launcher it says what it needs.
    let out = wrun(&["mpi", "--", "true"]);
    assert_eq!(out.code, Some(2));
    assert!(out.stderr.contains("PMI_RANK"), "{out:?}");
}

#[test]
fn bad_slurm_input_gets_clear_errors_and_leaves_nothing_behind() {
    let _slurm = slurm();
    let cluster = SlurmCluster::new("bad");
    // sbatch refuses: Slurm's own message is shown.
    let out = wrun(&[
        "slurm",
        "up",
        "--scheduler-file",
        cluster.file(),
        "--partition",
        "nosuch",
        "--walltime",
        "00:05:00",
    ]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("invalid partition specified: nosuch"),
        "{out:?}"
    );
    assert!(
        !cluster.file.exists(),
        "a scheduler stayed after a refused up"
    );
    assert!(processes_mentioning(cluster.file()).is_empty());
    let out = wrun(&[
        "slurm",
        "up",
        "--scheduler-file",
        cluster.file(),
        "--walltime",
        "00:05:00",
        "--memory",
        "100000GiB",
    ]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("Memory specification can not be satisfied"),
        "{out:?}"
    );

    // A directive sbatch does not know.
    let out = cluster.up(&[
        "--walltime",
        "00:05:00",
        "--extra-directive=--no-such-option=1",
    ]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("sbatch --parsable failed"), "{out:?}");
    assert!(out.stderr.contains("no-such-option"), "{out:?}");

    // No sbatch on PATH.
    let out = wrun_with_env(
        &["slurm", "up", "--scheduler-file", cluster.file()],
        &[("PATH", "/nonexistent")],
    );
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("`sbatch` was not found on PATH"),
        "{out:?}"
    );

    // A walltime that the retirement margin would eat.
    let out = cluster.up(&["--walltime", "00:01:00", "--retire-margin", "2m"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr
            .contains("is not longer than the retirement margin"),
        "{out:?}"
    );
    let out = cluster.up(&["--walltime", "soon"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("is not a walltime"), "{out:?}");

    // A job that stays pending past --start-timeout: cancelled, with Slurm's reason.
    let out = cluster.up(&[
        "--workers",
        "1",
        "--walltime",
        "00:05:00",
        "--extra-directive=--begin=now+1hour",
        "--start-timeout",
        "3s",
    ]);
    assert_eq!(out.code, Some(3), "{out:?}");
    assert!(out.stderr.contains("PENDING (BeginTime)"), "{out:?}");
    assert!(
        listed(&job_ids(&out.stdout)).is_empty(),
        "the pending job was not cancelled"
    );
    assert_eq!(cluster.down().code, Some(0));

    // Commands on a cluster that does not exist.
    let out = wrun(&["slurm", "scale", "2", "--scheduler-file", cluster.file()]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(out.stderr.contains("no wrun slurm cluster"), "{out:?}");
}

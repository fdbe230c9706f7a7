//! A scheduler that keeps a journal, SIGKILLed and restarted on it: the
//! work it accepted comes back whole (detached jobs, a waiting `wrun
//! submit`, the client library), workers rejoin with the results they
//! kept so nothing that survived is recomputed, and a torn or foreign
//! journal is handled as it should be. Real processes on loopback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use wrun_client::{Client, Target};
use wrun_tests::{Procs, TEST_GUESTS_WASM, read_module, wait_until, wrun};

const LONG: Duration = Duration::from_secs(60);
/// Tasks in the maps below.
const TASKS: u64 = 10_000;
/// Each task's busy time: the map takes a few seconds on two workers.
const MICROS: u64 = 300;

/// A scheduler with a journal and two workers (each under its nanny),
/// whose scheduler can be killed and started again.
struct Cluster {
    procs: Procs,
    file: PathBuf,
    journal: PathBuf,
    scheduler: Option<usize>,
    restarts: u32,
}

impl Cluster {
    fn new(test: &str, extra: &[&str]) -> Cluster {
        let procs = Procs::new(test);
        let file = procs.path("scheduler.json");
        let journal = procs.path("journal");
        let mut cluster = Cluster {
            procs,
            file,
            journal,
            scheduler: None,
            restarts: 0,
        };
        cluster.start_scheduler(extra);
        for name in ["worker-a", "worker-b"] {
            let file = cluster.file_arg();
            cluster.procs.start(
                name,
                &["worker", "--scheduler-file", &file, "--threads", "1"],
            );
        }
        wait_until("2 workers", LONG, || cluster.status().workers.len() == 2);
        cluster
    }

    fn file_arg(&self) -> String {
        self.file.to_str().unwrap().to_owned()
    }

    /// Starts a scheduler on the journal and waits until its file names it.
    fn start_scheduler(&mut self, extra: &[&str]) {
        let name = format!("scheduler-{}", self.restarts);
        self.restarts += 1;
        let (file, journal) = (self.file_arg(), self.journal.to_str().unwrap().to_owned());
        let mut args = vec![
            "scheduler",
            "--scheduler-file",
            &file,
            "--journal",
            &journal,
        ];
        args.extend_from_slice(extra);
        let index = self.procs.start(&name, &args);
        let pid = self.procs.procs[index].child.id();
        wait_until("the scheduler's file", LONG, || {
            scheduler_pid(&self.file) == Some(pid)
        });
        self.scheduler = Some(index);
    }

    /// SIGKILLs the scheduler (its file stays behind, naming the dead one).
    fn kill_scheduler(&mut self) {
        let index = self.scheduler.take().expect("a scheduler runs");
        let child = &mut self.procs.procs[index].child;
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn restart(&mut self) {
        self.kill_scheduler();
        self.start_scheduler(&[]);
    }

    /// SIGTERMs the scheduler and waits for it to end: it writes out what
    /// its journal holds before it goes.
    fn stop_scheduler(&mut self) {
        let index = self.scheduler.take().expect("a scheduler runs");
        let child = &mut self.procs.procs[index].child;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        wait_until("the scheduler to end", LONG, || {
            child.try_wait().ok().flatten().is_some()
        });
    }

    fn client(&self) -> Client {
        Client::connect(&Target::File(self.file.clone()), LONG).expect("connecting")
    }

    fn status(&self) -> wrun_client::ClusterStatus {
        self.client().status().expect("status")
    }

    fn log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.procs.procs[index].log).unwrap_or_default()
    }

    fn worker_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.status().workers.iter().map(|w| w.pid).collect();
        pids.sort_unstable();
        pids
    }

    fn args_file(&self, name: &str) -> String {
        let path = self.procs.path(name);
        std::fs::write(
            &path,
            (0..TASKS)
                .map(|i| format!("[{i}, {MICROS}]\n"))
                .collect::<String>(),
        )
        .unwrap();
        path.to_str().unwrap().to_owned()
    }
}

fn scheduler_pid(file: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(file).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["pid"].as_u64().map(|p| p as u32)
}

/// The map's answers, one line each, in order.
fn squares() -> String {
    (0..TASKS).map(|i| format!("{}\n", i * i)).collect()
}

#[test]
fn a_detached_map_survives_the_scheduler_killed_at_each_stage_and_nothing_kept_is_recomputed() {
    let mut cluster = Cluster::new("journal-detached", &[]);
    let pids = cluster.worker_pids();
    let args = cluster.args_file("squares.jsonl");
    let file = cluster.file_arg();
    let submitted = wrun(&[
        "submit",
        "--scheduler-file",
        &file,
        TEST_GUESTS_WASM,
        "slow_square",
        "--args-file",
        &args,
        "--detach",
        "--job",
        "squares",
    ]);
    assert_eq!(submitted.code, Some(0), "{}", submitted.stderr);
    // At once: the tasks were accepted and barely started.
    cluster.restart();
    let status = cluster.status();
    assert_eq!(status.jobs.len(), 1, "{status:?}");
    assert_eq!(status.jobs[0].tasks, TASKS);
    // Mid-run.
    wait_until("a third of the map", LONG, || {
        cluster.status().tasks.done > TASKS / 3
    });
    let done_before = cluster.status().tasks.done;
    cluster.restart();
    // A finish is journaled without waiting for the disk: the last few
    // before the kill may be found again only when their workers rejoin
    // with the results (a run once showed fewer done right after the
    // restart than just before it).
    wait_until("the workers to rejoin", LONG, || {
        cluster.status().workers.len() == 2
    });
    let status = cluster.status();
    assert!(status.tasks.done >= done_before, "{status:?}");
    assert_eq!(status.recomputed, 0, "{status:?}");
    // Everything done, not yet gathered.
    wait_until("the whole map", LONG, || {
        cluster.status().tasks.done == TASKS
    });
    cluster.restart();
    wait_until("the workers to rejoin", LONG, || {
        cluster.status().workers.len() == 2
    });
    let status = cluster.status();
    assert_eq!(status.tasks.done, TASKS, "{status:?}");
    assert_eq!(status.recomputed, 0, "{status:?}");
    // The same workers: they kept their results through three restarts.
    assert_eq!(cluster.worker_pids(), pids);
    let gathered = wrun(&["gather", "--scheduler-file", &file, "squares"]);
    assert_eq!(gathered.code, Some(0), "{}", gathered.stderr);
    assert_eq!(gathered.stdout, squares());
    // A restarted scheduler logs what it found.
    let last = cluster.scheduler.unwrap();
    assert!(
        cluster.log(last).contains("journal replayed"),
        "{}",
        cluster.log(last)
    );
}

#[test]
fn a_waiting_wrun_submit_gets_every_result_in_order_across_scheduler_kills() {
    let mut cluster = Cluster::new("journal-attached", &[]);
    let args = cluster.args_file("squares.jsonl");
    let file = cluster.file_arg();
    let submitter = cluster.procs.start(
        "submitter",
        &[
            "submit",
            "--scheduler-file",
            &file,
            TEST_GUESTS_WASM,
            "slow_square",
            "--args-file",
            &args,
        ],
    );
    // Once the session is open (upload and submission under way), then
    // mid-run.
    let first = cluster.scheduler.unwrap();
    wait_until("the client's session", LONG, || {
        cluster.log(first).contains("client session opened")
    });
    cluster.restart();
    wait_until("a third of the map", LONG, || {
        cluster.status().tasks.done > TASKS / 3
    });
    cluster.restart();
    let child = &mut cluster.procs.procs[submitter].child;
    let mut code = None;
    wait_until("the submitter to finish", LONG, || {
        code = child.try_wait().unwrap();
        code.is_some()
    });
    let output = std::fs::read_to_string(&cluster.procs.procs[submitter].log).unwrap();
    assert!(code.unwrap().success(), "{output}");
    // Its log has stdout (the answers) and stderr (what it noticed).
    assert!(output.contains("resuming the session"), "{output}");
    let results: String = output
        .lines()
        .filter(|l| l.parse::<u64>().is_ok())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(results, squares());
    assert_eq!(cluster.status().recomputed, 0);
}

#[test]
fn the_client_library_gathers_a_map_submitted_before_the_scheduler_died() {
    let mut cluster = Cluster::new("journal-library", &[]);
    let client = cluster.client();
    let module = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let futures = client
        .map(
            &module,
            "slow_square",
            (0..TASKS)
                .map(|i| vec![json!(i).into(), json!(MICROS).into()])
                .collect(),
        )
        .unwrap();
    wait_until("a third of the map", LONG, || {
        cluster.status().tasks.done > TASKS / 3
    });
    cluster.restart();
    let values = client.gather(&futures).unwrap();
    let expected: Vec<_> = (0..TASKS).map(|i| Ok(json!(i * i))).collect();
    assert_eq!(values, expected);
    // The session goes on as before: new work, too.
    let more = client
        .submit(
            &module,
            "slow_square",
            vec![json!(7).into(), json!(1).into()],
        )
        .unwrap();
    assert_eq!(client.gather(&[more]).unwrap(), vec![Ok(json!(49))]);
    assert_eq!(cluster.status().recomputed, 0);
}

#[test]
fn results_lost_with_a_worker_during_the_outage_are_recomputed_and_only_those() {
    let mut cluster = Cluster::new("journal-worker-lost", &["--rejoin-wait", "3s"]);
    let args = cluster.args_file("squares.jsonl");
    let file = cluster.file_arg();
    let submitted = wrun(&[
        "submit",
        "--scheduler-file",
        &file,
        TEST_GUESTS_WASM,
        "slow_square",
        "--args-file",
        &args,
        "--detach",
        "--job",
        "squares",
    ]);
    assert_eq!(submitted.code, Some(0), "{}", submitted.stderr);
    wait_until("the whole map", LONG, || {
        cluster.status().tasks.done == TASKS
    });
    cluster.kill_scheduler();
    // One worker dies while the scheduler is away; its nanny starts a
    // fresh one, which has nothing.
    let worker = cluster
        .procs
        .procs
        .iter()
        .position(|p| p.name == "worker-a")
        .unwrap();
    let nanny = cluster.procs.procs[worker].child.id();
    let child = std::fs::read_to_string(format!("/proc/{nanny}/task/{nanny}/children"))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("the nanny's worker")
        .to_owned();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &child])
            .status()
            .unwrap()
            .success()
    );
    cluster.start_scheduler(&["--rejoin-wait", "3s"]);
    let gathered = wrun(&["gather", "--scheduler-file", &file, "squares"]);
    assert_eq!(gathered.code, Some(0), "{}", gathered.stderr);
    assert_eq!(gathered.stdout, squares());
    let recomputed = cluster.status().recomputed;
    // Roughly half the results were on the dead worker; never more than all.
    assert!(
        recomputed > 0 && recomputed < TASKS,
        "recomputed {recomputed}"
    );
}

#[test]
fn a_torn_journal_replays_to_its_last_good_record_wherever_it_is_cut() {
    let mut cluster = Cluster::new("journal-torn", &[]);
    let file = cluster.file_arg();
    let detach = |job: &str| {
        let done = wrun(&[
            "submit",
            "--scheduler-file",
            &file,
            TEST_GUESTS_WASM,
            "slow_square",
            "--map",
            "[3, 1]",
            "[4, 1]",
            "--detach",
            "--job",
            job,
        ]);
        assert_eq!(done.code, Some(0), "{}", done.stderr);
    };
    detach("first");
    detach("second");
    let newest = |dir: &Path| -> PathBuf {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "wal"))
            .collect();
        files.sort();
        files.pop().expect("a journal file")
    };
    let bytes = std::fs::read(newest(&cluster.journal)).unwrap();
    let length = bytes.len() as u64;
    // Frames after the 8-byte mark: [length u32][crc32][payload]. The
    // first holds the cluster's identity; a cut inside it loses the
    // identity too (a new cluster, whose workers must be restarted), so
    // the cuts fall after it: in the last record, in the middle, and three
    // bytes into the second record's header.
    let identity_end = 16 + u64::from(u32::from_le_bytes(bytes[8..12].try_into().unwrap()));
    for (round, cut) in [length - 1, length / 2, identity_end + 3]
        .into_iter()
        .enumerate()
    {
        cluster.kill_scheduler();
        let journal = newest(&cluster.journal);
        let full = std::fs::metadata(&journal).unwrap().len();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&journal)
            .unwrap();
        f.set_len(cut.min(full - 1)).unwrap();
        drop(f);
        cluster.start_scheduler(&[]);
        let index = cluster.scheduler.unwrap();
        // The replay logs from the scheduler's thread, which may come
        // after the listening line the start waited for.
        wait_until(
            &format!("round {round}: the replay to find the tail torn"),
            LONG,
            || cluster.log(index).contains("is torn"),
        );
        // It serves: a new job runs to its answer.
        let client = cluster.client();
        let module = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
        let f = client
            .submit(
                &module,
                "slow_square",
                vec![json!(5).into(), json!(1).into()],
            )
            .unwrap();
        assert_eq!(client.gather(&[f]).unwrap(), vec![Ok(json!(25))]);
    }
}

#[test]
fn a_file_that_is_not_a_journal_stops_the_scheduler_with_a_clear_error() {
    let procs = Procs::new("journal-foreign");
    let dir = procs.path("journal");
    std::fs::create_dir_all(&dir).unwrap();
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("journal-1.wal"), &random).unwrap();
    let file = procs.path("scheduler.json");
    let run = wrun(&[
        "scheduler",
        "--scheduler-file",
        file.to_str().unwrap(),
        "--journal",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("is not a wrun journal"),
        "{}",
        run.stderr
    );
    assert!(!file.exists(), "nothing listened");
    // What was there is left as it was.
    assert_eq!(std::fs::read(dir.join("journal-1.wal")).unwrap(), random);
    // A plain file where the directory should be.
    let plain = procs.path("plain");
    std::fs::write(&plain, b"x").unwrap();
    let run = wrun(&["scheduler", "--journal", plain.to_str().unwrap()]);
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("is not a directory"), "{}", run.stderr);
}

#[test]
fn the_journal_is_compacted_so_its_size_follows_the_live_state() {
    let mut cluster = Cluster::new("journal-compact", &["--journal-compact-at", "64KiB"]);
    // The compaction flag is given at the first start only: restarts below
    // use the default, so this test restarts last.
    let file = cluster.file_arg();
    let args = cluster.procs.path("small.jsonl");
    std::fs::write(
        &args,
        (0..1000).map(|i| format!("[{i}, 1]\n")).collect::<String>(),
    )
    .unwrap();
    let args = args.to_str().unwrap().to_owned();
    let size = |dir: &Path| -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let module_bytes = std::fs::metadata(TEST_GUESTS_WASM).unwrap().len();
    let mut written = 0;
    let mut largest = 0;
    for round in 0..20 {
        let before = size(&cluster.journal);
        let out = wrun(&[
            "submit",
            "--scheduler-file",
            &file,
            TEST_GUESTS_WASM,
            "slow_square",
            "--args-file",
            &args,
        ]);
        assert_eq!(out.code, Some(0), "round {round}: {}", out.stderr);
        let after = size(&cluster.journal);
        written += after.saturating_sub(before);
        largest = largest.max(after);
    }
    // Twenty maps of 1,000 tasks went through it. A compaction snapshots
    // what is live then (the module, and at most one map in flight), and
    // the next one comes when the tail has grown past twice that: so the
    // journal never holds more than a few times the live state, however
    // long the history.
    let live_at_most = module_bytes + 1000 * 400;
    assert!(
        largest < 4 * live_at_most && written > 2 * largest,
        "{largest} bytes on disk at most, after {written} bytes of growth were seen"
    );
    // `wrun submit` exits once it has every result; its release reaches
    // the scheduler a moment later, and a SIGKILL then would rightly keep
    // the map (a client may come back for it). Wait for the release, and
    // stop the scheduler cleanly so that its journal holds it.
    wait_until("the last map released", LONG, || {
        cluster.status().tasks.total == 0
    });
    cluster.stop_scheduler();
    cluster.start_scheduler(&[]);
    assert_eq!(cluster.status().tasks.total, 0);
    // Nothing is live but the module: the restart's snapshot is about its size.
    let on_disk = size(&cluster.journal);
    assert!(
        on_disk < module_bytes + (64 << 10),
        "{on_disk} bytes on disk with only a {module_bytes}-byte module live"
    );
}

/// What the `measure` guest task answers for `text`.
fn measured(text: &str) -> serde_json::Value {
    let sum = text
        .bytes()
        .fold(0u64, |acc, b| acc.wrapping_mul(31).wrapping_add(b as u64));
    json!([text.len(), sum])
}

#[test]
fn a_64_mib_literal_travels_in_chunks_from_the_shell_and_the_library_and_across_a_restart() {
    let mut cluster = Cluster::new("journal-put-value", &[]);
    let file = cluster.file_arg();
    let text: String = (0..64u32 << 20)
        .map(|i| (b'a' + (i.wrapping_mul(2654435761) >> 27) as u8 % 26) as char)
        .collect();
    let args = cluster.procs.path("big.jsonl");
    std::fs::write(&args, format!("[{}]\n", json!(text))).unwrap();
    let out = wrun(&[
        "submit",
        "--scheduler-file",
        &file,
        TEST_GUESTS_WASM,
        "measure",
        "--args-file",
        args.to_str().unwrap(),
        "--detach",
        "--job",
        "big",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // The job's task names the value; the restart replays both.
    cluster.restart();
    let gathered = wrun(&["gather", "--scheduler-file", &file, "big"]);
    assert_eq!(gathered.code, Some(0), "{}", gathered.stderr);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(gathered.stdout.trim()).unwrap(),
        measured(&text)
    );
    // From the library, the same value again and a new one; the cluster
    // serves small work alongside.
    let client = cluster.client();
    let module = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let other: String = text.chars().rev().collect();
    let futures = client
        .map(
            &module,
            "measure",
            vec![vec![json!(text).into()], vec![json!(other).into()]],
        )
        .unwrap();
    let small = client
        .submit(
            &module,
            "slow_square",
            vec![json!(6).into(), json!(1).into()],
        )
        .unwrap();
    let values = client.gather(&futures).unwrap();
    assert_eq!(values, vec![Ok(measured(&text)), Ok(measured(&other))]);
    assert_eq!(client.gather(&[small]).unwrap(), vec![Ok(json!(36))]);
    assert_eq!(client.status().unwrap().workers.len(), 2);
}

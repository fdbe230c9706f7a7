//! The cluster with real processes on loopback: `wrun local`, a scheduler
//! with separately started workers, nannies, the client library and
//! `wrun submit`. One log per process, printed when a test fails.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use wrun_client::{
    Client, ClientError, Delayed, Module, Target, TaskLimits, TaskOptions, WorkerStatus,
};
use wrun_tests::{
    Procs, SEED_TASKS_WASM, TEST_GUESTS_WASM, read_module, wait_until, wrun, wrun_with_env,
};

const LONG: Duration = Duration::from_secs(60);

fn connect(file: &Path) -> Client {
    Client::connect(&Target::File(file.to_path_buf()), LONG).expect("connecting")
}

fn workers(client: &Client) -> Vec<WorkerStatus> {
    client.status().expect("status").workers
}

fn start_local(procs: &mut Procs, workers: u32, extra: &[&str]) -> std::path::PathBuf {
    let file = procs.path("scheduler.json");
    let workers = workers.to_string();
    let mut args = vec![
        "local",
        "--workers",
        &workers,
        "--threads",
        "1",
        "--scheduler-file",
        file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    procs.start("local", &args);
    file
}

/// Starts `wrun worker` on the scheduler file, with `extra` flags.
fn start_worker(procs: &mut Procs, name: &str, file: &Path, extra: &[&str]) {
    let mut args = vec!["worker", "--scheduler-file", file.to_str().unwrap()];
    args.extend_from_slice(extra);
    procs.start(name, &args);
}

fn check_seed_workloads(client: &Client) {
    let module = client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    let answers = cluster_seed::run_all(client, &module).unwrap();
    assert_eq!(answers.len(), 4);
}

#[test]
fn seed_workloads_through_wrun_local_the_client_library_and_wrun_submit() {
    let mut procs = Procs::new("local-seed");
    let file = start_local(&mut procs, 2, &[]);
    let client = connect(&file);
    wait_until("2 workers", LONG, || workers(&client).len() == 2);
    check_seed_workloads(&client);

    // The same from the shell: darts as a map from an args file, summed here.
    let args_file = procs.path("darts.jsonl");
    let lines: Vec<String> = (0..100).map(|seed| format!("[1000000, {seed}]")).collect();
    std::fs::write(&args_file, lines.join("\n")).unwrap();
    let file_arg = file.to_str().unwrap();
    let out = wrun(&[
        "submit",
        "--scheduler-file",
        file_arg,
        SEED_TASKS_WASM,
        "throw_darts",
        "--args-file",
        args_file.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let (inside, total) = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<(u64, u64)>(l).unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert_eq!(total, 100_000_000);
    assert!((4.0 * inside as f64 / total as f64 - std::f64::consts::PI).abs() < 0.01);
    let out = wrun(&[
        "submit",
        "--scheduler-file",
        file_arg,
        SEED_TASKS_WASM,
        "--map",
        "inc",
        "1",
        "2",
        "3",
    ]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "2\n3\n4\n"),
        "{out:#?}"
    );
    let out = wrun(&["status", "--scheduler-file", file_arg]);
    assert!(out.stdout.starts_with("2 worker(s)"), "{out:#?}");

    // Workers reuse one connection per peer: hundreds of peer fetches
    // (the graphs above, twice more) leave a handful of sockets open.
    check_seed_workloads(&client);
    check_seed_workloads(&client);
    for worker in workers(&client) {
        let pid = worker.pid;
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        assert!(fds < 64, "worker {pid} has {fds} open files");
    }
}

#[test]
fn workers_started_before_the_scheduler_join_and_run_the_seed_workloads() {
    let mut procs = Procs::new("separate");
    let file = procs.path("scheduler.json");
    let file_arg = file.to_str().unwrap().to_owned();
    // The workers come first and wait for the scheduler file.
    procs.start(
        "worker-a",
        &[
            "worker",
            "--scheduler-file",
            &file_arg,
            "--threads",
            "1",
            "--name",
            "a",
        ],
    );
    procs.start(
        "worker-b",
        &[
            "worker",
            "--scheduler-file",
            &file_arg,
            "--threads",
            "1",
            "--name",
            "b",
            "--no-nanny",
        ],
    );
    procs.start("scheduler", &["scheduler", "--scheduler-file", &file_arg]);
    let client = connect(&file);
    wait_until("2 workers", LONG, || workers(&client).len() == 2);
    check_seed_workloads(&client);
}

#[test]
fn submit_with_no_cluster_named_runs_an_embedded_one() {
    let out = wrun(&["submit", SEED_TASKS_WASM, "add", "1", "2"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "3\n"),
        "{out:#?}"
    );
    let out = wrun(&[
        "submit",
        SEED_TASKS_WASM,
        "--map",
        "add",
        "[1, 2]",
        "[3, 4]",
    ]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "3\n7\n"),
        "{out:#?}"
    );
    let out = wrun(&["submit", TEST_GUESTS_WASM, "panic_with", "\"boom\""]);
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stderr
            .contains("task `panic_with` failed (panic): task panicked at src/lib.rs:"),
        "{out:#?}"
    );
    let out = wrun(&["submit", SEED_TASKS_WASM, "add", "1", "\"x\""]);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(
        out.stderr
            .contains("argument `y` of task `add`: expected i64, got string \"x\""),
        "{out:#?}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let out = wrun(&[
        "submit",
        "--scheduler",
        &closed,
        "--connect-timeout",
        "300ms",
        SEED_TASKS_WASM,
        "add",
        "1",
        "2",
    ]);
    assert_eq!(out.code, Some(3), "{out:#?}");
    assert!(
        out.stderr.contains("cannot connect to the scheduler"),
        "{out:#?}"
    );
}

#[test]
fn sigkill_of_a_worker_mid_map_loses_nothing_and_the_nanny_brings_it_back() {
    let mut procs = Procs::new("sigkill");
    let file = start_local(&mut procs, 2, &[]);
    let client = connect(&file);
    wait_until("2 workers", LONG, || workers(&client).len() == 2);
    let module = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let calls = (0..2000u64)
        .map(|i| vec![json!(i).into(), json!(1000).into()])
        .collect();
    let futures = client.map(&module, "slow_square", calls).unwrap();
    let victim = workers(&client)[0].clone();
    wait_until("the victim to be busy", LONG, || {
        workers(&client)
            .iter()
            .any(|w| w.pid == victim.pid && w.running > 0)
    });
    let killed_at = Instant::now();
    nix_kill(victim.pid as i32);
    // The nanny restarts it: a new worker process registers.
    wait_until(
        "the nanny to bring the worker back",
        Duration::from_secs(10),
        || {
            let now = workers(&client);
            now.len() == 2 && now.iter().all(|w| w.pid != victim.pid)
        },
    );
    let back_after = killed_at.elapsed();
    let results = client.gather(&futures).unwrap();
    assert_eq!(results.len(), 2000);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(
            result.as_ref().unwrap(),
            &json!((i * i) as u64),
            "result {i}"
        );
    }
    eprintln!("restart to ready: {back_after:?} after SIGKILL");
}

fn nix_kill(pid: i32) {
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_poison_task_is_failed_as_suspicious_while_other_work_completes() {
    let mut procs = Procs::new("poison");
    // Nannies kill a worker above 150 MiB; the poison task takes 300 MiB.
    let file = start_local(&mut procs, 2, &["--memory", "150MiB"]);
    let mut client = connect(&file);
    wait_until("2 workers", LONG, || workers(&client).len() == 2);
    client.set_options(TaskOptions {
        limits: TaskLimits {
            memory_bytes: 512 << 20,
            ..TaskLimits::DEFAULT
        },
        ..TaskOptions::default()
    });
    let module = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let poison = client
        .submit(&module, "hog", vec![json!(300).into()])
        .unwrap();
    let calls = (0..200u64)
        .map(|i| vec![json!(i).into(), json!(200).into()])
        .collect();
    let others = client.map(&module, "slow_square", calls).unwrap();
    let failure = client.wait(&[poison]).unwrap().remove(0).unwrap_err();
    assert_eq!(failure.kind, "suspicious", "{failure:?}");
    assert!(
        failure
            .message
            .contains("each of the 3 times a worker died"),
        "{failure:?}"
    );
    for (i, result) in client.gather(&others).unwrap().iter().enumerate() {
        assert_eq!(result.as_ref().unwrap(), &json!(i * i));
    }
}

#[test]
fn a_client_that_disconnects_mid_job_has_its_work_released() {
    let mut procs = Procs::new("disconnect");
    let file = start_local(&mut procs, 2, &[]);
    let client = connect(&file);
    wait_until("2 workers", LONG, || workers(&client).len() == 2);
    let file_arg = file.to_str().unwrap().to_owned();
    let args_file = procs.path("slow.jsonl");
    std::fs::write(
        &args_file,
        (0..5000)
            .map(|i| format!("[{i}, 2000]\n"))
            .collect::<String>(),
    )
    .unwrap();
    let submitter = procs.start(
        "submitter",
        &[
            "submit",
            "--scheduler-file",
            &file_arg,
            TEST_GUESTS_WASM,
            "slow_square",
            "--args-file",
            args_file.to_str().unwrap(),
        ],
    );
    wait_until("the job to be queued", LONG, || {
        client.status().unwrap().tasks.total > 1000
    });
    procs.procs[submitter].child.kill().unwrap();
    wait_until("the job to be released", LONG, || {
        client.status().unwrap().tasks.total == 0
    });
    // And the cluster keeps serving others.
    let module = client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    let sum = client
        .submit(&module, "add", vec![json!(40).into(), json!(2).into()])
        .unwrap();
    assert_eq!(
        client.gather(&[sum]).unwrap()[0].as_ref().unwrap(),
        &json!(42)
    );
}

fn read_scheduler_file(path: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Sends raw bytes and checks that the scheduler closes the connection.
fn raw_connection_is_closed(address: &str, bytes: &[u8], close_after_write: bool) {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    if close_after_write {
        stream.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut buffer = [0u8; 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(_) => continue,
        }
    }
}

#[test]
fn bad_input_gets_clear_errors_and_the_cluster_keeps_serving() {
    let mut procs = Procs::new("bad-input");
    let file = start_local(&mut procs, 1, &[]);
    let client = connect(&file);
    wait_until("1 worker", LONG, || workers(&client).len() == 1);
    let address = read_scheduler_file(&file)["address"]
        .as_str()
        .unwrap()
        .to_owned();

    // Not Cap'n Proto at all; a frame claiming 100 M words; a truncated frame.
    raw_connection_is_closed(&address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", false);
    let mut oversized = 0u32.to_le_bytes().to_vec();
    oversized.extend_from_slice(&100_000_000u32.to_le_bytes());
    raw_connection_is_closed(&address, &oversized, false);
    let mut truncated = 0u32.to_le_bytes().to_vec();
    truncated.extend_from_slice(&100u32.to_le_bytes());
    truncated.extend_from_slice(&[0u8; 24]);
    raw_connection_is_closed(&address, &truncated, true);

    let seed = client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    // A module the cluster never saw.
    let unknown = Module {
        digest: wrun_abi::ModuleDigest([7; 32]),
        tasks: seed.tasks.clone(),
    };
    let error = client
        .submit(&unknown, "inc", vec![json!(1).into()])
        .unwrap_err();
    assert!(
        error.to_string().contains("unknown module digest 0707"),
        "{error}"
    );
    // Wrong argument types: refused by the client library before sending...
    let error = client
        .submit(&seed, "add", vec![json!(1).into(), json!("x").into()])
        .unwrap_err();
    assert!(matches!(error, ClientError::Arguments(_)), "{error}");
    // ...and by the scheduler when a client lies about the signature.
    let mut lying = seed.tasks.as_ref().clone();
    let add = lying.iter_mut().find(|t| t.name == "add").unwrap();
    add.params[1].ty = wrun_abi::Type::String;
    let lying = Module {
        digest: seed.digest,
        tasks: std::sync::Arc::new(lying),
    };
    let error = client
        .submit(&lying, "add", vec![json!(1).into(), json!("x").into()])
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("argument `y` of task `add`: expected i64, got string \"x\""),
        "{error}"
    );
    // A worker with the wrong cluster secret is refused with a clear message.
    let out = wrun_with_env(
        &[
            "worker",
            "--scheduler",
            &address,
            "--no-nanny",
            "--connect-timeout",
            "5s",
        ],
        &[("WRUN_SECRET", "wrong")],
    );
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(
        out.stderr.contains("the scheduler refused this worker")
            && out.stderr.contains("wrong cluster secret"),
        "{out:#?}"
    );

    // Many tasks whose literals add up past a message's limit are split into
    // several messages; a literal too big to pass inline is put in chunks.
    let list = json!(vec![1_000_000i64; 1000]);
    let calls = (0..3000).map(|_| vec![list.clone().into()]).collect();
    let sums = client.map(&seed, "do_analysis", calls).unwrap();
    assert!(
        client
            .gather(&sums)
            .unwrap()
            .iter()
            .all(|r| r.as_ref().unwrap() == &json!(1_000_000_000i64))
    );
    let huge = json!(vec![1_000_000i64; 2_000_000]);
    let sum = client
        .submit(&seed, "do_analysis", vec![huge.into()])
        .unwrap();
    assert_eq!(
        client.gather(&[sum]).unwrap()[0].as_ref().unwrap(),
        &json!(2_000_000_000_000i64)
    );

    // After all of that, the cluster still serves.
    let z = client.submit(&seed, "inc", vec![json!(41).into()]).unwrap();
    assert_eq!(
        client.gather(&[z]).unwrap()[0].as_ref().unwrap(),
        &json!(42)
    );
    assert_eq!(workers(&client).len(), 1);
}

#[test]
fn a_task_graph_file_runs_and_bad_graphs_are_rejected_before_anything_runs() {
    let graph = wrun_tests::workspace_root().join("examples/graphs/seed-graph.toml");
    let out = wrun(&["submit", graph.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(
        out.stdout,
        "{\"z0\":1}\n{\"z1\":3}\n{\"z2\":5}\n{\"total\":9}\n"
    );

    let dir = std::env::temp_dir().join(format!("wrun-graphs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, format!("module = {:?}\n{body}", SEED_TASKS_WASM)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let cycle = write(
        "cycle.toml",
        "outputs = [\"a\"]\n[tasks.a]\ntask = \"inc\"\nargs = [{ ref = \"c\" }]\n[tasks.b]\ntask = \"inc\"\nargs = [{ ref = \"a\" }]\n[tasks.c]\ntask = \"inc\"\nargs = [{ ref = \"b\" }]\n",
    );
    let out = wrun(&["submit", &cycle]);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(
        out.stderr.contains("has a cycle: a -> c -> b -> a"),
        "{out:#?}"
    );
    let broken = write(
        "broken.toml",
        "outputs = [\"a\", \"nope\"]\n[tasks.a]\ntask = \"multiply\"\nargs = [1]\n[tasks.b]\ntask = \"inc\"\nargs = [{ ref = \"ghost\" }]\n[tasks.c]\ntask = \"add\"\nargs = [1, \"x\"]\n",
    );
    let out = wrun(&["submit", &broken]);
    assert_eq!(out.code, Some(2), "{out:#?}");
    for problem in [
        "task `a`: unknown task `multiply`",
        "task `b` refers to `ghost`, which is not in the graph",
        "task `c`: argument `y`: expected i64, got string \"x\"",
        "output `nope` is not a task in the graph",
    ] {
        assert!(
            out.stderr.contains(problem),
            "missing {problem:?}: {out:#?}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_silent_worker_is_removed_after_missed_heartbeats_and_its_tasks_run_elsewhere() {
    let mut procs = Procs::new("heartbeat");
    let file = procs.path("scheduler.json");
    let file_arg = file.to_str().unwrap().to_owned();
    procs.start("scheduler", &["scheduler", "--scheduler-file", &file_arg]);
    start_worker(
        &mut procs,
        "worker-a",
        &file,
        &["--name", "a", "--no-nanny"],
    );
    start_worker(
        &mut procs,
        "worker-b",
        &file,
        &["--name", "b", "--no-nanny"],
    );
    let client = connect(&file);
    wait_until("2 workers", LONG, || workers(&client).len() == 2);
    let module = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let calls = (0..400u64)
        .map(|i| vec![json!(i).into(), json!(2000).into()])
        .collect();
    let futures = client.map(&module, "slow_square", calls).unwrap();
    let victim = workers(&client)
        .into_iter()
        .find(|w| w.name == "a")
        .unwrap();
    wait_until("worker a to be busy", LONG, || {
        workers(&client)
            .iter()
            .any(|w| w.name == "a" && w.running > 0)
    });
    let pid = victim.pid.to_string();
    // Stopped, not dead: the connection stays open, only heartbeats tell.
    assert!(
        std::process::Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let stopped_at = Instant::now();
    wait_until("worker a to be removed", Duration::from_secs(10), || {
        workers(&client).len() == 1
    });
    let removed_after = stopped_at.elapsed();
    assert!(
        removed_after >= Duration::from_secs(2),
        "removed after only {removed_after:?}"
    );
    let results = client.gather(&futures).unwrap();
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.as_ref().unwrap(), &json!(i * i), "result {i}");
    }
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid])
        .status();
    eprintln!("silent worker removed {removed_after:?} after SIGSTOP");
}

#[test]
fn a_stall_of_the_scheduler_itself_removes_no_healthy_worker() {
    let mut procs = Procs::new("scheduler-stall");
    let file = procs.path("scheduler.json");
    let file_arg = file.to_str().unwrap().to_owned();
    let scheduler = procs.start("scheduler", &["scheduler", "--scheduler-file", &file_arg]);
    for name in ["a", "b"] {
        procs.start(
            &format!("worker-{name}"),
            &[
                "worker",
                "--scheduler-file",
                &file_arg,
                "--name",
                name,
                "--no-nanny",
            ],
        );
    }
    let client = connect(&file);
    wait_until("2 workers", LONG, || workers(&client).len() == 2);
    let before: Vec<u64> = workers(&client).into_iter().map(|w| w.id).collect();
    let pid = procs.procs[scheduler].child.id().to_string();
    let signal = |name: &str| {
        assert!(
            std::process::Command::new("kill")
                .args([name, &pid])
                .status()
                .unwrap()
                .success()
        )
    };
    // The scheduler's own loop does not run for longer than the heartbeat
    // time-out (3 s), as under a heavy load on the machine; the workers
    // keep sending heartbeats, which wait unread. The length of the stall
    // is the fault itself, so it is a fixed time.
    signal("-STOP");
    std::thread::sleep(Duration::from_millis(4500));
    signal("-CONT");
    let module = client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    let futures = client
        .map(
            &module,
            "inc",
            (0..200).map(|i| vec![json!(i).into()]).collect(),
        )
        .unwrap();
    let results = client.gather(&futures).unwrap();
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.as_ref().unwrap(), &json!(i + 1), "result {i}");
    }
    let after: Vec<u64> = workers(&client).into_iter().map(|w| w.id).collect();
    assert_eq!(before, after, "the same workers, none removed and rejoined");
    let log = std::fs::read_to_string(&procs.procs[scheduler].log).unwrap();
    assert!(!log.contains("missed its heartbeats"), "{log}");
    assert!(log.contains("the scheduler's loop was stalled"), "{log}");
}

#[test]
fn detached_jobs_can_be_gathered_inspected_and_cancelled_from_other_processes() {
    let mut procs = Procs::new("detach");
    let file = start_local(&mut procs, 2, &[]);
    let client = connect(&file);
    wait_until("2 workers", LONG, || workers(&client).len() == 2);
    let f = file.to_str().unwrap();

    let out = wrun(&[
        "submit",
        "--scheduler-file",
        f,
        SEED_TASKS_WASM,
        "--map",
        "inc",
        "1",
        "2",
        "3",
        "--detach",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let job = out.stdout.trim().to_owned();
    assert!(job.starts_with("job-"), "{out:#?}");
    let status = wrun(&["status", "--scheduler-file", f]);
    assert!(
        status
            .stdout
            .contains(&format!("detached jobs: {job} (3 tasks)")),
        "{status:#?}"
    );
    let gathered = wrun(&["gather", &job, "--scheduler-file", f]);
    assert_eq!(
        (gathered.code, gathered.stdout.as_str()),
        (Some(0), "2\n3\n4\n"),
        "{gathered:#?}"
    );
    // Gathering a detached job releases it: nothing is left in any state.
    let status = wrun(&["status", "--scheduler-file", f]);
    assert!(
        status
            .stdout
            .contains("tasks: 0 waiting, 0 queued, 0 on workers (0 running), 0 done, 0 failed"),
        "{status:#?}"
    );

    let out = wrun(&[
        "submit",
        "--scheduler-file",
        f,
        TEST_GUESTS_WASM,
        "--map",
        "chatty",
        "\"a\"",
        "\"b\"",
        "--detach",
        "--job",
        "talk",
    ]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "talk\n"),
        "{out:#?}"
    );
    let logs = wrun(&["logs", "talk:1", "--scheduler-file", f]);
    assert_eq!(
        (logs.code, logs.stdout.as_str()),
        (Some(0), "[stdout] out: b\n[stderr] err: b\n"),
        "{logs:#?}"
    );
    let logs = wrun(&["logs", "talk", "--scheduler-file", f]);
    assert!(
        logs.stdout.contains("== talk:0\n[stdout] out: a\n"),
        "{logs:#?}"
    );

    // A graph file detaches too (its outputs are the job, in file order).
    let graph = wrun_tests::workspace_root().join("examples/graphs/seed-graph.toml");
    let out = wrun(&[
        "submit",
        "--detach",
        "--job",
        "graph",
        "--scheduler-file",
        f,
        graph.to_str().unwrap(),
    ]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "graph\n"),
        "{out:#?}"
    );
    let gathered = wrun(&["gather", "graph", "--scheduler-file", f]);
    assert_eq!(
        (gathered.code, gathered.stdout.as_str()),
        (Some(0), "1\n3\n5\n9\n"),
        "{gathered:#?}"
    );
    // Tasks no output needs are culled before submission, as Dask does:
    // of 50 tasks with 2 outputs, the cluster sees 2.
    let cull = procs.path("cull.toml");
    let mut text = format!("module = {SEED_TASKS_WASM:?}\noutputs = [\"t0\", \"t1\"]\n");
    for i in 0..50 {
        text.push_str(&format!("[tasks.t{i}]\ntask = \"spin\"\nargs = [200000]\n"));
    }
    std::fs::write(&cull, text).unwrap();
    let before = client.status().unwrap().tasks.total;
    let out = wrun(&[
        "submit",
        "--detach",
        "--scheduler-file",
        f,
        cull.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let culled = out.stdout.trim().to_owned();
    assert_eq!(client.status().unwrap().tasks.total, before + 2);
    let gathered = wrun(&["gather", &culled, "--scheduler-file", f]);
    assert_eq!(gathered.stdout, "200000\n200000\n", "{gathered:#?}");

    let out = wrun(&[
        "submit",
        "--scheduler-file",
        f,
        TEST_GUESTS_WASM,
        "spin_forever",
        "--detach",
        "--job",
        "forever",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let cancelled = wrun(&["cancel", "forever", "--scheduler-file", f]);
    assert_eq!(
        (cancelled.code, cancelled.stdout.as_str()),
        (Some(0), "cancelled 1 task(s) of forever\n"),
        "{cancelled:#?}"
    );
    let gone = wrun(&["gather", "forever", "--scheduler-file", f]);
    assert_eq!(gone.code, Some(2), "{gone:#?}");
    assert!(gone.stderr.contains("no job `forever`"), "{gone:#?}");
    let embedded = wrun(&["submit", SEED_TASKS_WASM, "add", "1", "2", "--detach"]);
    assert_eq!(embedded.code, Some(2), "{embedded:#?}");
}

#[test]
fn the_queue_depth_per_thread_is_a_scheduler_flag() {
    let mut procs = Procs::new("queue-depth");
    let file = start_local(&mut procs, 2, &["--queue-per-slot", "2"]);
    let client = connect(&file);
    wait_until("2 workers", LONG, || workers(&client).len() == 2);
    let module = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let calls = (0..40u64)
        .map(|i| vec![json!(i).into(), json!(20_000).into()])
        .collect();
    let futures = client.map(&module, "slow_square", calls).unwrap();
    wait_until("tasks on both workers", LONG, || {
        workers(&client).iter().all(|w| w.assigned > 0)
    });
    // Never more than 2 per thread on a worker; the rest wait in the
    // scheduler, and the counts by state add up.
    for _ in 0..20 {
        let status = client.status().unwrap();
        for w in &status.workers {
            assert!(w.assigned <= 2, "{status:?}");
        }
        let by = &status.tasks;
        let sum: u64 = by.waiting + by.queued + by.on_workers + by.done + by.failed;
        assert_eq!(sum, 40, "{status:?}");
        assert!(by.on_workers <= 4, "{status:?}");
    }
    let results = client.gather(&futures).unwrap();
    assert_eq!(results.len(), 40);
    let by = client.status().unwrap().tasks;
    assert_eq!((by.done, by.queued), (40, 0));
}

#[test]
fn a_map_shows_a_progress_bar_on_a_terminal_and_none_otherwise() {
    // `script` (util-linux) runs the command on a pseudo-terminal.
    let command = format!(
        "{} submit {SEED_TASKS_WASM} --map inc 1 2 3 4 5",
        wrun_tests::wrun_binary().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env(
            "WRUN_CACHE_DIR",
            std::env::temp_dir().join("wrun-test-cache-tty"),
        )
        .output()
        .expect("script (util-linux)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("[########################################] 5/5"),
        "{text:?}"
    );
    assert!(text.contains("0/5") || text.contains("/5\r"), "{text:?}");
    // Piped: results only, no bar.
    let out = wrun(&[
        "submit",
        SEED_TASKS_WASM,
        "--map",
        "inc",
        "1",
        "2",
        "3",
        "4",
        "5",
    ]);
    assert_eq!(out.stdout, "2\n3\n4\n5\n6\n");
    assert!(!out.stderr.contains("5/5"), "{out:?}");
}

#[test]
fn cancelling_a_job_stops_its_running_task_and_frees_the_worker() {
    let mut procs = Procs::new("cancel-running");
    let file = start_local(&mut procs, 1, &[]);
    let client = connect(&file);
    wait_until("1 worker", LONG, || workers(&client).len() == 1);
    let pid = workers(&client)[0].pid;
    let f = file.to_str().unwrap();
    let out = wrun(&[
        "submit",
        "--scheduler-file",
        f,
        "--timeout",
        "10min",
        TEST_GUESTS_WASM,
        "spin_forever",
        "--detach",
        "--job",
        "forever",
    ]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    wait_until("the task to run", LONG, || workers(&client)[0].running == 1);
    let cancelled_at = Instant::now();
    let out = wrun(&["cancel", "forever", "--scheduler-file", f]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    // The only thread is free again at once, not after the 10 minutes.
    let out = wrun(&[
        "submit",
        "--scheduler-file",
        f,
        SEED_TASKS_WASM,
        "add",
        "1",
        "2",
    ]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "3\n"),
        "{out:#?}"
    );
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(10),
        "the worker was busy for {:?} after the cancel",
        cancelled_at.elapsed()
    );
    // Stopped inside the sandbox: the same worker process goes on.
    assert_eq!(workers(&client)[0].pid, pid);
}

/// The bytes the seed guest's `produce(bytes, seed)` makes.
fn produced(bytes: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(bytes + 8);
    while data.len() < bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(bytes);
    data
}

#[test]
fn a_worker_spills_results_past_its_memory_and_every_one_comes_back_intact() {
    let mut procs = Procs::new("spill");
    let file = procs.path("scheduler.json");
    let file_arg = file.to_str().unwrap().to_owned();
    let spill = procs.path("spill");
    let spill_arg = spill.to_str().unwrap().to_owned();
    procs.start("scheduler", &["scheduler", "--scheduler-file", &file_arg]);
    // Under its nanny, which kills it if its RSS passes 256 MiB.
    procs.start(
        "worker",
        &[
            "worker",
            "--scheduler-file",
            &file_arg,
            "--memory",
            "256MiB",
            "--spill-dir",
            &spill_arg,
            "--spill-limit",
            "2GiB",
        ],
    );
    let client = connect(&file);
    wait_until("the worker", LONG, || workers(&client).len() == 1);
    let worker = workers(&client)[0].id;
    let module = client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    // 1 GiB of results, four times the worker's memory.
    const BLOB: usize = 16 << 20;
    let futures = client
        .map(
            &module,
            "produce",
            (0..64u64)
                .map(|seed| vec![json!(BLOB).into(), json!(seed).into()])
                .collect(),
        )
        .unwrap();
    for outcome in client.wait(&futures).unwrap() {
        outcome.unwrap();
    }
    wait_until("the spilled bytes in status", LONG, || {
        let w = &workers(&client)[0];
        w.held_bytes >= 64 * BLOB as u64 && w.spilled_bytes >= 600 << 20
    });
    let spill_dir_of_worker = std::fs::read_dir(&spill).unwrap().count();
    assert_eq!(
        spill_dir_of_worker, 1,
        "one spill directory for the one worker"
    );
    for (seed, future) in futures.iter().enumerate() {
        let raw = client.gather_raw(std::slice::from_ref(future)).unwrap();
        let raw = raw.into_iter().next().unwrap().unwrap();
        // MessagePack bin 32: 0xc6, the length, the bytes.
        assert_eq!(raw[0], 0xc6, "result {seed}");
        assert!(
            raw[5..] == produced(BLOB, seed as u64)[..],
            "result {seed} differs"
        );
    }
    let status = client.status().unwrap();
    assert_eq!(status.workers.len(), 1, "{status:?}");
    assert_eq!(status.workers[0].id, worker, "never restarted: {status:?}");
    assert_eq!(status.recomputed, 0, "{status:?}");
    // Tasks that read spilled results get them back from disk, each when it
    // runs. Keep the 16 oldest (spilled first) and release the rest, so
    // that the worker's memory has room for two 16 MiB inputs copied into
    // a guest (about 135 MiB at its peak).
    let mut futures = futures;
    let oldest: Vec<_> = futures.drain(..16).collect();
    drop(futures);
    wait_until("only spilled results left", LONG, || {
        let w = &workers(&client)[0];
        w.held_bytes == w.spilled_bytes && w.held_bytes > 0
    });
    let sums = client
        .map(
            &module,
            "consume",
            oldest
                .chunks(2)
                .map(|pair| vec![(&pair[0]).into(), (&pair[1]).into()])
                .collect(),
        )
        .unwrap();
    for sum in client.gather(&sums).unwrap() {
        assert_eq!(sum.unwrap(), json!(2 * BLOB));
    }
    assert_eq!(workers(&client)[0].id, worker, "never restarted");
    let futures = oldest;
    // Releasing the results removes their files; the worker's directory
    // goes when it leaves.
    drop(futures);
    wait_until("the spill files freed", LONG, || {
        workers(&client)[0].spilled_bytes == 0
    });
    // A worker killed outright cannot clean up: its nanny removes its
    // directory, and the worker it starts again makes a new one.
    let spill_dirs = || -> Vec<String> {
        std::fs::read_dir(&spill)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let dirs = spill_dirs();
    let killed = dirs[0].split('-').nth(2).unwrap().to_owned();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &killed])
            .status()
            .unwrap()
            .success()
    );
    wait_until("the restarted worker's own spill directory", LONG, || {
        let dirs = spill_dirs();
        dirs.len() == 1 && !dirs[0].starts_with(&format!("wrun-spill-{killed}-"))
    });
    let out = wrun(&["shutdown", "--scheduler-file", &file_arg]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    wait_until("the spill directory removed", LONG, || {
        std::fs::read_dir(&spill).unwrap().count() == 0
    });
}

#[test]
fn a_small_result_reaches_a_dependent_on_another_worker_inline_and_a_large_one_from_its_peer() {
    let mut procs = Procs::new("small-results");
    // Without staging every dependent waits in the scheduler, which passes
    // small inputs on itself (with staging, the next test, it reads them
    // from the peer making them).
    let file = start_local(&mut procs, 2, &["--no-staging"]);
    let mut client = connect(&file);
    wait_until("2 workers", LONG, || workers(&client).len() == 2);
    let module = client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    client.set_options(TaskOptions {
        limits: TaskLimits {
            result_bytes: 1 << 20,
            ..TaskLimits::DEFAULT
        },
        ..TaskOptions::default()
    });
    let call =
        |task: &str, args: Vec<wrun_client::Argument>| client.submit(&module, task, args).unwrap();
    // Two roots that run at the same time go to the two idle workers (one
    // thread each), so the task that needs both reads one of them from the
    // other worker: a 1-byte result, passed on by the scheduler.
    let spin = json!(200_000);
    let a = call(
        "stencil",
        vec![
            spin.clone().into(),
            json!(1).into(),
            json!(0).into(),
            json!(0).into(),
        ],
    );
    let b = call(
        "stencil",
        vec![
            spin.into(),
            json!(2).into(),
            json!(0).into(),
            json!(0).into(),
        ],
    );
    let small = call(
        "stencil",
        vec![json!(0).into(), (&a).into(), (&b).into(), json!(0).into()],
    );
    let roots = [a.key(), b.key()];
    // Two 100 kB results (past SMALL_RESULT_BYTES): fetched from the peer.
    let c = call("produce", vec![json!(100_000).into(), json!(1).into()]);
    let d = call("produce", vec![json!(100_000).into(), json!(2).into()]);
    let large = call("consume", vec![(&c).into(), (&d).into()]);
    let ends = client.gather(&[small.clone(), large.clone()]).unwrap();
    assert_eq!(
        ends.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
        [json!(4), json!(200_000)]
    );
    // A 1 kB result in one graph with its dependent: shared on request.
    let mut graph = client.graph();
    let e = graph.call(
        &module,
        "produce",
        vec![json!(1000).into(), json!(3).into()],
    );
    let f = graph.call(
        &module,
        "produce",
        vec![json!(1000).into(), json!(4).into()],
    );
    let medium = graph.call(&module, "consume", vec![e.into(), f.into()]);
    let medium = graph.submit(&[medium]).unwrap().remove(0);
    assert_eq!(
        client.gather(std::slice::from_ref(&medium)).unwrap()[0]
            .as_ref()
            .unwrap(),
        &json!(2000)
    );
    let job = client
        .detach(
            vec![a, b, small.clone(), c, d, large.clone(), medium.clone()],
            "inline",
        )
        .unwrap();
    let stream = client.task_stream(&job).unwrap();
    let run = |key: wrun_client::TaskKey| {
        stream
            .records
            .iter()
            .find(|r| r.task == key.0)
            .unwrap_or_else(|| panic!("no run of {key:?} in {stream:#?}"))
            .clone()
    };
    assert_ne!(
        run(roots[0]).worker,
        run(roots[1]).worker,
        "the roots ran side by side: {stream:#?}"
    );
    assert_eq!(run(small.key()).transfer, None, "{stream:#?}");
    assert_eq!(run(medium.key()).transfer, None, "{stream:#?}");
    let fetched = run(large.key())
        .transfer
        .expect("one input came from the peer");
    assert!((100_000..100_016).contains(&fetched.bytes), "{fetched:?}");
}

#[test]
fn a_map_larger_than_a_chunk_comes_back_whole_and_in_order_from_the_shell() {
    // `wrun submit` sends and gathers 50,000 calls at a time; 120,001 lines
    // (and a blank one, skipped) cross two chunk boundaries.
    let mut procs = Procs::new("big-map");
    let file = start_local(&mut procs, 2, &[]);
    let args = procs.path("args.jsonl");
    let text: String = (0..120_001)
        .map(|i| match i {
            60_000 => format!("\n[{i}]\n"),
            _ => format!("[{i}]\n"),
        })
        .collect();
    std::fs::write(&args, text).unwrap();
    let out = wrun(&[
        "submit",
        "--scheduler-file",
        file.to_str().unwrap(),
        SEED_TASKS_WASM,
        "identity",
        "--args-file",
        args.to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 120_001);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, i.to_string(), "result {i}");
    }
    let client = connect(&file);
    wait_until("every task released", LONG, || {
        client.status().unwrap().tasks.total == 0
    });
}

#[test]
fn a_chain_is_staged_on_the_worker_that_runs_its_head_and_survives_that_worker_dying() {
    let mut procs = Procs::new("staging");
    // Staging is on by default.
    let file = start_local(&mut procs, 1, &[]);
    let client = connect(&file);
    wait_until("the worker", LONG, || workers(&client).len() == 1);
    let module = client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    // A 1-second head, then 20 steps that each need the one before.
    let mut graph = client.graph();
    let stencil = |graph: &mut wrun_client::Graph<'_>, spin: u64, input: Option<Delayed>| {
        let input = input.map_or_else(|| json!(0).into(), Into::into);
        graph.call(
            &module,
            "stencil",
            vec![json!(spin).into(), input, json!(0).into(), json!(0).into()],
        )
    };
    let mut last = stencil(&mut graph, 1_000_000, None);
    for _ in 0..20 {
        last = stencil(&mut graph, 0, Some(last));
    }
    let out = graph.submit(&[last]).unwrap();
    // While the head runs, all 21 are on the worker: the 20 wait there
    // for their inputs instead of in the scheduler.
    wait_until("the head running", LONG, || {
        client.status().unwrap().tasks.running == 1
    });
    let tasks = client.status().unwrap().tasks;
    assert_eq!((tasks.on_workers, tasks.waiting), (21, 0), "{tasks:?}");
    // The worker dies with the chain staged on it: the head goes back to
    // the queue, the rest to waiting, and the restarted worker runs it all.
    let victim = workers(&client)[0].pid;
    nix_kill(victim as i32);
    wait_until("the nanny to bring the worker back", LONG, || {
        let now = workers(&client);
        now.len() == 1 && now[0].pid != victim
    });
    assert_eq!(
        client.gather(&out).unwrap()[0].as_ref().unwrap(),
        &json!(21)
    );
    let tasks = client.status().unwrap().tasks;
    assert_eq!(
        (tasks.failed, tasks.waiting, tasks.on_workers),
        (0, 0, 0),
        "{tasks:?}"
    );
}

#[test]
fn small_results_reach_the_client_with_their_events_and_need_no_fetch() {
    let mut procs = Procs::new("inline-results");
    let file = procs.path("scheduler.json");
    let file_arg = file.to_str().unwrap().to_owned();
    procs.start("scheduler", &["scheduler", "--scheduler-file", &file_arg]);
    start_worker(
        &mut procs,
        "worker",
        &file,
        &["--threads", "1", "--no-nanny"],
    );
    let client = connect(&file);
    wait_until("the worker", LONG, || workers(&client).len() == 1);
    let module = client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    let futures = client
        .map(
            &module,
            "inc",
            (0..500).map(|i| vec![json!(i).into()]).collect(),
        )
        .unwrap();
    client.wait(&futures).unwrap();
    // The only worker, which holds every result, is gone for good: a
    // result not already in the client could only be had by running it
    // again, and no worker is left to.
    let victim = workers(&client)[0].pid;
    nix_kill(victim as i32);
    wait_until("the worker removed", LONG, || workers(&client).is_empty());
    let results = wrun_tests::within("gathering without a worker", LONG, move || {
        client.gather(&futures).unwrap()
    });
    for (i, result) in results.iter().enumerate() {
        assert_eq!(result.as_ref().unwrap(), &json!(i + 1), "result {i}");
    }
}

#[test]
fn a_task_reading_two_workers_results_is_staged_and_reads_the_other_from_its_peer_at_once() {
    let mut procs = Procs::new("staged-across");
    let file = start_local(&mut procs, 2, &[]);
    let client = connect(&file);
    wait_until("2 workers", LONG, || workers(&client).len() == 2);
    let module = client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    // Two 1-second roots on the two workers; a step that reads both, and a
    // second step that reads the first.
    let mut graph = client.graph();
    let root = |graph: &mut wrun_client::Graph<'_>, seed: u64| {
        graph.call(
            &module,
            "stencil",
            vec![
                json!(1_000_000).into(),
                json!(seed).into(),
                json!(0).into(),
                json!(0).into(),
            ],
        )
    };
    let a = root(&mut graph, 1);
    let b = root(&mut graph, 2);
    let step = graph.call(
        &module,
        "stencil",
        vec![json!(0).into(), a.into(), b.into(), json!(0).into()],
    );
    let next = graph.call(
        &module,
        "stencil",
        vec![
            json!(0).into(),
            step.into(),
            json!(0).into(),
            json!(0).into(),
        ],
    );
    let outputs = graph.submit(&[step, next]).unwrap();
    // While the roots run, the steps wait on the workers, not in the
    // scheduler: the one reading both roots on one of their workers.
    wait_until("both roots running", LONG, || {
        client.status().unwrap().tasks.running == 2
    });
    let tasks = client.status().unwrap().tasks;
    assert_eq!((tasks.on_workers, tasks.waiting), (4, 0), "{tasks:?}");
    let results = client.gather(&outputs).unwrap();
    // 1 + the deepest input: the roots answer 2 and 3.
    assert_eq!(results[0].as_ref().unwrap(), &json!(4));
    assert_eq!(results[1].as_ref().unwrap(), &json!(5));
    // The step read one root from the other worker: a 1-byte transfer from
    // the peer, started before that root was made.
    let job = client.detach(outputs, "across").unwrap();
    let stream = client.task_stream(&job).unwrap();
    let step_run = &stream.records[0];
    let transfer = step_run.transfer.expect("one input came from the peer");
    assert_eq!(transfer.bytes, 1, "{stream:#?}");
    assert!(
        transfer.start_us < step_run.start_us.saturating_sub(500_000),
        "the fetch was asked for while the root ran: {stream:#?}"
    );
}

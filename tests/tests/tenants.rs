//! A shared cluster, with real processes on loopback: tenants with tokens
//! from `wrun tenant add`, each blind to the others' work; tokens, the
//! cluster secret and quotas checked by the scheduler; slots shared by
//! weight; and no token or secret in any log or status.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use wrun_client::{Client, Credentials, Module, Target};
use wrun_tests::{
    Procs, SEED_TASKS_WASM, TEST_GUESTS_WASM, read_module, wait_until, wrun_with_env,
};

const LONG: Duration = Duration::from_secs(60);

/// Held by each test's cluster: the tests here measure latency and shares
/// of slots, which mean nothing while another test's cluster competes for
/// the machine's two cores, so they run one at a time.
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A cluster with a tenants file: the operator's scheduler file, the
/// tenants' file (no secret), and tenants made with `wrun tenant add`.
struct Shared {
    procs: Procs,
    tenants: PathBuf,
    operator_file: PathBuf,
    client_file: PathBuf,
    /// Last, so it is released after the processes are gone.
    _alone: std::sync::MutexGuard<'static, ()>,
}

impl Shared {
    fn new(test: &str) -> Shared {
        // A test that failed while holding it poisoned it; the next one
        // still runs alone.
        let alone = ONE_CLUSTER_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let procs = Procs::new(test);
        Shared {
            tenants: procs.path("tenants.toml"),
            operator_file: procs.path("scheduler.json"),
            client_file: procs.path("cluster.json"),
            procs,
            _alone: alone,
        }
    }

    /// `wrun tenant add NAME ...`: the token, the last line printed.
    fn add(&self, name: &str, quotas: &[&str]) -> String {
        let mut args = vec![
            "tenant",
            "add",
            name,
            "--tenants",
            self.tenants.to_str().unwrap(),
        ];
        args.extend_from_slice(quotas);
        let out = wrun_with_env(&args, &[]);
        assert_eq!(out.code, Some(0), "{out:#?}");
        let token = out.stdout.lines().last().unwrap().to_owned();
        assert_eq!(token.len(), 64, "{out:#?}");
        token
    }

    fn start(&mut self, workers: u32, threads: u32, extra: &[&str]) {
        let (tenants, file, client) = (
            self.tenants.to_str().unwrap().to_owned(),
            self.operator_file.to_str().unwrap().to_owned(),
            self.client_file.to_str().unwrap().to_owned(),
        );
        let mut args = vec![
            "scheduler",
            "--tenants",
            &tenants,
            "--scheduler-file",
            &file,
            "--client-file",
            &client,
        ];
        args.extend_from_slice(extra);
        self.procs.start("scheduler", &args);
        let threads = threads.to_string();
        for i in 0..workers {
            self.procs.start(
                &format!("worker-{i}"),
                &[
                    "worker",
                    "--scheduler-file",
                    &file,
                    "--threads",
                    &threads,
                    "--no-nanny",
                ],
            );
        }
        let operator = self.operator();
        wait_until("the workers", LONG, || {
            operator.status().unwrap().workers.len() == workers as usize
        });
    }

    /// A session as a tenant, through the tenants' file.
    fn tenant(&self, token: &str) -> Client {
        Client::connect_with(
            &Target::File(self.client_file.clone()),
            Credentials {
                token: Some(token.to_owned()),
                certificate: None,
            },
            LONG,
        )
        .expect("a tenant session")
    }

    /// A session as the operator (the scheduler file holds the secret).
    fn operator(&self) -> Client {
        Client::connect(&Target::File(self.operator_file.clone()), LONG)
            .expect("an operator session")
    }

    /// `wrun ARGS` as a tenant: the tenants' file and WRUN_TOKEN.
    fn wrun_as(&self, token: &str, args: &[&str]) -> wrun_tests::Finished {
        let mut all = args.to_vec();
        let file = self.client_file.to_str().unwrap().to_owned();
        all.extend_from_slice(&["--scheduler-file", &file]);
        wrun_with_env(&all, &[("WRUN_TOKEN", token)])
    }

    fn scheduler_pid(&self) -> u32 {
        self.procs.procs[0].child.id()
    }

    fn logs(&self) -> String {
        self.procs
            .procs
            .iter()
            .map(|p| std::fs::read_to_string(&p.log).unwrap_or_default())
            .collect()
    }
}

fn secret_of(file: &Path) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    json["secret"].as_str().unwrap().to_owned()
}

#[test]
fn two_tenants_see_nothing_of_each_other_and_leave_no_trace_in_logs() {
    let mut cluster = Shared::new("tenants-isolation");
    let alice = cluster.add("alice", &[]);
    let bob = cluster.add("bob", &[]);
    cluster.start(1, 2, &[]);
    let secret = secret_of(&cluster.operator_file);
    // The tenants' file lets them find the scheduler, not join it.
    let public = std::fs::read_to_string(&cluster.client_file).unwrap();
    assert!(!public.contains(&secret), "{public}");

    // Alice's detached job, in a name Bob will also use.
    let out = cluster.wrun_as(
        &alice,
        &[
            "submit",
            TEST_GUESTS_WASM,
            "--map",
            "chatty",
            "\"a\"",
            "\"b\"",
            "--detach",
            "--job",
            "shared",
        ],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "shared\n"),
        "{out:#?}"
    );

    // Every command Bob has finds nothing of it: the words of a job that
    // does not exist, not "forbidden".
    for args in [
        vec!["gather", "shared"],
        vec!["logs", "shared:0"],
        vec!["cancel", "shared"],
    ] {
        let out = cluster.wrun_as(&bob, &args);
        assert_eq!(out.code, Some(2), "{args:?}: {out:#?}");
        assert!(
            out.stderr
                .contains("no job `shared`; the scheduler has: none"),
            "{args:?}: {out:#?}"
        );
    }
    // Bob's status has no trace of Alice: her job, her tasks on the worker,
    // the worker's pid and peer address.
    let out = cluster.wrun_as(&bob, &["status", "--json"]);
    assert_eq!(out.code, Some(0), "{out:#?}");
    let status: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(status["jobs"], json!([]), "{status}");
    assert_eq!(status["tasks"]["total"], json!(0), "{status}");
    assert_eq!(status["workers"][0]["pid"], json!(0), "{status}");
    assert_eq!(status["workers"][0]["peer_address"], json!(""), "{status}");
    assert_eq!(
        status["workers"][0]["threads"],
        json!(2),
        "the capacity is shown"
    );
    assert!(!out.stdout.contains("shared"), "{}", out.stdout);

    // Through the client library: Alice's module digest is unknown to Bob
    // until he uploads the module himself.
    let bob_client = cluster.tenant(&bob);
    let alice_module = cluster
        .tenant(&alice)
        .upload(&read_module(TEST_GUESTS_WASM))
        .unwrap();
    let error = bob_client
        .submit(&alice_module, "chatty", vec![json!("x").into()])
        .unwrap_err();
    assert!(
        error.to_string().contains("unknown module digest"),
        "{error}"
    );
    assert!(bob_client.adopt("shared").is_err());
    // Bob's own job of the same name is his.
    let module = bob_client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    let mine = bob_client
        .map(
            &module,
            "inc",
            vec![vec![json!(1).into()], vec![json!(2).into()]],
        )
        .unwrap();
    assert_eq!(bob_client.detach(mine, "shared").unwrap(), "shared");
    let out = cluster.wrun_as(&bob, &["gather", "shared"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "2\n3\n"),
        "{out:#?}"
    );

    // Alice's work completed untouched.
    let out = cluster.wrun_as(&alice, &["logs", "shared:1"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "[stdout] out: b\n[stderr] err: b\n"),
        "{out:#?}"
    );
    let out = cluster.wrun_as(&alice, &["gather", "shared"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "\"a\"\n\"b\"\n"),
        "{out:#?}"
    );

    // The operator sees everything.
    let operator = cluster.operator().status().unwrap();
    assert!(operator.workers[0].pid > 0);
    assert!(!operator.workers[0].peer_address.is_empty());

    // Results cannot be read from a worker's peer port by guessing ids: a
    // fetch without the scheduler's ticket answers "no such result".
    let peer = operator.workers[0].peer_address.clone();
    let refused = wrun_tests::peer_fetch_without_ticket(&peer, 1..40);
    assert!(
        refused.iter().all(|r| r.contains("no such result")),
        "{refused:?}"
    );

    // No token and no secret in any log, nor in what a tenant is shown.
    drop(bob_client);
    let logs = cluster.logs();
    for needle in [&alice, &bob, &secret] {
        assert!(
            !logs.contains(needle.as_str()),
            "a token or the secret is in a log"
        );
        assert!(!out.stdout.contains(needle.as_str()));
    }
}

#[test]
fn tokens_are_checked_and_only_the_secret_joins_workers_or_stops_the_cluster() {
    let mut cluster = Shared::new("tenants-tokens");
    let alice = cluster.add("alice", &[]);
    let bob = cluster.add("bob", &[]);
    cluster.start(1, 1, &[]);
    let file = cluster.client_file.to_str().unwrap().to_owned();

    // No token: the tenants' file has none.
    let out = wrun_with_env(&["status", "--scheduler-file", &file], &[]);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("no token"), "{out:#?}");
    // A wrong token and an unknown one get the same words.
    let unknown = "0".repeat(64);
    for token in [unknown.as_str(), &alice[..63]] {
        let out = cluster.wrun_as(token, &["status"]);
        assert_eq!(out.code, Some(2), "{out:#?}");
        assert!(
            out.stderr.contains(
                "the scheduler refused the token: it is not a valid token of this cluster"
            ),
            "{out:#?}"
        );
    }
    // A tenant's token does not join a worker, nor stop the cluster.
    let address =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&file).unwrap())
            .unwrap()["address"]
            .as_str()
            .unwrap()
            .to_owned();
    let out = wrun_with_env(
        &[
            "worker",
            "--scheduler",
            &address,
            "--no-nanny",
            "--connect-timeout",
            "5s",
        ],
        &[("WRUN_SECRET", &alice)],
    );
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("wrong cluster secret"), "{out:#?}");
    let out = wrun_with_env(&["shutdown", "--scheduler-file", &file], &[]);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("wrong cluster secret"), "{out:#?}");
    // The secret is not taken on a command line, where `ps` would show it.
    let out = wrun_with_env(&["worker", "--scheduler", &address, "--secret", "x"], &[]);
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert!(out.stderr.contains("set WRUN_SECRET instead"), "{out:#?}");

    // Bob is removed; SIGHUP: his open session and his token stop working,
    // and Alice's session carries on.
    let alice_client = cluster.tenant(&alice);
    let bob_client = cluster.tenant(&bob);
    bob_client.status().unwrap();
    let out = wrun_with_env(
        &[
            "tenant",
            "remove",
            "bob",
            "--tenants",
            cluster.tenants.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.code, Some(0), "{out:#?}");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &cluster.scheduler_pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_until("Bob's session to end", LONG, || {
        bob_client.status().is_err()
    });
    let error = bob_client.status().unwrap_err().to_string();
    assert!(error.contains("this session is closed"), "{error}");
    let out = cluster.wrun_as(&bob, &["status"]);
    assert_eq!(out.code, Some(2), "{out:#?}");
    let module = alice_client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    let x = alice_client
        .submit(&module, "inc", vec![json!(41).into()])
        .unwrap();
    assert_eq!(
        alice_client.gather(&[x]).unwrap()[0].as_ref().unwrap(),
        &json!(42)
    );
}

#[test]
fn quotas_give_errors_that_name_them_and_a_capped_tenant_does_not_slow_the_other() {
    let mut cluster = Shared::new("tenants-quotas");
    let small = cluster.add(
        "small",
        &[
            "--max-pending",
            "10",
            "--max-memory",
            "64MiB",
            "--max-timeout",
            "5s",
            "--max-stored",
            "1KiB",
            "--max-slots",
            "1",
        ],
    );
    let other = cluster.add("other", &[]);
    cluster.start(1, 2, &[]);
    let refused = |args: &[&str], words: &str| {
        let out = cluster.wrun_as(&small, args);
        assert_eq!(out.code, Some(2), "{args:?}: {out:#?}");
        assert!(out.stderr.contains(words), "{args:?}: {out:#?}");
    };
    let eleven: Vec<String> = (0..11).map(|i| i.to_string()).collect();
    let mut map = vec!["submit", SEED_TASKS_WASM, "--map", "inc"];
    map.extend(eleven.iter().map(String::as_str));
    refused(&map, "would exceed its quota of 10 (max_pending)");
    refused(
        &["submit", SEED_TASKS_WASM, "inc", "1", "--memory", "128MiB"],
        "memory limit 128 MiB is over tenant `small`'s quota of 64 MiB (max_memory)",
    );
    refused(
        &[
            "submit",
            SEED_TASKS_WASM,
            "inc",
            "1",
            "--memory",
            "64MiB",
            "--timeout",
            "10s",
        ],
        "time limit 10 s is over tenant `small`'s quota of 5 s (max_timeout)",
    );
    // Results kept past the stored quota: the next submission is refused.
    let client = cluster.tenant(&small);
    let mut client = client;
    client.set_options(wrun_client::TaskOptions {
        limits: wrun_client::TaskLimits {
            memory_bytes: 64 << 20,
            timeout: Duration::from_secs(5),
            ..wrun_client::TaskLimits::DEFAULT
        },
        retries: 0,
    });
    let guests = client.upload(&read_module(TEST_GUESTS_WASM)).unwrap();
    let kept = client
        .submit(&guests, "big_result", vec![json!(3000).into()])
        .unwrap();
    client.wait(std::slice::from_ref(&kept)).unwrap();
    let error = client
        .submit(&guests, "big_result", vec![json!(1).into()])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("at its quota of 1 KiB (max_stored)"),
        "{error}"
    );
    drop(kept);
    wait_until("the kept result to be released", LONG, || {
        client
            .submit(&guests, "chatty", vec![json!("x").into()])
            .is_ok()
    });

    // The other tenant's module is compiled on the worker before the
    // measurement: what is measured is waiting for a slot, not compiling.
    let other_client = cluster.tenant(&other);
    let seed = other_client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    let warm = other_client
        .submit(&seed, "add", vec![json!(1).into(), json!(2).into()])
        .unwrap();
    other_client.wait(&[warm]).unwrap();

    // At its slot quota (1), the small tenant's slow tasks take one of the
    // two threads; the other tenant is served at once on the other.
    let slow = client
        .map(
            &guests,
            "slow_square",
            (0..6u64)
                .map(|i| vec![json!(i).into(), json!(500_000).into()])
                .collect(),
        )
        .unwrap();
    wait_until("a slow task to run", LONG, || {
        client.status().unwrap().tasks.running == 1
    });
    // Three small tasks of the other tenant, one after another, finish
    // while the small tenant's six half-second tasks still run on its one
    // slot: had they waited behind them, they would take 1.5 s at least.
    let started = Instant::now();
    for _ in 0..3 {
        let x = other_client
            .submit(&seed, "add", vec![json!(1).into(), json!(2).into()])
            .unwrap();
        assert_eq!(
            other_client.gather(&[x]).unwrap()[0].as_ref().unwrap(),
            &json!(3)
        );
    }
    let served_in = started.elapsed();
    eprintln!("the other tenant's three tasks took {served_in:?}");
    assert!(served_in < Duration::from_millis(1500), "{served_in:?}");
    let status = client.status().unwrap();
    assert!(status.tasks.on_workers <= 1, "{status:?}");
    drop(slow);
}

/// Tasks done by each of two tenants between two moments.
fn done_count(client: &Client) -> u64 {
    client.status().unwrap().tasks.done
}

#[test]
fn two_saturating_tenants_share_the_slots_by_weight() {
    let mut cluster = Shared::new("tenants-fair");
    let light = cluster.add("light", &["--weight", "1"]);
    let heavy = cluster.add("heavy", &["--weight", "3"]);
    cluster.start(1, 2, &["--queue-per-slot", "8"]);
    let (a, b) = (cluster.tenant(&light), cluster.tenant(&heavy));
    let spins = |client: &Client| -> Vec<wrun_client::TaskFuture> {
        let module: Module = client.upload(&read_module(SEED_TASKS_WASM)).unwrap();
        client
            .map(
                &module,
                "spin",
                (0..4000).map(|_| vec![json!(2000).into()]).collect(),
            )
            .unwrap()
    };
    let fa = spins(&a);
    let fb = spins(&b);
    // Both saturate the two threads; measure once both have had tasks done
    // (the shares settle within a few scheduling rounds).
    wait_until("both tenants to have tasks done", LONG, || {
        done_count(&a) >= 100 && done_count(&b) >= 300
    });
    let (a0, b0) = (done_count(&a), done_count(&b));
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (a1, b1) = (done_count(&a), done_count(&b));
    let (da, db) = ((a1 - a0) as f64, (b1 - b0) as f64);
    let ratio = db / da;
    eprintln!("fair share: light {da} tasks, heavy {db} tasks, ratio {ratio:.3} (weights 1:3)");
    assert!(
        (2.7..=3.3).contains(&ratio),
        "slot-seconds light {da} : heavy {db} = 1 : {ratio:.3}, not within 10% of 1:3"
    );
    // Both still had queued work all along.
    assert!(a1 < 4000 && b1 < 4000, "{a1} {b1}");
    drop((fa, fb));
}

#[test]
fn a_flood_from_one_tenant_does_not_slow_another_s_small_task_much() {
    let mut cluster = Shared::new("tenants-flood");
    let flooder = cluster.add("flooder", &[]);
    let quiet = cluster.add("quiet", &[]);
    cluster.start(2, 1, &[]);
    let q = cluster.tenant(&quiet);
    let seed = q.upload(&read_module(SEED_TASKS_WASM)).unwrap();
    let latency = |n: usize| -> Duration {
        let mut times: Vec<Duration> = (0..n)
            .map(|_| {
                let started = Instant::now();
                let x = q
                    .submit(&seed, "add", vec![json!(1).into(), json!(2).into()])
                    .unwrap();
                assert_eq!(q.gather(&[x]).unwrap()[0].as_ref().unwrap(), &json!(3));
                started.elapsed()
            })
            .collect();
        times.sort();
        times[n / 2]
    };
    let alone = latency(40);
    // 10,000 tiny tasks a second from the flooder, from another thread.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let batches = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flood = {
        let (stop, batches) = (stop.clone(), batches.clone());
        let f = cluster.tenant(&flooder);
        std::thread::spawn(move || {
            let module = f.upload(&read_module(SEED_TASKS_WASM)).unwrap();
            let mut sent = 0u64;
            let started = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let batch = f
                    .map(
                        &module,
                        "identity",
                        (0..1000).map(|i| vec![json!(i).into()]).collect(),
                    )
                    .unwrap();
                sent += 1000;
                batches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                drop(batch);
                let due = started + Duration::from_millis(sent / 10);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            sent as f64 / started.elapsed().as_secs_f64()
        })
    };
    // Measure once the flood is in full swing (a few batches in).
    wait_until("the flood to be under way", LONG, || {
        batches.load(std::sync::atomic::Ordering::Relaxed) >= 3
    });
    let flooded = latency(40);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rate = flood.join().unwrap();
    let ratio = flooded.as_secs_f64() / alone.as_secs_f64();
    eprintln!(
        "flood of {rate:.0} tasks/s: quiet tenant's median add {alone:?} alone, {flooded:?} flooded ({ratio:.2}x)"
    );
    assert!(rate > 8000.0, "the flood ran at {rate:.0} tasks/s");
    assert!(
        ratio <= 2.0,
        "the median went from {alone:?} to {flooded:?} ({ratio:.2}x)"
    );
}

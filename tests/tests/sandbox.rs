//! The sandbox in-process: every hostile guest gets a precise error, and
//! after all of them, in the same process, a normal task still succeeds.

use std::time::{Duration, Instant};

use serde_json::{Value as Json, json};
use wrun_abi::{encode_args_from_json, value_to_json};
use wrun_sandbox::{
    CompiledModule, LoadError, Sandbox, SandboxConfig, TaskError, TaskLimits, TaskRun,
};
use wrun_tests::{SEED_TASKS_WASM, TEST_GUESTS_WASM, read_module};

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        cache_dir: None,
        max_concurrent_tasks: 8,
        ..SandboxConfig::default()
    })
    .unwrap()
}

fn run(
    sandbox: &Sandbox,
    module: &CompiledModule,
    task: &str,
    args: Json,
    limits: &TaskLimits,
) -> TaskRun {
    let signature = module
        .task(task)
        .unwrap_or_else(|| panic!("no task {task}"));
    let args = encode_args_from_json(signature, args.as_array().unwrap()).unwrap();
    sandbox.run(module, task, &args, limits)
}

fn ok(run: TaskRun) -> Json {
    match run.result {
        Ok(bytes) => value_to_json(&wrun_abi::decode_value(&bytes).unwrap()),
        Err(error) => panic!(
            "task failed: {error}\nstderr: {}",
            String::from_utf8_lossy(&run.stderr.bytes)
        ),
    }
}

#[test]
fn seed_tasks_compute_the_right_answers() {
    let sandbox = sandbox();
    let (seed, _) = sandbox.load(&read_module(SEED_TASKS_WASM)).unwrap();
    let limits = TaskLimits::default();
    assert_eq!(
        ok(run(&sandbox, &seed, "add", json!([1, 2]), &limits)),
        json!(3)
    );
    assert_eq!(
        ok(run(&sandbox, &seed, "inc", json!([41]), &limits)),
        json!(42)
    );
    assert_eq!(
        ok(run(
            &sandbox,
            &seed,
            "increment_data",
            json!([[1, 2, 3]]),
            &limits
        )),
        json!([2, 3, 4])
    );
    assert_eq!(
        ok(run(
            &sandbox,
            &seed,
            "do_analysis",
            json!([[2, 3, 4]]),
            &limits
        )),
        json!(9)
    );
    let darts = ok(run(
        &sandbox,
        &seed,
        "throw_darts",
        json!([100000, 7]),
        &limits,
    ));
    let inside = darts[0].as_u64().unwrap();
    assert_eq!(darts[1], json!(100000));
    let pi = 4.0 * inside as f64 / 100000.0;
    assert!((pi - std::f64::consts::PI).abs() < 0.05, "pi estimate {pi}");
    assert_eq!(
        ok(run(&sandbox, &seed, "noop", json!([]), &limits)),
        Json::Null
    );
    let names: Vec<_> = seed.tasks().iter().map(|t| t.to_string()).collect();
    assert!(
        names.contains(&"throw_darts(darts: u64, seed: u64) -> tuple<u64,u64>".to_owned()),
        "{names:?}"
    );
}

#[test]
fn values_round_trip_through_a_guest() {
    let sandbox = sandbox();
    let (guests, _) = sandbox.load(&read_module(TEST_GUESTS_WASM)).unwrap();
    let limits = TaskLimits::default();
    let args = json!([true, null, {"a": [1, 2], "b": []}, [-3, 1.5]]);
    assert_eq!(
        ok(run(&sandbox, &guests, "echo_all", args.clone(), &limits)),
        args
    );
    let args = json!([true, "name", {}, [127, -0.25]]);
    assert_eq!(
        ok(run(&sandbox, &guests, "echo_all", args.clone(), &limits)),
        args
    );
    assert_eq!(
        ok(run(
            &sandbox,
            &guests,
            "keyed",
            json!([{"2": "b", "1": "a"}]),
            &limits
        )),
        json!([[1, "a"], [2, "b"]])
    );
    assert_eq!(
        ok(run(
            &sandbox,
            &guests,
            "norm",
            json!([{"x": 3, "y": 4}]),
            &limits
        )),
        json!(5.0)
    );
    assert_eq!(
        ok(run(
            &sandbox,
            &guests,
            "mirror",
            json!([{"x": 1.0, "y": 2.0}]),
            &limits
        )),
        json!({"x": 2.0, "y": 1.0})
    );
}

#[test]
fn every_task_gets_a_fresh_instance() {
    let sandbox = sandbox();
    let (guests, _) = sandbox.load(&read_module(TEST_GUESTS_WASM)).unwrap();
    for _ in 0..3 {
        assert_eq!(
            ok(run(
                &sandbox,
                &guests,
                "count_calls",
                json!([]),
                &TaskLimits::default()
            )),
            json!(1)
        );
    }
}

#[test]
fn the_guest_sees_clocks_and_random_but_no_environment() {
    let sandbox = sandbox();
    let (guests, _) = sandbox.load(&read_module(TEST_GUESTS_WASM)).unwrap();
    let first = ok(run(
        &sandbox,
        &guests,
        "environment",
        json!([]),
        &TaskLimits::default(),
    ));
    let second = ok(run(
        &sandbox,
        &guests,
        "environment",
        json!([]),
        &TaskLimits::default(),
    ));
    assert_eq!(first["env_vars"], json!(0));
    assert_eq!(first["args"], json!(0));
    assert!(first["unix_seconds"].as_u64().unwrap() > 1_700_000_000);
    assert_ne!(first["random"], second["random"], "random numbers repeat");
}

/// The modules written from guest-sdk/ABI.md alone, without the SDK: in
/// WAT by hand, and in C built with clang by the page's recipe.
fn abi_modules() -> [(&'static str, Vec<u8>); 2] {
    [
        ("wat", wrun_tests::hand_written_wasm()),
        ("c", read_module(wrun_tests::C_GUEST_WASM)),
    ]
}

#[test]
fn modules_written_from_the_abi_page_in_wat_and_c_follow_the_same_path() {
    let sandbox = sandbox();
    let limits = TaskLimits::default();
    for (language, wasm) in abi_modules() {
        let (module, _) = sandbox.load(&wasm).unwrap();
        assert_eq!(
            ok(run(&sandbox, &module, "answer", json!([]), &limits)),
            json!(42),
            "{language}"
        );
        let value = json!({"nested": [1, "two", null, 3.5]});
        assert_eq!(
            ok(run(
                &sandbox,
                &module,
                "echo",
                json!([value.clone()]),
                &limits
            )),
            value,
            "{language}"
        );
        let refused = run(&sandbox, &module, "refuse", json!([]), &limits)
            .result
            .unwrap_err();
        assert_eq!(
            refused,
            TaskError::Failed("refused by hand".to_owned()),
            "{language}"
        );
    }
    // The C module decodes integers in every form the host sends them.
    let (c, _) = sandbox
        .load(&read_module(wrun_tests::C_GUEST_WASM))
        .unwrap();
    for (x, y) in [
        (1, 2),
        (-5, -300),
        (200, 70_000),
        (i64::MAX - 1, 1),
        (-40_000, 1 << 40),
    ] {
        assert_eq!(
            ok(run(&sandbox, &c, "add", json!([x, y]), &limits)),
            json!(x + y),
            "add({x}, {y})"
        );
    }
}

#[test]
fn a_result_that_is_not_of_the_declared_type_is_a_task_error() {
    let sandbox = sandbox();
    let (module, _) = sandbox.load(&wrun_tests::hand_written_wasm()).unwrap();
    let limits = TaskLimits::default();
    let liar = run(&sandbox, &module, "liar", json!([]), &limits)
        .result
        .unwrap_err();
    assert_eq!(liar.kind(), "bad-result");
    assert_eq!(
        liar.to_string(),
        "task result does not match the declared type i64: expected i64, got string \"hi\""
    );
    let reserved = run(&sandbox, &module, "reserved", json!([]), &limits)
        .result
        .unwrap_err();
    assert_eq!(reserved.kind(), "bad-result");
    assert!(
        reserved
            .to_string()
            .contains("the reserved byte 0xc1 at offset 0 is not a value"),
        "{reserved}"
    );
}

/// Every hostile guest, one after the other in one sandbox; then a normal task.
#[test]
fn hostile_guests_get_precise_errors_and_the_sandbox_keeps_serving() {
    let sandbox = sandbox();
    let (guests, _) = sandbox.load(&read_module(TEST_GUESTS_WASM)).unwrap();
    let (seed, _) = sandbox.load(&read_module(SEED_TASKS_WASM)).unwrap();
    let limits = TaskLimits {
        timeout: Duration::from_millis(300),
        memory_bytes: 32 << 20,
        ..TaskLimits::default()
    };

    let started = Instant::now();
    let error = run(&sandbox, &guests, "spin_forever", json!([]), &limits)
        .result
        .unwrap_err();
    assert_eq!(
        error,
        TaskError::TimeLimit {
            limit: Duration::from_millis(300)
        }
    );
    assert!(
        started.elapsed() < Duration::from_millis(1300),
        "took {:?}",
        started.elapsed()
    );

    let bomb = run(&sandbox, &guests, "memory_bomb", json!([]), &limits);
    assert!(
        matches!(bomb.result, Err(TaskError::MemoryLimit { limit_bytes, .. }) if limit_bytes == 32 << 20),
        "{:?}",
        bomb.result
    );
    assert!(bomb.usage.peak_memory_bytes <= 32 << 20);

    let error = run(&sandbox, &guests, "recurse", json!([100_000_000]), &limits)
        .result
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "task trapped: stack overflow (the call stack is exhausted)"
    );

    let flood = run(&sandbox, &guests, "flood_stdout", json!([100]), &limits);
    assert_eq!(ok(flood.clone()), json!(100u64 << 20));
    assert_eq!(flood.stdout.dropped, (100u64 << 20) - (1 << 20));
    assert!(flood.stdout.bytes.len() < (1 << 20) + 200);
    assert!(
        String::from_utf8_lossy(&flood.stdout.bytes)
            .ends_with("bytes of stdout dropped (limit 1048576 bytes)]\n")
    );

    let small_result = TaskLimits {
        result_bytes: 1000,
        ..limits
    };
    let error = run(
        &sandbox,
        &guests,
        "big_result",
        json!([5000]),
        &small_result,
    )
    .result
    .unwrap_err();
    assert!(
        matches!(error, TaskError::ResultTooLarge { size, limit: 1000 } if size > 5000),
        "{error:?}"
    );

    let TaskError::Failed(message) = run(
        &sandbox,
        &guests,
        "read_file",
        json!(["/etc/passwd"]),
        &limits,
    )
    .result
    .unwrap_err() else {
        panic!("reading /etc/passwd did not fail as a task error");
    };
    assert!(message.starts_with("cannot read /etc/passwd:"), "{message}");

    let TaskError::Failed(message) = run(
        &sandbox,
        &guests,
        "open_socket",
        json!(["127.0.0.1:22"]),
        &limits,
    )
    .result
    .unwrap_err() else {
        panic!("opening a socket did not fail as a task error");
    };
    assert!(
        message.starts_with("cannot connect to 127.0.0.1:22:"),
        "{message}"
    );

    let TaskError::Panic { message, location } =
        run(&sandbox, &guests, "panic_with", json!(["boom"]), &limits)
            .result
            .unwrap_err()
    else {
        panic!("no panic error");
    };
    assert_eq!(message, "boom");
    assert!(location.starts_with("src/lib.rs:"), "{location}");

    assert_eq!(
        run(&sandbox, &guests, "exit_with", json!([3]), &limits)
            .result
            .unwrap_err(),
        TaskError::Exited(3)
    );
    assert_eq!(
        run(&sandbox, &guests, "fail", json!(["nope"]), &limits)
            .result
            .unwrap_err(),
        TaskError::Failed("nope".to_owned())
    );

    let error = sandbox
        .run(&guests, "no_such_task", &[0x90], &limits)
        .result
        .unwrap_err();
    assert!(
        matches!(&error, TaskError::UnknownTask { available, .. } if available.contains(&"norm".to_owned()))
    );
    assert!(
        error
            .to_string()
            .starts_with("unknown task `no_such_task`; the module has: big_result, chatty,"),
        "{error}"
    );
    let error = sandbox
        .run(&guests, "norm", &[0x91, 0xa1, b'x'], &limits)
        .result
        .unwrap_err();
    assert!(
        error.to_string().starts_with(
            "task `norm` rejected its arguments: argument `p`: invalid type: string \"x\""
        ),
        "{error}"
    );
    let error = sandbox
        .run(&seed, "add", &[0x91, 0x01], &limits)
        .result
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "task `add(x: i64, y: i64) -> i64` takes 2 argument(s), got 1"
    );
    let error = sandbox
        .run(&seed, "add", &[0x92, 0x01, 0xa1, b'x'], &limits)
        .result
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "argument `y` of task `add`: expected i64, got string \"x\""
    );
    let error = sandbox
        .run(&seed, "add", &[0x92, 0x01], &limits)
        .result
        .unwrap_err();
    assert!(
        error.to_string().contains("not a MessagePack array"),
        "{error}"
    );

    // Bad modules.
    assert!(matches!(
        sandbox.load(b"this is not wasm"),
        Err(LoadError::Module(_))
    ));
    let no_abi = wat::parse_str("(module (func (export \"main\")))").unwrap();
    let error = sandbox.load(&no_abi).unwrap_err();
    assert!(
        error.to_string().contains("no `wrun.tasks` custom section"),
        "{error}"
    );
    let imports_env = wat::parse_str(
        r#"(module (import "env" "secret" (func)) (memory (export "memory") 1)
           (func (export "wrun_alloc") (param i32) (result i32) i32.const 0)
           (func (export "wrun.task.t") (param i32 i32) (result i32) i32.const 0)
           (@custom "wrun.tasks" "{\"abi\":1,\"name\":\"t\",\"params\":[],\"returns\":\"unit\"}"))"#,
    )
    .unwrap();
    let error = sandbox.load(&imports_env).unwrap_err();
    assert!(
        matches!(&error, LoadError::UnknownImport(m) if m.contains("env::secret")),
        "{error}"
    );

    // After all of that, a normal task still succeeds, with its output captured.
    assert_eq!(
        ok(run(
            &sandbox,
            &seed,
            "add",
            json!([20, 22]),
            &TaskLimits::default()
        )),
        json!(42)
    );
    let chatty = run(
        &sandbox,
        &guests,
        "chatty",
        json!(["hi"]),
        &TaskLimits::default(),
    );
    assert_eq!(chatty.stdout.bytes, b"out: hi\n");
    assert_eq!(chatty.stderr.bytes, b"err: hi\n");
    assert_eq!(ok(chatty), json!("hi"));
}

#[test]
fn tasks_run_on_many_threads_at_once() {
    let sandbox = sandbox();
    let (seed, _) = sandbox.load(&read_module(SEED_TASKS_WASM)).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4i64 {
            let (sandbox, seed) = (&sandbox, &seed);
            scope.spawn(move || {
                for i in 0..200i64 {
                    assert_eq!(
                        ok(run(
                            sandbox,
                            seed,
                            "add",
                            json!([t, i]),
                            &TaskLimits::default()
                        )),
                        json!(t + i)
                    );
                }
            });
        }
    });
}

#[test]
fn the_disk_cache_survives_corruption() {
    let dir = std::env::temp_dir().join(format!("wrun-cache-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let config = SandboxConfig {
        cache_dir: Some(dir.clone()),
        max_concurrent_tasks: 2,
        ..SandboxConfig::default()
    };
    let bytes = read_module(SEED_TASKS_WASM);
    use wrun_sandbox::LoadSource::*;
    assert_eq!(
        Sandbox::new(config.clone())
            .unwrap()
            .load(&bytes)
            .unwrap()
            .1,
        Compiled
    );
    assert_eq!(
        Sandbox::new(config.clone())
            .unwrap()
            .load(&bytes)
            .unwrap()
            .1,
        DiskCache
    );
    let cached = artifacts(&dir);
    assert_eq!(cached.len(), 1, "{cached:?}");
    // Truncate the artifact: detected, recompiled, and the module still works.
    let full = std::fs::read(&cached[0]).unwrap();
    std::fs::write(&cached[0], &full[..full.len() / 2]).unwrap();
    let sandbox = Sandbox::new(config.clone()).unwrap();
    let (seed, source) = sandbox.load(&bytes).unwrap();
    assert_eq!(source, Compiled);
    assert_eq!(
        ok(run(
            &sandbox,
            &seed,
            "inc",
            json!([1]),
            &TaskLimits::default()
        )),
        json!(2)
    );
    // Flip one byte in the middle: also detected.
    let mut flipped = std::fs::read(&cached[0]).unwrap();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0xff;
    std::fs::write(&cached[0], &flipped).unwrap();
    assert_eq!(
        Sandbox::new(config.clone())
            .unwrap()
            .load(&bytes)
            .unwrap()
            .1,
        Compiled
    );
    assert_eq!(
        Sandbox::new(config).unwrap().load(&bytes).unwrap().1,
        DiskCache
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fuel_limits_stop_a_guest_and_usage_reports_fuel() {
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: None,
        fuel_metering: true,
        ..SandboxConfig::default()
    })
    .unwrap();
    let (guests, _) = sandbox.load(&read_module(TEST_GUESTS_WASM)).unwrap();
    let (seed, _) = sandbox.load(&read_module(SEED_TASKS_WASM)).unwrap();
    let limits = TaskLimits {
        fuel: Some(1_000_000),
        ..TaskLimits::default()
    };
    let error = run(&sandbox, &guests, "spin_forever", json!([]), &limits)
        .result
        .unwrap_err();
    assert_eq!(error, TaskError::OutOfFuel { limit: 1_000_000 });
    let small = run(&sandbox, &seed, "add", json!([1, 2]), &limits);
    let used = small.usage.fuel_consumed.unwrap();
    assert!(used > 0 && used < 1_000_000, "fuel used {used}");
    assert_eq!(ok(small), json!(3));
    // A sandbox without metering refuses a fuel limit rather than ignoring it.
    let unmetered = self::sandbox();
    let (seed, _) = unmetered.load(&read_module(SEED_TASKS_WASM)).unwrap();
    let error = run(&unmetered, &seed, "add", json!([1, 2]), &limits)
        .result
        .unwrap_err();
    assert!(matches!(error, TaskError::InvalidLimits(_)), "{error:?}");
}

#[test]
fn a_running_task_stops_within_a_tick_of_its_cancel_flag() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let sandbox = sandbox();
    let (guests, _) = sandbox.load(&read_module(TEST_GUESTS_WASM)).unwrap();
    let (seed, _) = sandbox.load(&read_module(SEED_TASKS_WASM)).unwrap();
    let signature = guests.task("spin_forever").unwrap();
    let args = encode_args_from_json(signature, &[]).unwrap();
    let limits = TaskLimits {
        timeout: Duration::from_secs(60),
        ..TaskLimits::default()
    };
    let flag = Arc::new(AtomicBool::new(false));
    let setter = {
        let flag = flag.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            flag.store(true, Ordering::Relaxed);
            Instant::now()
        })
    };
    let run = sandbox.run_cancellable(&guests, "spin_forever", &args, &limits, &flag);
    let set_at = setter.join().unwrap();
    assert_eq!(run.result.unwrap_err(), TaskError::Cancelled);
    assert!(
        set_at.elapsed() < Duration::from_millis(500),
        "stopped late"
    );
    assert_eq!(TaskError::Cancelled.kind(), "cancelled");
    // Unset, the flag changes nothing: the time limit still applies, and
    // a task that returns returns.
    let quiet = Arc::new(AtomicBool::new(false));
    let short = TaskLimits {
        timeout: Duration::from_millis(200),
        ..TaskLimits::default()
    };
    let run = sandbox.run_cancellable(&guests, "spin_forever", &args, &short, &quiet);
    assert_eq!(
        run.result.unwrap_err(),
        TaskError::TimeLimit {
            limit: Duration::from_millis(200)
        }
    );
    let add = encode_args_from_json(seed.task("add").unwrap(), &[json!(1), json!(2)]).unwrap();
    let run = sandbox.run_cancellable(&seed, "add", &add, &short, &quiet);
    assert_eq!(ok(run), json!(3));
}

#[test]
fn a_guest_sleeping_in_the_host_is_stopped_at_its_time_limit_and_by_cancel() {
    let sandbox = sandbox();
    let (guests, _) = sandbox.load(&read_module(TEST_GUESTS_WASM)).unwrap();
    let limits = TaskLimits {
        timeout: Duration::from_millis(300),
        ..TaskLimits::default()
    };
    let started = Instant::now();
    let run = run(&sandbox, &guests, "nap", json!([20]), &limits);
    assert!(
        matches!(run.result, Err(TaskError::TimeLimit { .. })),
        "{:?}",
        run.result
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A short nap within the limit still sleeps and returns.
    let started = Instant::now();
    assert_eq!(
        ok(super_run(&sandbox, &guests, "nap", json!([0]))),
        json!(0)
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    // Cancelled while it sleeps: stopped within a few ticks.
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let long = TaskLimits {
        timeout: Duration::from_secs(600),
        ..TaskLimits::default()
    };
    let args = encode_args_from_json(guests.task("nap").unwrap(), &[json!(600)]).unwrap();
    let started = Instant::now();
    let run = std::thread::scope(|scope| {
        let running = scope.spawn(|| sandbox.run_cancellable(&guests, "nap", &args, &long, &flag));
        std::thread::sleep(Duration::from_millis(100));
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
        running.join().unwrap()
    });
    assert_eq!(run.result.unwrap_err(), TaskError::Cancelled);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

fn super_run(sandbox: &Sandbox, module: &CompiledModule, task: &str, args: Json) -> TaskRun {
    run(sandbox, module, task, args, &TaskLimits::default())
}

fn artifacts(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
        .collect()
}

#[test]
fn the_disk_cache_trusts_only_what_this_user_made_and_stays_under_its_size() {
    use std::os::unix::fs::PermissionsExt;
    use wrun_sandbox::LoadSource::*;
    let root = std::env::temp_dir().join(format!("wrun-cache-trust-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let config = |dir: &str| SandboxConfig {
        cache_dir: Some(root.join(dir)),
        max_concurrent_tasks: 2,
        ..SandboxConfig::default()
    };
    let seed = read_module(SEED_TASKS_WASM);
    let guests = read_module(TEST_GUESTS_WASM);
    let load = |dir: &str, bytes: &[u8]| Sandbox::new(config(dir)).unwrap().load(bytes).unwrap().1;
    assert_eq!(load("mine", &seed), Compiled);
    let mode = |p: std::path::PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(root.join("mine")), 0o700);
    assert_eq!(mode(root.join("mine/cache.key")), 0o600);
    // An artifact planted from another cache (made with another key) is
    // native code this user's wrun did not make: refused and recompiled.
    assert_eq!(load("theirs", &seed), Compiled);
    let planted = artifacts(&root.join("theirs")).remove(0);
    let target = artifacts(&root.join("mine")).remove(0);
    std::fs::copy(&planted, &target).unwrap();
    assert_eq!(load("mine", &seed), Compiled);
    assert_eq!(load("mine", &seed), DiskCache);
    // A cache of one module's size keeps the most recently used one.
    assert_eq!(load("mine", &guests), Compiled);
    let largest = artifacts(&root.join("mine"))
        .into_iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .max()
        .unwrap();
    let small = SandboxConfig {
        cache_max_bytes: largest + 1,
        ..config("small")
    };
    let sandbox = Sandbox::new(small).unwrap();
    sandbox.load(&seed).unwrap();
    sandbox.load(&guests).unwrap();
    assert_eq!(artifacts(&root.join("small")).len(), 1);
    let _ = std::fs::remove_dir_all(&root);
}

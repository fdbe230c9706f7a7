//! `wrun run`, `wrun inspect` and `wrun build` as a person uses them: the
//! real binary, exit codes and messages, one hostile guest at a time.

use std::time::{Duration, Instant};

use wrun_tests::{Finished, SEED_TASKS_WASM, TEST_GUESTS_WASM, workspace_root, wrun, wrun_in};

#[track_caller]
fn expect(finished: &Finished, code: i32, stdout: &str, stderr_contains: &str) {
    assert_eq!(finished.code, Some(code), "{finished:#?}");
    assert_eq!(finished.stdout, stdout, "{finished:#?}");
    assert!(
        finished.stderr.contains(stderr_contains),
        "stderr lacks {stderr_contains:?}: {finished:#?}"
    );
}

#[test]
fn run_prints_the_json_result() {
    expect(
        &wrun(&["run", SEED_TASKS_WASM, "add", "1", "2"]),
        0,
        "3\n",
        "",
    );
    expect(&wrun(&["run", SEED_TASKS_WASM, "inc", "-5"]), 0, "-4\n", "");
    expect(
        &wrun(&["run", SEED_TASKS_WASM, "add", "--args", "[20, 22]"]),
        0,
        "42\n",
        "",
    );
    expect(
        &wrun(&["run", SEED_TASKS_WASM, "increment_data", "[1,2,3]"]),
        0,
        "[2,3,4]\n",
        "",
    );
    expect(
        &wrun(&["run", TEST_GUESTS_WASM, "mirror", r#"{"x":1,"y":2}"#]),
        0,
        "{\"x\":2.0,\"y\":1.0}\n",
        "",
    );
    let chatty = wrun(&["run", TEST_GUESTS_WASM, "chatty", "\"hi\"", "--usage"]);
    expect(
        &chatty,
        0,
        "\"hi\"\n",
        "[stdout] out: hi\n[stderr] err: hi\nusage: wall ",
    );
}

#[test]
fn limits_come_from_the_environment_too() {
    use std::process::Command;
    let output = Command::new(wrun_tests::wrun_binary())
        .args(["run", TEST_GUESTS_WASM, "spin_forever", "--no-cache"])
        .env("WRUN_TIMEOUT", "200ms")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("time limit of 200 ms"));
}

#[test]
fn an_infinite_loop_is_stopped_by_the_timeout() {
    let started = Instant::now();
    let finished = wrun(&["run", TEST_GUESTS_WASM, "spin_forever", "--timeout", "1s"]);
    expect(
        &finished,
        1,
        "",
        "error: task exceeded its time limit of 1 s",
    );
    // The limit plus a second, compile included (the cache may be cold).
    assert!(
        started.elapsed() < Duration::from_secs(2) + Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_memory_bomb_hits_the_memory_limit() {
    let finished = wrun(&["run", TEST_GUESTS_WASM, "memory_bomb", "--memory", "64MiB"]);
    expect(
        &finished,
        1,
        "",
        "error: task exceeded its memory limit of 64 MiB",
    );
    assert!(
        finished.max_rss_kib < 256 * 1024,
        "host RSS {} KiB",
        finished.max_rss_kib
    );
}

#[test]
fn deep_recursion_is_a_stack_overflow_trap() {
    let finished = wrun(&["run", TEST_GUESTS_WASM, "recurse", "100000000"]);
    expect(&finished, 1, "", "error: task trapped: stack overflow");
}

#[test]
fn a_hundred_megabytes_of_stdout_is_truncated_and_host_memory_stays_bounded() {
    let finished = wrun(&["run", TEST_GUESTS_WASM, "flood_stdout", "100"]);
    expect(
        &finished,
        0,
        &format!("{}\n", 100u64 << 20),
        "[stdout] [wrun: 103809024 more bytes of stdout dropped",
    );
    // 1 MiB kept; the process (binary, engine, one pooled instance) stays far below 100 MB.
    assert!(
        finished.max_rss_kib < 80 * 1024,
        "host RSS {} KiB",
        finished.max_rss_kib
    );
}

#[test]
fn a_result_over_the_limit_is_an_error() {
    let finished = wrun(&[
        "run",
        TEST_GUESTS_WASM,
        "big_result",
        "5000",
        "--max-result",
        "1KiB",
    ]);
    expect(
        &finished,
        1,
        "",
        "error: task result is 5003 bytes, over the limit of 1 KiB",
    );
}

#[test]
fn files_and_sockets_are_denied() {
    let file = wrun(&["run", TEST_GUESTS_WASM, "read_file", "\"/etc/passwd\""]);
    expect(
        &file,
        1,
        "",
        "error: task failed: cannot read /etc/passwd: No such file or directory",
    );
    let socket = wrun(&["run", TEST_GUESTS_WASM, "open_socket", "\"127.0.0.1:22\""]);
    expect(
        &socket,
        1,
        "",
        "error: task failed: cannot connect to 127.0.0.1:22: operation not supported",
    );
}

#[test]
fn a_panic_shows_its_message_and_location() {
    let finished = wrun(&["run", TEST_GUESTS_WASM, "panic_with", "\"the sky fell\""]);
    expect(&finished, 1, "", "error: task panicked at src/lib.rs:");
    assert!(
        finished.stderr.trim_end().ends_with(": the sky fell"),
        "{finished:#?}"
    );
}

#[test]
fn bad_modules_are_input_errors() {
    let not_wasm = std::env::temp_dir().join(format!("wrun-not-wasm-{}.wasm", std::process::id()));
    std::fs::write(&not_wasm, b"#!/bin/sh\necho hi\n").unwrap();
    let finished = wrun(&["run", not_wasm.to_str().unwrap(), "add", "1", "2"]);
    expect(
        &finished,
        2,
        "",
        "not a WebAssembly module: it does not start with the `\\0asm` magic",
    );

    let no_abi = std::env::temp_dir().join(format!("wrun-no-abi-{}.wasm", std::process::id()));
    std::fs::write(
        &no_abi,
        wat::parse_str("(module (memory (export \"memory\") 1) (func (export \"add\")))").unwrap(),
    )
    .unwrap();
    let finished = wrun(&["run", no_abi.to_str().unwrap(), "add"]);
    expect(
        &finished,
        2,
        "",
        "not a wrun task module: it has no `wrun.tasks` custom section",
    );
    let finished = wrun(&["run", "/nonexistent.wasm", "add"]);
    expect(&finished, 2, "", "cannot read the module /nonexistent.wasm");
    let _ = std::fs::remove_file(not_wasm);
    let _ = std::fs::remove_file(no_abi);
}

#[test]
fn unknown_tasks_and_bad_arguments_are_input_errors() {
    let finished = wrun(&["run", SEED_TASKS_WASM, "multiply", "1", "2"]);
    expect(
        &finished,
        2,
        "",
        "error: unknown task `multiply`; the module has: add, consume, dec,",
    );
    let finished = wrun(&["run", SEED_TASKS_WASM, "add", "1"]);
    expect(
        &finished,
        2,
        "",
        "error: task `add(x: i64, y: i64) -> i64` takes 2 argument(s), got 1",
    );
    let finished = wrun(&["run", SEED_TASKS_WASM, "add", "1", "\"two\""]);
    expect(
        &finished,
        2,
        "",
        "error: argument `y` of task `add`: expected i64, got string \"two\"",
    );
    let finished = wrun(&["run", SEED_TASKS_WASM, "increment_data", "[1, 2.5]"]);
    expect(
        &finished,
        2,
        "",
        "error: argument `data` of task `increment_data`: at [1]: expected i64, got number 2.5",
    );
    let finished = wrun(&["run", SEED_TASKS_WASM, "add", "1", "two"]);
    expect(
        &finished,
        2,
        "",
        "error: argument 2 (\"two\") is not valid JSON",
    );
    let finished = wrun(&["run", SEED_TASKS_WASM, "add", "--args", "[1, 2"]);
    expect(&finished, 2, "", "error: --args is not valid JSON");
    let finished = wrun(&["run", TEST_GUESTS_WASM, "norm", r#"{"x": 1}"#]);
    expect(
        &finished,
        2,
        "",
        "error: task `norm` rejected its arguments: argument `p`: missing field `y`",
    );
    let finished = wrun(&["run", SEED_TASKS_WASM, "add", "1", "2", "--timeout", "soon"]);
    expect(&finished, 2, "", "`soon` is not a duration");
}

#[test]
fn inspect_lists_tasks_with_signatures() {
    let finished = wrun(&["inspect", SEED_TASKS_WASM]);
    assert_eq!(finished.code, Some(0), "{finished:#?}");
    assert!(
        finished
            .stdout
            .contains("\n  throw_darts(darts: u64, seed: u64) -> tuple<u64,u64>\n"),
        "{}",
        finished.stdout
    );
    assert!(
        finished
            .stdout
            .contains("\n  estimate_pi(counts: list<tuple<u64,u64>>) -> f64\n")
    );
    let json = wrun(&["inspect", SEED_TASKS_WASM, "--json"]);
    let parsed: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(parsed["tasks"].as_array().unwrap().len(), 15);
    assert_eq!(parsed["digest"].as_str().unwrap().len(), 64);
}

#[test]
fn build_prints_the_module_path_last() {
    // The build script already built it, so this checks the command, not cargo's speed.
    let crate_dir = workspace_root().join("examples/seed-tasks");
    let finished = wrun(&["build", crate_dir.to_str().unwrap()]);
    assert_eq!(finished.code, Some(0), "{finished:#?}");
    let last = finished.stdout.lines().last().unwrap();
    assert!(
        last.ends_with("wasm32-wasip1/release/seed_tasks.wasm"),
        "{last}"
    );
    assert!(std::path::Path::new(last).is_file());
    let finished = wrun(&["build", "/nonexistent"]);
    expect(&finished, 2, "", "no Cargo.toml in /nonexistent");
}

#[test]
fn a_config_file_sets_the_flags_and_flags_win() {
    let path = std::env::temp_dir().join(format!("wrun-config-{}.toml", std::process::id()));
    std::fs::write(&path, "timeout = \"150ms\"\nmax-result = \"1KiB\"\n").unwrap();
    let config = path.to_str().unwrap();
    let finished = wrun(&["run", TEST_GUESTS_WASM, "spin_forever", "--config", config]);
    expect(
        &finished,
        1,
        "",
        "error: task exceeded its time limit of 150 ms",
    );
    let finished = wrun(&[
        "run",
        TEST_GUESTS_WASM,
        "big_result",
        "5000",
        "--config",
        config,
    ]);
    expect(&finished, 1, "", "over the limit of 1 KiB");
    let finished = wrun(&[
        "run",
        TEST_GUESTS_WASM,
        "spin_forever",
        "--config",
        config,
        "--timeout",
        "250ms",
    ]);
    expect(
        &finished,
        1,
        "",
        "error: task exceeded its time limit of 250 ms",
    );
    std::fs::write(&path, "timeout = [1]\n").unwrap();
    let finished = wrun(&["run", TEST_GUESTS_WASM, "spin_forever", "--config", config]);
    expect(
        &finished,
        2,
        "",
        "`timeout` must be a string, number, boolean or list of strings, not array",
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_config_file_with_an_unknown_key_names_the_closest_one() {
    let path = std::env::temp_dir().join(format!("wrun-config-typo-{}.toml", std::process::id()));
    std::fs::write(&path, "thread = 4\n").unwrap();
    let finished = wrun(&[
        "run",
        SEED_TASKS_WASM,
        "add",
        "1",
        "2",
        "--config",
        path.to_str().unwrap(),
    ]);
    expect(
        &finished,
        2,
        "",
        "unknown setting `thread`; did you mean `threads`?",
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_result_that_is_not_of_the_declared_type_fails_the_task_in_run_and_on_a_cluster() {
    let path = std::env::temp_dir().join(format!("wrun-liar-{}.wasm", std::process::id()));
    std::fs::write(&path, wrun_tests::hand_written_wasm()).unwrap();
    let module = path.to_str().unwrap();
    for command in ["run", "submit"] {
        expect(
            &wrun(&[command, module, "liar"]),
            1,
            if command == "run" { "" } else { "null\n" },
            "result does not match the declared type i64: expected i64, got string \"hi\"",
        );
        expect(
            &wrun(&[command, module, "reserved"]),
            1,
            if command == "run" { "" } else { "null\n" },
            "the reserved byte 0xc1 at offset 0 is not a value",
        );
    }
    let _ = std::fs::remove_file(path);
}

/// Runs `wrun ARGS` with its stdout a pipe whose reader is already gone.
fn with_closed_stdout(args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    std::process::Command::new(wrun_tests::wrun_binary())
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_closed_stdout_ends_a_command_quietly() {
    let out = with_closed_stdout(&["inspect", SEED_TASKS_WASM]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // `wrun status | head -1`, the case users met.
    let mut procs = wrun_tests::Procs::new("closed-stdout");
    let file = procs.path("scheduler.json");
    let file_arg = file.to_str().unwrap().to_owned();
    procs.start("scheduler", &["scheduler", "--scheduler-file", &file_arg]);
    wrun_tests::wait_until("the scheduler file", Duration::from_secs(30), || {
        file.exists()
    });
    let out = with_closed_stdout(&["status", "--scheduler-file", &file_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn slurm_directives_that_start_with_a_dash_are_taken_as_written_in_help() {
    let finished = wrun(&[
        "slurm",
        "job-script",
        "--extra-directive",
        "--gres=gpu:1",
        "--skip-directive",
        "--mem",
        "--prologue",
        "-x echo hi",
        "--scheduler-file",
        "/tmp/wrun-directives.json",
    ]);
    assert_eq!(finished.code, Some(0), "{finished:#?}");
    assert!(
        finished.stdout.contains("#SBATCH --gres=gpu:1\n"),
        "{}",
        finished.stdout
    );
    assert!(
        !finished.stdout.contains("#SBATCH --mem"),
        "{}",
        finished.stdout
    );
    assert!(
        finished.stdout.contains("-x echo hi\n"),
        "{}",
        finished.stdout
    );
}

#[test]
fn wrun_new_makes_a_task_crate_that_builds_and_runs_at_once() {
    let dir = std::env::temp_dir().join(format!("wrun-new-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let made = wrun_in(&dir, &["new", "my-tasks"], &[]);
    assert_eq!(made.code, Some(0), "{made:#?}");
    let readme = std::fs::read_to_string(dir.join("my-tasks/README.md")).unwrap();
    assert_eq!(readme.lines().count(), 3, "{readme}");
    let built = wrun_in(&dir, &["build", "my-tasks"], &[]);
    assert_eq!(built.code, Some(0), "{built:#?}");
    let module = built.stdout.lines().last().unwrap().to_owned();
    assert!(module.ends_with("my_tasks.wasm"), "{module}");
    expect(
        &wrun_in(&dir, &["run", &module, "add", "1", "2"], &[]),
        0,
        "3\n",
        "",
    );
    // Bad names and existing directories are refused before anything is written.
    expect(
        &wrun_in(&dir, &["new", "my-tasks"], &[]),
        2,
        "",
        "exists already",
    );
    expect(
        &wrun_in(&dir, &["new", "9lives"], &[]),
        2,
        "",
        "is not a crate name",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_guest_sleeping_in_the_host_is_stopped_by_its_timeout_in_run_and_on_a_cluster() {
    for command in ["run", "submit"] {
        let started = Instant::now();
        let finished = wrun(&[command, TEST_GUESTS_WASM, "nap", "20", "--timeout", "1s"]);
        assert_eq!(finished.code, Some(1), "{finished:#?}");
        assert!(
            finished.stderr.contains("exceeded its time limit of 1 s"),
            "{finished:#?}"
        );
        // The limit plus a second, and start-up and compiling.
        assert!(
            started.elapsed() < Duration::from_millis(2500),
            "{command}: {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn bench_scheduler_runs_a_map_and_a_chain_on_simulated_workers_and_ends_with_json() {
    for (deps, tasks) in [("none", 3000u64), ("chain", 300)] {
        let out = wrun(&[
            "bench",
            "scheduler",
            "--workers",
            "5",
            "--threads",
            "2",
            "--tasks",
            &tasks.to_string(),
            "--deps",
            deps,
            "--module",
            SEED_TASKS_WASM,
        ]);
        assert_eq!(out.code, Some(0), "{out:?}");
        let last: serde_json::Value =
            serde_json::from_str(out.stdout.lines().last().unwrap()).unwrap();
        assert_eq!(last["bench"], "scheduler", "{out:?}");
        assert_eq!(last["workers"], 5);
        assert_eq!(last["tasks"], tasks);
        assert_eq!(last["deps"], deps);
        assert!(last["tasks_per_s"].as_f64().unwrap() > 0.0, "{last}");
        // CPU time is counted in 10 ms ticks: a short run may show 0.
        assert!(last["scheduler_cpu_s"].as_f64().is_some(), "{last}");
        assert!(
            last["scheduler_peak_rss_mib"].as_f64().unwrap() > 1.0,
            "{last}"
        );
        // The tasks went out in batches and came back the same way.
        let run_calls = last["run_calls"].as_u64().unwrap();
        let events_calls = last["events_calls"].as_u64().unwrap();
        assert!((1..=tasks).contains(&run_calls), "{last}");
        assert!((1..=tasks * 2).contains(&events_calls), "{last}");
    }
    let out = wrun(&["bench", "scheduler", "--workers", "0"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.contains("--workers and --tasks must be above 0"),
        "{out:?}"
    );
}

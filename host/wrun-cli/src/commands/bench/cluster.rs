//! `wrun bench cluster`: the Dask reference workloads (bench/dask)
//! on a real `wrun local` cluster of 2 workers × 1 thread, through the
//! client library. Prints a table, then one JSON object as the last line.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use serde_json::{Value as Json, json};
use wrun_client::{Client, Delayed, Module, Target, TaskLimits, TaskOptions};

use crate::exit::CommandResult;
use crate::output::outln;

pub(super) struct Cluster {
    pub(super) child: Child,
    file: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_some() {
            return; // ended (killed by the bench) and reaped already
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

pub(super) fn spawn(
    args: &[&str],
    file: &PathBuf,
    log: Option<&PathBuf>,
) -> anyhow::Result<Cluster> {
    spawn_with_env(args, file, log, &[])
}

fn spawn_with_env(
    args: &[&str],
    file: &PathBuf,
    log: Option<&PathBuf>,
    env: &[(&str, &std::ffi::OsStr)],
) -> anyhow::Result<Cluster> {
    let exe = std::env::current_exe()?;
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path)?),
        None => Stdio::null(),
    };
    let child = Command::new(exe)
        .args(args)
        .arg("--scheduler-file")
        .arg(file)
        // Workers log each peer transfer (bytes, microseconds) at this target.
        .env("WRUN_LOG", "warn,wrun_worker::transfer=info")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()?;
    Ok(Cluster {
        child,
        file: file.clone(),
    })
}

/// The last peer transfer a worker logged: (bytes, microseconds).
fn last_transfer(log: &PathBuf) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("fetched an input from a peer"))?;
    let field = |name: &str| -> Option<u64> {
        let start = line.find(&format!("{name}="))? + name.len() + 1;
        line[start..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some((field("bytes")?, field("micros")?))
}

pub(super) fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub(super) fn worker_count(client: &Client) -> usize {
    client.status().ok().map(|s| s.workers.len()).unwrap_or(0)
}

pub(super) fn wait_until(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !condition() {
        ensure!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn timed<T>(work: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<(T, f64)> {
    let started = Instant::now();
    let value = work()?;
    Ok((value, started.elapsed().as_secs_f64()))
}

fn ok(result: Result<Json, wrun_client::TaskFailure>) -> anyhow::Result<Json> {
    result.map_err(|f| anyhow!("task failed ({}): {}", f.kind, f.message))
}

fn noop_map(client: &Client, module: &Module, n: i64) -> anyhow::Result<f64> {
    let ((), seconds) = timed(|| {
        let calls = (0..n).map(|i| vec![json!(i).into()]).collect();
        let t0 = Instant::now();
        let futures = client.map(module, "identity", calls)?;
        let submitted = t0.elapsed();
        client.wait(&futures)?;
        let finished = t0.elapsed();
        let gathered = client.gather(&futures)?;
        tracing::info!(n, ?submitted, ?finished, gathered = ?t0.elapsed(), "no-op map");
        for (i, result) in gathered.into_iter().enumerate() {
            ensure!(ok(result)? == json!(i), "identity({i})");
        }
        Ok(())
    })?;
    Ok(seconds)
}

fn tree_sum(client: &Client, module: &Module, leaves: i64) -> anyhow::Result<(usize, f64)> {
    let mut graph = client.graph();
    let mut level: Vec<Delayed> = (0..leaves)
        .map(|i| graph.call(module, "identity", vec![json!(i).into()]))
        .collect();
    let mut tasks = level.len();
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [x, y] => {
                    tasks += 1;
                    graph.call(module, "add", vec![(*x).into(), (*y).into()])
                }
                [x] => *x,
                _ => unreachable!(),
            })
            .collect();
    }
    let (result, seconds) = timed(|| Ok(graph.compute(&level)?))?;
    let total = ok(result.into_iter().next().context("one result")?)?;
    ensure!(
        total == json!(leaves * (leaves - 1) / 2),
        "tree sum = {total}"
    );
    Ok((tasks, seconds))
}

fn chain(client: &Client, module: &Module, n: i64) -> anyhow::Result<f64> {
    let mut graph = client.graph();
    let mut x = graph.call(module, "inc", vec![json!(0).into()]);
    for _ in 1..n {
        x = graph.call(module, "inc", vec![x.into()]);
    }
    let (result, seconds) = timed(|| Ok(graph.compute(&[x])?))?;
    ensure!(
        ok(result.into_iter().next().context("one result")?)? == json!(n),
        "chain result"
    );
    Ok(seconds)
}

fn seed_graph(client: &Client, module: &Module) -> anyhow::Result<f64> {
    let mut graph = client.graph();
    let zs: Vec<Delayed> = (0..256)
        .map(|i| {
            let x = graph.call(module, "inc", vec![json!(i).into()]);
            let y = graph.call(module, "dec", vec![x.into()]);
            graph.call(module, "add", vec![x.into(), y.into()])
        })
        .collect();
    let (results, seconds) = timed(|| Ok(graph.compute(&zs)?))?;
    for (i, z) in results.into_iter().enumerate() {
        ensure!(ok(z)? == json!(2 * i + 1), "z[{i}]");
    }
    Ok(seconds)
}

fn darts(client: &Client, module: &Module) -> anyhow::Result<(f64, f64)> {
    let ((inside, total), seconds) = timed(|| {
        let calls = (0..100)
            .map(|seed| vec![json!(1_000_000).into(), json!(seed).into()])
            .collect();
        let futures = client.map(module, "throw_darts", calls)?;
        let mut sums = (0u64, 0u64);
        for result in client.gather(&futures)? {
            let pair = ok(result)?;
            sums.0 += pair[0].as_u64().context("inside")?;
            sums.1 += pair[1].as_u64().context("total")?;
        }
        Ok(sums)
    })?;
    let pi = 4.0 * inside as f64 / total as f64;
    ensure!(
        total == 100_000_000 && (pi - std::f64::consts::PI).abs() < 0.01,
        "pi = {pi}"
    );
    Ok((seconds, pi))
}

/// Two 64 MiB blobs made on different workers, then one task that reads
/// both: one of them crosses from worker to worker. The receiving worker logs
/// how long that fetch took; returns MB/s (10^6 bytes), best of 3.
fn transfer(client: &mut Client, module: &Module, log: &PathBuf) -> anyhow::Result<f64> {
    const BYTES: u64 = 64 << 20;
    client.set_options(TaskOptions {
        limits: TaskLimits {
            memory_bytes: 1 << 30,
            result_bytes: 128 << 20,
            ..TaskLimits::DEFAULT
        },
        ..TaskOptions::default()
    });
    let mut best: f64 = 0.0;
    for round in 0..3u64 {
        let a = client.submit(
            module,
            "produce",
            vec![json!(BYTES).into(), json!(2 * round + 1).into()],
        )?;
        let b = client.submit(
            module,
            "produce",
            vec![json!(BYTES).into(), json!(2 * round + 2).into()],
        )?;
        for state in client.wait(&[a.clone(), b.clone()])? {
            state.map_err(|f| anyhow!("produce failed: {}", f.message))?;
        }
        let c = client.submit(module, "consume", vec![(&a).into(), (&b).into()])?;
        let total = ok(client.gather(&[c])?.remove(0))?;
        ensure!(total == json!(2 * BYTES), "consume = {total}");
        let (bytes, micros) = last_transfer(log).context("no worker logged a peer transfer")?;
        ensure!(
            (BYTES..BYTES + 16).contains(&bytes),
            "the logged transfer moved {bytes} bytes"
        );
        best = best.max(bytes as f64 / micros.max(1) as f64);
    }
    client.set_options(TaskOptions::default());
    Ok(best)
}

fn metg(
    client: &Client,
    module: &Module,
    target_s: f64,
) -> anyhow::Result<(Option<u64>, Vec<Json>)> {
    let threads = 2.0;
    let warm = client.map(
        module,
        "spin",
        (0..100).map(|_| vec![json!(1).into()]).collect(),
    )?;
    client.gather(&warm)?;
    let mut points = Vec::new();
    let mut best = None;
    for d in [
        100_000u64, 30_000, 10_000, 3_000, 1_000, 300, 100, 50, 30, 20, 10, 3,
    ] {
        let n = ((target_s * threads * 1e6 / d as f64) as u64).clamp(20, 20_000);
        let (results, wall) = timed(|| {
            let futures = client.map(
                module,
                "spin",
                (0..n).map(|_| vec![json!(d).into()]).collect(),
            )?;
            Ok(client.gather(&futures)?)
        })?;
        for result in results {
            ensure!(ok(result)? == json!(d), "spin({d})");
        }
        let efficiency = n as f64 * d as f64 / 1e6 / (wall * threads);
        points.push(json!({"grain_us": d, "tasks": n, "wall_s": wall, "efficiency": (efficiency * 1000.0).round() / 1000.0}));
        if efficiency >= 0.5 {
            best = Some(d);
        }
    }
    Ok((best, points))
}

pub(crate) fn cluster(module: Option<PathBuf>, metg_target_s: f64) -> CommandResult {
    let module_path = super::sandbox::seed_module(module)?;
    let bytes = std::fs::read(&module_path)
        .with_context(|| format!("reading {}", module_path.display()))?;
    let dir = std::env::temp_dir();
    let pid = std::process::id();

    // Start-up: the command to 2 workers ready.
    let started = Instant::now();
    let file = dir.join(format!("wrun-bench-{pid}.json"));
    let log = dir.join(format!("wrun-bench-{pid}.log"));
    let local = spawn(
        &["local", "--workers", "2", "--threads", "1"],
        &file,
        Some(&log),
    )?;
    let mut client = Client::connect(&Target::File(file.clone()), Duration::from_secs(60))
        .map_err(|e| anyhow!(e))?;
    wait_until("2 workers", Duration::from_secs(60), || {
        worker_count(&client) == 2
    })?;
    let start_s = started.elapsed().as_secs_f64();
    let module = client.upload(&bytes).map_err(|e| anyhow!(e))?;
    // Warm up: both workers load the module.
    let warm = client
        .map(
            &module,
            "identity",
            (0..200).map(|i| vec![json!(i).into()]).collect(),
        )
        .map_err(|e| anyhow!(e))?;
    client.gather(&warm).map_err(|e| anyhow!(e))?;

    eprintln!("running: noop maps, seed graph, chain, tree, darts, transfer, METG ...");
    let seed_graph_s = seed_graph(&client, &module)?;
    let noop_10k = noop_map(&client, &module, 10_000)?;
    let noop_100k = noop_map(&client, &module, 100_000)?;
    let chain_s = chain(&client, &module, 10_000)?;
    let (tree_tasks, tree_s) = tree_sum(&client, &module, 10_000)?;
    let (darts_s, pi) = darts(&client, &module)?;
    let transfer_mb_s = transfer(&mut client, &module, &log)?;
    let (metg50, metg_points) = metg(&client, &module, metg_target_s)?;
    let scheduler_rss_kib = proc_status_kib(local.child.id(), "VmHWM:").unwrap_or(0);
    drop(client);
    drop(local);
    let _ = std::fs::remove_file(&log);

    eprintln!("running: the no-op map with the dashboard closed and open in headless Chromium ...");
    let dashboard = dashboard_round(&bytes)?;
    let bytes_per_task = bytes_per_queued_task(&bytes)?;
    eprintln!("running: the no-op map with a journal, and a restart on 1M journaled tasks ...");
    let journal = journal_round(&bytes)?;
    eprintln!("running: 1 GiB of results on a 256 MiB worker (spilling) and on a 4 GiB one ...");
    let spilling = spill_round(&bytes, "256MiB")?;
    let in_memory = spill_round(&bytes, "4GiB")?;

    let r = |x: f64, digits: i32| (x * 10f64.powi(digits)).round() / 10f64.powi(digits);
    outln!("wrun bench cluster  (wrun local: 2 workers x 1 thread, like the Dask scripts)");
    let row = |name: &str, value: String| outln!("  {name:<44} {value:>14}");
    row(
        "start-up, command to 2 workers ready",
        format!("{start_s:.3} s"),
    );
    row(
        "no-op map 10k (map to all results)",
        format!("{noop_10k:.3} s"),
    );
    row("no-op map 100k", format!("{noop_100k:.3} s"));
    row(
        "no-op tasks/s (100k)",
        format!("{:.0}", 100_000.0 / noop_100k),
    );
    row("seed graph, 768 tasks", format!("{seed_graph_s:.4} s"));
    row("chain of 10k dependent tasks", format!("{chain_s:.3} s"));
    row(
        &format!("tree sum of 10k leaves ({tree_tasks} tasks)"),
        format!("{tree_s:.3} s"),
    );
    row(
        &format!("darts 100 x 1M (pi = {pi:.6})"),
        format!("{darts_s:.3} s"),
    );
    row(
        "64 MiB worker to worker",
        format!("{transfer_mb_s:.0} MB/s"),
    );
    row(
        "scheduler process peak RSS",
        format!("{:.1} MiB", scheduler_rss_kib as f64 / 1024.0),
    );
    row(
        "scheduler bytes per queued task (100k)",
        format!("{bytes_per_task:.0} B"),
    );
    row(
        "no-op tasks/s (100k), journal on",
        format!("{:.0}", 100_000.0 / journal.noop_100k_s),
    );
    row(
        "  journal on / off",
        format!("{:.3}", noop_100k / journal.noop_100k_s),
    );
    row(
        "restart on a journal of 1M tasks, to serving",
        format!("{:.3} s", journal.restart_1m_s),
    );
    row(
        "journal bytes per accepted task",
        format!("{:.0} B", journal.bytes_per_task),
    );
    match &dashboard {
        Some(d) => {
            row(
                "no-op tasks/s (100k), dashboard closed",
                format!("{:.0}", 100_000.0 / d.closed_s),
            );
            row(
                "  dashboard open in Chromium",
                format!("{:.0}", 100_000.0 / d.open_s),
            );
            row("  open / closed", format!("{:.3}", d.closed_s / d.open_s));
        }
        None => row("dashboard open in Chromium", "no chromium".to_owned()),
    }
    row(
        "1 GiB of results made, 256 MiB worker",
        format!("{:.0} MB/s", spilling.made_mb_s),
    );
    row(
        "  the same on a 4 GiB worker (no spill)",
        format!("{:.0} MB/s", in_memory.made_mb_s),
    );
    row(
        "  spilled to disk",
        format!("{:.0} MiB", spilling.spilled_bytes as f64 / 1048576.0),
    );
    row(
        "1 GiB gathered back, spilled",
        format!("{:.0} MB/s", spilling.gathered_mb_s),
    );
    row(
        "  the same from memory",
        format!("{:.0} MB/s", in_memory.gathered_mb_s),
    );
    row(
        "METG(50%)",
        metg50
            .map(|d| format!("{d} µs"))
            .unwrap_or_else(|| "none".to_owned()),
    );
    outln!(
        "{}",
        json!({
            "bench": "cluster",
            "start_s": r(start_s, 3),
            "noop_map_10k_s": r(noop_10k, 4),
            "noop_map_100k_s": r(noop_100k, 4),
            "noop_tasks_per_s": (100_000.0 / noop_100k).round(),
            "seed_graph_s": r(seed_graph_s, 4),
            "chain_10k_s": r(chain_s, 4),
            "tree_sum_10k_s": r(tree_s, 4),
            "darts_100x1m_s": r(darts_s, 4),
            "transfer_64mib_mb_s": transfer_mb_s.round(),
            "scheduler_rss_mib": r(scheduler_rss_kib as f64 / 1024.0, 1),
            "scheduler_bytes_per_queued_task": bytes_per_task.round(),
            "journal_noop_tasks_per_s": (100_000.0 / journal.noop_100k_s).round(),
            "journal_on_off_ratio": r(noop_100k / journal.noop_100k_s, 3),
            "journal_restart_1m_s": r(journal.restart_1m_s, 3),
            "journal_bytes_per_task": journal.bytes_per_task.round(),
            "spill_made_mb_s": spilling.made_mb_s.round(),
            "no_spill_made_mb_s": in_memory.made_mb_s.round(),
            "spilled_mib": (spilling.spilled_bytes as f64 / 1048576.0).round(),
            "spill_gathered_mb_s": spilling.gathered_mb_s.round(),
            "no_spill_gathered_mb_s": in_memory.gathered_mb_s.round(),
            "dashboard_closed_tasks_per_s": dashboard.as_ref().map(|d| (100_000.0 / d.closed_s).round()),
            "dashboard_open_tasks_per_s": dashboard.as_ref().map(|d| (100_000.0 / d.open_s).round()),
            "dashboard_open_closed_ratio": dashboard.as_ref().map(|d| r(d.closed_s / d.open_s, 3)),
            "metg50_us": metg50,
            "metg_points": metg_points,
        })
    );
    Ok(())
}

/// Scheduler memory per queued task: a scheduler with no workers, 100k
/// tasks queued, its RSS before and after.
fn bytes_per_queued_task(bytes: &[u8]) -> anyhow::Result<f64> {
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let file = dir.join(format!("wrun-bench-queue-{pid}.json"));
    let scheduler = spawn(&["scheduler"], &file, None)?;
    let client = Client::connect(&Target::File(file.clone()), Duration::from_secs(60))
        .map_err(|e| anyhow!(e))?;
    let module = client.upload(bytes).map_err(|e| anyhow!(e))?;
    let before = proc_status_kib(scheduler.child.id(), "VmRSS:").unwrap_or(0);
    let queued = client
        .map(
            &module,
            "identity",
            (0..100_000).map(|i| vec![json!(i).into()]).collect(),
        )
        .map_err(|e| anyhow!(e))?;
    wait_until("100k queued tasks", Duration::from_secs(60), || {
        client.status().ok().map(|s| s.tasks.queued) == Some(100_000)
    })?;
    let after = proc_status_kib(scheduler.child.id(), "VmRSS:").unwrap_or(0);
    let bytes_per_task = (after.saturating_sub(before) * 1024) as f64 / 100_000.0;
    drop(queued);
    drop(client);
    drop(scheduler);

    Ok(bytes_per_task)
}

struct SpillRound {
    made_mb_s: f64,
    gathered_mb_s: f64,
    spilled_bytes: u64,
}

/// 64 results of 16 MiB made on one worker of `memory` (one thread), then
/// gathered back one by one. On a 256 MiB worker most of them go to disk
/// (and come back from the page cache: the machine has the memory);
/// the same on a 4 GiB worker is the reference without spilling.
fn spill_round(module_bytes: &[u8], memory: &str) -> anyhow::Result<SpillRound> {
    const BLOB: u64 = 16 << 20;
    const COUNT: u64 = 64;
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let file = dir.join(format!("wrun-bench-spill-{pid}.json"));
    let spill_dir = tempfile::tempdir().context("making a spill directory")?;
    let local = spawn_with_env(
        &[
            "local",
            "--workers",
            "1",
            "--threads",
            "1",
            "--memory",
            memory,
        ],
        &file,
        None,
        &[("WRUN_SPILL_DIR", spill_dir.path().as_os_str())],
    )?;
    let client = Client::connect(&Target::File(file.clone()), Duration::from_secs(60))
        .map_err(|e| anyhow!(e))?;
    wait_until("the worker", Duration::from_secs(60), || {
        worker_count(&client) == 1
    })?;
    let module = client.upload(module_bytes).map_err(|e| anyhow!(e))?;
    let warm = client.submit(&module, "produce", vec![json!(8).into(), json!(0).into()])?;
    client.wait(&[warm])?;
    let (futures, made_s) = timed(|| {
        let futures = client.map(
            &module,
            "produce",
            (0..COUNT)
                .map(|seed| vec![json!(BLOB).into(), json!(seed).into()])
                .collect(),
        )?;
        for state in client.wait(&futures)? {
            state.map_err(|f| anyhow!("produce failed: {}", f.message))?;
        }
        Ok(futures)
    })?;
    wait_until("the worker's heartbeat", Duration::from_secs(10), || {
        client
            .status()
            .ok()
            .and_then(|s| s.workers.first().map(|w| w.held_bytes >= COUNT * BLOB))
            == Some(true)
    })?;
    let spilled_bytes = client.status()?.workers[0].spilled_bytes;
    let ((), gathered_s) = timed(|| {
        for future in &futures {
            let value = client.gather_raw(std::slice::from_ref(future))?.remove(0);
            let value = value.map_err(|f| anyhow!("gather failed: {}", f.message))?;
            ensure!(
                value.len() as u64 == BLOB + 5,
                "a result of {} bytes",
                value.len()
            );
        }
        Ok(())
    })?;
    drop(futures);
    drop(client);
    drop(local);
    let mb = (COUNT * BLOB) as f64 / 1e6;
    Ok(SpillRound {
        made_mb_s: mb / made_s,
        gathered_mb_s: mb / gathered_s,
        spilled_bytes,
    })
}

struct JournalRound {
    noop_100k_s: f64,
    restart_1m_s: f64,
    bytes_per_task: f64,
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The journal's costs: the 100k no-op map on `wrun local --journal`
/// (compare with the same map without one, run just before), then a
/// scheduler with no workers and 1,000,000 accepted tasks in a detached
/// job, SIGKILLed and started again on its journal: the time from the
/// start to answering `status` with every task back, and the journal's
/// bytes per task.
fn journal_round(module_bytes: &[u8]) -> anyhow::Result<JournalRound> {
    const MILLION: i64 = 1_000_000;
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let file = dir.join(format!("wrun-bench-journal-{pid}.json"));
    let journal = tempfile::tempdir().context("making a journal directory")?;
    let journal_arg = journal.path().to_str().context("a UTF-8 temp dir")?;

    let noop_100k_s = {
        let (local, client, module) =
            warmed_local(&["--journal", journal_arg], &file, module_bytes)?;
        let seconds = noop_map(&client, &module, 100_000)?;
        drop(client);
        drop(local);
        seconds
    };

    let million = tempfile::tempdir().context("making a journal directory")?;
    let million_arg = million.path().to_str().context("a UTF-8 temp dir")?;
    let mut scheduler = spawn(&["scheduler", "--journal", million_arg], &file, None)?;
    {
        let client = Client::connect(&Target::File(file.clone()), Duration::from_secs(60))
            .map_err(|e| anyhow!(e))?;
        let module = client.upload(module_bytes).map_err(|e| anyhow!(e))?;
        let futures = client.map(
            &module,
            "identity",
            (0..MILLION).map(|i| vec![json!(i).into()]).collect(),
        )?;
        // Accepted means journaled: `detach` returns once it is durable.
        client.detach(futures, "million")?;
    }
    let bytes_per_task = dir_bytes(million.path()) as f64 / MILLION as f64;
    scheduler.child.kill()?;
    scheduler.child.wait()?;
    std::fs::remove_file(&file).context("removing the dead scheduler's file")?;
    let started = Instant::now();
    let _again = spawn(&["scheduler", "--journal", million_arg], &file, None)?;
    let client = Client::connect(&Target::File(file.clone()), Duration::from_secs(120))
        .map_err(|e| anyhow!(e))?;
    let total = client.status()?.tasks.total;
    let restart_1m_s = started.elapsed().as_secs_f64();
    ensure!(
        total == MILLION as u64,
        "{total} tasks after the restart, not {MILLION}"
    );
    drop(client);
    Ok(JournalRound {
        noop_100k_s,
        restart_1m_s,
        bytes_per_task,
    })
}

/// `wrun bench dashboard`.
pub(crate) fn dashboard(module: Option<PathBuf>) -> CommandResult {
    let module_path = super::sandbox::seed_module(module)?;
    let bytes = std::fs::read(&module_path)
        .with_context(|| format!("reading {}", module_path.display()))?;
    let Some(d) = dashboard_round(&bytes)? else {
        return Err(anyhow!("no chromium: scripts/setup.sh --tests installs it").into());
    };
    outln!("wrun bench dashboard  (wrun local: 2 workers x 1 thread; best of 3 each)");
    outln!(
        "  {:<44} {:>14.0}",
        "no-op tasks/s (100k), dashboard closed",
        100_000.0 / d.closed_s
    );
    outln!(
        "  {:<44} {:>14.0}",
        "  dashboard open in Chromium",
        100_000.0 / d.open_s
    );
    outln!(
        "  {:<44} {:>14.3}",
        "  open / closed",
        d.closed_s / d.open_s
    );
    outln!(
        "{}",
        json!({
            "bench": "dashboard",
            "closed_tasks_per_s": (100_000.0 / d.closed_s).round(),
            "open_tasks_per_s": (100_000.0 / d.open_s).round(),
            "open_closed_ratio": ((d.closed_s / d.open_s) * 1000.0).round() / 1000.0,
        })
    );
    Ok(())
}

/// `wrun local` with 2 workers x 1 thread and `extra` flags, its file at
/// `file`: connected, both workers joined, the module uploaded and loaded
/// by both (a warm-up map).
fn warmed_local(
    extra: &[&str],
    file: &PathBuf,
    module_bytes: &[u8],
) -> anyhow::Result<(Cluster, Client, Module)> {
    warmed_local_of(2, 1, extra, file, module_bytes)
}

/// `wrun local` with `workers` x `threads` and `extra` flags, its file at
/// `file`: connected, every worker joined, the module uploaded and loaded
/// by each (a warm-up map).
pub(super) fn warmed_local_of(
    workers: u32,
    threads: u32,
    extra: &[&str],
    file: &PathBuf,
    module_bytes: &[u8],
) -> anyhow::Result<(Cluster, Client, Module)> {
    let (workers_arg, threads_arg) = (workers.to_string(), threads.to_string());
    let mut args = vec![
        "local",
        "--workers",
        &workers_arg,
        "--threads",
        &threads_arg,
    ];
    args.extend_from_slice(extra);
    let local = spawn(&args, file, None)?;
    let client = Client::connect(&Target::File(file.clone()), Duration::from_secs(60))
        .map_err(|e| anyhow!(e))?;
    wait_until("the workers", Duration::from_secs(60), || {
        worker_count(&client) == workers as usize
    })?;
    let module = client.upload(module_bytes).map_err(|e| anyhow!(e))?;
    let warm = client.map(
        &module,
        "identity",
        (0..200 * workers * threads)
            .map(|i| vec![json!(i).into()])
            .collect(),
    )?;
    client.gather(&warm)?;
    Ok((local, client, module))
}

struct DashboardRound {
    /// The best of three 100k no-op maps with no page open.
    closed_s: f64,
    /// The best of three with the page open in headless Chromium.
    open_s: f64,
}

/// `METHOD path` on a local HTTP server, the whole answer as text (""
/// if it does not answer).
fn http(address: &str, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return String::new();
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let mut bytes = Vec::new();
    if stream.write_all(request.as_bytes()).is_ok() {
        // Chromium's DevTools keep the connection open: read what came
        // within the time-out.
        let mut buf = [0u8; 65536];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&bytes);
            if let Some((head, body)) = text.split_once("\r\n\r\n")
                && let Some(length) = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                && body.len() >= length
            {
                break;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn scrape(address: &str) -> String {
    http(address, "GET", "/metrics")
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The 100k no-op map on `wrun local` with its dashboard, closed and open
/// in turn, three times each, best of each (so a slow moment of the
/// machine does not fall on one side only). One headless Chromium runs
/// throughout (its start-up is not the dashboard's cost); "open" is a tab
/// on the dashboard, opened and closed through Chromium's DevTools HTTP
/// endpoint, and measured once it is live and Chromium is quiet. `None`
/// without Chromium.
fn dashboard_round(module_bytes: &[u8]) -> anyhow::Result<Option<DashboardRound>> {
    if Command::new("chromium").arg("--version").output().is_err() {
        return Ok(None);
    }
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let file = dir.join(format!("wrun-bench-dashboard-{pid}.json"));
    let address = format!("127.0.0.1:{}", free_port()?);
    let (local, client, module) = warmed_local(&["--dashboard", &address], &file, module_bytes)?;
    let profile = tempfile::tempdir().context("making a Chromium profile")?;
    let devtools = format!("127.0.0.1:{}", free_port()?);
    let mut browser = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--remote-debugging-port={}", &devtools[10..]))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting chromium")?;
    let measured = (|| {
        wait_until("chromium's DevTools", Duration::from_secs(60), || {
            http(&devtools, "GET", "/json/version").contains("Browser")
        })?;
        // Let Chromium finish starting before anything is measured.
        std::thread::sleep(Duration::from_secs(2));
        let (mut closed_s, mut open_s) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..3 {
            closed_s = closed_s.min(noop_map(&client, &module, 100_000)?);
            let tab = http(&devtools, "PUT", &format!("/json/new?http://{address}/"));
            let id = tab
                .split("\"id\": \"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .context("chromium did not open a tab")?
                .to_owned();
            wait_until("the page to open", Duration::from_secs(60), || {
                scrape(&address).contains("wrun_dashboard_viewers 1")
            })?;
            std::thread::sleep(Duration::from_secs(1));
            open_s = open_s.min(noop_map(&client, &module, 100_000)?);
            http(&devtools, "GET", &format!("/json/close/{id}"));
            wait_until("the page to close", Duration::from_secs(60), || {
                scrape(&address).contains("wrun_dashboard_viewers 0")
            })?;
        }
        Ok::<_, anyhow::Error>((closed_s, open_s))
    })();
    let _ = browser.kill();
    let _ = browser.wait();
    // Chromium's helpers (renderer, GPU) outlive a killed browser process.
    let _ = Command::new("pkill").arg("-f").arg(profile.path()).status();
    let (closed_s, open_s) = measured?;
    drop(client);
    drop(local);
    Ok(Some(DashboardRound { closed_s, open_s }))
}

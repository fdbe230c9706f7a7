//! Runs the four seed workloads (docs/ARCHITECTURE.md) through the sandbox on this
//! machine, in one process, and prints each answer (checked) and its time.
//!
//! ```sh
//! cargo run --release -p sandbox-seed -- examples/seed-tasks/target/wasm32-wasip1/release/seed_tasks.wasm
//! ```
//!
//! This is the sandbox alone: tasks run on local threads, with no scheduler
//! and no workers. The cluster runs the same workloads with `wrun submit`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail, ensure};
use serde_json::{Value as Json, json};
use wrun_sandbox::{CompiledModule, Sandbox, SandboxConfig, TaskLimits};

/// Runs tasks of one module on all cores.
struct Runner {
    sandbox: Sandbox,
    module: Arc<CompiledModule>,
    limits: TaskLimits,
    threads: usize,
}

impl Runner {
    fn call(&self, task: &str, args: Json) -> anyhow::Result<Json> {
        let signature = self
            .module
            .task(task)
            .ok_or_else(|| anyhow!("no task {task}"))?;
        let args = wrun_abi::encode_args_from_json(signature, args.as_array().expect("an array"))?;
        let run = self.sandbox.run(&self.module, task, &args, &self.limits);
        let bytes = run.result.with_context(|| format!("task {task}"))?;
        Ok(wrun_abi::value_to_json(
            &wrun_abi::decode_value(&bytes).map_err(|e| anyhow!(e))?,
        ))
    }

    /// Calls `task` once per argument list, spread over all cores, results in order.
    fn map(&self, task: &str, calls: Vec<Json>) -> anyhow::Result<Vec<Json>> {
        let chunk = calls.len().div_ceil(self.threads).max(1);
        std::thread::scope(|scope| {
            let handles: Vec<_> = calls
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|args| self.call(task, args.clone()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("worker thread"))
                .collect()
        })
    }
}

fn timed<T>(
    name: &str,
    tasks: usize,
    work: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    let value = work()?;
    let elapsed = started.elapsed();
    println!(
        "  {name:<34} {tasks:>5} tasks  {:>9.2} ms  ({:.1} µs/task)",
        elapsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e6 / tasks as f64
    );
    Ok(value)
}

fn main() -> anyhow::Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: sandbox-seed SEED_TASKS.wasm")?;
    let bytes = std::fs::read(&path).with_context(|| format!("reading {path}"))?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let sandbox = Sandbox::new(SandboxConfig {
        max_concurrent_tasks: threads as u32 * 2,
        ..SandboxConfig::default()
    })
    .map_err(|e| anyhow!("{e}"))?;
    let started = Instant::now();
    let (module, source) = sandbox.load(&bytes)?;
    println!(
        "seed workloads in the sandbox: {} ({} bytes, {} tasks, loaded in {:.1} ms from {source:?}), {threads} threads",
        path,
        bytes.len(),
        module.tasks().len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let runner = Runner {
        sandbox,
        module,
        limits: TaskLimits::default(),
        threads,
    };

    // 1. inc / dec / add: for i in 0..256 { x = inc(i); y = dec(x); z = add(x, y) }.
    let zs = timed("inc/dec/add graph (256 z)", 768, || {
        let xs = runner.map("inc", (0..256).map(|i| json!([i])).collect())?;
        let ys = runner.map("dec", xs.iter().map(|x| json!([x])).collect())?;
        runner.map(
            "add",
            xs.iter().zip(&ys).map(|(x, y)| json!([x, y])).collect(),
        )
    })?;
    for (i, z) in zs.iter().enumerate() {
        ensure!(
            z.as_i64() == Some(2 * i as i64 + 1),
            "z[{i}] = {z}, expected {}",
            2 * i + 1
        );
    }
    let z_sum: i64 = zs.iter().filter_map(Json::as_i64).sum();
    println!("    z[i] = 2i + 1 for all 256; sum of z = {z_sum}");

    // 2. increment and analyse: increment a list of 10,000 items in 10 chunks, then sum.
    let total = timed("increment and analyse (10k items)", 11, || {
        let chunks: Vec<Json> = (0..10)
            .map(|c| json!([(c * 1000..(c + 1) * 1000).collect::<Vec<i64>>()]))
            .collect();
        let incremented = runner.map("increment_data", chunks)?;
        let all: Vec<Json> = incremented
            .iter()
            .flat_map(|c| c.as_array().cloned().unwrap_or_default())
            .collect();
        runner.call("do_analysis", json!([all]))
    })?;
    ensure!(
        total == json!(50_005_000),
        "sum = {total}, expected 50005000"
    );
    println!("    sum of (item + 1) over 0..10000 = {total}");

    // 3. Monte Carlo darts: 100 seeds x 1,000,000 darts, combined into pi by a task.
    let pi = timed("darts (100 x 1M darts)", 101, || {
        let counts = runner.map(
            "throw_darts",
            (0..100).map(|seed| json!([1_000_000, seed])).collect(),
        )?;
        runner.call("estimate_pi", json!([counts]))
    })?;
    let pi = pi.as_f64().context("pi is a number")?;
    if (pi - std::f64::consts::PI).abs() >= 0.01 {
        bail!("pi = {pi}, too far from {}", std::f64::consts::PI);
    }
    println!("    pi ≈ {pi:.6}");

    // 4. inc / double / add, then sum: for i in 0..256 { a = inc(i); b = double(i); c = add(a, b) }; sum(c).
    let total = timed("inc/double/add then sum", 769, || {
        let a = runner.map("inc", (0..256).map(|i| json!([i])).collect())?;
        let b = runner.map("double", (0..256).map(|i| json!([i])).collect())?;
        let c = runner.map(
            "add",
            a.iter().zip(&b).map(|(a, b)| json!([a, b])).collect(),
        )?;
        runner.call("sum", json!([c]))
    })?;
    ensure!(total == json!(98_176), "sum = {total}, expected 98176");
    println!("    sum of (i + 1) + 2i over 0..256 = {total}");
    Ok(())
}

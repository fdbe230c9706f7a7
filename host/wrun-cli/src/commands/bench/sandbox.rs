//! `wrun bench sandbox`: what a task costs in the sandbox, measured.
//!
//! Prints a table, then one JSON object as the last line. Run it on a
//! release build and a quiet machine: on 2 vCPUs any other job changes
//! every figure (docs/ARCHITECTURE.md, "Measured facts").

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde_json::json;
use wrun_abi::Value;

use wrun_sandbox::{LoadSource, Sandbox, SandboxConfig, TaskLimits};

use crate::exit::{CommandResult, Failure};
use crate::output::outln;

/// The seed workloads' darts kernel, compiled natively from the same file
/// the Wasm module is built from.
#[allow(unreachable_pub, dead_code)]
#[path = "../../../../../examples/seed-tasks/src/darts.rs"]
mod darts_kernel;

const DARTS: u64 = 10_000_000;

pub(crate) fn seed_module(module: Option<PathBuf>) -> Result<PathBuf, Failure> {
    if let Some(path) = module {
        return Ok(path);
    }
    let crate_dir = PathBuf::from("examples/seed-tasks");
    if !crate_dir.is_dir() {
        return Err(Failure::input(anyhow!(
            "no --module given and no examples/seed-tasks here: run from the wrun checkout or pass --module"
        )));
    }
    eprintln!("building examples/seed-tasks ...");
    let modules = wrun_build::build_task_crate(&crate_dir).map_err(Failure::input)?;
    Ok(modules[0].clone())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    percentile(&values, 0.5)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// The sandbox's figures, as printed.
struct Figures {
    threads: usize,
    compile: Duration,
    cached_load: Duration,
    p50: Duration,
    p99: Duration,
    tasks_per_s: f64,
    native: Duration,
    wasm: Duration,
}

fn host(e: wrun_sandbox::TaskError) -> anyhow::Error {
    anyhow!("{e}")
}

fn load(e: wrun_sandbox::LoadError) -> anyhow::Error {
    anyhow!("{e}")
}

pub(crate) fn sandbox(module: Option<PathBuf>, iterations: u32, seconds: f64) -> CommandResult {
    let module_path = seed_module(module)?;
    let bytes = std::fs::read(&module_path)
        .with_context(|| format!("reading {}", module_path.display()))?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let compile = compile_time(&bytes)?;
    let (sandbox, cached_load) = cached_load_time(&bytes, threads)?;
    let (module, _) = sandbox.load(&bytes).map_err(load)?;
    let (p50, p99, tasks_per_s) = noop_figures(&sandbox, &module, iterations, seconds, threads);
    let (native, wasm) = darts_times(&sandbox, &module)?;
    report(
        bytes.len(),
        &Figures {
            threads,
            compile,
            cached_load,
            p50,
            p99,
            tasks_per_s,
            native,
            wasm,
        },
    );
    Ok(())
}

/// Compiling with no disk cache, evicted from memory before each load: the median of 3.
fn compile_time(bytes: &[u8]) -> Result<Duration, Failure> {
    let uncached = Sandbox::new(SandboxConfig {
        cache_dir: None,
        ..SandboxConfig::default()
    })
    .map_err(host)?;
    let mut compile_times = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let (module, source) = uncached.load(bytes).map_err(load)?;
        compile_times.push(started.elapsed());
        assert_eq!(source, LoadSource::Compiled);
        uncached.evict(&module.digest());
    }
    Ok(median(compile_times))
}

/// Loading from a fresh disk cache, evicted from memory each time: the
/// median of 20, and the sandbox (with the module loaded) for what follows.
fn cached_load_time(bytes: &[u8], threads: usize) -> Result<(Sandbox, Duration), Failure> {
    let cache_dir = std::env::temp_dir().join(format!("wrun-bench-cache-{}", std::process::id()));
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache_dir.clone()),
        max_concurrent_tasks: (threads * 2) as u32,
        ..SandboxConfig::default()
    })
    .map_err(host)?;
    let (module, _) = sandbox.load(bytes).map_err(load)?;
    let mut cached_times = Vec::new();
    for _ in 0..20 {
        sandbox.evict(&module.digest());
        let started = Instant::now();
        let (_, source) = sandbox.load(bytes).map_err(load)?;
        cached_times.push(started.elapsed());
        if source != LoadSource::DiskCache {
            return Err(Failure::input(anyhow!(
                "expected a disk-cache hit, got {source:?}"
            )));
        }
    }
    let _ = std::fs::remove_dir_all(&cache_dir);
    Ok((sandbox, median(cached_times)))
}

/// One no-op task = encode the (empty) arguments, fresh instance, call,
/// decode the result: p50 and p99 timed one by one on one thread, then
/// tasks per second with one thread per core.
fn noop_figures(
    sandbox: &Sandbox,
    module: &wrun_sandbox::CompiledModule,
    iterations: u32,
    seconds: f64,
    threads: usize,
) -> (Duration, Duration, f64) {
    let limits = TaskLimits::default();
    let noop = || {
        let args = wrun_abi::encode_value(&Value::Array(Vec::new()));
        let run = sandbox.run(module, "noop", &args, &limits);
        let result = run.result.expect("noop succeeds");
        assert_eq!(wrun_abi::decode_value(&result), Ok(Value::Nil));
    };
    for _ in 0..1000 {
        noop();
    }
    let mut latencies = Vec::with_capacity(iterations as usize);
    for _ in 0..iterations {
        let started = Instant::now();
        noop();
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    let done = AtomicU64::new(0);
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let mut count = 0;
                while Instant::now() < deadline {
                    noop();
                    count += 1;
                }
                done.fetch_add(count, Ordering::Relaxed);
            });
        }
    });
    let tasks_per_s = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    (p50, p99, tasks_per_s)
}

/// The darts kernel natively and in Wasm, best of 5 each, same answers.
fn darts_times(
    sandbox: &Sandbox,
    module: &wrun_sandbox::CompiledModule,
) -> Result<(Duration, Duration), Failure> {
    let mut native = Duration::MAX;
    let mut native_result = (0, 0);
    for _ in 0..5 {
        let started = Instant::now();
        native_result =
            std::hint::black_box(darts_kernel::throw_darts(std::hint::black_box(DARTS), 1));
        native = native.min(started.elapsed());
    }
    let darts_args =
        wrun_abi::encode_value(&Value::Array(vec![Value::from(DARTS), Value::from(1u64)]));
    let mut wasm = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let run = sandbox.run(module, "throw_darts", &darts_args, &TaskLimits::default());
        wasm = wasm.min(started.elapsed());
        let result: (u64, u64) = rmp_serde::from_slice(&run.result.map_err(host)?)
            .map_err(|e| anyhow!("darts result: {e}"))?;
        if result != native_result {
            return Err(Failure::task(anyhow!(
                "Wasm darts gave {result:?}, native {native_result:?}"
            )));
        }
    }
    Ok((native, wasm))
}

fn report(module_bytes: usize, f: &Figures) {
    let threads = f.threads;
    let ratio = f.wasm.as_secs_f64() / f.native.as_secs_f64();
    outln!("wrun bench sandbox  ({module_bytes} bytes module, {threads} threads)");
    outln!("{:<44} {:>12} {:>12}", "measure", "value", "target");
    let row =
        |name: &str, value: String, target: &str| outln!("{name:<44} {value:>12} {target:>12}");
    row(
        "no-op task p50 (1 thread)",
        format!("{:.2} µs", f.p50.as_secs_f64() * 1e6),
        "≤ 10 µs",
    );
    row(
        "no-op task p99 (1 thread)",
        format!("{:.2} µs", f.p99.as_secs_f64() * 1e6),
        "",
    );
    row(
        &format!("no-op tasks/s ({threads} threads)"),
        format!("{:.0}", f.tasks_per_s),
        "≥ 100000",
    );
    row(
        "compile seed-tasks (cranelift)",
        format!("{:.1} ms", ms(f.compile)),
        "",
    );
    row(
        "load seed-tasks from disk cache",
        format!("{:.3} ms", ms(f.cached_load)),
        "≤ 1 ms",
    );
    row(
        &format!("darts native ({DARTS} darts)"),
        format!("{:.1} ms", ms(f.native)),
        "",
    );
    row(
        &format!("darts wasm ({DARTS} darts)"),
        format!("{:.1} ms", ms(f.wasm)),
        "",
    );
    row("darts wasm / native", format!("{ratio:.3}"), "≤ 1.1");
    outln!(
        "{}",
        json!({
            "bench": "sandbox",
            "module_bytes": module_bytes,
            "threads": threads,
            "noop_task_us_p50": round(f.p50.as_secs_f64() * 1e6, 2),
            "noop_task_us_p99": round(f.p99.as_secs_f64() * 1e6, 2),
            "noop_tasks_per_s": f.tasks_per_s.round(),
            "compile_ms": round(ms(f.compile), 2),
            "cached_load_ms": round(ms(f.cached_load), 3),
            "darts_native_ms": round(ms(f.native), 2),
            "darts_wasm_ms": round(ms(f.wasm), 2),
            "darts_wasm_over_native": round(ratio, 3),
        })
    );
}

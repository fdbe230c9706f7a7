//! `wrun bench taskbench`: Task Bench's `stencil_1d` pattern on a real
//! `wrun local` cluster. `steps` × `width` busy-wait tasks; each depends on
//! itself and its two neighbours in the step before. For each grain (the
//! spin of one task) the graph is computed `runs` times and the best wall
//! time gives the efficiency, `tasks × grain / (wall × threads)`; METG(50%)
//! is the smallest grain whose efficiency is still at least one half.
//! bench/dask/taskbench.py builds the same graph for Dask.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, anyhow, ensure};
use serde_json::json;
use wrun_client::{Client, Delayed, GraphArg, Module};

use crate::exit::CommandResult;
use crate::output::outln;

/// The shape of one run.
pub(crate) struct Stencil {
    pub(crate) workers: u32,
    pub(crate) threads: u32,
    pub(crate) steps: u32,
    /// Columns; the cluster's thread count when not given.
    pub(crate) width: Option<u32>,
    pub(crate) grains_us: Vec<u64>,
    pub(crate) runs: u32,
}

/// One grain's best run.
struct Point {
    grain_us: u64,
    wall_s: f64,
    efficiency: f64,
    /// Wall time per step beyond the work of a step.
    overhead_per_step_us: f64,
}

/// The stencil graph for `grain_us`, computed once: its wall time.
fn run_once(
    client: &Client,
    module: &Module,
    steps: u32,
    width: u32,
    grain_us: u64,
) -> anyhow::Result<f64> {
    let mut graph = client.graph();
    let zero = || -> GraphArg { json!(0).into() };
    let mut previous: Vec<Delayed> = Vec::new();
    for _ in 0..steps {
        let arg = |column: Option<usize>| -> GraphArg {
            match column.and_then(|c| previous.get(c)) {
                Some(task) => (*task).into(),
                None => zero(),
            }
        };
        let step: Vec<Delayed> = (0..width as usize)
            .map(|i| {
                let args = if previous.is_empty() {
                    vec![json!(grain_us).into(), zero(), zero(), zero()]
                } else {
                    vec![
                        json!(grain_us).into(),
                        arg(i.checked_sub(1)),
                        arg(Some(i)),
                        arg(Some(i + 1)),
                    ]
                };
                graph.call(module, "stencil", args)
            })
            .collect();
        previous = step;
    }
    let started = Instant::now();
    let results = graph.compute(&previous)?;
    let wall = started.elapsed().as_secs_f64();
    for (column, result) in results.into_iter().enumerate() {
        let depth = result.map_err(|f| anyhow!("stencil failed ({}): {}", f.kind, f.message))?;
        ensure!(
            depth == json!(steps),
            "column {column} of the last step answered {depth}, not {steps}"
        );
    }
    Ok(wall)
}

pub(crate) fn taskbench(shape: Stencil, module: Option<PathBuf>) -> CommandResult {
    let module_path = super::sandbox::seed_module(module)?;
    let bytes = std::fs::read(&module_path)
        .with_context(|| format!("reading {}", module_path.display()))?;
    let cores = shape.workers * shape.threads;
    let width = shape.width.unwrap_or(cores);
    let file = std::env::temp_dir().join(format!("wrun-taskbench-{}.json", std::process::id()));
    let (_local, client, module) =
        super::cluster::warmed_local_of(shape.workers, shape.threads, &[], &file, &bytes)?;
    // One small graph first, so that the first grain is not also the
    // first graph the cluster sees.
    run_once(&client, &module, 20, width, 0)?;

    let tasks = u64::from(shape.steps) * u64::from(width);
    let mut points = Vec::new();
    for &grain_us in &shape.grains_us {
        let mut best = f64::INFINITY;
        for _ in 0..shape.runs.max(1) {
            best = best.min(run_once(&client, &module, shape.steps, width, grain_us)?);
        }
        let work_s = tasks as f64 * grain_us as f64 / 1e6;
        // A step's work is spread over min(width, cores) threads.
        let step_work_s =
            grain_us as f64 / 1e6 * (f64::from(width) / f64::from(cores.min(width))).ceil();
        points.push(Point {
            grain_us,
            wall_s: best,
            efficiency: work_s / (best * f64::from(cores)),
            overhead_per_step_us: (best / f64::from(shape.steps) - step_work_s).max(0.0) * 1e6,
        });
    }
    let metg = points
        .iter()
        .filter(|p| p.efficiency >= 0.5)
        .map(|p| p.grain_us)
        .min();

    outln!(
        "stencil_1d: {} steps x width {width} on {} worker(s) x {} thread(s), best of {}",
        shape.steps,
        shape.workers,
        shape.threads,
        shape.runs.max(1)
    );
    outln!(
        "{:>10} {:>10} {:>11} {:>22}",
        "grain µs",
        "wall s",
        "efficiency",
        "overhead per step µs"
    );
    for p in &points {
        outln!(
            "{:>10} {:>10.3} {:>11.3} {:>22.0}",
            p.grain_us,
            p.wall_s,
            p.efficiency,
            p.overhead_per_step_us
        );
    }
    match metg {
        Some(grain) => outln!("METG(50%): {grain} µs"),
        None => outln!("METG(50%): above every grain tried"),
    }
    let json = json!({
        "pattern": "stencil_1d",
        "workers": shape.workers,
        "threads": shape.threads,
        "steps": shape.steps,
        "width": width,
        "runs": shape.runs.max(1),
        "metg50_us": metg,
        "points": points.iter().map(|p| json!({
            "grain_us": p.grain_us,
            "wall_s": (p.wall_s * 1e4).round() / 1e4,
            "efficiency": (p.efficiency * 1e3).round() / 1e3,
            "overhead_per_step_us": p.overhead_per_step_us.round(),
        })).collect::<Vec<_>>(),
    });
    outln!("{json}");
    Ok(())
}

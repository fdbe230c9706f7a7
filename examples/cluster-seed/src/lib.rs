//! The four seed workloads (docs/ARCHITECTURE.md) on a wrun cluster, through the
//! client library. `main.rs` prints them; the end-to-end tests call
//! [`run_all`] against real clusters and check every answer.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use serde_json::json;
use wrun_client::{Client, Delayed, Module, TaskFuture};

/// One workload's answer and time.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Which workload.
    pub name: &'static str,
    /// The answer, as text.
    pub answer: String,
    /// Tasks it ran.
    pub tasks: usize,
    /// Wall time, submission to answer.
    pub elapsed: Duration,
}

fn value(
    result: Result<serde_json::Value, wrun_client::TaskFailure>,
) -> anyhow::Result<serde_json::Value> {
    result.map_err(|failure| anyhow!("task failed ({}): {}", failure.kind, failure.message))
}

/// inc / dec / add: for i in 0..256 { x = inc(i); y = dec(x); z = add(x, y) }, as a lazy graph.
pub fn seed_graph(client: &Client, module: &Module) -> anyhow::Result<Answer> {
    let started = Instant::now();
    let mut graph = client.graph();
    let zs: Vec<Delayed> = (0..256)
        .map(|i| {
            let x = graph.call(module, "inc", vec![json!(i).into()]);
            let y = graph.call(module, "dec", vec![x.into()]);
            graph.call(module, "add", vec![x.into(), y.into()])
        })
        .collect();
    let results = graph.compute(&zs)?;
    let mut sum = 0;
    for (i, z) in results.into_iter().enumerate() {
        let z = value(z)?.as_i64().context("z is an integer")?;
        ensure!(
            z == 2 * i as i64 + 1,
            "z[{i}] = {z}, expected {}",
            2 * i + 1
        );
        sum += z;
    }
    Ok(Answer {
        name: "inc/dec/add graph",
        answer: format!("z[i] = 2i+1 for all 256, sum {sum}"),
        tasks: 768,
        elapsed: started.elapsed(),
    })
}

/// Increment and analyse: increment a list in one task, sum it in another;
/// the list moves between them as a future, not through the client.
pub fn increment_and_analyse(client: &Client, module: &Module) -> anyhow::Result<Answer> {
    let started = Instant::now();
    let data: Vec<i64> = (0..1000).collect();
    let incremented = client.submit(module, "increment_data", vec![json!(data).into()])?;
    let total = client.submit(module, "do_analysis", vec![(&incremented).into()])?;
    let total = value(client.gather(&[total])?.remove(0))?;
    ensure!(total == json!(500_500), "sum = {total}, expected 500500");
    Ok(Answer {
        name: "increment and analyse",
        answer: format!("sum {total}"),
        tasks: 2,
        elapsed: started.elapsed(),
    })
}

/// Monte Carlo darts: 100 seeds × 1,000,000 darts, summed in the client.
pub fn darts(client: &Client, module: &Module) -> anyhow::Result<Answer> {
    let started = Instant::now();
    let calls = (0..100)
        .map(|seed| vec![json!(1_000_000).into(), json!(seed).into()])
        .collect();
    let futures = client.map(module, "throw_darts", calls)?;
    let (mut inside, mut total) = (0u64, 0u64);
    for result in client.gather(&futures)? {
        let pair = value(result)?;
        inside += pair[0].as_u64().context("inside")?;
        total += pair[1].as_u64().context("total")?;
    }
    let pi = 4.0 * inside as f64 / total as f64;
    ensure!(total == 100_000_000, "threw {total} darts");
    ensure!((pi - std::f64::consts::PI).abs() < 0.01, "pi = {pi}");
    Ok(Answer {
        name: "darts 100 x 1M",
        answer: format!("pi = {pi:.6} ({inside} inside)"),
        tasks: 100,
        elapsed: started.elapsed(),
    })
}

/// inc / double / add, then sum by a tree of `add` tasks.
pub fn inc_double_add_sum(client: &Client, module: &Module) -> anyhow::Result<Answer> {
    let started = Instant::now();
    let mut level: Vec<TaskFuture> = Vec::new();
    for i in 0..256 {
        let a = client.submit(module, "inc", vec![json!(i).into()])?;
        let b = client.submit(module, "double", vec![json!(i).into()])?;
        level.push(client.submit(module, "add", vec![(&a).into(), (&b).into()])?);
    }
    let mut tasks = 768;
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        for pair in level.chunks(2) {
            next.push(match pair {
                [x, y] => {
                    tasks += 1;
                    client.submit(module, "add", vec![x.into(), y.into()])?
                }
                [x] => x.clone(),
                _ => unreachable!(),
            });
        }
        level = next;
    }
    let total = value(client.gather(&level)?.remove(0))?;
    ensure!(total == json!(98_176), "sum = {total}, expected 98176");
    Ok(Answer {
        name: "inc/double/add then sum",
        answer: format!("sum {total}"),
        tasks,
        elapsed: started.elapsed(),
    })
}

/// All four, in order.
pub fn run_all(client: &Client, module: &Module) -> anyhow::Result<Vec<Answer>> {
    Ok(vec![
        seed_graph(client, module)?,
        increment_and_analyse(client, module)?,
        darts(client, module)?,
        inc_double_add_sum(client, module)?,
    ])
}

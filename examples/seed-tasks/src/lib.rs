//! The seed workloads of wrun (see DESIGN.md) as one task module.
//!
//! Build with `wrun build examples/seed-tasks`; run a task with
//! `wrun run seed_tasks.wasm add 1 2`.

use wrun_guest::task;

mod darts;

/// Adds one.
#[task]
fn inc(x: i64) -> i64 {
    x + 1
}

/// Subtracts one.
#[task]
fn dec(x: i64) -> i64 {
    x - 1
}

/// Adds two numbers.
#[task]
fn add(x: i64, y: i64) -> i64 {
    x + y
}

/// Doubles a number.
#[task]
fn double(x: i64) -> i64 {
    2 * x
}

/// Increments every item of a list ("increment and analyse", step one).
#[task]
fn increment_data(data: Vec<i64>) -> Vec<i64> {
    data.into_iter().map(|x| x + 1).collect()
}

/// Sums a list ("increment and analyse", step two).
#[task]
fn do_analysis(data: Vec<i64>) -> i64 {
    data.iter().sum()
}

/// Sums any number of partial results (the final reduction of a graph).
#[task]
fn sum(values: Vec<i64>) -> i64 {
    values.iter().sum()
}

/// Counts random darts inside the unit circle: returns `(inside, total)`.
#[task]
fn throw_darts(darts: u64, seed: u64) -> (u64, u64) {
    darts::throw_darts(darts, seed)
}

/// Combines darts counts `[(inside, total), ...]` into an estimate of pi.
#[task]
fn estimate_pi(counts: Vec<(u64, u64)>) -> Result<f64, String> {
    let (inside, total) = counts
        .iter()
        .fold((0u64, 0u64), |(i, t), (ci, ct)| (i + ci, t + ct));
    if total == 0 {
        return Err("no darts were thrown".to_owned());
    }
    Ok(4.0 * inside as f64 / total as f64)
}

/// Does nothing: measures the cost of a task itself.
#[task]
fn noop() {}

/// Spins on the clock for `micros` microseconds (the Task Bench kernel).
#[task]
fn spin(micros: u64) -> u64 {
    let start = std::time::Instant::now();
    let mut turns = 0u64;
    while start.elapsed().as_micros() < micros as u128 {
        turns += 1;
    }
    turns
}

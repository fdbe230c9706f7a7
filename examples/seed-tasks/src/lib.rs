//! The seed workloads of wrun (docs/ARCHITECTURE.md, "Seed workloads") as one task module.
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

/// Returns its argument: the no-op of the throughput benchmarks.
#[task]
fn identity(x: i64) -> i64 {
    x
}

/// Spins on the clock for `micros` microseconds and returns `micros` (the
/// Task Bench kernel of METG).
#[task]
fn spin(micros: u64) -> u64 {
    spin_for(micros);
    micros
}

/// One point of Task Bench's `stencil_1d`: spins for `micros` and answers
/// one more than the deepest of its inputs (a missing neighbour is given as
/// 0), so the last step's answers show that every step ran after the one
/// before it.
#[task]
fn stencil(micros: u64, left: u64, centre: u64, right: u64) -> u64 {
    spin_for(micros);
    1 + left.max(centre).max(right)
}

fn spin_for(micros: u64) {
    let start = std::time::Instant::now();
    while start.elapsed().as_micros() < u128::from(micros) {
        std::hint::spin_loop();
    }
}

/// Bytes that travel as one MessagePack `bin` value (not a list of numbers).
pub struct Blob(Vec<u8>);

impl wrun_guest::serde::Serialize for Blob {
    fn serialize<S: wrun_guest::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> wrun_guest::serde::Deserialize<'de> for Blob {
    fn deserialize<D: wrun_guest::serde::Deserializer<'de>>(deserializer: D) -> Result<Blob, D::Error> {
        struct Visitor;
        impl<'de> wrun_guest::serde::de::Visitor<'de> for Visitor {
            type Value = Blob;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Blob, E> {
                Ok(Blob(bytes.to_vec()))
            }
            // Text given where a blob is expected (a literal from the shell
            // or the client library) is taken as its UTF-8 bytes.
            fn visit_str<E>(self, text: &str) -> Result<Blob, E> {
                Ok(Blob(text.as_bytes().to_vec()))
            }
            fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(bytes))
            }
        }
        deserializer.deserialize_byte_buf(Visitor)
    }
}

/// `bytes` pseudo-random bytes (for the data-transfer benchmark).
#[task]
fn produce(bytes: u64, seed: u64) -> Blob {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut data = Vec::with_capacity(bytes as usize);
    while (data.len() as u64) < bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    data.truncate(bytes as usize);
    Blob(data)
}

/// The total length of two blobs (the consumer of the data-transfer benchmark).
#[task]
fn consume(a: Blob, b: Blob) -> u64 {
    (a.0.len() + b.0.len()) as u64
}

//! Tasks that test the sandbox: ordinary ones that exercise the encoding,
//! and hostile ones that try to escape, crash or exhaust the host.

use std::collections::HashMap;
use std::hint::black_box;
use std::io::Write;

use serde::{Deserialize, Serialize};
use wrun_guest::task;

// ---- well-behaved ----

/// A user struct: the host cannot see into it, the guest checks it.
#[derive(Serialize, Deserialize)]
pub struct Point {
    x: f64,
    y: f64,
}

#[task]
fn norm(p: Point) -> f64 {
    (p.x * p.x + p.y * p.y).sqrt()
}

#[task]
fn mirror(p: Point) -> Point {
    Point { x: p.y, y: p.x }
}

/// Echoes many kinds of values back, to check both directions of the encoding.
#[task]
fn echo_all(
    flag: bool,
    name: Option<String>,
    table: HashMap<String, Vec<u32>>,
    pair: (i8, f32),
) -> (bool, Option<String>, HashMap<String, Vec<u32>>, (i8, f32)) {
    (flag, name, table, pair)
}

#[task]
fn keyed(table: HashMap<u32, String>) -> Vec<(u32, String)> {
    let mut pairs: Vec<_> = table.into_iter().collect();
    pairs.sort();
    pairs
}

#[task]
fn fail(message: String) -> Result<i64, String> {
    Err(message)
}

/// The length of a (large) text and a checksum of it, to check that a
/// large literal argument arrived whole.
#[task]
fn measure(text: String) -> (u64, u64) {
    let sum = text.bytes().fold(0u64, |acc, b| acc.wrapping_mul(31).wrapping_add(b as u64));
    (text.len() as u64, sum)
}

#[task]
fn chatty(text: String) -> String {
    println!("out: {text}");
    eprintln!("err: {text}");
    text
}

/// Returns how many times it has run in this instance: always 1, since
/// every task gets a fresh instance.
#[task]
fn count_calls() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static CALLS: AtomicU64 = AtomicU64::new(0);
    CALLS.fetch_add(1, Ordering::SeqCst) + 1
}

/// What the sandbox exposes: environment and arguments (none), clocks and random numbers.
#[task]
fn environment() -> HashMap<String, u64> {
    use std::hash::BuildHasher;
    let mut facts = HashMap::new();
    facts.insert("env_vars".to_owned(), std::env::vars().count() as u64);
    facts.insert("args".to_owned(), std::env::args().count() as u64);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    facts.insert("unix_seconds".to_owned(), now.as_secs());
    facts.insert("random".to_owned(), std::collections::hash_map::RandomState::new().hash_one(1u8));
    facts
}

// ---- hostile ----

#[task]
fn spin_forever() -> u64 {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

/// Allocates and touches memory one MiB at a time, without end.
#[task]
fn memory_bomb() -> u64 {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        blocks.push(vec![black_box(1u8); 1 << 20]);
        black_box(&blocks);
    }
}

#[inline(never)]
fn descend(depth: u64) -> u64 {
    if depth == 0 {
        return 0;
    }
    black_box(descend(black_box(depth - 1))).wrapping_add(1)
}

#[task]
fn recurse(depth: u64) -> u64 {
    descend(depth)
}

/// Writes `megabytes` MiB to stdout in lines.
#[task]
fn flood_stdout(megabytes: u64) -> u64 {
    let line = [b'x'; 1023];
    let mut out = std::io::stdout().lock();
    let mut written = 0u64;
    for _ in 0..megabytes * 1024 {
        out.write_all(&line).expect("stdout write");
        out.write_all(b"\n").expect("stdout write");
        written += 1024;
    }
    written
}

#[task]
fn big_result(bytes: u64) -> String {
    "x".repeat(bytes as usize)
}

#[task]
fn read_file(path: String) -> Result<String, String> {
    std::fs::read_to_string(&path).map_err(|error| format!("cannot read {path}: {error}"))
}

#[task]
fn open_socket(address: String) -> Result<String, String> {
    std::net::TcpStream::connect(&address)
        .map(|_| "connected".to_owned())
        .map_err(|error| format!("cannot connect to {address}: {error}"))
}

#[task]
fn panic_with(message: String) -> i64 {
    panic!("{}", message)
}

#[task]
fn exit_with(code: i32) -> i64 {
    std::process::exit(code)
}

/// Takes `mib` MiB of memory, touches it, then spins until the time limit:
/// a worker whose --memory is below that is killed by its nanny.
#[task]
fn hog(mib: u64) -> u64 {
    let block = vec![1u8; (mib as usize) << 20];
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(u64::from(block[black_box(x as usize) % block.len()])));
    }
}

/// Returns `i * i` after spinning `micros` microseconds: a task with a known
/// answer that takes long enough for a test to act while it runs.
#[task]
fn slow_square(i: u64, micros: u64) -> u64 {
    let start = std::time::Instant::now();
    while start.elapsed().as_micros() < u128::from(micros) {
        black_box(i);
    }
    i * i
}

/// Sleeps in the host (WASI `poll_oneoff`), where epoch interruption does
/// not reach: the sandbox must still stop it at its time limit or cancel.
#[task]
fn nap(seconds: u64) -> u64 {
    std::thread::sleep(std::time::Duration::from_secs(seconds));
    seconds
}

//! Runs the seed workloads on a wrun cluster through the client library.
//!
//! ```sh
//! wrun local --workers 2 --scheduler-file /tmp/sched.json &
//! cargo run --release -p cluster-seed -- /tmp/sched.json examples/seed-tasks/target/wasm32-wasip1/release/seed_tasks.wasm
//! ```

use std::time::Duration;

use anyhow::Context;
use wrun_client::{Client, Target};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: cluster-seed SCHEDULER_FILE SEED_TASKS.wasm";
    let scheduler_file = args.next().context(usage)?;
    let module_path = args.next().context(usage)?;
    let client = Client::connect(
        &Target::File(scheduler_file.into()),
        Duration::from_secs(60),
    )?;
    let module = client
        .upload(&std::fs::read(&module_path).with_context(|| format!("reading {module_path}"))?)?;
    for answer in cluster_seed::run_all(&client, &module)? {
        println!(
            "  {:<26} {:>5} tasks {:>9.1} ms   {}",
            answer.name,
            answer.tasks,
            answer.elapsed.as_secs_f64() * 1e3,
            answer.answer
        );
    }
    Ok(())
}

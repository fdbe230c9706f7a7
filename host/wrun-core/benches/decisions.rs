//! Decisions per second of the pure core, with no sockets: W workers, a
//! map of N independent tasks (and a chain), each assignment answered at
//! once with `task_finished`, as `wrun bench scheduler` does over real
//! connections. Prints one line per W and a JSON line; run with
//! `cargo bench -p wrun-core`.

use std::time::Instant;

use wrun_core::{
    Arg, ClientId, Comm, Core, CoreConfig, Failure, TaskId, TaskSpec, TenantId, WorkerId,
};

/// Remembers assignments, to answer them.
#[derive(Default)]
struct Answers {
    assigned: Vec<(WorkerId, TaskId)>,
    stolen: Vec<(WorkerId, TaskId)>,
}

impl Comm<()> for Answers {
    fn assign(&mut self, worker: WorkerId, task: &TaskSpec<()>, _: &[(TaskId, WorkerId)]) {
        self.assigned.push((worker, task.id));
    }
    fn steal(&mut self, worker: WorkerId, tasks: &[TaskId]) {
        self.stolen.extend(tasks.iter().map(|t| (worker, *t)));
    }
    fn cancel(&mut self, _: WorkerId, _: TaskId) {}
    fn free(&mut self, _: WorkerId, _: TaskId) {}
    fn replicate(&mut self, _: WorkerId, _: TaskId, _: WorkerId) {}
    fn done(&mut self, _: ClientId, _: TaskId, _: WorkerId, _: u64) {}
    fn failed(&mut self, _: ClientId, _: TaskId, _: &Failure) {}
}

fn spec(id: u64, dep: Option<u64>) -> TaskSpec<()> {
    let mut args = vec![Arg::Value(Box::new([0x01]))];
    args.extend(dep.map(|d| Arg::Result(TaskId(d))));
    TaskSpec {
        id: TaskId(id),
        client: ClientId(1),
        tenant: TenantId::default(),
        args: args.into(),
        retries: 0,
        payload: (),
    }
}

/// Seconds to run `tasks` tasks (a chain when `chain`) on `workers` workers.
fn run(workers: u64, tasks: u64, chain: bool) -> f64 {
    let mut core: Core<()> = Core::new(CoreConfig::default());
    let mut comm = Answers::default();
    let now = Instant::now();
    for w in 0..workers {
        core.add_worker(WorkerId(1_000_000_000 + w), 1, now, &mut comm);
    }
    let started = Instant::now();
    // Submitted in batches of 50,000, as the client does.
    let mut next = 1;
    while next <= tasks {
        let end = (next + 50_000).min(tasks + 1);
        let batch = (next..end)
            .map(|id| spec(id, (chain && id > 1).then(|| id - 1)))
            .collect();
        core.submit(batch, &mut comm).expect("a valid batch");
        next = end;
        // Answer what was assigned, as workers would, until the batch is done
        // (a chain's next task is ready only once the last finished).
        loop {
            let assigned = std::mem::take(&mut comm.assigned);
            let stolen = std::mem::take(&mut comm.stolen);
            if assigned.is_empty() && stolen.is_empty() {
                break;
            }
            for (worker, task) in stolen {
                core.steal_response(worker, task, false, &mut comm);
            }
            // Each worker's answers come as one batch, placed at its end,
            // as the scheduler applies an `events` call.
            for batch in assigned.chunk_by(|a, b| a.0 == b.0) {
                core.defer_placement();
                for (worker, task) in batch {
                    core.task_finished(*worker, *task, 1, &mut comm);
                }
                core.place_deferred(&mut comm);
            }
        }
    }
    started.elapsed().as_secs_f64()
}

fn main() {
    let tasks = 200_000;
    let mut figures = Vec::new();
    for workers in [2u64, 32, 1000] {
        let map = run(workers, tasks, false);
        let chain = run(workers, tasks / 10, true);
        println!(
            "core, {workers:>4} workers: map {:>9.0} tasks/s ({:.2} µs each), chain {:>9.0} tasks/s",
            tasks as f64 / map,
            map * 1e6 / tasks as f64,
            (tasks / 10) as f64 / chain
        );
        figures.push(serde_json::json!({
            "workers": workers,
            "map_tasks_per_s": (tasks as f64 / map).round(),
            "chain_tasks_per_s": ((tasks / 10) as f64 / chain).round(),
        }));
    }
    println!(
        "{}",
        serde_json::json!({"bench": "core", "tasks": tasks, "figures": figures})
    );
}

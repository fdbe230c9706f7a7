//! `wrun bench scheduler`: the real scheduler process against simulated
//! workers, as RSDS's zero-worker mode: W workers on real Cap'n Proto
//! connections from this one process, each "running" a task by answering
//! `finished` at once. What is left is the scheduler's own cost per task,
//! read from its `/proc` CPU times, and how it grows with W.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde_json::{Value as Json, json};
use wrun_client::{Client, Target};
use wrun_proto::capnp::capability::Rc as CapRc;
use wrun_proto::capnp_rpc::rpc_twoparty_capnp::Side;
use wrun_proto::wrun_capnp::{cluster, worker_control, worker_session};

use super::cluster::{Cluster, proc_status_kib, spawn, wait_until, worker_count};
use crate::exit::CommandResult;
use crate::output::outln;

/// What the tasks depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Deps {
    /// A map: no task depends on another.
    None,
    /// A chain: each task reads the one before.
    Chain,
}

/// The scheduler's CPU time (user + system) so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split(' ').collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15; after the name, 12 and 13.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    ticks as f64 / 100.0
}

pub(crate) fn scheduler(
    workers: u32,
    threads: u32,
    tasks: u64,
    deps: Deps,
    module: Option<PathBuf>,
) -> CommandResult {
    if workers == 0 || tasks == 0 {
        return Err(crate::exit::Failure::input(anyhow!(
            "--workers and --tasks must be above 0"
        )));
    }
    let module_path = super::sandbox::seed_module(module)?;
    Ok(measure(workers, threads, tasks, deps, &module_path)?)
}

fn measure(
    workers: u32,
    threads: u32,
    tasks: u64,
    deps: Deps,
    module_path: &std::path::Path,
) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(module_path).with_context(|| format!("reading {}", module_path.display()))?;
    let dir = std::env::temp_dir();
    let file = dir.join(format!("wrun-bench-scheduler-{}.json", std::process::id()));
    let scheduler: Cluster = spawn(&["scheduler", "--dashboard", "off"], &file, None)?;
    let pid = scheduler.child.id();
    wait_until("the scheduler file", Duration::from_secs(30), || {
        file.exists()
    })?;
    let text = std::fs::read_to_string(&file).context("reading the scheduler file")?;
    let parsed: Json = serde_json::from_str(&text).context("the scheduler file")?;
    let address = parsed["address"].as_str().context("an address")?.to_owned();
    let secret = parsed["secret"].as_str().context("a secret")?.to_owned();

    let stop = Arc::new(AtomicBool::new(false));
    let joined = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(Calls::default());
    let simulated = {
        let (stop, joined, calls) = (stop.clone(), joined.clone(), calls.clone());
        std::thread::Builder::new()
            .name("simulated-workers".into())
            .spawn(move || simulate(&address, &secret, workers, threads, &joined, &stop, calls))?
    };
    let client = Client::connect(&Target::File(file.clone()), Duration::from_secs(60))
        .map_err(|e| anyhow!(e))?;
    let started = Instant::now();
    wait_until(
        &format!("{workers} simulated workers"),
        Duration::from_secs(120),
        || worker_count(&client) == workers as usize,
    )?;
    let join_s = started.elapsed().as_secs_f64();
    let module = client.upload(&bytes).map_err(|e| anyhow!(e))?;
    // Warm up: the scheduler's tables and the connections.
    let warm = client.map(
        &module,
        "identity",
        (0..1000).map(|i| vec![json!(i).into()]).collect(),
    )?;
    client.wait(&warm)?;
    drop(warm);
    // Its results freed before the clock starts: otherwise a free call to
    // every worker (1,000 of them) lands in the measured map.
    wait_until(
        "the warm-up's results freed",
        Duration::from_secs(60),
        || client.status().is_ok_and(|s| s.session_tasks == 0),
    )?;

    calls.reset();
    let cpu_before = cpu_seconds(pid);
    let t0 = Instant::now();
    match deps {
        Deps::None => {
            let calls = (0..tasks).map(|i| vec![json!(i).into()]).collect();
            let futures = client.map(&module, "identity", calls)?;
            client.wait(&futures)?;
        }
        Deps::Chain => {
            let mut graph = client.graph();
            let mut x = graph.call(&module, "inc", vec![json!(0).into()]);
            for _ in 1..tasks {
                x = graph.call(&module, "inc", vec![x.into()]);
            }
            graph.compute(&[x])?;
        }
    }
    let wall_s = t0.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds(pid) - cpu_before;
    let [run_calls, steal_calls, free_calls, events_calls] = calls.read();
    let peak_rss_kib = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    drop(client);
    drop(scheduler);
    let _ = simulated.join();

    let per_task_us = cpu_s * 1e6 / tasks as f64;
    let deps_name = match deps {
        Deps::None => "none",
        Deps::Chain => "chain",
    };
    outln!(
        "wrun bench scheduler  (the scheduler process; {workers} simulated workers x {threads} thread(s); {tasks} tasks, deps {deps_name})"
    );
    let row = |name: &str, value: String| outln!("  {name:<44} {value:>14}");
    row("workers joined in", format!("{join_s:.3} s"));
    row("wall, submit to all done", format!("{wall_s:.3} s"));
    row("tasks/s", format!("{:.0}", tasks as f64 / wall_s));
    row("scheduler CPU", format!("{cpu_s:.3} s"));
    row("scheduler CPU per task", format!("{per_task_us:.2} µs"));
    row(
        "calls to workers: run / steal / free",
        format!("{run_calls} / {steal_calls} / {free_calls}"),
    );
    row("calls from workers: events", format!("{events_calls}"));
    row(
        "scheduler peak RSS",
        format!("{:.1} MiB", peak_rss_kib as f64 / 1024.0),
    );
    outln!(
        "{}",
        json!({
            "bench": "scheduler",
            "workers": workers,
            "threads": threads,
            "tasks": tasks,
            "deps": deps_name,
            "wall_s": (wall_s * 1e4).round() / 1e4,
            "tasks_per_s": (tasks as f64 / wall_s).round(),
            "scheduler_cpu_s": (cpu_s * 1e3).round() / 1e3,
            "scheduler_cpu_per_task_us": (per_task_us * 100.0).round() / 100.0,
            "scheduler_peak_rss_mib": (peak_rss_kib as f64 / 1024.0 * 10.0).round() / 10.0,
            "run_calls": run_calls,
            "steal_calls": steal_calls,
            "free_calls": free_calls,
            "events_calls": events_calls,
        })
    );
    Ok(())
}

/// Runs `workers` simulated workers on this thread until `stop`.
fn simulate(
    address: &str,
    secret: &str,
    workers: u32,
    threads: u32,
    joined: &AtomicUsize,
    stop: &AtomicBool,
    calls: Arc<Calls>,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        for i in 0..workers {
            let worker = SimulatedWorker::join(address, secret, i, threads, &calls).await?;
            joined.fetch_add(1, Ordering::Relaxed);
            tokio::task::spawn_local(worker.serve());
        }
        while !stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    })
}

/// The calls the simulated workers took (run, steal, free) and made
/// (events) while the clock ran: the messages behind the figures.
#[derive(Default)]
struct Calls {
    run: AtomicU64,
    steal: AtomicU64,
    free: AtomicU64,
    events: AtomicU64,
}

impl Calls {
    fn reset(&self) {
        for count in [&self.run, &self.steal, &self.free, &self.events] {
            count.store(0, Ordering::Relaxed);
        }
    }

    fn read(&self) -> [u64; 4] {
        [&self.run, &self.steal, &self.free, &self.events].map(|c| c.load(Ordering::Relaxed))
    }
}

/// What a simulated worker owes the scheduler: task ids and whether each
/// is a `finished` (true) or a `stolen` answer (false: kept, it ran).
#[derive(Default)]
struct Owed {
    events: RefCell<Vec<(u64, bool)>>,
    wake: tokio::sync::Notify,
}

struct SimulatedWorker {
    session: worker_session::Client,
    owed: Rc<Owed>,
    calls: Arc<Calls>,
}

impl SimulatedWorker {
    async fn join(
        address: &str,
        secret: &str,
        i: u32,
        threads: u32,
        calls: &Arc<Calls>,
    ) -> anyhow::Result<SimulatedWorker> {
        let stream = wrun_proto::connect_with_retry(address, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow!(e))?;
        let stream = wrun_proto::tls::secure(stream, None)
            .await
            .map_err(|e| anyhow!(e))?;
        let mut rpc = wrun_proto::rpc_system(stream, Side::Client, None);
        let cluster: cluster::Client = rpc.bootstrap(Side::Server);
        tokio::task::spawn_local(async move {
            let _ = rpc.await;
        });
        let owed = Rc::new(Owed::default());
        let control: worker_control::Client = wrun_proto::capnp_rpc::new_client(SimulatedControl {
            owed: owed.clone(),
            calls: calls.clone(),
        });
        let mut request = cluster.register_worker_request();
        {
            let mut p = request.get();
            p.set_secret(secret);
            p.set_control(control);
            p.reborrow().init_held(0);
            let mut info = p.init_info();
            info.set_name(format!("sim-{i}"));
            info.set_threads(threads.max(1));
            info.set_memory_bytes(4 << 30);
            // Nothing is fetched from it by peers in these graphs: each
            // task's input is this worker's own or any worker's answer.
            info.set_peer_address("127.0.0.1:9");
            info.set_pid(std::process::id());
        }
        let response = request.send().promise.await?;
        let session = response.get()?.get_session()?;
        Ok(SimulatedWorker {
            session,
            owed,
            calls: calls.clone(),
        })
    }

    /// Sends what it owes, one `events` call at a time, and a heartbeat
    /// every second.
    async fn serve(self) {
        let heartbeat = {
            let session = self.session.clone();
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if session.heartbeat_request().send().promise.await.is_err() {
                        return;
                    }
                }
            }
        };
        let events = async {
            loop {
                if self.owed.events.borrow().is_empty() {
                    self.owed.wake.notified().await;
                }
                let batch = std::mem::take(&mut *self.owed.events.borrow_mut());
                if batch.is_empty() {
                    continue;
                }
                let mut request = self.session.events_request();
                let mut list = request.get().init_events(batch.len() as u32);
                for (i, (task, finished)) in batch.iter().enumerate() {
                    let mut e = list.reborrow().get(i as u32);
                    e.set_task(*task);
                    if *finished {
                        e.init_finished().set_size(1);
                    } else {
                        e.set_stolen(false);
                    }
                }
                self.calls.events.fetch_add(1, Ordering::Relaxed);
                if request.send().promise.await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            () = heartbeat => {}
            () = events => {}
        }
    }
}

struct SimulatedControl {
    owed: Rc<Owed>,
    calls: Arc<Calls>,
}

impl worker_control::Server for SimulatedControl {
    async fn run(
        self: CapRc<Self>,
        params: worker_control::RunParams,
        _: worker_control::RunResults,
    ) -> Result<(), wrun_proto::capnp::Error> {
        self.calls.run.fetch_add(1, Ordering::Relaxed);
        let tasks = params.get()?.get_tasks()?;
        let mut owed = self.owed.events.borrow_mut();
        owed.extend(tasks.iter().map(|a| (a.get_task(), true)));
        drop(owed);
        self.owed.wake.notify_one();
        Ok(())
    }

    async fn steal(
        self: CapRc<Self>,
        params: worker_control::StealParams,
        _: worker_control::StealResults,
    ) -> Result<(), wrun_proto::capnp::Error> {
        self.calls.steal.fetch_add(1, Ordering::Relaxed);
        // Every task ran the moment it came: nothing to give back.
        let tasks = params.get()?.get_tasks()?;
        self.owed
            .events
            .borrow_mut()
            .extend(tasks.iter().map(|t| (t, false)));
        self.owed.wake.notify_one();
        Ok(())
    }

    async fn cancel(
        self: CapRc<Self>,
        _: worker_control::CancelParams,
        _: worker_control::CancelResults,
    ) -> Result<(), wrun_proto::capnp::Error> {
        Ok(())
    }

    async fn free(
        self: CapRc<Self>,
        _: worker_control::FreeParams,
        _: worker_control::FreeResults,
    ) -> Result<(), wrun_proto::capnp::Error> {
        self.calls.free.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn fetch_many(
        self: CapRc<Self>,
        params: worker_control::FetchManyParams,
        mut results: worker_control::FetchManyResults,
    ) -> Result<(), wrun_proto::capnp::Error> {
        // Every result is MessagePack nil: the bench reads none of them.
        let count = params.get()?.get_tasks()?.len();
        let mut values = results.get().init_values(count);
        for i in 0..count {
            values.reborrow().get(i).set_data(&[0xc0]);
        }
        Ok(())
    }
}

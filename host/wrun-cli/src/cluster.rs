//! `wrun scheduler`, `wrun worker` (and its nanny), `wrun local`,
//! `wrun submit`, `wrun status`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow};
use clap::Args;
use serde_json::Value as Json;
use wrun_client::{Argument, Client, ClientError, Target, TaskOptions};
use wrun_sandbox::SandboxConfig;
use wrun_worker::{SchedulerTarget, WorkerConfig};

use crate::exit::{CommandResult, Failure};
use crate::limits::LimitArgs;
use crate::units::{parse_duration, parse_size};

/// How to find the scheduler.
#[derive(Debug, Clone, Args)]
pub(crate) struct SchedulerArgs {
    /// The scheduler file to read (waited for until --connect-timeout).
    #[arg(long, env = "WRUN_SCHEDULER_FILE", conflicts_with = "scheduler")]
    pub(crate) scheduler_file: Option<PathBuf>,
    /// The scheduler's address, host:port.
    #[arg(long, env = "WRUN_SCHEDULER")]
    pub(crate) scheduler: Option<String>,
    /// How long to wait for the scheduler file and the connection.
    #[arg(long, env = "WRUN_CONNECT_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub(crate) connect_timeout: Duration,
}

impl SchedulerArgs {
    fn target(&self) -> Option<Target> {
        match (&self.scheduler_file, &self.scheduler) {
            (Some(file), _) => Some(Target::File(file.clone())),
            (None, Some(address)) => Some(Target::Address(address.clone())),
            (None, None) => None,
        }
    }
}

fn client_failure(error: ClientError) -> Failure {
    match error {
        ClientError::Connect(_) | ClientError::Disconnected(_) => Failure {
            code: 3,
            error: error.into(),
        },
        other => Failure::input(other),
    }
}

fn wait_for_signal() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    });
}

/// A flag set by SIGINT or SIGTERM, watched from a background thread.
pub(crate) fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    std::thread::spawn(move || {
        wait_for_signal();
        set.store(true, Ordering::SeqCst);
    });
    flag
}

/// The scheduling policy's tunables, for `wrun scheduler` and `wrun local`.
#[derive(Debug, Clone, Args)]
pub(crate) struct PolicyArgs {
    /// Tasks a worker may hold per thread (running plus queued on it):
    /// deeper queues hide round trips for tiny tasks; idle workers steal
    /// from deep queues, so balance is kept either way.
    #[arg(long, env = "WRUN_QUEUE_PER_SLOT", default_value_t = wrun_core::CoreConfig::default().queue_per_slot)]
    pub(crate) queue_per_slot: u32,
    /// A worker silent this long is removed and its work rescheduled.
    #[arg(long, env = "WRUN_HEARTBEAT_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub(crate) heartbeat_timeout: Duration,
}

impl PolicyArgs {
    fn core(&self) -> wrun_core::CoreConfig {
        wrun_core::CoreConfig {
            queue_per_slot: self.queue_per_slot.max(1),
            heartbeat_timeout: self.heartbeat_timeout,
            ..wrun_core::CoreConfig::default()
        }
    }
}

pub(crate) fn scheduler(
    host: String,
    port: u16,
    scheduler_file: Option<PathBuf>,
    policy: &PolicyArgs,
) -> CommandResult {
    let config = wrun_scheduler::SchedulerConfig {
        host,
        port,
        scheduler_file,
        core: policy.core(),
        ..Default::default()
    };
    let code = wrun_scheduler::run_scheduler(config).context("running the scheduler")?;
    match code {
        Some(code) if code != 0 => Err(Failure {
            code: code.clamp(1, 255) as u8,
            error: anyhow!("the cluster was shut down with exit code {code}"),
        }),
        _ => Ok(()),
    }
}

/// Flags of `wrun worker`.
#[derive(Debug, Clone, Args)]
pub(crate) struct WorkerArgs {
    #[command(flatten)]
    pub(crate) scheduler: SchedulerArgs,
    /// The cluster secret, when --scheduler is used instead of a scheduler file.
    #[arg(long, env = "WRUN_SECRET", hide_env_values = true)]
    pub(crate) secret: Option<String>,
    /// Task threads.
    #[arg(long, env = "WRUN_THREADS", default_value_t = 1)]
    pub(crate) threads: u32,
    /// Memory for the worker process; the nanny restarts a worker above it.
    #[arg(long, env = "WRUN_WORKER_MEMORY", default_value = "4GiB", value_parser = parse_size)]
    pub(crate) memory: u64,
    /// A name for status and logs [default: host-pid].
    #[arg(long, env = "WRUN_WORKER_NAME")]
    pub(crate) name: Option<String>,
    /// Run the worker in this process, without a nanny to restart it.
    #[arg(long, env = "WRUN_NO_NANNY")]
    pub(crate) no_nanny: bool,
    /// Address that peers use to fetch this worker's results; `auto` picks
    /// the address of this node's host name.
    #[arg(long, env = "WRUN_PEER_HOST", default_value = "127.0.0.1")]
    pub(crate) peer_host: String,
    /// Network interface for peers (e.g. ib0); overrides --peer-host.
    #[arg(long, env = "WRUN_INTERFACE")]
    pub(crate) interface: Option<String>,
    /// Stop after this long (retiring first), like dask-worker --lifetime.
    /// Under Slurm the job's own end time is used without it.
    #[arg(long, env = "WRUN_LIFETIME", value_parser = parse_duration)]
    pub(crate) lifetime: Option<Duration>,
    /// How long before its end time the worker retires: stops taking tasks
    /// and hands its results to peers.
    #[arg(long, env = "WRUN_RETIRE_MARGIN", default_value = "60s", value_parser = parse_duration)]
    pub(crate) retire_margin: Duration,
    /// On SIGTERM or SIGINT the worker retires and leaves within this long
    /// (Slurm kills KillWait, 30 s by default, after its SIGTERM).
    #[arg(long, env = "WRUN_RETIRE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub(crate) retire_timeout: Duration,
    /// Exit when the parent process dies (`wrun local` and the nanny pass it).
    #[arg(long, hide = true)]
    pub(crate) exit_with_parent: bool,
}

/// Exits this process as soon as its parent is gone (it is then re-parented),
/// so that nothing outlives a killed `wrun local` or nanny.
fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(100));
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(0);
            }
        }
    });
}

fn worker_config(args: &WorkerArgs) -> Result<WorkerConfig, Failure> {
    let scheduler = match (
        &args.scheduler.scheduler_file,
        &args.scheduler.scheduler,
        &args.secret,
    ) {
        (Some(file), _, _) => SchedulerTarget::File(file.clone()),
        (None, Some(address), Some(secret)) => SchedulerTarget::Address {
            address: address.clone(),
            secret: secret.clone(),
        },
        (None, Some(_), None) => {
            return Err(Failure::input(anyhow!(
                "--scheduler needs --secret (or WRUN_SECRET)"
            )));
        }
        (None, None, _) => {
            return Err(Failure::input(anyhow!(
                "name the scheduler: --scheduler-file FILE or --scheduler HOST:PORT"
            )));
        }
    };
    let peer_host = match (&args.interface, args.peer_host.as_str()) {
        (Some(interface), _) => wrun_slurm::address_of_interface(interface)
            .map_err(|e| Failure::input(anyhow!(e)))?
            .to_string(),
        (None, "auto") => wrun_slurm::default_address().to_string(),
        (None, host) => host.to_owned(),
    };
    let slurm_job_id = std::env::var("SLURM_JOB_ID")
        .ok()
        .filter(|id| !id.is_empty());
    let end_time = match (args.lifetime, &slurm_job_id) {
        (Some(lifetime), _) => Some(SystemTime::now() + lifetime),
        (None, Some(job)) => match wrun_slurm::time_left(job) {
            Ok(left) => left.map(|left| SystemTime::now() + left),
            Err(error) => {
                tracing::warn!("cannot learn the end of Slurm job {job}: {error}");
                None
            }
        },
        (None, None) => None,
    };
    Ok(WorkerConfig {
        scheduler,
        threads: args.threads.max(1),
        memory_bytes: args.memory,
        name: args
            .name
            .clone()
            .unwrap_or_else(|| format!("worker-{}", std::process::id())),
        connect_timeout: args.scheduler.connect_timeout,
        peer_host,
        sandbox: SandboxConfig::default(),
        end_time,
        retire_margin: args.retire_margin,
        retire_on_signal: Some(args.retire_timeout),
        slurm_job_id,
    })
}

pub(crate) fn worker(args: WorkerArgs) -> CommandResult {
    let config = worker_config(&args)?;
    if args.exit_with_parent {
        exit_with_parent();
    }
    if !args.no_nanny {
        return nanny(&args);
    }
    eprintln!(
        "wrun worker {}: {} thread(s), joining the scheduler{}",
        config.name,
        config.threads,
        match config
            .end_time
            .and_then(|t| t.duration_since(SystemTime::now()).ok())
        {
            Some(left) => format!(
                "; ends in {}, retires {} before",
                wrun_slurm::format_duration(left),
                wrun_slurm::format_duration(config.retire_margin)
            ),
            None => String::new(),
        }
    );
    let departure = wrun_worker::run_worker(config).map_err(|error| match error {
        wrun_worker::WorkerError::Connect(_) | wrun_worker::WorkerError::Disconnected(_) => {
            Failure {
                code: 3,
                error: error.into(),
            }
        }
        other => Failure::input(other),
    })?;
    eprintln!(
        "wrun worker: {}",
        match departure {
            wrun_worker::Departure::Retired => "retired; its tasks and results were handed over",
            wrun_worker::Departure::RetiredUnconfirmed =>
                "retired without confirmation; the scheduler recomputes what was lost",
            wrun_worker::Departure::Shutdown => "the cluster shut down",
        }
    );
    Ok(())
}

/// The resident set size of a process, from /proc.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn signal(child: &Child, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal);
}

/// The nanny: starts the worker as a child process and restarts it after a
/// crash, a kill, or its RSS passing --memory, with back-off. The scheduler
/// sees the old worker's connection drop and the new one register.
fn nanny(args: &WorkerArgs) -> CommandResult {
    let exe = std::env::current_exe().context("finding the wrun binary")?;
    let mut child_args: Vec<String> = std::env::args().skip(1).collect();
    child_args.push("--no-nanny".to_owned());
    if !args.exit_with_parent {
        child_args.push("--exit-with-parent".to_owned());
    }
    let stop = stop_flag();
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        let mut child = Command::new(&exe)
            .args(&child_args)
            .stdin(Stdio::null())
            .spawn()
            .context("starting the worker process")?;
        let reason = loop {
            if stop.load(Ordering::SeqCst) {
                // The worker retires on SIGTERM; give it the time it asks for.
                signal(&child, nix::sys::signal::Signal::SIGTERM);
                let deadline = Instant::now() + args.retire_timeout + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if child.try_wait().ok().flatten().is_some() {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
                return Ok(());
            }
            if let Some(status) = child.try_wait().context("watching the worker")? {
                if status.success() {
                    // It retired (end time reached): nothing to restart.
                    return Ok(());
                }
                // Lost its scheduler, whose file is gone too: the cluster was
                // stopped (`wrun mpi` ends like this), not crashed.
                if let Some(file) = &args.scheduler.scheduler_file
                    && !file.exists()
                {
                    eprintln!(
                        "wrun nanny: the scheduler stopped and removed {}; exiting",
                        file.display()
                    );
                    return Ok(());
                }
                break format!("worker exited ({status})");
            }
            if let Some(rss) = rss_bytes(child.id())
                && rss > args.memory
            {
                let _ = child.kill();
                let _ = child.wait();
                break format!(
                    "worker used {} of memory, over --memory {}; killed",
                    wrun_sandbox::humanize_bytes(rss),
                    wrun_sandbox::humanize_bytes(args.memory)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(100);
        }
        eprintln!(
            "wrun nanny: {reason}; restarting in {} ms",
            backoff.as_millis()
        );
        let until = Instant::now() + backoff;
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

pub(crate) fn local(
    workers: u32,
    threads: u32,
    memory: u64,
    host: String,
    port: u16,
    scheduler_file: Option<PathBuf>,
    policy: &PolicyArgs,
) -> CommandResult {
    let file = scheduler_file.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("wrun-local-{}.json", std::process::id()))
    });
    let handle = wrun_scheduler::start_scheduler(wrun_scheduler::SchedulerConfig {
        host,
        port,
        scheduler_file: Some(file.clone()),
        core: policy.core(),
        ..Default::default()
    })
    .context("starting the scheduler")?;
    println!("wrun local: scheduler at {}", handle.address);
    println!("scheduler file: {}", file.display());
    let exe = std::env::current_exe().context("finding the wrun binary")?;
    let mut children = Vec::new();
    for i in 0..workers {
        let child = Command::new(&exe)
            .arg("worker")
            .arg("--scheduler-file")
            .arg(&file)
            .arg("--threads")
            .arg(threads.to_string())
            .arg("--memory")
            .arg(memory.to_string())
            .arg("--name")
            .arg(format!("local-{i}"))
            .arg("--exit-with-parent")
            .stdin(Stdio::null())
            .spawn()
            .context("starting a worker")?;
        children.push(child);
    }
    let _ = std::io::stdout().flush();
    wait_for_signal();
    eprintln!("wrun local: stopping");
    for child in &children {
        signal(child, nix::sys::signal::Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for child in &mut children {
        while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    handle.stop();
    let _ = std::fs::remove_file(&file);
    Ok(())
}

/// An in-process cluster for one `wrun submit` with no scheduler named.
struct Embedded {
    scheduler: wrun_scheduler::SchedulerHandle,
}

fn embedded_cluster() -> Result<(Embedded, Target), Failure> {
    let scheduler = wrun_scheduler::start_scheduler(wrun_scheduler::SchedulerConfig::default())
        .context("starting an embedded scheduler")?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let config = WorkerConfig {
        scheduler: SchedulerTarget::Address {
            address: scheduler.address.clone(),
            secret: scheduler.secret.clone(),
        },
        threads,
        memory_bytes: 0,
        name: "embedded".to_owned(),
        connect_timeout: Duration::from_secs(10),
        peer_host: "127.0.0.1".to_owned(),
        sandbox: SandboxConfig::default(),
        end_time: None,
        retire_margin: Duration::ZERO,
        // In-process: the command's own Ctrl-C handling ends it.
        retire_on_signal: None,
        slurm_job_id: None,
    };
    std::thread::Builder::new()
        .name("wrun-embedded-worker".to_owned())
        .spawn(move || {
            let _ = wrun_worker::run_worker(config);
        })
        .context("starting an embedded worker")?;
    let target = Target::Address(scheduler.address.clone());
    Ok((Embedded { scheduler }, target))
}

/// Flags of `wrun submit`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SubmitArgs {
    /// The .wasm module, or a graph file (`.toml`, see below).
    pub(crate) module: PathBuf,
    /// The task to run (not with a graph file).
    pub(crate) task: Option<String>,
    /// Arguments: JSON values. With --map, one call per ARG: the task's only
    /// argument, or a JSON array of all its arguments.
    #[arg(allow_negative_numbers = true)]
    pub(crate) arg: Vec<String>,
    /// Fan out: one task per ARG (or per line of --args-file), results in order.
    #[arg(long)]
    pub(crate) map: bool,
    /// One JSON array of arguments per line, one task each (implies --map).
    #[arg(long, conflicts_with = "arg")]
    pub(crate) args_file: Option<PathBuf>,
    /// Runs again after a task error (errors are deterministic, so default 0).
    #[arg(long, env = "WRUN_RETRIES", default_value_t = 0)]
    pub(crate) retries: u32,
    /// Print a job id and return; the cluster keeps the tasks for
    /// `wrun gather JOB`, `wrun logs JOB`, `wrun cancel JOB`.
    #[arg(long)]
    pub(crate) detach: bool,
    /// The job's name with --detach [default: a new job-N].
    #[arg(long, requires = "detach")]
    pub(crate) job: Option<String>,
    #[command(flatten)]
    pub(crate) scheduler: SchedulerArgs,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
}

fn parse_calls(args: &SubmitArgs, params: usize) -> Result<Vec<Vec<Json>>, Failure> {
    let parse = |text: &str, what: String| -> Result<Json, Failure> {
        serde_json::from_str(text).map_err(|error| {
            Failure::input(anyhow!("{what} ({text:?}) is not valid JSON: {error}; strings need quotes, e.g. '\"{text}\"'"))
        })
    };
    if let Some(path) = &args.args_file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut calls = Vec::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            match parse(line, format!("line {} of {}", n + 1, path.display()))? {
                Json::Array(items) => calls.push(items),
                _ => {
                    return Err(Failure::input(anyhow!(
                        "line {} of {}: expected a JSON array of arguments",
                        n + 1,
                        path.display()
                    )));
                }
            }
        }
        return Ok(calls);
    }
    let values: Vec<Json> = args
        .arg
        .iter()
        .enumerate()
        .map(|(i, text)| parse(text, format!("argument {}", i + 1)))
        .collect::<Result<_, _>>()?;
    if !args.map {
        return Ok(vec![values]);
    }
    values
        .into_iter()
        .enumerate()
        .map(|(i, value)| match (params, value) {
            (1, value) => Ok(vec![value]),
            (_, Json::Array(items)) => Ok(items),
            (_, other) => Err(Failure::input(anyhow!(
                "argument {} ({other}): with --map, a task of {params} parameters takes a JSON array of arguments per call",
                i + 1
            ))),
        })
        .collect()
}

/// Connects to the named scheduler, or starts an embedded cluster.
fn connect_or_embed(args: &SubmitArgs) -> Result<(Option<Embedded>, Client), Failure> {
    let (embedded, target) = match args.scheduler.target() {
        Some(target) => (None, target),
        None => {
            let (embedded, target) = embedded_cluster()?;
            (Some(embedded), target)
        }
    };
    let mut client =
        Client::connect(&target, args.scheduler.connect_timeout).map_err(client_failure)?;
    let limits = args.limits.to_limits();
    client.set_options(TaskOptions {
        memory_bytes: limits.memory_bytes,
        timeout: limits.timeout,
        fuel: limits.fuel.unwrap_or(0),
        result_bytes: limits.result_bytes,
        stdout_bytes: limits.stdout_bytes,
        stderr_bytes: limits.stderr_bytes,
        retries: args.retries,
    });
    Ok((embedded, client))
}

fn submit_graph(args: &SubmitArgs) -> CommandResult {
    if args.task.is_some() || !args.arg.is_empty() || args.map || args.args_file.is_some() {
        return Err(Failure::input(anyhow!(
            "a graph file takes no TASK, ARGs, --map or --args-file"
        )));
    }
    let (graph, bytes, _) = crate::graph::load(&args.module).map_err(Failure::input)?;
    let (embedded, client) = connect_or_embed(args)?;
    let module = client.upload(&bytes).map_err(client_failure)?;
    let mut lazy = client.graph();
    let mut nodes = std::collections::HashMap::new();
    for (id, task, graph_args) in &graph.order {
        let call_args = graph_args
            .iter()
            .map(|a| match a {
                crate::graph::GraphValue::Literal(json) => {
                    wrun_client::GraphArg::Value(json.clone())
                }
                crate::graph::GraphValue::Ref(target) => wrun_client::GraphArg::Node(nodes[target]),
            })
            .collect();
        nodes.insert(id.clone(), lazy.call(&module, task, call_args));
    }
    let outputs: Vec<_> = graph.outputs.iter().map(|id| nodes[id]).collect();
    let results = lazy.compute(&outputs).map_err(client_failure)?;
    let mut failures = 0;
    for (id, result) in graph.outputs.iter().zip(&results) {
        match result {
            Ok(value) => println!("{}", serde_json::json!({ id: value })),
            Err(failure) => {
                failures += 1;
                println!("{}", serde_json::json!({ id: null }));
                eprintln!(
                    "error: `{id}` failed ({}): {}",
                    failure.kind, failure.message
                );
            }
        }
    }
    drop(client);
    if let Some(embedded) = embedded {
        embedded.scheduler.stop();
    }
    if failures > 0 {
        return Err(Failure::task(anyhow!(
            "{failures} of {} output(s) failed",
            results.len()
        )));
    }
    Ok(())
}

pub(crate) fn submit(args: SubmitArgs) -> CommandResult {
    if args.detach && args.scheduler.target().is_none() {
        return Err(Failure::input(anyhow!(
            "--detach needs a cluster that outlives this command: name it with --scheduler-file or --scheduler"
        )));
    }
    if args.module.extension().is_some_and(|e| e == "toml") {
        return submit_graph(&args);
    }
    let Some(task) = args.task.clone() else {
        return Err(Failure::input(anyhow!(
            "name the TASK to run (or give a graph file ending in .toml)"
        )));
    };
    let bytes = std::fs::read(&args.module)
        .with_context(|| format!("cannot read the module {}", args.module.display()))?;
    let signatures = wrun_abi::read_task_signatures(&bytes)
        .with_context(|| args.module.display().to_string())?;
    let Some(signature) = signatures.iter().find(|s| s.name == task) else {
        return Err(Failure::input(anyhow!(
            "unknown task `{}`; the module has: {}",
            task,
            signatures
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let calls = parse_calls(&args, signature.params.len())?;
    let fan_out = args.map || args.args_file.is_some();
    // Check every call's arguments before anything is sent.
    for (i, call) in calls.iter().enumerate() {
        wrun_abi::encode_args_from_json(signature, call).map_err(|e| {
            Failure::input(if fan_out {
                anyhow!("call {}: {e}", i + 1)
            } else {
                anyhow!(e)
            })
        })?;
    }

    let (_embedded, client) = connect_or_embed(&args)?;
    let module = client.upload(&bytes).map_err(client_failure)?;
    let calls: Vec<Vec<Argument>> = calls
        .into_iter()
        .map(|c| c.into_iter().map(Argument::from).collect())
        .collect();
    let futures = client.map(&module, &task, calls).map_err(client_failure)?;
    if args.detach {
        let job = client
            .detach(futures, args.job.as_deref().unwrap_or(""))
            .map_err(client_failure)?;
        println!("{job}");
        return Ok(());
    }
    let show_progress = fan_out && std::io::stderr().is_terminal() && futures.len() > 1;
    client
        .wait_with_progress(&futures, |done, total| {
            if show_progress {
                let width = 40;
                let filled = done * width / total.max(1);
                eprint!(
                    "\r[{}{}] {done}/{total}",
                    "#".repeat(filled),
                    ".".repeat(width - filled)
                );
                if done == total {
                    eprintln!();
                }
            }
        })
        .map_err(client_failure)?;
    let results = client.gather(&futures).map_err(client_failure)?;
    let mut failures = 0;
    let mut stdout = std::io::stdout().lock();
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(value) => {
                let _ = writeln!(stdout, "{value}");
            }
            Err(failure) => {
                failures += 1;
                let _ = writeln!(stdout, "null");
                if fan_out {
                    eprintln!(
                        "error: call {} failed ({}): {}",
                        i + 1,
                        failure.kind,
                        failure.message
                    );
                } else {
                    eprintln!(
                        "error: task `{task}` failed ({}): {}",
                        failure.kind, failure.message
                    );
                }
            }
        }
    }
    drop(stdout);
    drop(futures);
    drop(client);
    if let Some(embedded) = _embedded {
        embedded.scheduler.stop();
    }
    if failures > 0 {
        return Err(Failure::task(anyhow!(
            "{failures} of {} task(s) failed",
            results.len()
        )));
    }
    Ok(())
}

pub(crate) fn status(scheduler: SchedulerArgs, json: bool) -> CommandResult {
    let target = scheduler.target().ok_or_else(|| {
        Failure::input(anyhow!(
            "name the scheduler: --scheduler-file FILE or --scheduler HOST:PORT"
        ))
    })?;
    let client = Client::connect(&target, scheduler.connect_timeout).map_err(client_failure)?;
    let status = client.status().map_err(client_failure)?;
    if json {
        println!("{status}");
        return Ok(());
    }
    let workers = status["workers"].as_array().cloned().unwrap_or_default();
    println!(
        "{} worker(s), {} task(s) known, {} queued in the scheduler",
        workers.len(),
        status["tasks"],
        status["queued"]
    );
    let by = &status["by_state"];
    println!(
        "tasks: {} waiting, {} queued, {} on workers ({} running), {} done, {} failed",
        by["waiting"], by["queued"], by["on_workers"], by["running"], by["done"], by["failed"]
    );
    if let Some(jobs) = status["jobs"].as_object().filter(|jobs| !jobs.is_empty()) {
        let list: Vec<String> = jobs
            .iter()
            .map(|(name, count)| format!("{name} ({count} tasks)"))
            .collect();
        println!("detached jobs: {}", list.join(", "));
    }
    if status["recomputed"].as_u64().unwrap_or(0) > 0 {
        println!(
            "{} result(s) were lost with workers and computed again",
            status["recomputed"]
        );
    }
    println!(
        "{:<6} {:<20} {:>7} {:>10} {:>9} {:>8} {:>8} {:>10} {:>12}",
        "id",
        "name",
        "threads",
        "memory",
        "pid",
        "assigned",
        "running",
        "slurm job",
        "walltime left"
    );
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    for w in workers {
        let memory = w["memory_bytes"]
            .as_u64()
            .map(wrun_sandbox::humanize_bytes)
            .unwrap_or_default();
        let left = w["end_time_ms"]
            .as_u64()
            .map(|end| {
                wrun_slurm::format_duration(Duration::from_millis(end.saturating_sub(now_ms)))
            })
            .unwrap_or_else(|| "-".to_owned());
        let mut name = w["name"].as_str().unwrap_or("").to_owned();
        if w["retiring"].as_bool() == Some(true) {
            name.push_str(" (retiring)");
        }
        println!(
            "{:<6} {:<20} {:>7} {:>10} {:>9} {:>8} {:>8} {:>10} {:>12}",
            w["id"].to_string(),
            name,
            w["threads"].to_string(),
            memory,
            w["pid"].to_string(),
            w["assigned"].to_string(),
            w["running"].to_string(),
            w["slurm_job_id"].as_str().unwrap_or("-"),
            left
        );
    }
    Ok(())
}

fn connect_named(scheduler: &SchedulerArgs) -> Result<Client, Failure> {
    let target = scheduler.target().ok_or_else(|| {
        Failure::input(anyhow!(
            "name the scheduler: --scheduler-file FILE or --scheduler HOST:PORT"
        ))
    })?;
    Client::connect(&target, scheduler.connect_timeout).map_err(client_failure)
}

/// `wrun gather JOB`: waits for a detached job and prints its results in order.
pub(crate) fn gather(scheduler: SchedulerArgs, job: String) -> CommandResult {
    let client = connect_named(&scheduler)?;
    let futures = client.adopt(&job).map_err(client_failure)?;
    let results = client.gather(&futures).map_err(client_failure)?;
    let mut failures = 0;
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(value) => println!("{value}"),
            Err(failure) => {
                failures += 1;
                println!("null");
                eprintln!(
                    "error: {job}:{i} failed ({}): {}",
                    failure.kind, failure.message
                );
            }
        }
    }
    if failures > 0 {
        return Err(Failure::task(anyhow!(
            "{failures} of {} task(s) failed",
            results.len()
        )));
    }
    Ok(())
}

/// `wrun logs JOB[:N]`: captured stdout and stderr of a detached job's
/// tasks (all, or the N-th); the job stays detached.
pub(crate) fn logs(scheduler: SchedulerArgs, task: String) -> CommandResult {
    let (job, index) = match task.rsplit_once(':') {
        Some((job, n)) => {
            let n: usize = n
                .parse()
                .map_err(|_| Failure::input(anyhow!("`{task}`: expected JOB or JOB:N")))?;
            (job.to_owned(), Some(n))
        }
        None => (task.clone(), None),
    };
    let client = connect_named(&scheduler)?;
    let futures = client.adopt(&job).map_err(client_failure)?;
    let shown = match index {
        Some(n) if n >= futures.len() => {
            let count = futures.len();
            client.detach(futures, &job).map_err(client_failure)?;
            return Err(Failure::input(anyhow!(
                "job `{job}` has {count} task(s); there is no task {n}"
            )));
        }
        Some(n) => vec![n],
        None => (0..futures.len()).collect(),
    };
    let wanted: Vec<_> = shown.iter().map(|n| futures[*n].clone()).collect();
    client.wait(&wanted).map_err(client_failure)?;
    drop(wanted);
    for n in shown {
        let (stdout, stderr) = client.logs(&futures[n]).map_err(client_failure)?;
        if index.is_none() {
            println!("== {job}:{n}");
        }
        for line in String::from_utf8_lossy(&stdout).lines() {
            println!("[stdout] {line}");
        }
        for line in String::from_utf8_lossy(&stderr).lines() {
            println!("[stderr] {line}");
        }
    }
    client.detach(futures, &job).map_err(client_failure)?;
    Ok(())
}

/// `wrun cancel JOB`: stops a detached job's tasks and frees their results.
pub(crate) fn cancel(scheduler: SchedulerArgs, job: String) -> CommandResult {
    let client = connect_named(&scheduler)?;
    let futures = client.adopt(&job).map_err(client_failure)?;
    let count = futures.len();
    client.cancel(futures).map_err(client_failure)?;
    println!("cancelled {count} task(s) of {job}");
    Ok(())
}

/// Asks the scheduler to shut the cluster down with `code` (`wrun shutdown`,
/// and `wrun mpi` when its client ends); the scheduler file holds the secret.
pub(crate) fn shutdown_cluster(
    path: &std::path::Path,
    code: i32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let file = wrun_proto::SchedulerFile::wait_for(path, timeout).await?;
        let stream = wrun_proto::connect_with_retry(&file.address, timeout).await?;
        let mut rpc = wrun_proto::rpc_system(
            stream,
            wrun_proto::capnp_rpc::rpc_twoparty_capnp::Side::Client,
            None,
        );
        let cluster: wrun_proto::wrun_capnp::cluster::Client =
            rpc.bootstrap(wrun_proto::capnp_rpc::rpc_twoparty_capnp::Side::Server);
        tokio::task::spawn_local(async move {
            let _ = rpc.await;
        });
        let mut request = cluster.shutdown_request();
        request.get().set_secret(&file.secret);
        request.get().set_exit_code(code);
        tokio::time::timeout(timeout, request.send().promise)
            .await
            .map_err(|_| anyhow!("the scheduler did not answer the shutdown"))??;
        anyhow::Ok(())
    })
}

//! `wrun slurm`: workers as Slurm batch jobs, like dask-jobqueue's
//! SLURMCluster. `up` starts (or joins) a scheduler and submits worker
//! jobs; `scale`, `adapt` and `down` change them later. What a cluster
//! submitted is kept next to its scheduler file (`<file>.slurm`), so each
//! command is a separate process, as in a batch script or a shell.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use wrun_abi::units::{ByteSize, HumanDuration};
use wrun_client::{Client, ClusterStatus, Target, WorkerStatus};
use wrun_slurm::{AdaptBounds, AdaptJob, JobScript, SlurmError, WorkerCommand};

use crate::exit::{CommandResult, Failure};
use crate::output::{out, outln};

/// `wrun slurm ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum SlurmCommand {
    /// Start (or join) a scheduler and submit worker jobs; waits until the
    /// workers are ready (or --start-timeout passes).
    Up(UpArgs),
    /// Print the batch script `up` would submit for each worker job.
    JobScript(JobArgs),
    /// Submit or cancel worker jobs until there are N (stops `adapt`).
    Scale {
        /// Worker jobs wanted.
        jobs: u32,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Grow and shrink the worker jobs with the load, in the background:
    /// jobs are submitted when tasks queue and cancelled (their workers
    /// retire first) after idling for --idle-grace.
    Adapt(AdaptArgs),
    /// Cancel every job this cluster submitted and stop the scheduler it started.
    Down {
        #[command(flatten)]
        cluster: ClusterArgs,
    },
}

/// Which cluster: its scheduler file.
#[derive(Debug, Clone, Args)]
pub(crate) struct ClusterArgs {
    /// The scheduler file; the cluster's job list is kept beside it
    /// (FILE.slurm). Put it on a file system the compute nodes share.
    /// [default: ~/.wrun/slurm/scheduler.json]
    #[arg(long, env = "WRUN_SCHEDULER_FILE")]
    pub(crate) scheduler_file: Option<PathBuf>,
}

impl ClusterArgs {
    fn file(&self) -> Result<PathBuf, Failure> {
        if let Some(file) = &self.scheduler_file {
            return Ok(absolute(file));
        }
        let home = std::env::var_os("HOME")
            .ok_or_else(|| Failure::input(anyhow!("HOME is not set; pass --scheduler-file")))?;
        Ok(PathBuf::from(home).join(".wrun/slurm/scheduler.json"))
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// What a worker job is: the SLURMCluster options.
#[derive(Debug, Clone, Args)]
pub(crate) struct JobArgs {
    /// Cores per job (`--cpus-per-task`); shared by its worker processes.
    #[arg(long, env = "WRUN_SLURM_CORES", default_value_t = 1)]
    cores: u32,
    /// Worker processes per job, each with cores/processes threads.
    #[arg(long, env = "WRUN_SLURM_PROCESSES", default_value_t = 1)]
    processes: u32,
    /// Memory per job (`--mem`), shared by its processes.
    #[arg(long, env = "WRUN_SLURM_MEMORY", default_value = "4GiB")]
    memory: ByteSize,
    /// Walltime per job, [D-]HH:MM:SS or minutes.
    #[arg(long, env = "WRUN_SLURM_WALLTIME", default_value = "00:30:00", value_parser = parse_walltime)]
    walltime: Duration,
    /// Partition (`-p`), dask-jobqueue's `queue`.
    #[arg(long, env = "WRUN_SLURM_PARTITION")]
    partition: Option<String>,
    /// Account to charge (`-A`).
    #[arg(long, env = "WRUN_SLURM_ACCOUNT")]
    account: Option<String>,
    /// Network interface for the scheduler and the workers (e.g. ib0).
    #[arg(long, env = "WRUN_SLURM_INTERFACE")]
    interface: Option<String>,
    /// An extra `#SBATCH` directive, e.g. '--gres=gpu:1' (repeatable).
    #[arg(
        long = "extra-directive",
        env = "WRUN_SLURM_EXTRA_DIRECTIVES",
        value_delimiter = '\n',
        allow_hyphen_values = true
    )]
    extra_directives: Vec<String>,
    /// Leave out generated directives containing this text, e.g. '--mem' (repeatable).
    #[arg(
        long = "skip-directive",
        env = "WRUN_SLURM_SKIP_DIRECTIVES",
        value_delimiter = '\n',
        allow_hyphen_values = true
    )]
    skip_directives: Vec<String>,
    /// A shell line run before the workers start, e.g. 'module load x' (repeatable).
    #[arg(
        long = "prologue",
        env = "WRUN_SLURM_PROLOGUE",
        value_delimiter = '\n',
        allow_hyphen_values = true
    )]
    prologue: Vec<String>,
    /// The jobs' name.
    #[arg(long, env = "WRUN_SLURM_JOB_NAME", default_value = "wrun-worker")]
    job_name: String,
    /// Workers retire this long before the walltime ends: they stop taking
    /// tasks and hand their results to peers.
    #[arg(long, env = "WRUN_RETIRE_MARGIN", default_value = "60s")]
    retire_margin: HumanDuration,
    /// Where job output goes [default: logs/ beside the scheduler file].
    #[arg(long, env = "WRUN_SLURM_LOG_DIR")]
    log_dir: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

fn parse_walltime(text: &str) -> Result<Duration, String> {
    wrun_slurm::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("`{text}` is not a walltime: use HH:MM:SS, D-HH:MM:SS or minutes"))
}

impl JobArgs {
    fn script(&self) -> Result<JobScript, Failure> {
        if self.walltime <= self.retire_margin.0 {
            return Err(Failure::input(anyhow!(
                "the walltime {} is not longer than the retirement margin {}: workers would retire as they start; lengthen --walltime or shorten --retire-margin",
                wrun_slurm::format_duration(self.walltime),
                wrun_slurm::format_duration(self.retire_margin.0)
            )));
        }
        if self.processes == 0 || self.cores < self.processes {
            return Err(Failure::input(anyhow!(
                "--processes {} needs at least as many --cores (have {})",
                self.processes,
                self.cores
            )));
        }
        let file = self.cluster.file()?;
        Ok(JobScript {
            job_name: self.job_name.clone(),
            cores: self.cores,
            processes: self.processes,
            memory_bytes: self.memory.0,
            walltime: self.walltime,
            partition: self.partition.clone(),
            account: self.account.clone(),
            log_dir: self
                .log_dir
                .as_deref()
                .map(absolute)
                .unwrap_or_else(|| log_dir(&file)),
            extra_directives: self.extra_directives.clone(),
            skip_directives: self.skip_directives.clone(),
            prologue: self.prologue.clone(),
            worker: WorkerCommand {
                wrun: std::env::current_exe().context("finding the wrun binary")?,
                scheduler_file: file,
                interface: self.interface.clone(),
                retire_margin: self.retire_margin.0,
            },
        })
    }
}

fn log_dir(scheduler_file: &Path) -> PathBuf {
    scheduler_file
        .parent()
        .unwrap_or(Path::new("."))
        .join("logs")
}

/// Flags of `wrun slurm up`.
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Worker jobs to submit.
    #[arg(long, env = "WRUN_SLURM_WORKERS", default_value_t = 1)]
    workers: u32,
    /// How long to wait for the workers to be ready; jobs still pending
    /// then are cancelled and reported with Slurm's reason.
    #[arg(long, env = "WRUN_SLURM_START_TIMEOUT", default_value = "300s")]
    start_timeout: HumanDuration,
    /// Return once the jobs are submitted, without waiting for the workers.
    #[arg(long)]
    no_wait: bool,
    /// The scheduler's journal (made if missing; default FILE.journal
    /// beside the scheduler file). A scheduler that dies is started again
    /// on it by the next `wrun slurm up`, and loses no accepted work.
    #[arg(long, env = "WRUN_SLURM_JOURNAL", conflicts_with = "no_journal")]
    journal: Option<PathBuf>,
    /// Run the scheduler without a journal.
    #[arg(long)]
    no_journal: bool,
    #[command(flatten)]
    job: JobArgs,
}

impl UpArgs {
    /// Where the scheduler keeps its journal, if it keeps one.
    fn journal_dir(&self, file: &Path) -> Option<PathBuf> {
        if self.no_journal {
            return None;
        }
        Some(self.journal.as_deref().map(absolute).unwrap_or_else(|| {
            let mut name = file.as_os_str().to_owned();
            name.push(".journal");
            PathBuf::from(name)
        }))
    }
}

/// Flags of `wrun slurm adapt`.
#[derive(Debug, Args)]
pub(crate) struct AdaptArgs {
    /// Fewest worker jobs.
    #[arg(long, default_value_t = 0)]
    min: u32,
    /// Most worker jobs.
    #[arg(long)]
    max: u32,
    /// How often to look at the load.
    #[arg(long, default_value = "1s")]
    interval: HumanDuration,
    /// A job idle (or still pending) this long while there are more jobs
    /// than the load needs is cancelled.
    #[arg(long, default_value = "10s")]
    idle_grace: HumanDuration,
    /// Run in this process instead of the background.
    #[arg(long)]
    foreground: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// What a `wrun slurm` cluster submitted and started; kept in FILE.slurm.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ClusterState {
    /// The scheduler process `up` started (none if it joined one).
    scheduler_pid: Option<u32>,
    /// The background `adapt` process.
    adaptor_pid: Option<u32>,
    /// Worker jobs submitted and not known to have ended.
    jobs: Vec<String>,
    /// The batch script of a worker job (scale and adapt submit it again).
    script: String,
    /// Task threads of one job (all its processes).
    threads_per_job: u32,
    /// Worker processes per job.
    processes: u32,
    /// The journal of the scheduler `up` started (`down` removes it: the
    /// cluster's work ends with the cluster).
    #[serde(default)]
    journal: Option<PathBuf>,
}

fn state_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".slurm");
    PathBuf::from(name)
}

impl ClusterState {
    fn load(file: &Path) -> Result<Option<ClusterState>, Failure> {
        let path = state_path(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("{} is not a wrun slurm state file", path.display()))
                .map_err(Failure::from),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(anyhow!("reading {}: {error}", path.display()).into()),
        }
    }

    fn save(&self, file: &Path) -> Result<(), Failure> {
        let path = state_path(file);
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(
            &tmp,
            serde_json::to_string_pretty(self).expect("serializable"),
        )
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }
}

/// Held while a command reads, changes and writes FILE.slurm: `up`,
/// `scale`, `down` and each round of the adaptor all change it, and an
/// unlocked read-modify-write of one would drop another's change (a job,
/// the adaptor's pid).
struct StateLock {
    /// The lock is released when this closes.
    _held: std::fs::File,
}

impl StateLock {
    fn acquire(file: &Path) -> Result<StateLock, Failure> {
        let mut name = state_path(file).into_os_string();
        name.push(".lock");
        let path = PathBuf::from(name);
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(StateLock { _held: lock })
    }

    fn remove(file: &Path) {
        let mut name = state_path(file).into_os_string();
        name.push(".lock");
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
}

fn slurm_failure(error: SlurmError) -> Failure {
    Failure::input(anyhow!(error))
}

/// Whether a process is still there (a zombie child counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            // The state follows the command name in parentheses.
            stat.rsplit_once(") ")
                .map(|(_, rest)| !rest.starts_with('Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// SIGTERM, then wait (bounded) for the process to go.
fn stop_process(pid: u32, within: Duration) -> bool {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    // SIGKILL is not instant either: callers go on as if the process is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Starts `wrun ARGS...` detached from this terminal (own process group),
/// its output appended to `log`.
fn spawn_detached(args: &[String], log: &Path) -> Result<u32, Failure> {
    let exe = std::env::current_exe().context("finding the wrun binary")?;
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone().context("duplicating the log file")?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .context("starting a background wrun process")?;
    Ok(child.id())
}

/// Connects to the scheduler behind `file`, waiting at most `timeout`.
fn connect(file: &Path, timeout: Duration) -> Result<Client, wrun_client::ClientError> {
    Client::connect(&Target::File(file.to_owned()), timeout)
}

/// Workers in a status answer, by Slurm job id.
fn workers_by_job(status: &ClusterStatus) -> BTreeMap<&str, Vec<&WorkerStatus>> {
    let mut by_job: BTreeMap<&str, Vec<&WorkerStatus>> = BTreeMap::new();
    for worker in &status.workers {
        if let Some(job) = &worker.slurm_job_id {
            by_job.entry(job.as_str()).or_default().push(worker);
        }
    }
    by_job
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl SlurmCommand {
    pub(crate) fn execute(self) -> CommandResult {
        match self {
            SlurmCommand::Up(args) => up(args),
            SlurmCommand::JobScript(args) => {
                out!("{}", args.script()?.render());
                Ok(())
            }
            SlurmCommand::Scale { jobs, cluster } => scale(jobs, &cluster),
            SlurmCommand::Adapt(args) => adapt(args),
            SlurmCommand::Down { cluster } => down(&cluster),
        }
    }
}

fn up(args: UpArgs) -> CommandResult {
    let started = Instant::now();
    let script = args.job.script()?;
    // Before anything starts: without sbatch nothing could be submitted.
    if !on_path("sbatch") {
        return Err(slurm_failure(SlurmError::Missing("sbatch")));
    }
    let file = args.job.cluster.file()?;
    let logs = script.log_dir.clone();
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let _lock = StateLock::acquire(&file)?;
    let mut state = ClusterState::load(&file)?.unwrap_or_default();
    start_or_join_scheduler(&args, &file, &logs, &mut state)?;
    state.script = script.render();
    state.threads_per_job = script.threads_per_process() * script.processes;
    state.processes = script.processes;
    state.save(&file)?;
    let submitted = submit_workers(&mut state, &file, args.workers)?;
    outln!(
        "wrun slurm: scheduler file {}; submitted {} worker job(s): {}",
        file.display(),
        submitted.len(),
        submitted.join(" ")
    );
    if args.no_wait || submitted.is_empty() {
        return Ok(());
    }
    let ready = wait_for_workers(&args, &script, &file, &submitted, &mut state)?;
    outln!(
        "wrun slurm: {ready} worker(s) ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Joins the scheduler behind `file` if one answers; otherwise starts one
/// in the background (its log in `logs`) and waits for it.
fn start_or_join_scheduler(
    args: &UpArgs,
    file: &Path,
    logs: &Path,
    state: &mut ClusterState,
) -> Result<(), Failure> {
    if file.exists() && connect(file, Duration::from_secs(2)).is_ok() {
        outln!("wrun slurm: joining the scheduler of {}", file.display());
        return Ok(());
    }
    let _ = std::fs::remove_file(file);
    let host = match &args.job.interface {
        Some(interface) => {
            wrun_slurm::address_of_interface(interface).map_err(|e| Failure::input(anyhow!(e)))?
        }
        None => wrun_slurm::default_address(),
    };
    let mut command: Vec<String> = vec![
        "scheduler".into(),
        "--host".into(),
        host.to_string(),
        "--scheduler-file".into(),
        file.to_string_lossy().into_owned(),
    ];
    let journal = args.journal_dir(file);
    if let Some(dir) = &journal {
        command.extend(["--journal".into(), dir.to_string_lossy().into_owned()]);
    }
    let pid = spawn_detached(&command, &logs.join("scheduler.log"))?;
    state.scheduler_pid = Some(pid);
    // Workers of a journaled scheduler wait for it to come back and rejoin
    // (`--rejoin-timeout`): their jobs are still this cluster's.
    if journal.is_none() {
        state.jobs.clear();
    }
    state.journal = journal;
    state.save(file)?;
    connect(file, Duration::from_secs(30)).map_err(|error| {
        anyhow!(
            "the scheduler did not start: {error}\n{}",
            tail(&logs.join("scheduler.log"), 20)
        )
    })?;
    Ok(())
}

/// Submits `count` worker jobs; if one is refused, cancels those submitted
/// (and the scheduler `up` started, if no job is left), so nothing
/// half-made stays behind.
fn submit_workers(
    state: &mut ClusterState,
    file: &Path,
    count: u32,
) -> Result<Vec<String>, Failure> {
    let mut submitted = Vec::new();
    for _ in 0..count {
        match wrun_slurm::sbatch(&state.script) {
            Ok(id) => {
                submitted.push(id.clone());
                state.jobs.push(id);
                state.save(file)?;
            }
            Err(error) => {
                let _ = wrun_slurm::scancel(&submitted);
                state.jobs.retain(|j| !submitted.contains(j));
                if state.jobs.is_empty()
                    && let Some(pid) = state.scheduler_pid.take()
                {
                    stop_process(pid, Duration::from_secs(5));
                    let _ = std::fs::remove_file(state_path(file));
                    let _ = std::fs::remove_file(file);
                } else {
                    state.save(file)?;
                }
                return Err(slurm_failure(error));
            }
        }
    }
    Ok(submitted)
}

/// Waits until every worker of the `submitted` jobs has registered;
/// returns how many did. A job that ends first fails with its output; jobs
/// still not started at `--start-timeout` are cancelled and reported with
/// Slurm's reason.
fn wait_for_workers(
    args: &UpArgs,
    script: &JobScript,
    file: &Path,
    submitted: &[String],
    state: &mut ClusterState,
) -> Result<usize, Failure> {
    let expected = submitted.len() * script.processes as usize;
    let client = connect(file, Duration::from_secs(10))
        .map_err(|e| anyhow!("the scheduler stopped answering: {e}"))?;
    let deadline = Instant::now() + args.start_timeout.0;
    loop {
        let status = client
            .status()
            .map_err(|e| anyhow!("the scheduler stopped answering: {e}"))?;
        let by_job = workers_by_job(&status);
        let ready: usize = submitted
            .iter()
            .map(|j| by_job.get(j.as_str()).map_or(0, Vec::len))
            .sum();
        if ready >= expected {
            return Ok(ready);
        }
        let waiting: Vec<String> = submitted
            .iter()
            .filter(|j| !by_job.contains_key(j.as_str()))
            .cloned()
            .collect();
        let states = wrun_slurm::job_states(&waiting).map_err(slurm_failure)?;
        // A job that ended before its workers joined will never join.
        if let Some(job) = waiting.iter().find(|job| !states.contains_key(*job)) {
            let output = script
                .log_dir
                .join(format!("{}-{job}.out", script.job_name));
            return Err(anyhow!(
                "worker job {job} ended before its workers joined; its output ({}):\n{}",
                output.display(),
                tail(&output, 20)
            )
            .into());
        }
        if Instant::now() >= deadline {
            let reasons: Vec<String> = waiting
                .iter()
                .map(|job| match states.get(job) {
                    Some(s) => format!("job {job}: {} ({})", s.state, s.reason),
                    None => format!("job {job}: ended"),
                })
                .collect();
            let _ = wrun_slurm::scancel(&waiting);
            state.jobs.retain(|j| !waiting.contains(j));
            state.save(file)?;
            return Err(Failure::unreachable(anyhow!(
                "{ready} of {expected} worker(s) ready after --start-timeout {}; cancelled the jobs not started: {}",
                wrun_slurm::format_duration(args.start_timeout.0),
                reasons.join("; ")
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn existing(file: &Path) -> Result<ClusterState, Failure> {
    ClusterState::load(file)?.ok_or_else(|| {
        Failure::input(anyhow!(
            "no wrun slurm cluster at {} (run `wrun slurm up` first)",
            file.display()
        ))
    })
}

fn stop_adaptor(state: &mut ClusterState) {
    if let Some(pid) = state.adaptor_pid.take() {
        stop_process(pid, Duration::from_secs(10));
    }
}

/// Drops jobs Slurm no longer lists (ended); returns the pending ones.
fn refresh_jobs(state: &mut ClusterState) -> Result<BTreeSet<String>, Failure> {
    let states = wrun_slurm::job_states(&state.jobs).map_err(slurm_failure)?;
    state.jobs.retain(|job| states.contains_key(job));
    Ok(states
        .into_iter()
        .filter(|(_, s)| s.is_pending())
        .map(|(job, _)| job)
        .collect())
}

/// Submits `count` more jobs.
fn submit_more(state: &mut ClusterState, file: &Path, count: u32) -> Result<(), Failure> {
    for _ in 0..count {
        let id = wrun_slurm::sbatch(&state.script).map_err(slurm_failure)?;
        outln!("wrun slurm: submitted worker job {id}");
        state.jobs.push(id);
        state.save(file)?;
    }
    Ok(())
}

/// Cancels the given jobs (their workers retire on Slurm's SIGTERM).
fn cancel_jobs(state: &mut ClusterState, file: &Path, jobs: &[String]) -> Result<(), Failure> {
    if jobs.is_empty() {
        return Ok(());
    }
    wrun_slurm::scancel(jobs).map_err(slurm_failure)?;
    outln!("wrun slurm: cancelled worker job(s) {}", jobs.join(" "));
    state.jobs.retain(|j| !jobs.contains(j));
    state.save(file)
}

fn scale(target: u32, cluster: &ClusterArgs) -> CommandResult {
    let file = cluster.file()?;
    stop_adaptor(&mut existing(&file)?);
    let _lock = StateLock::acquire(&file)?;
    let mut state = existing(&file)?;
    state.adaptor_pid = None;
    let pending = refresh_jobs(&mut state)?;
    state.save(&file)?;
    let have = state.jobs.len() as u32;
    if target > have {
        submit_more(&mut state, &file, target - have)?;
    } else if target < have {
        // Pending jobs first, then the newest.
        let mut order: Vec<String> = state.jobs.iter().rev().cloned().collect();
        order.sort_by_key(|j| !pending.contains(j));
        let cancel: Vec<String> = order.into_iter().take((have - target) as usize).collect();
        cancel_jobs(&mut state, &file, &cancel)?;
    }
    outln!("wrun slurm: {} worker job(s)", state.jobs.len());
    Ok(())
}

fn adapt(args: AdaptArgs) -> CommandResult {
    if args.min > args.max {
        return Err(Failure::input(anyhow!(
            "--min {} is above --max {}",
            args.min,
            args.max
        )));
    }
    let file = args.cluster.file()?;
    if !args.foreground {
        stop_adaptor(&mut existing(&file)?);
        let _lock = StateLock::acquire(&file)?;
        let mut state = existing(&file)?;
        let log = log_dir(&file).join("adapt.log");
        let pid = spawn_detached(
            &[
                "slurm".into(),
                "adapt".into(),
                "--foreground".into(),
                "--min".into(),
                args.min.to_string(),
                "--max".into(),
                args.max.to_string(),
                "--interval".into(),
                args.interval.to_string(),
                "--idle-grace".into(),
                args.idle_grace.to_string(),
                "--scheduler-file".into(),
                file.to_string_lossy().into_owned(),
            ],
            &log,
        )?;
        state.adaptor_pid = Some(pid);
        state.save(&file)?;
        outln!(
            "wrun slurm: adapting between {} and {} worker job(s) (pid {pid}, log {})",
            args.min,
            args.max,
            log.display()
        );
        return Ok(());
    }
    let stop = crate::signals::stop_flag();
    let client = connect(&file, Duration::from_secs(30))
        .map_err(|e| anyhow!("cannot reach the scheduler: {e}"))?;
    let bounds = AdaptBounds {
        min: args.min,
        max: args.max,
        idle_grace: args.idle_grace.0,
    };
    let mut idle_since: BTreeMap<String, Instant> = BTreeMap::new();
    while !stop.load(Ordering::SeqCst) {
        let status = client
            .status()
            .map_err(|e| anyhow!("the scheduler stopped answering: {e}"))?;
        // Read afresh each round, under the lock: `up` may have added jobs
        // or restarted the scheduler since the last one.
        let lock = StateLock::acquire(&file)?;
        let mut state = existing(&file)?;
        // This process records itself: the `adapt` that started it may
        // not have written its pid yet when this round began.
        state.adaptor_pid = Some(std::process::id());
        let pending = refresh_jobs(&mut state)?;
        let by_job = workers_by_job(&status);
        let now = Instant::now();
        // A job is idle while pending or while all its workers have no task.
        let idle_now: Vec<(String, bool)> = state
            .jobs
            .iter()
            .map(|job| {
                let idle = pending.contains(job)
                    || by_job
                        .get(job.as_str())
                        .is_some_and(|workers| workers.iter().all(|w| w.assigned == 0));
                (job.clone(), idle)
            })
            .collect();
        idle_since = wrun_slurm::idle_times(&idle_since, &idle_now, now);
        let jobs: Vec<AdaptJob> = state
            .jobs
            .iter()
            .map(|id| AdaptJob {
                id: id.clone(),
                pending: pending.contains(id),
                idle_since: idle_since.get(id).copied(),
            })
            .collect();
        let on_workers: u64 = status.workers.iter().map(|w| u64::from(w.assigned)).sum();
        let load = status.tasks.queued + on_workers;
        let plan = wrun_slurm::plan(load, state.threads_per_job, &jobs, now, bounds);
        submit_more(&mut state, &file, plan.submit)?;
        cancel_jobs(&mut state, &file, &plan.cancel)?;
        state.save(&file)?;
        drop(lock);
        let until = Instant::now() + args.interval.0;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

fn down(cluster: &ClusterArgs) -> CommandResult {
    let file = cluster.file()?;
    stop_adaptor(&mut existing(&file)?);
    let _lock = StateLock::acquire(&file)?;
    let mut state = existing(&file)?;
    state.adaptor_pid = None;
    let jobs = state.jobs.clone();
    if !jobs.is_empty() {
        wrun_slurm::scancel(&jobs).map_err(slurm_failure)?;
        outln!("wrun slurm: cancelled worker job(s) {}", jobs.join(" "));
    }
    // Wait (bounded) until Slurm lists none of them: workers retire on SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        refresh_jobs(&mut state)?;
        if state.jobs.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "jobs still listed by Slurm 90 s after scancel: {}",
                state.jobs.join(" ")
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(pid) = state.scheduler_pid.take() {
        stop_process(pid, Duration::from_secs(10));
        let _ = std::fs::remove_file(&file);
        outln!("wrun slurm: stopped the scheduler");
        if let Some(journal) = state.journal.take() {
            let _ = std::fs::remove_dir_all(journal);
        }
    }
    let _ = std::fs::remove_file(state_path(&file));
    StateLock::remove(&file);
    Ok(())
}

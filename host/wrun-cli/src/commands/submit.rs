//! `wrun submit`: a task, a map, or a graph file, on a cluster (or on an
//! embedded one for the call), results printed as JSON lines in order.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use serde_json::Value as Json;
use wrun_client::{Argument, Client, GraphArg, TaskOptions};
use wrun_local::{EmbeddedCluster, EmbeddedConfig};

use crate::args::{LimitArgs, SchedulerArgs, client_failure};
use crate::exit::{CommandResult, Failure};
use crate::graph_file::{self, GraphValue};
use crate::output::{out, outln};
use crate::progress::Progress;

/// Run a task (or a map of tasks) on a cluster and print the JSON results.
///
/// With no scheduler named, an embedded cluster runs for the call.
/// Exit codes: 0 all succeeded, 1 a task failed, 2 usage or input error,
/// 3 cluster unreachable.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct SubmitCommand {
    /// The .wasm module, or a graph file (`.toml`, see below).
    module: PathBuf,
    /// The task to run (not with a graph file).
    task: Option<String>,
    /// Arguments: JSON values. With --map, one call per ARG: the task's only
    /// argument, or a JSON array of all its arguments.
    #[arg(allow_negative_numbers = true)]
    arg: Vec<String>,
    /// Fan out: one task per ARG (or per line of --args-file), results in order.
    #[arg(long)]
    map: bool,
    /// One JSON array of arguments per line, one task each (implies --map).
    #[arg(long, conflicts_with = "arg")]
    args_file: Option<PathBuf>,
    /// Runs again after a task error (errors are deterministic, so default 0).
    #[arg(long, env = "WRUN_RETRIES", default_value_t = 0)]
    retries: u32,
    /// Print a job id and return; the cluster keeps the tasks for
    /// `wrun gather JOB`, `wrun logs JOB`, `wrun cancel JOB`.
    #[arg(long)]
    detach: bool,
    /// The job's name with --detach [default: a new job-N].
    #[arg(long, requires = "detach")]
    job: Option<String>,
    #[command(flatten)]
    scheduler: SchedulerArgs,
    #[command(flatten)]
    limits: LimitArgs,
}

impl SubmitCommand {
    /// The calls to make: the ARGs, or the lines of --args-file (kept as
    /// text and parsed as they are sent, so that a million calls never
    /// exist as JSON all at once).
    fn read_calls(&self, params: usize) -> Result<Calls, Failure> {
        if let Some(path) = &self.args_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            return Ok(Calls::File {
                path: path.clone(),
                text,
            });
        }
        let values: Vec<Json> = self
            .arg
            .iter()
            .enumerate()
            .map(|(i, text)| parse_json(text, || format!("argument {}", i + 1)))
            .collect::<Result<_, _>>()?;
        if !self.map {
            return Ok(Calls::Inline(vec![values]));
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
            .collect::<Result<_, _>>()
            .map(Calls::Inline)
    }

    /// Hands `futures` to the cluster as a detached job and prints its name.
    fn detach(&self, client: &Client, futures: Vec<wrun_client::TaskFuture>) -> CommandResult {
        let job = client
            .detach(futures, self.job.as_deref().unwrap_or(""))
            .map_err(client_failure)?;
        outln!("{job}");
        Ok(())
    }

    /// Connects to the named scheduler, or starts an embedded cluster.
    fn connect_or_embed(&self) -> Result<(Option<EmbeddedCluster>, Client), Failure> {
        let (embedded, target, credentials) = match self.scheduler.target() {
            Some(target) => (None, target, self.scheduler.credentials()?),
            None => {
                let cluster = EmbeddedCluster::start(EmbeddedConfig::default())
                    .context("starting an embedded cluster")?;
                let target = cluster.target();
                let credentials = cluster.credentials();
                (Some(cluster), target, credentials)
            }
        };
        let mut client =
            Client::connect_with(&target, credentials, self.scheduler.connect_timeout.0)
                .map_err(client_failure)?;
        client.set_options(TaskOptions {
            limits: self.limits.limits(),
            retries: self.retries,
        });
        Ok((embedded, client))
    }

    pub(crate) fn execute(self) -> CommandResult {
        if self.detach && self.scheduler.target().is_none() {
            return Err(Failure::input(anyhow!(
                "--detach needs a cluster that outlives this command: name it with --scheduler-file or --scheduler"
            )));
        }
        if self.module.extension().is_some_and(|e| e == "toml") {
            return self.submit_graph();
        }
        let Some(task) = self.task.clone() else {
            return Err(Failure::input(anyhow!(
                "name the TASK to run (or give a graph file ending in .toml)"
            )));
        };
        let bytes = std::fs::read(&self.module)
            .with_context(|| format!("cannot read the module {}", self.module.display()))?;
        let signatures = wrun_abi::read_task_signatures(&bytes)
            .with_context(|| self.module.display().to_string())?;
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
        let calls = self.read_calls(signature.params.len())?;
        let fan_out = self.map || self.args_file.is_some();
        // Check every call's arguments before anything is sent.
        calls.each(|i, call| {
            wrun_abi::encode_args_from_json(signature, &call).map_err(|e| {
                Failure::input(if fan_out {
                    anyhow!("call {}: {e}", i + 1)
                } else {
                    anyhow!(e)
                })
            })?;
            Ok(())
        })?;

        let (embedded, client) = self.connect_or_embed()?;
        let module = client.upload(&bytes).map_err(client_failure)?;
        if self.detach {
            let mut futures = Vec::with_capacity(calls.len());
            send_in_chunks(&client, &module, &task, &calls, |sent| {
                futures.extend(sent);
                Ok(())
            })?;
            return self.detach(&client, futures);
        }
        // Gathered, printed and released in order a chunk at a time, with
        // at most CHUNKS_AHEAD sent beyond the one being gathered: the
        // cluster always has work queued, and neither this process nor the
        // scheduler ever holds more than a few chunks of a map, however long.
        let mut output = MapOutput {
            client: &client,
            progress: Progress::new(calls.len(), fan_out),
            printed: 0,
            failures: 0,
            name: |i: usize| {
                if fan_out {
                    format!("call {}", i + 1)
                } else {
                    format!("task `{task}`")
                }
            },
        };
        let mut in_flight = std::collections::VecDeque::new();
        send_in_chunks(&client, &module, &task, &calls, |sent| {
            in_flight.push_back(sent);
            if in_flight.len() > CHUNKS_AHEAD {
                output.gather(in_flight.pop_front().expect("not empty"))?;
            }
            Ok(())
        })?;
        drop(calls);
        while let Some(oldest) = in_flight.pop_front() {
            output.gather(oldest)?;
        }
        let (failures, total) = (output.failures, output.printed);
        drop(client);
        drop(embedded);
        if failures > 0 {
            return Err(Failure::task(anyhow!(
                "{failures} of {total} task(s) failed"
            )));
        }
        Ok(())
    }

    fn submit_graph(&self) -> CommandResult {
        if self.task.is_some() || !self.arg.is_empty() || self.map || self.args_file.is_some() {
            return Err(Failure::input(anyhow!(
                "a graph file takes no TASK, ARGs, --map or --args-file"
            )));
        }
        let (graph, bytes, _) = graph_file::load(&self.module).map_err(Failure::input)?;
        let (embedded, client) = self.connect_or_embed()?;
        let module = client.upload(&bytes).map_err(client_failure)?;
        let mut lazy = client.graph();
        let mut nodes = HashMap::new();
        for (id, task, graph_args) in &graph.order {
            let call_args = graph_args
                .iter()
                .map(|a| match a {
                    GraphValue::Literal(json) => GraphArg::Value(json.clone()),
                    GraphValue::Ref(target) => GraphArg::Node(nodes[target]),
                })
                .collect();
            nodes.insert(id.clone(), lazy.call(&module, task, call_args));
        }
        let outputs: Vec<_> = graph.outputs.iter().map(|id| nodes[id]).collect();
        let futures = lazy.submit(&outputs).map_err(client_failure)?;
        if self.detach {
            return self.detach(&client, futures);
        }
        let results = client.gather(&futures).map_err(client_failure)?;
        drop(futures);
        let mut failures = 0;
        for (id, result) in graph.outputs.iter().zip(&results) {
            match result {
                Ok(value) => outln!("{}", serde_json::json!({ id: value })),
                Err(failure) => {
                    failures += 1;
                    outln!("{}", serde_json::json!({ id: null }));
                    eprintln!(
                        "error: `{id}` failed ({}): {}",
                        failure.kind, failure.message
                    );
                }
            }
        }
        drop(client);
        drop(embedded);
        if failures > 0 {
            return Err(Failure::task(anyhow!(
                "{failures} of {} output(s) failed",
                results.len()
            )));
        }
        Ok(())
    }
}

/// Calls a map sends and gathers at a time.
const CHUNK: usize = 50_000;
/// Chunks sent beyond the one being gathered.
const CHUNKS_AHEAD: usize = 2;

/// Sends the calls as they are parsed, CHUNK at a time (the scheduler
/// starts on the first while the next is read), handing each chunk's
/// futures to `sent`.
fn send_in_chunks(
    client: &Client,
    module: &wrun_client::Module,
    task: &str,
    calls: &Calls,
    mut sent: impl FnMut(Vec<wrun_client::TaskFuture>) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let mut chunk: Vec<Vec<Argument>> = Vec::new();
    calls.each(|_, call| {
        chunk.push(call.into_iter().map(Argument::from).collect());
        if chunk.len() == CHUNK {
            sent(
                client
                    .map(module, task, std::mem::take(&mut chunk))
                    .map_err(client_failure)?,
            )?;
        }
        Ok(())
    })?;
    if !chunk.is_empty() {
        sent(client.map(module, task, chunk).map_err(client_failure)?)?;
    }
    Ok(())
}

/// Where a map's results go: printed in order, a chunk at a time.
struct MapOutput<'a, N: Fn(usize) -> String> {
    client: &'a Client,
    progress: Progress,
    /// Results printed so far (the index of the next call).
    printed: usize,
    failures: usize,
    /// How a failed call is named on stderr, by its index.
    name: N,
}

impl<N: Fn(usize) -> String> MapOutput<'_, N> {
    /// Waits for a chunk, prints its results and releases them.
    fn gather(&mut self, chunk: Vec<wrun_client::TaskFuture>) -> Result<(), Failure> {
        let base = self.printed;
        let progress = &self.progress;
        self.client
            .wait_with_progress(&chunk, |done, _| progress.set(base + done))
            .map_err(client_failure)?;
        let results = self.client.gather(&chunk).map_err(client_failure)?;
        self.failures += print_results(&results, |i| (self.name)(base + i));
        self.printed += chunk.len();
        Ok(())
    }
}

/// `what` names the text in the error (made only then: a million-line
/// args file parsed without formatting a name per line).
fn parse_json(text: &str, what: impl FnOnce() -> String) -> Result<Json, Failure> {
    serde_json::from_str(text).map_err(|error| {
        let what = what();
        Failure::input(anyhow!(
            "{what} ({text:?}) is not valid JSON: {error}; strings need quotes, e.g. '\"{text}\"'"
        ))
    })
}

/// The calls of a submission: given on the command line, or the text of
/// an --args-file (one JSON array per non-blank line).
enum Calls {
    Inline(Vec<Vec<Json>>),
    File { path: PathBuf, text: String },
}

impl Calls {
    fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
    }

    fn len(&self) -> usize {
        match self {
            Calls::Inline(calls) => calls.len(),
            Calls::File { text, .. } => Calls::lines(text).count(),
        }
    }

    /// `f(i, arguments)` for each call in order; stops at the first error.
    fn each(
        &self,
        mut f: impl FnMut(usize, Vec<Json>) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        match self {
            Calls::Inline(calls) => {
                for (i, call) in calls.iter().enumerate() {
                    f(i, call.clone())?;
                }
            }
            Calls::File { path, text } => {
                for (i, (n, line)) in Calls::lines(text).enumerate() {
                    match parse_json(line, || format!("line {} of {}", n + 1, path.display()))? {
                        Json::Array(items) => f(i, items)?,
                        _ => {
                            return Err(Failure::input(anyhow!(
                                "line {} of {}: expected a JSON array of arguments",
                                n + 1,
                                path.display()
                            )));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Prints results as JSON lines in order (`null` for a failure, named on
/// stderr by `name(i)`); returns how many failed.
pub(crate) fn print_results(
    results: &[Result<Json, wrun_client::TaskFailure>],
    name: impl Fn(usize) -> String,
) -> usize {
    use std::fmt::Write;
    // One write for the lot: a flush per line was a syscall per result
    // (a second of a million-task map).
    let mut text = String::new();
    let mut failures = 0;
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(value) => {
                let _ = writeln!(text, "{value}");
            }
            Err(failure) => {
                failures += 1;
                text.push_str("null\n");
                eprintln!(
                    "error: {} failed ({}): {}",
                    name(i),
                    failure.kind,
                    failure.message
                );
            }
        }
    }
    out!("{text}");
    failures
}

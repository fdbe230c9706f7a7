//! Graph files (`wrun submit graph.toml`): a task graph written in TOML.
//!
//! ```toml
//! module = "seed_tasks.wasm"      # relative to this file
//! outputs = ["z0", "z1"]          # the results to print, in this order
//!
//! [tasks.x0]
//! task = "inc"
//! args = [0]
//!
//! [tasks.z0]
//! task = "add"
//! args = [{ ref = "x0" }, 10]     # { ref = "id" } is another task's result
//! ```
//!
//! A literal that is itself a table with one key `ref` is written
//! `{ value = { ref = "..." } }`. Before anything runs, the whole graph is
//! checked: unknown tasks, missing references, cycles and arguments that do
//! not fit a signature are reported with the offending ids. Tasks that no
//! output needs are checked but not run (`Graph::compute` culls them).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use serde::Deserialize;
use serde_json::Value as Json;
use wrun_abi::TaskSignature;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphFile {
    module: PathBuf,
    outputs: Vec<String>,
    tasks: BTreeMap<String, TaskEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskEntry {
    task: String,
    #[serde(default)]
    args: Vec<Json>,
}

/// An argument after parsing.
#[derive(Debug, Clone)]
pub(crate) enum GraphValue {
    Literal(Json),
    Ref(String),
}

/// A checked graph, nodes in an order where references come first.
#[derive(Debug)]
pub(crate) struct Graph {
    pub(crate) outputs: Vec<String>,
    pub(crate) order: Vec<(String, String, Vec<GraphValue>)>,
}

fn parse_arg(value: Json) -> GraphValue {
    match value {
        Json::Object(map) if map.len() == 1 && map.contains_key("ref") => match &map["ref"] {
            Json::String(id) => GraphValue::Ref(id.clone()),
            other => GraphValue::Literal(Json::Object(
                [("ref".to_owned(), other.clone())].into_iter().collect(),
            )),
        },
        Json::Object(mut map) if map.len() == 1 && map.contains_key("value") => {
            GraphValue::Literal(map.remove("value").unwrap_or(Json::Null))
        }
        other => GraphValue::Literal(other),
    }
}

/// Reads and checks a graph file against the module's signatures.
pub(crate) fn load(path: &Path) -> anyhow::Result<(Graph, Vec<u8>, Vec<TaskSignature>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: GraphFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid graph file", path.display()))?;
    let module = path.parent().unwrap_or(Path::new(".")).join(&file.module);
    let bytes = std::fs::read(&module)
        .with_context(|| format!("cannot read the module {}", module.display()))?;
    let signatures =
        wrun_abi::read_task_signatures(&bytes).with_context(|| module.display().to_string())?;
    let by_name: HashMap<&str, &TaskSignature> =
        signatures.iter().map(|s| (s.name.as_str(), s)).collect();

    let mut nodes: BTreeMap<String, (String, Vec<GraphValue>)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (id, entry) in file.tasks {
        let args: Vec<GraphValue> = entry.args.into_iter().map(parse_arg).collect();
        match by_name.get(entry.task.as_str()) {
            None => problems.push(format!("task `{id}`: unknown task `{}`", entry.task)),
            Some(signature) => {
                if args.len() != signature.params.len() {
                    problems.push(format!(
                        "task `{id}`: `{signature}` takes {} argument(s), got {}",
                        signature.params.len(),
                        args.len()
                    ));
                }
                for (arg, param) in args.iter().zip(&signature.params) {
                    if let GraphValue::Literal(json) = arg
                        && let Err(mismatch) = wrun_abi::json_to_value(&param.ty, json)
                    {
                        problems.push(format!(
                            "task `{id}`: argument `{}`: {mismatch}",
                            param.name
                        ));
                    }
                }
            }
        }
        nodes.insert(id, (entry.task, args));
    }
    for (id, (_, args)) in &nodes {
        for arg in args {
            if let GraphValue::Ref(target) = arg
                && !nodes.contains_key(target)
            {
                problems.push(format!(
                    "task `{id}` refers to `{target}`, which is not in the graph"
                ));
            }
        }
    }
    for output in &file.outputs {
        if !nodes.contains_key(output) {
            problems.push(format!("output `{output}` is not a task in the graph"));
        }
    }
    if !problems.is_empty() {
        return Err(anyhow!(
            "{} has problems:\n  {}",
            path.display(),
            problems.join("\n  ")
        ));
    }

    let order = topological_order(&nodes, path)?;
    let order = order
        .into_iter()
        .map(|id| {
            let (task, args) = nodes.remove(&id).expect("known");
            (id, task, args)
        })
        .collect();
    Ok((
        Graph {
            outputs: file.outputs,
            order,
        },
        bytes,
        signatures,
    ))
}

/// The nodes in an order where references come first: a depth-first
/// search, in which a back edge is a cycle (reported with its path).
fn topological_order(
    nodes: &BTreeMap<String, (String, Vec<GraphValue>)>,
    path: &Path,
) -> anyhow::Result<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let mut marks: HashMap<&str, Mark> = nodes.keys().map(|k| (k.as_str(), Mark::New)).collect();
    let mut order: Vec<String> = Vec::with_capacity(nodes.len());
    for start in nodes.keys() {
        if marks[start.as_str()] != Mark::New {
            continue;
        }
        // Iterative DFS: (node, next argument index), with the path for cycle reports.
        let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        marks.insert(start.as_str(), Mark::Open);
        while let Some((node, next)) = stack.last_mut() {
            let args = &nodes[*node].1;
            let refs: Vec<&str> = args
                .iter()
                .filter_map(|a| match a {
                    GraphValue::Ref(t) => Some(t.as_str()),
                    GraphValue::Literal(_) => None,
                })
                .collect();
            if *next < refs.len() {
                let target = refs[*next];
                *next += 1;
                match marks[target] {
                    Mark::New => {
                        marks.insert(target, Mark::Open);
                        stack.push((target, 0));
                    }
                    Mark::Open => {
                        let from = stack.iter().position(|(n, _)| *n == target).unwrap_or(0);
                        let mut cycle: Vec<&str> = stack[from..].iter().map(|(n, _)| *n).collect();
                        cycle.push(target);
                        return Err(anyhow!(
                            "{} has a cycle: {}",
                            path.display(),
                            cycle.join(" -> ")
                        ));
                    }
                    Mark::Done => {}
                }
            } else {
                let (done, _) = stack.pop().expect("non-empty");
                marks.insert(done, Mark::Done);
                order.push(done.to_owned());
            }
        }
    }
    Ok(order)
}

//! Lazy graphs in the style of `dask.delayed`: calls build nodes, and
//! [`Graph::compute`] submits them all and gathers the outputs.

use serde_json::Value as Json;
use wrun_proto::TaskKey;

use crate::client::Client;
use crate::error::{ClientError, TaskFailure};
use crate::submit::ArgRef;
use crate::task_future::TaskFuture;
use crate::upload::Module;

/// A node of a [`Graph`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delayed(usize);

/// An argument of a graph node.
#[derive(Debug, Clone)]
pub enum GraphArg {
    /// A literal JSON value.
    Value(Json),
    /// Another node's result.
    Node(Delayed),
}

impl From<Json> for GraphArg {
    fn from(value: Json) -> GraphArg {
        GraphArg::Value(value)
    }
}

impl From<Delayed> for GraphArg {
    fn from(node: Delayed) -> GraphArg {
        GraphArg::Node(node)
    }
}

/// A lazy graph: nothing runs until [`Graph::compute`].
pub struct Graph<'c> {
    client: &'c Client,
    nodes: Vec<(Module, String, Vec<GraphArg>)>,
}

impl Client {
    /// A lazy task graph on this client: nothing runs until [`Graph::compute`].
    pub fn graph(&self) -> Graph<'_> {
        Graph {
            client: self,
            nodes: Vec::new(),
        }
    }
}

impl Graph<'_> {
    /// The graph as Graphviz DOT text, like Dask's `visualize`: a node per
    /// call (its task name and short argument text), an edge from each
    /// node to the calls that read its result.
    pub fn to_dot(&self) -> String {
        wrun_draw::to_dot(&self.drawing())
    }

    /// The graph as an SVG picture, laid out without Graphviz
    /// (`wrun-draw`).
    pub fn to_svg(&self) -> String {
        wrun_draw::to_svg(&self.drawing())
    }

    fn drawing(&self) -> wrun_draw::Drawing {
        let mut drawing = wrun_draw::Drawing::default();
        for (i, (_, task, args)) in self.nodes.iter().enumerate() {
            let text: Vec<String> = args
                .iter()
                .map(|arg| match arg {
                    GraphArg::Value(json) => json.to_string(),
                    GraphArg::Node(_) => "↑".to_owned(),
                })
                .collect();
            drawing.nodes.push(wrun_draw::Node {
                label: task.clone(),
                detail: format!("({})", text.join(", ")),
                state: String::new(),
            });
            // One edge per dependency, however many arguments it fills.
            let mut from_nodes: Vec<usize> = args
                .iter()
                .filter_map(|arg| match arg {
                    GraphArg::Node(Delayed(from)) => Some(*from),
                    GraphArg::Value(_) => None,
                })
                .collect();
            from_nodes.sort_unstable();
            from_nodes.dedup();
            drawing
                .edges
                .extend(from_nodes.into_iter().map(|from| (from, i)));
        }
        drawing
    }

    /// Adds a call of `task` to the graph. Arguments may be earlier nodes.
    pub fn call(&mut self, module: &Module, task: &str, args: Vec<GraphArg>) -> Delayed {
        self.nodes.push((module.clone(), task.to_owned(), args));
        Delayed(self.nodes.len() - 1)
    }

    /// Submits the nodes `outputs` need, waits for `outputs` and returns
    /// their results; intermediate results are released when done.
    pub fn compute(
        self,
        outputs: &[Delayed],
    ) -> Result<Vec<Result<Json, TaskFailure>>, ClientError> {
        let client = self.client;
        let wanted = self.submit(outputs)?;
        client.gather(&wanted)
    }

    /// Submits the nodes `outputs` need (the others are culled, as Dask's
    /// `optimize` does, so no worker runs them) and returns the futures of
    /// `outputs`, in order, as Dask's `persist` does. Intermediate results
    /// are released once nothing submitted needs them.
    pub fn submit(self, outputs: &[Delayed]) -> Result<Vec<TaskFuture>, ClientError> {
        let client = self.client;
        let needed = needed_by(&self.nodes, outputs);
        let keys: Vec<TaskKey> = (0..self.nodes.len()).map(|_| client.new_key()).collect();
        let mut submissions = Vec::with_capacity(self.nodes.len());
        for (index, (module, task, args)) in self.nodes.iter().enumerate() {
            if !needed[index] {
                continue;
            }
            let args: Vec<ArgRef<'_>> = args
                .iter()
                .map(|arg| match arg {
                    GraphArg::Value(json) => ArgRef::Value(json),
                    GraphArg::Node(Delayed(i)) => ArgRef::Key(keys[*i]),
                })
                .collect();
            submissions.push(client.encode(module, task, &args, keys[index])?);
        }
        client.send_submissions(submissions)?;
        let futures: Vec<Option<TaskFuture>> = keys
            .iter()
            .zip(&needed)
            .map(|(key, needed)| needed.then(|| client.future(*key)))
            .collect();
        let wanted: Vec<TaskFuture> = outputs
            .iter()
            .map(|Delayed(i)| futures[*i].clone().expect("an output is needed"))
            .collect();
        Ok(wanted)
    }
}

/// Which nodes `outputs` need, directly or through other nodes. A node's
/// arguments are always earlier nodes, so one pass from the end finds
/// them all.
fn needed_by<T>(nodes: &[(T, String, Vec<GraphArg>)], outputs: &[Delayed]) -> Vec<bool> {
    let mut needed = vec![false; nodes.len()];
    for Delayed(i) in outputs {
        needed[*i] = true;
    }
    for index in (0..nodes.len()).rev() {
        if !needed[index] {
            continue;
        }
        for arg in &nodes[index].2 {
            if let GraphArg::Node(Delayed(dep)) = arg {
                needed[*dep] = true;
            }
        }
    }
    needed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_nodes_the_outputs_need_are_submitted() {
        let node = |args: Vec<usize>| {
            (
                (),
                String::new(),
                args.into_iter()
                    .map(|i| GraphArg::Node(Delayed(i)))
                    .collect(),
            )
        };
        // 0 -> 2 -> 4 (output); 1 -> 3 (no output needs them); 5 (output, alone).
        let nodes = vec![
            node(vec![]),
            node(vec![]),
            node(vec![0]),
            node(vec![1]),
            node(vec![2, 0]),
            node(vec![]),
        ];
        assert_eq!(
            needed_by(&nodes, &[Delayed(4), Delayed(5)]),
            [true, false, true, false, true, true]
        );
        assert_eq!(needed_by(&nodes, &[]), [false; 6]);
    }
}

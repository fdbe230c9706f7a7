//! `wrun graph GRAPH.toml`: a picture of a graph file's tasks and their
//! dependencies, as Dask's `visualize` draws one: SVG laid out by
//! `wrun-draw` (no Graphviz needed), or DOT for those who have it.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::Context;

use crate::exit::{CommandResult, Failure};
use crate::graph_file::{self, GraphValue};
use crate::output::outln;

/// Draw a graph file's tasks and dependencies (SVG or Graphviz DOT).
#[derive(Debug, clap::Args)]
pub(crate) struct GraphCommand {
    /// The graph file (as `wrun submit` takes it).
    graph: PathBuf,
    /// Write here [default: standard output].
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// The picture's format [default: from the output's extension, else svg].
    #[arg(long, value_enum)]
    format: Option<Format>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Dot,
    Svg,
}

impl GraphCommand {
    pub(crate) fn execute(self) -> CommandResult {
        let (graph, _, _) = graph_file::load(&self.graph).map_err(Failure::input)?;
        let index: HashMap<&str, usize> = graph
            .order
            .iter()
            .enumerate()
            .map(|(i, (id, _, _))| (id.as_str(), i))
            .collect();
        let mut drawing = wrun_draw::Drawing::default();
        for (i, (id, task, args)) in graph.order.iter().enumerate() {
            let text: Vec<String> = args
                .iter()
                .map(|arg| match arg {
                    GraphValue::Literal(json) => json.to_string(),
                    GraphValue::Ref(target) => target.clone(),
                })
                .collect();
            drawing.nodes.push(wrun_draw::Node {
                label: format!("{id}: {task}"),
                detail: format!("({})", text.join(", ")),
                state: if graph.outputs.contains(id) {
                    "done".to_owned()
                } else {
                    String::new()
                },
            });
            let mut from: Vec<usize> = args
                .iter()
                .filter_map(|arg| match arg {
                    GraphValue::Ref(target) => index.get(target.as_str()).copied(),
                    GraphValue::Literal(_) => None,
                })
                .collect();
            from.sort_unstable();
            from.dedup();
            drawing.edges.extend(from.into_iter().map(|f| (f, i)));
        }
        let format =
            self.format
                .unwrap_or_else(|| match self.output.as_ref().and_then(|p| p.extension()) {
                    Some(ext) if ext == "dot" || ext == "gv" => Format::Dot,
                    _ => Format::Svg,
                });
        let text = match format {
            Format::Dot => wrun_draw::to_dot(&drawing),
            Format::Svg => wrun_draw::to_svg(&drawing),
        };
        match &self.output {
            Some(path) => {
                std::fs::write(path, &text)
                    .with_context(|| format!("writing {}", path.display()))?;
                outln!(
                    "wrun graph: {} task(s), {} dependency(ies) in {}",
                    drawing.nodes.len(),
                    drawing.edges.len(),
                    path.display()
                );
            }
            None => print!("{text}"),
        }
        Ok(())
    }
}

//! # wrun-draw: pictures of task graphs and task streams
//!
//! Pure functions, no I/O: a [`Drawing`] (nodes and edges) becomes DOT
//! text ([`to_dot`], for those who have Graphviz) or an SVG picture
//! ([`to_svg`]) laid out here in layers, as Graphviz's `dot` does, so that
//! no system Graphviz is needed. `wrun graph`, `Graph::to_svg` in the
//! client library and the dashboard's graph all draw through this crate;
//! [`stream`] draws a task stream for `wrun report`.

mod layout;
pub mod stream;
mod svg;

pub use layout::{Layout, layout};
pub use svg::escape;

/// What is drawn: nodes, and edges from a dependency to its dependent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drawing {
    /// The nodes, in any order.
    pub nodes: Vec<Node>,
    /// `(from, to)`: `to` reads `from`'s result. Indices into `nodes`.
    pub edges: Vec<(usize, usize)>,
}

/// One task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// The first line: the task's name (`inc`).
    pub label: String,
    /// The second line, short argument text (`(1, 2)`); may be empty.
    pub detail: String,
    /// A CSS class naming the node's state (`done`, `failed`, ...), for
    /// colour; empty for none.
    pub state: String,
}

/// The graph as Graphviz DOT text.
pub fn to_dot(drawing: &Drawing) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out =
        String::from("digraph wrun {\n  rankdir=TB;\n  node [shape=box, style=rounded];\n");
    for (i, node) in drawing.nodes.iter().enumerate() {
        let label = if node.detail.is_empty() {
            quote(&node.label)
        } else {
            format!("{}\\n{}", quote(&node.label), quote(&node.detail))
        };
        out.push_str(&format!("  n{i} [label=\"{label}\"];\n"));
    }
    for (from, to) in &drawing.edges {
        out.push_str(&format!("  n{from} -> n{to};\n"));
    }
    out.push_str("}\n");
    out
}

/// The graph as a standalone SVG picture, laid out in layers from the
/// tasks without dependencies (top) to the last ones (bottom).
pub fn to_svg(drawing: &Drawing) -> String {
    svg::graph(drawing, &layout(drawing))
}

/// Short text of a task's arguments for a node's second line: at most
/// `max` characters, cut with `…`.
pub fn short_text(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diamond() -> Drawing {
        let node = |label: &str| Node {
            label: label.into(),
            detail: "(1)".into(),
            state: String::new(),
        };
        Drawing {
            nodes: vec![node("a"), node("b"), node("c"), node("d & <e>")],
            edges: vec![(0, 1), (0, 2), (1, 3), (2, 3)],
        }
    }

    #[test]
    fn dot_names_every_node_and_edge() {
        let dot = to_dot(&diamond());
        assert!(dot.starts_with("digraph wrun {"));
        assert_eq!(dot.matches(" [label=").count(), 4);
        assert_eq!(dot.matches(" -> ").count(), 4);
        assert!(dot.contains("n0 -> n1;"));
    }

    #[test]
    fn svg_parses_as_xml_with_one_group_per_node_and_per_edge() {
        let svg = to_svg(&diamond());
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let class = |c: &str| {
            doc.descendants()
                .filter(|n| n.attribute("class") == Some(c))
                .count()
        };
        assert_eq!(class("node"), 4);
        assert_eq!(class("edge"), 4);
        assert!(svg.contains("d &amp; &lt;e&gt;"));
    }

    #[test]
    fn short_text_cuts_long_arguments() {
        assert_eq!(short_text("(1, 2)", 10), "(1, 2)");
        assert_eq!(short_text("abcdefghijkl", 5), "abcd…");
    }
}

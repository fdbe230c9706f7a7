//! SVG for a laid-out graph.

use std::fmt::Write;

use crate::layout::{Layout, NODE_HEIGHT, NODE_WIDTH};
use crate::{Drawing, short_text};

/// Escapes text for XML content and attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Colours of the states the dashboard and `wrun graph` use.
const STYLE: &str = ".node rect{fill:#eef2fb;stroke:#4a5d8a;stroke-width:1}\
.node rect.waiting{fill:#f4f4f4;stroke:#999}\
.node rect.queued{fill:#dde8f8}\
.node rect.running{fill:#ffe29a;stroke:#b8860b}\
.node rect.done{fill:#b9e3b0;stroke:#3c763d}\
.node rect.failed{fill:#f2a9a0;stroke:#a94442}\
.edge path{fill:none;stroke:#667;stroke-width:1.2}\
text{font-family:sans-serif;fill:#222}";

pub(crate) fn graph(drawing: &Drawing, layout: &Layout) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" viewBox=\"0 0 {w:.0} {h:.0}\">\
<defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\">\
<path d=\"M0,0 L10,5 L0,10 z\" fill=\"#667\"/></marker></defs><style>{STYLE}</style>",
        w = layout.width,
        h = layout.height,
    );
    let n = drawing.nodes.len();
    for &(from, to) in &drawing.edges {
        if from >= n || to >= n || from == to {
            continue;
        }
        let (x1, y1) = layout.centres[from];
        let (x2, y2) = layout.centres[to];
        let (y1, y2) = (y1 + NODE_HEIGHT / 2.0, y2 - NODE_HEIGHT / 2.0);
        let mid = (y1 + y2) / 2.0;
        let _ = writeln!(
            out,
            "<g class=\"edge\" data-from=\"{from}\" data-to=\"{to}\"><path d=\"M{x1:.1},{y1:.1} C{x1:.1},{mid:.1} {x2:.1},{mid:.1} {x2:.1},{y2:.1}\" marker-end=\"url(#arrow)\"/></g>"
        );
    }
    for (i, node) in drawing.nodes.iter().enumerate() {
        let (x, y) = layout.centres[i];
        let label = escape(&short_text(&node.label, 20));
        let detail = escape(&short_text(&node.detail, 22));
        let title = escape(&format!("{} {}", node.label, node.detail));
        let state = escape(&node.state);
        let _ = write!(
            out,
            "<g class=\"node\" id=\"node-{i}\"><title>{title}</title><rect class=\"{state}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{NODE_WIDTH}\" height=\"{NODE_HEIGHT}\" rx=\"6\"/>",
            x - NODE_WIDTH / 2.0,
            y - NODE_HEIGHT / 2.0,
        );
        if detail.is_empty() {
            let _ = write!(
                out,
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\">{label}</text>",
                y + 4.5
            );
        } else {
            let _ = write!(
                out,
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\">{label}</text>\
<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\" fill=\"#555\">{detail}</text>",
                y - 2.0,
                y + 12.0
            );
        }
        out.push_str("</g>\n");
    }
    out.push_str("</svg>\n");
    out
}

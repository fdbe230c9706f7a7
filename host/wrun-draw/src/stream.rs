//! A task stream as SVG: one row per worker thread, a bar per task run
//! coloured by task name, failures in red with a dark border, input
//! transfers as a thin red bar before the task (as Dask's task stream
//! draws them). `wrun report` embeds it; the dashboard draws the same
//! picture live on a canvas with the same colours.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::escape;

/// One task run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bar {
    /// The row: a worker thread (`worker-1/0`).
    pub row: String,
    /// The task name (the colour).
    pub name: String,
    /// Unix µs.
    pub start_us: u64,
    /// Unix µs.
    pub end_us: u64,
    /// Failed (drawn red).
    pub failed: bool,
    /// Inputs fetched from peers before it: (start, end) in Unix µs.
    pub transfer: Option<(u64, u64)>,
}

/// The palette, as the dashboard's script has it too.
pub const PALETTE: [&str; 10] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
    "#17becf", "#aec7e8",
];

/// The colour of a task name: FNV-1a of its bytes into [`PALETTE`].
pub fn colour(name: &str) -> &'static str {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    PALETTE[(hash % PALETTE.len() as u32) as usize]
}

const ROW: f64 = 18.0;
const LEFT: f64 = 120.0;
const TOP: f64 = 24.0;

/// The task stream `width` pixels wide.
pub fn task_stream_svg(bars: &[Bar], width: f64) -> String {
    let mut rows: BTreeMap<&str, usize> = bars.iter().map(|b| (b.row.as_str(), 0)).collect();
    for (i, index) in rows.values_mut().enumerate() {
        *index = i;
    }
    let begin = bars
        .iter()
        .map(|b| b.transfer.map_or(b.start_us, |t| t.0.min(b.start_us)))
        .min()
        .unwrap_or(0);
    let end = bars
        .iter()
        .map(|b| b.end_us)
        .max()
        .unwrap_or(0)
        .max(begin + 1);
    let span = (end - begin) as f64;
    let plot = (width - LEFT - 10.0).max(100.0);
    let x = |t: u64| LEFT + (t.saturating_sub(begin)) as f64 / span * plot;
    let height = TOP + rows.len() as f64 * ROW + 10.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"task-stream\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"11\">"
    );
    for tick in 0..=4 {
        let t = begin + (end - begin) * tick / 4;
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"14\" text-anchor=\"middle\" fill=\"#555\">{:.1} ms</text>",
            x(t),
            (t - begin) as f64 / 1000.0
        );
    }
    for (row, index) in &rows {
        let _ = writeln!(
            out,
            "<text x=\"4\" y=\"{:.1}\" fill=\"#333\">{}</text>",
            TOP + *index as f64 * ROW + 12.5,
            escape(row)
        );
    }
    for bar in bars {
        let y = TOP + rows[bar.row.as_str()] as f64 * ROW + 2.0;
        if let Some((from, to)) = bar.transfer {
            let _ = writeln!(
                out,
                "<rect class=\"transfer\" x=\"{:.2}\" y=\"{:.1}\" width=\"{:.2}\" height=\"4\" fill=\"#d62728\" opacity=\"0.6\"/>",
                x(from),
                y + 5.0,
                (x(to) - x(from)).max(0.5)
            );
        }
        let (fill, stroke) = if bar.failed {
            ("#d62728", " stroke=\"#000\" stroke-width=\"1\"")
        } else {
            (colour(&bar.name), "")
        };
        let _ = writeln!(
            out,
            "<rect class=\"bar{}\" x=\"{:.2}\" y=\"{y:.1}\" width=\"{:.2}\" height=\"{:.1}\" fill=\"{fill}\"{stroke}><title>{}</title></rect>",
            if bar.failed { " failed" } else { "" },
            x(bar.start_us),
            (x(bar.end_us) - x(bar.start_us)).max(0.5),
            ROW - 4.0,
            escape(&format!(
                "{} on {}: {:.3} ms",
                bar.name,
                bar.row,
                bar.end_us.saturating_sub(bar.start_us) as f64 / 1000.0
            ))
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_run_one_row_per_thread_and_failures_marked() {
        let bar = |row: &str, start: u64, failed: bool| Bar {
            row: row.into(),
            name: "inc".into(),
            start_us: start,
            end_us: start + 100,
            failed,
            transfer: (start > 150).then_some((start - 50, start - 10)),
        };
        let bars = [
            bar("w/0", 0, false),
            bar("w/1", 100, false),
            bar("w/0", 200, true),
        ];
        let svg = task_stream_svg(&bars, 600.0);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let count = |class: &str| {
            doc.descendants()
                .filter(|n| n.attribute("class") == Some(class))
                .count()
        };
        assert_eq!(count("bar"), 2);
        assert_eq!(count("bar failed"), 1);
        assert_eq!(count("transfer"), 1);
        assert!(svg.contains(">w/1</text>"));
        assert_eq!(colour("inc"), colour("inc"));
    }
}

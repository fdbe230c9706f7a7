//! `wrun report JOB -o report.html`: one self-contained page with a job's
//! task stream and a summary (as Dask's `performance_report`): no script,
//! no link to anything, so it can be mailed or archived.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use wrun_client::TaskRecord;
use wrun_draw::escape;
use wrun_draw::stream::{Bar, colour, task_stream_svg};

use crate::args::{SchedulerArgs, client_failure};
use crate::exit::CommandResult;
use crate::output::outln;

/// Write a job's task stream and a summary as one HTML page.
#[derive(Debug, clap::Args)]
pub(crate) struct ReportCommand {
    /// The job id `--detach` printed (it stays detached).
    job: String,
    /// Where to write the page.
    #[arg(short, long, default_value = "report.html")]
    output: PathBuf,
    #[command(flatten)]
    scheduler: SchedulerArgs,
}

impl ReportCommand {
    pub(crate) fn execute(self) -> CommandResult {
        let client = self.scheduler.connect()?;
        let stream = client.task_stream(&self.job).map_err(client_failure)?;
        let page = render(&self.job, &stream.records, stream.dropped);
        std::fs::write(&self.output, page)
            .with_context(|| format!("writing {}", self.output.display()))?;
        outln!(
            "wrun report: {} run(s) of {} in {}",
            stream.records.len(),
            self.job,
            self.output.display()
        );
        Ok(())
    }
}

#[derive(Default)]
struct ByName {
    runs: u64,
    failed: u64,
    busy_us: u64,
    longest_us: u64,
    bytes: u64,
}

/// The page.
fn render(job: &str, records: &[TaskRecord], dropped: u64) -> String {
    let begin = records.iter().map(|r| r.start_us).min().unwrap_or(0);
    let end = records.iter().map(|r| r.end_us).max().unwrap_or(begin);
    let mut names: BTreeMap<&str, ByName> = BTreeMap::new();
    let mut workers: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut transfer_bytes = 0;
    for r in records {
        let took = r.end_us.saturating_sub(r.start_us);
        let n = names.entry(&r.name).or_default();
        n.runs += 1;
        n.failed += u64::from(r.failed());
        n.busy_us += took;
        n.longest_us = n.longest_us.max(took);
        n.bytes += r.bytes;
        let w = workers.entry(&r.worker).or_default();
        w.0 += 1;
        w.1 += took;
        transfer_bytes += r.transfer.map_or(0, |t| t.bytes);
    }
    let bars: Vec<Bar> = records
        .iter()
        .map(|r| Bar {
            row: format!("{}/{}", r.worker, r.thread),
            name: r.name.clone(),
            start_us: r.start_us,
            end_us: r.end_us,
            failed: r.failed(),
            transfer: r.transfer.map(|t| (t.start_us, t.end_us)),
        })
        .collect();
    let ms = |us: u64| us as f64 / 1000.0;
    let mut html = String::new();
    html.push_str(&format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>wrun report: {job}</title>\
<style>body{{font-family:sans-serif;margin:1.5em;color:#222}}table{{border-collapse:collapse;margin:0.5em 0 1.5em}}\
th,td{{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}}th:first-child,td:first-child{{text-align:left}}\
.swatch{{display:inline-block;width:0.8em;height:0.8em;margin-right:0.4em}}</style></head><body>\
<h1>wrun report: {job}</h1><table class=\"summary\">\
<tr><td>runs</td><td>{runs}</td></tr><tr><td>failed runs</td><td>{failed}</td></tr>\
<tr><td>wall time (first start to last end)</td><td>{wall:.3} ms</td></tr>\
<tr><td>time in tasks (all threads)</td><td>{busy:.3} ms</td></tr>\
<tr><td>input bytes fetched from peers</td><td>{transfer_bytes}</td></tr>\
<tr><td>finished tasks not kept (older than the scheduler's --task-stream)</td><td>{dropped}</td></tr></table>",
        job = escape(job),
        runs = records.len(),
        failed = records.iter().filter(|r| r.failed()).count(),
        wall = ms(end.saturating_sub(begin)),
        busy = ms(names.values().map(|n| n.busy_us).sum()),
    ));
    html.push_str("<h2>Task stream</h2>");
    html.push_str(&task_stream_svg(&bars, 1100.0));
    html.push_str("<h2>By task</h2><table><tr><th>task</th><th>runs</th><th>failed</th><th>mean ms</th><th>longest ms</th><th>result bytes</th></tr>");
    for (name, n) in &names {
        html.push_str(&format!(
            "<tr><td><span class=\"swatch\" style=\"background:{}\"></span>{}</td><td>{}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
            colour(name),
            escape(name),
            n.runs,
            n.failed,
            ms(n.busy_us) / n.runs.max(1) as f64,
            ms(n.longest_us),
            n.bytes
        ));
    }
    html.push_str(
        "</table><h2>By worker</h2><table><tr><th>worker</th><th>runs</th><th>busy ms</th></tr>",
    );
    for (worker, (runs, busy)) in &workers {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{runs}</td><td>{:.3}</td></tr>",
            escape(worker),
            ms(*busy)
        ));
    }
    html.push_str("</table></body></html>\n");
    html
}

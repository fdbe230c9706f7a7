//! The task stream: the newest task runs of the cluster (`--task-stream`,
//! 100,000 by default, as Dask's `TaskStreamPlugin` keeps), for `wrun
//! events`, `wrun report` and the dashboard; and each tenant's totals
//! (completed, failed by kind, transfers) for `/metrics`.
//!
//! A run is recorded when its worker's `finished` or `failed` arrives,
//! with the times the worker measured. Strings are shared (`Arc<str>`),
//! so a run costs the ring one small struct.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use wrun_core::{TaskId, TenantId, WorkerId};
use wrun_proto::TaskKey;
use wrun_proto::stream::{TaskRecord, TransferRecord};

/// The default number of runs kept.
pub const DEFAULT_TASK_STREAM: usize = 100_000;

/// One run.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) task: TaskId,
    pub(crate) key: TaskKey,
    pub(crate) tenant: TenantId,
    pub(crate) name: Arc<str>,
    pub(crate) worker: Arc<str>,
    pub(crate) thread: u32,
    pub(crate) start_us: u64,
    pub(crate) end_us: u64,
    /// `done`, or the failure's kind.
    pub(crate) status: Arc<str>,
    pub(crate) bytes: u64,
    pub(crate) transfer: Option<TransferRecord>,
}

impl Run {
    pub(crate) fn record(&self) -> TaskRecord {
        TaskRecord {
            task: self.key.0,
            name: self.name.to_string(),
            worker: self.worker.to_string(),
            thread: self.thread,
            start_us: self.start_us,
            end_us: self.end_us,
            status: self.status.to_string(),
            bytes: self.bytes,
            transfer: self.transfer,
        }
    }
}

/// A tenant's totals since the scheduler started.
#[derive(Debug, Clone, Default)]
pub(crate) struct Totals {
    pub(crate) completed: u64,
    pub(crate) failed: HashMap<Arc<str>, u64>,
    pub(crate) transfer_bytes: u64,
    pub(crate) transfer_us: u64,
}

pub(crate) struct TaskStream {
    capacity: usize,
    runs: VecDeque<Run>,
    /// The newest runs not yet handed to the dashboard (when there is
    /// one), and how many older ones were left out.
    page: VecDeque<Run>,
    page_skipped: u64,
    pub(crate) totals: HashMap<TenantId, Totals>,
    strings: HashSet<Arc<str>>,
    /// Where each tenant's durations go, when there is a dashboard.
    hub: Option<Arc<wrun_dashboard::Hub>>,
    durations: HashMap<TenantId, wrun_dashboard::DurationRecorder>,
}

impl TaskStream {
    pub(crate) fn new(capacity: usize, hub: Option<Arc<wrun_dashboard::Hub>>) -> TaskStream {
        TaskStream {
            capacity,
            runs: VecDeque::new(),
            page: VecDeque::new(),
            page_skipped: 0,
            totals: HashMap::new(),
            strings: HashSet::new(),
            hub,
            durations: HashMap::new(),
        }
    }

    /// One shared copy of each name, worker and kind.
    pub(crate) fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(text) {
            return shared.clone();
        }
        // Names come from modules and workers: a bound keeps a hostile
        // stream of distinct kinds from growing this without end.
        if self.strings.len() > 65_536 {
            self.strings.clear();
        }
        let shared: Arc<str> = Arc::from(text);
        self.strings.insert(shared.clone());
        shared
    }

    /// Records a run; `tenant_name` names its tenant for the metrics.
    pub(crate) fn push(&mut self, run: Run, tenant_name: impl FnOnce() -> String) {
        if let Some(hub) = &self.hub {
            self.durations
                .entry(run.tenant)
                .or_insert_with(|| hub.durations(&tenant_name()))
                .observe_us(run.end_us.saturating_sub(run.start_us));
        }
        let totals = self.totals.entry(run.tenant).or_default();
        if &*run.status == "done" {
            totals.completed += 1;
        } else {
            *totals.failed.entry(run.status.clone()).or_default() += 1;
        }
        if let Some(t) = &run.transfer {
            totals.transfer_bytes += t.bytes;
            totals.transfer_us += t.end_us.saturating_sub(t.start_us);
        }
        if self.hub.is_some() {
            if self.page.len() == wrun_dashboard::PAGE_RECORDS {
                self.page.pop_front();
                self.page_skipped += 1;
            }
            self.page.push_back(run.clone());
        }
        if self.capacity == 0 {
            return;
        }
        if self.runs.len() == self.capacity {
            self.runs.pop_front();
        }
        self.runs.push_back(run);
    }

    /// The newest runs since the last call, and how many older ones were
    /// left out.
    pub(crate) fn take_page(&mut self) -> (Vec<Run>, u64) {
        (
            std::mem::take(&mut self.page).into(),
            std::mem::take(&mut self.page_skipped),
        )
    }

    /// The kept runs of these tasks, oldest first.
    pub(crate) fn runs_of<'a>(
        &'a self,
        tasks: &'a HashSet<TaskId>,
    ) -> impl Iterator<Item = &'a Run> + 'a {
        self.runs.iter().filter(move |r| tasks.contains(&r.task))
    }
}

/// The worker's name for the stream ("w7" if it has none).
pub(crate) fn worker_label(name: &str, id: WorkerId) -> String {
    if name.is_empty() {
        format!("{id}")
    } else {
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(task: u64, status: &str) -> Run {
        Run {
            task: TaskId(task),
            key: TaskKey(task),
            tenant: TenantId(1),
            name: "inc".into(),
            worker: "w".into(),
            thread: 0,
            start_us: task,
            end_us: task + 1,
            status: status.into(),
            bytes: 1,
            transfer: None,
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_runs_and_the_totals_count_them_all() {
        let mut stream = TaskStream::new(3, Some(Default::default()));
        for task in 0..5 {
            stream.push(run(task, if task == 4 { "trap" } else { "done" }), || {
                "t".into()
            });
        }
        let all: HashSet<TaskId> = (0..5).map(TaskId).collect();
        let kept: Vec<u64> = stream.runs_of(&all).map(|r| r.task.0).collect();
        assert_eq!(kept, [2, 3, 4]);
        let totals = &stream.totals[&TenantId(1)];
        assert_eq!(totals.completed, 4);
        assert_eq!(totals.failed[&Arc::<str>::from("trap")], 1);
        let (page, skipped) = stream.take_page();
        assert_eq!((page.len(), skipped), (5, 0));
        assert!(stream.take_page().0.is_empty());
        assert!(Arc::ptr_eq(&stream.intern("inc"), &stream.intern("inc")));
    }
}

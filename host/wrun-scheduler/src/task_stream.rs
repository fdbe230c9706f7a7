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

/// Runs waiting for the dashboard's next publication, at most; past this
/// (the scheduler's loop was stalled for long) the newest are dropped
/// from the page, not from the ring or the counters.
const UNPUBLISHED_LIMIT: usize = 200_000;

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
    /// Runs not yet handed to the dashboard (kept only when there is one).
    unpublished: Vec<Run>,
    unpublished_dropped: u64,
    publishing: bool,
    pub(crate) totals: HashMap<TenantId, Totals>,
    strings: HashSet<Arc<str>>,
}

impl TaskStream {
    pub(crate) fn new(capacity: usize, publishing: bool) -> TaskStream {
        TaskStream {
            capacity,
            runs: VecDeque::new(),
            unpublished: Vec::new(),
            unpublished_dropped: 0,
            publishing,
            totals: HashMap::new(),
            strings: HashSet::new(),
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

    pub(crate) fn push(&mut self, run: Run) {
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
        if self.publishing {
            if self.unpublished.len() >= UNPUBLISHED_LIMIT {
                self.unpublished_dropped += 1;
            } else {
                self.unpublished.push(run.clone());
            }
        }
        if self.capacity == 0 {
            return;
        }
        if self.runs.len() == self.capacity {
            self.runs.pop_front();
        }
        self.runs.push_back(run);
    }

    /// The runs since the last call, and how many were dropped meanwhile.
    pub(crate) fn take_unpublished(&mut self) -> (Vec<Run>, u64) {
        (
            std::mem::take(&mut self.unpublished),
            std::mem::take(&mut self.unpublished_dropped),
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
        let mut stream = TaskStream::new(3, true);
        for task in 0..5 {
            stream.push(run(task, if task == 4 { "trap" } else { "done" }));
        }
        let all: HashSet<TaskId> = (0..5).map(TaskId).collect();
        let kept: Vec<u64> = stream.runs_of(&all).map(|r| r.task.0).collect();
        assert_eq!(kept, [2, 3, 4]);
        let totals = &stream.totals[&TenantId(1)];
        assert_eq!(totals.completed, 4);
        assert_eq!(totals.failed[&Arc::<str>::from("trap")], 1);
        let (unpublished, dropped) = stream.take_unpublished();
        assert_eq!((unpublished.len(), dropped), (5, 0));
        assert!(stream.take_unpublished().0.is_empty());
        assert!(Arc::ptr_eq(&stream.intern("inc"), &stream.intern("inc")));
    }
}

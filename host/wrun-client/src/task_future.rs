//! [`TaskFuture`]s, and waiting for them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wrun_proto::TaskKey;

use crate::client::Client;
use crate::connection::{Command, Inner, TaskState};
use crate::error::{ClientError, TaskFailure};

/// A handle to a submitted task. Clones share it; when the last one drops,
/// the result is released on the cluster.
#[derive(Debug, Clone)]
pub struct TaskFuture {
    handle: Arc<Handle>,
}

#[derive(Debug)]
struct Handle {
    key: TaskKey,
    inner: Arc<Inner>,
    /// Detached or cancelled: not ours to release.
    forgotten: AtomicBool,
}

impl Drop for Handle {
    fn drop(&mut self) {
        if self.forgotten.load(Ordering::Relaxed) {
            return;
        }
        let first = {
            let mut releases = self
                .inner
                .releases
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            releases.push(self.key);
            releases.len() == 1
        };
        if first {
            let _ = self.inner.commands.send(Command::FlushReleases);
        }
    }
}

impl TaskFuture {
    pub(crate) fn new(key: TaskKey, inner: Arc<Inner>) -> TaskFuture {
        TaskFuture {
            handle: Arc::new(Handle {
                key,
                inner,
                forgotten: AtomicBool::new(false),
            }),
        }
    }

    /// The task's key in this session.
    pub fn key(&self) -> TaskKey {
        self.handle.key
    }

    /// Drops this handle, and makes every clone drop without releasing the
    /// task: it was detached or cancelled, so it is not ours to release.
    pub(crate) fn forget(self) {
        self.handle.forgotten.store(true, Ordering::Relaxed);
    }
}

impl Client {
    /// Waits until every future is done or failed; `Err` for the failed ones.
    pub fn wait(
        &self,
        futures: &[TaskFuture],
    ) -> Result<Vec<Result<(), TaskFailure>>, ClientError> {
        self.wait_with_progress(futures, |_, _| {})
    }

    /// Like [`Client::wait`], calling `progress(finished, total)` as tasks end.
    pub fn wait_with_progress(
        &self,
        futures: &[TaskFuture],
        mut progress: impl FnMut(usize, usize),
    ) -> Result<Vec<Result<(), TaskFailure>>, ClientError> {
        let mut table = self.inner.table();
        let mut pending: HashSet<TaskKey> = futures
            .iter()
            .map(TaskFuture::key)
            .filter(|key| matches!(table.tasks.get(key), Some(TaskState::Pending)))
            .collect();
        let mut cursor = table.start_reading_log();
        let total = futures.len();
        let mut last = usize::MAX;
        loop {
            for key in &table.finished_log[cursor..] {
                pending.remove(key);
            }
            cursor = table.finished_log.len();
            let finished = total - pending.len().min(total);
            if finished != last {
                progress(finished, total);
                last = finished;
            }
            if pending.is_empty() {
                break;
            }
            if let Some(reason) = &table.disconnected {
                let reason = reason.clone();
                table.stop_reading_log();
                return Err(ClientError::Disconnected(reason));
            }
            table = self
                .inner
                .changed
                .wait_timeout(table, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        table.stop_reading_log();
        Ok(futures
            .iter()
            .map(|f| match table.tasks.get(&f.key()) {
                Some(TaskState::Failed(failure)) => Err((**failure).clone()),
                _ => Ok(()),
            })
            .collect())
    }
}

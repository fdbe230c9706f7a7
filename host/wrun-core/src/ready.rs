//! The ready queue: tasks whose inputs all have results, one queue per
//! tenant, so that placement can share the slots between tenants by weight.

use std::collections::{BTreeMap, VecDeque};

use crate::{TaskId, TenantId};

#[derive(Default)]
pub(crate) struct ReadyQueues {
    queues: BTreeMap<TenantId, VecDeque<TaskId>>,
    len: usize,
}

impl ReadyQueues {
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn push_back(&mut self, tenant: TenantId, task: TaskId) {
        self.queues.entry(tenant).or_default().push_back(task);
        self.len += 1;
    }

    /// First in line again (a retry, or a task given back).
    pub(crate) fn push_front(&mut self, tenant: TenantId, task: TaskId) {
        self.queues.entry(tenant).or_default().push_front(task);
        self.len += 1;
    }

    pub(crate) fn front(&self, tenant: TenantId) -> Option<TaskId> {
        self.queues.get(&tenant).and_then(|q| q.front().copied())
    }

    pub(crate) fn pop_front(&mut self, tenant: TenantId) -> Option<TaskId> {
        let queue = self.queues.get_mut(&tenant)?;
        let task = queue.pop_front()?;
        self.len -= 1;
        if queue.is_empty() {
            self.queues.remove(&tenant);
        }
        Some(task)
    }

    /// Takes one task out of its tenant's queue (one pass over that queue).
    pub(crate) fn remove(&mut self, tenant: TenantId, task: TaskId) {
        if let Some(queue) = self.queues.get_mut(&tenant) {
            let before = queue.len();
            queue.retain(|t| *t != task);
            self.len -= before - queue.len();
            if queue.is_empty() {
                self.queues.remove(&tenant);
            }
        }
    }

    /// Keeps the tasks for which `keep` holds (one pass over every queue).
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&TaskId) -> bool) {
        for queue in self.queues.values_mut() {
            queue.retain(&mut keep);
        }
        self.queues.retain(|_, q| !q.is_empty());
        self.len = self.queues.values().map(VecDeque::len).sum();
    }

    /// The tenants with queued work.
    pub(crate) fn tenants(&self) -> impl Iterator<Item = TenantId> + '_ {
        self.queues.keys().copied()
    }

    /// Every queued task, tenant by tenant.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (TenantId, TaskId)> + '_ {
        self.queues
            .iter()
            .flat_map(|(tenant, q)| q.iter().map(move |t| (*tenant, *t)))
    }
}

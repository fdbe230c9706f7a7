//! Small results the scheduler passes on inline. A task whose result a
//! dependent will read is assigned with `shareResult`; its worker sends the
//! bytes with `finished` when they are at most
//! [`wrun_proto::SMALL_RESULT_BYTES`]. A dependent placed on another worker
//! then gets them as a value in its assignment instead of fetching them
//! from the holder: one peer round trip less per dependency level, which is
//! most of a level's cost for small tasks (Task Bench's `stencil_1d`).
//!
//! Only a copy: the holder keeps the result and stays its holder in the
//! core, so losing this store (a restart) only brings the peer fetch back.
//! Kept until the core frees or forgets the result, within [`BUDGET`]
//! bytes; past that, results travel worker to worker as before.

use std::collections::HashMap;

use wrun_core::{IdHash, TaskId};

/// The most bytes of small results kept at once.
pub(crate) const BUDGET: usize = 64 << 20;

#[derive(Default)]
pub(crate) struct SmallResults {
    values: HashMap<TaskId, Box<[u8]>, IdHash>,
    bytes: usize,
}

impl SmallResults {
    /// Keeps `value` as `task`'s result if it is small, not empty and fits
    /// the budget; returns whether it was kept.
    pub(crate) fn keep(&mut self, task: TaskId, value: &[u8]) -> bool {
        if value.is_empty()
            || value.len() > wrun_proto::SMALL_RESULT_BYTES
            || self.bytes + value.len() > BUDGET
        {
            return false;
        }
        self.bytes += value.len();
        if let Some(old) = self.values.insert(task, value.into()) {
            self.bytes -= old.len();
        }
        true
    }

    pub(crate) fn get(&self, task: TaskId) -> Option<&[u8]> {
        self.values.get(&task).map(|v| &v[..])
    }

    /// Drops `task`'s copy (its result was freed or forgotten).
    pub(crate) fn remove(&mut self, task: TaskId) {
        if let Some(old) = self.values.remove(&task) {
            self.bytes -= old.len();
        }
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_values_within_the_budget_are_kept_and_counted() {
        let mut store = SmallResults::default();
        assert!(!store.keep(TaskId(1), b""), "a result is never empty");
        assert!(!store.keep(TaskId(1), &vec![0; wrun_proto::SMALL_RESULT_BYTES + 1]));
        assert!(store.keep(TaskId(1), b"\x01"));
        assert!(
            store.keep(TaskId(1), b"\x02\x03"),
            "a recomputation replaces it"
        );
        assert_eq!(
            (store.get(TaskId(1)), store.bytes()),
            (Some(&b"\x02\x03"[..]), 2)
        );
        let big = vec![7; wrun_proto::SMALL_RESULT_BYTES];
        let mut task = 2;
        while store.keep(TaskId(task), &big) {
            task += 1;
        }
        assert!(store.bytes() <= BUDGET && store.bytes() + big.len() > BUDGET);
        assert_eq!(store.get(TaskId(task)), None);
        store.remove(TaskId(1));
        store.remove(TaskId(1));
        assert_eq!(store.get(TaskId(1)), None);
        assert_eq!(store.bytes() % big.len(), 0);
    }
}

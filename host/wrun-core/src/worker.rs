//! A worker's record in the core: its slots, its tasks and the results it holds.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::TaskId;

pub(crate) struct Worker {
    pub(crate) slots: u32,
    pub(crate) assigned: BTreeSet<TaskId>,
    pub(crate) running: BTreeSet<TaskId>,
    pub(crate) holds: BTreeSet<TaskId>,
    pub(crate) last_seen: Instant,
    /// Leaving gracefully: takes no new tasks; its results go to peers.
    pub(crate) retiring: bool,
    /// Of `assigned`, the tasks asked back (`stealing`): kept so that
    /// stealing counts a queue instead of walking it.
    pub(crate) being_stolen: usize,
    /// Of `assigned`, the tasks staged ahead of their inputs (`staged`):
    /// they cannot be stolen.
    pub(crate) staged: usize,
}

impl Worker {
    /// Tasks assigned per slot, in thousandths: the order of the core's
    /// load index (and "has room" is a key below `queue_per_slot × 1000`).
    pub(crate) fn load_key(&self) -> u64 {
        self.assigned.len() as u64 * 1000 / u64::from(self.slots.max(1))
    }
}

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
}

//! A client's name for its task. The scheduler's ids ([`TaskId`](crate::TaskId),
//! [`WorkerId`](crate::WorkerId)) are `wrun-core`'s.

use std::fmt;

/// A task's key in its client session: chosen by the client, unique in the
/// session, and what events, fetches and logs name the task by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskKey(pub u64);

impl fmt::Display for TaskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

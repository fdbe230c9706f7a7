//! A task's record in the core: its spec, where it is in its life, and who
//! holds its result.

use std::sync::Arc;

use thin_vec::ThinVec;

use crate::{Failure, TaskId, TaskSpec, WorkerId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Some dependency has no result yet.
    Waiting,
    /// In the ready queue.
    Ready,
    /// Sent to a worker (queued there or running).
    Assigned(WorkerId),
    /// Computed; `holders` lists who has the result (empty once freed).
    Done,
    /// No result, for good.
    Failed(Arc<Failure>),
}

impl State {
    pub(crate) fn is_active(&self) -> bool {
        matches!(self, State::Waiting | State::Ready | State::Assigned(_))
    }
}

pub(crate) struct Task<P> {
    pub(crate) spec: TaskSpec<P>,
    pub(crate) deps: ThinVec<TaskId>,
    pub(crate) dependents: ThinVec<TaskId>,
    pub(crate) state: State,
    /// Active dependents (they will read this task's result).
    pub(crate) pending: u32,
    /// The client still holds a handle.
    pub(crate) wanted: bool,
    pub(crate) holders: ThinVec<WorkerId>,
    pub(crate) size: u64,
    pub(crate) deaths: u32,
    pub(crate) errors: u32,
    pub(crate) stealing: bool,
}

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
    /// Assigned ahead of its inputs (`staging.rs`): some are still being
    /// made, all on its worker, which starts it when they are.
    pub(crate) staged: bool,
}

/// Hashes ids a process assigns itself (the core's task table, a client's
/// own task keys). Such ids are never chosen by a peer, so the DoS
/// resistance of std's SipHash buys nothing there, and it was a fifth of
/// the scheduler's time per task: splitmix64's finaliser spreads
/// sequential ids over the table. Never use it for keys a peer chooses.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdHash;

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(0)
    }
}

/// The hasher of [`IdHash`].
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 ids are hashed here; anything else still hashes.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 ^= id;
    }
}

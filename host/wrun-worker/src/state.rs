//! What the RPC thread and the executor threads share: the task queue, the
//! results this worker holds, the modules it has, the sandbox, and the
//! outbox of task events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wrun_abi::ModuleDigest;
use wrun_sandbox::Sandbox;

use crate::outbox::EventOutbox;
use crate::queue::TaskQueue;
use crate::results::ResultStore;

pub(crate) struct WorkerState {
    pub(crate) queue: TaskQueue,
    pub(crate) results: ResultStore,
    pub(crate) modules: ModuleStore,
    pub(crate) sandbox: Sandbox,
    pub(crate) events: EventOutbox,
    /// Peers waiting for results this worker is making.
    pub(crate) awaited: crate::awaited::Awaited,
    /// The cluster secret, once known: peer tickets are checked with it.
    pub(crate) secret: std::sync::OnceLock<String>,
}

impl WorkerState {
    pub(crate) fn new(sandbox: Sandbox, results: ResultStore) -> WorkerState {
        WorkerState {
            queue: TaskQueue::default(),
            results,
            modules: ModuleStore::default(),
            sandbox,
            events: EventOutbox::default(),
            awaited: Default::default(),
            secret: std::sync::OnceLock::new(),
        }
    }
}

/// Module bytes this worker fetched, by digest (the sandbox keeps the
/// compiled modules).
#[derive(Default)]
pub(crate) struct ModuleStore {
    bytes: Mutex<HashMap<ModuleDigest, Arc<Vec<u8>>>>,
}

impl ModuleStore {
    pub(crate) fn get(&self, digest: &ModuleDigest) -> Option<Arc<Vec<u8>>> {
        self.bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    pub(crate) fn insert(&self, digest: ModuleDigest, bytes: Arc<Vec<u8>>) {
        self.bytes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest, bytes);
    }
}

//! The typed status a session asks for (`wrun status`).

use wrun_core::ClientId;
use wrun_proto::status::{ClusterStatus, JobStatus, TaskCounts, WorkerStatus};

use crate::state::State;

/// The cluster's status as the session `client` sees it.
pub(crate) fn cluster_status(state: &State, client: ClientId) -> ClusterStatus {
    let workers = state
        .core
        .workers()
        .map(|(id, slots, assigned, running)| {
            let conn = state.workers.get(&id);
            WorkerStatus {
                id: id.0,
                name: conn.map(|c| c.name.clone()).unwrap_or_default(),
                threads: slots,
                memory_bytes: conn.map(|c| c.memory_bytes).unwrap_or(0),
                pid: conn.map(|c| c.pid).unwrap_or(0),
                peer_address: conn.map(|c| c.peer_address.clone()).unwrap_or_default(),
                assigned: assigned as u32,
                running: running as u32,
                retiring: state.core.is_retiring(id),
                slurm_job_id: conn
                    .map(|c| c.slurm_job_id.clone())
                    .filter(|j| !j.is_empty()),
                end_time_ms: conn.map(|c| c.end_time_ms).filter(|t| *t > 0),
            }
        })
        .collect();
    let c = state.core.state_counts();
    ClusterStatus {
        workers,
        tasks: TaskCounts {
            total: state.core.task_count() as u64,
            waiting: c.waiting as u64,
            queued: c.queued as u64,
            on_workers: c.on_workers as u64,
            running: c.running as u64,
            done: c.done as u64,
            failed: c.failed as u64,
        },
        recomputed: state.core.recomputed(),
        clients: state.clients.len() as u32,
        session_tasks: state
            .clients
            .get(&client)
            .map(|c| c.keys.len() as u64)
            .unwrap_or(0),
        jobs: state
            .jobs
            .summary()
            .into_iter()
            .map(|(name, tasks)| JobStatus { name, tasks })
            .collect(),
    }
}

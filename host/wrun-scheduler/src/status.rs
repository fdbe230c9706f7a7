//! The typed status a session asks for (`wrun status`): all of it for the
//! operator (and a cluster's only tenant); for a tenant, its own work and
//! the cluster's capacity, with no trace of other tenants (no pids, peer
//! addresses, Slurm jobs, or their tasks on the workers).

use wrun_core::{ClientId, TenantId};
use wrun_proto::status::{ClusterStatus, JobStatus, TaskCounts, WorkerStatus};

use crate::state::State;

/// The cluster's status as the session `client` sees it.
pub(crate) fn cluster_status(state: &State, client: ClientId) -> ClusterStatus {
    let tenant = state
        .clients
        .get(&client)
        .map(|c| c.tenant)
        .unwrap_or_default();
    let only = (!state.sees_all(tenant)).then_some(tenant);
    let c = state.core.state_counts_of(only);
    let counts = TaskCounts {
        total: (c.waiting + c.queued + c.on_workers + c.done + c.failed) as u64,
        waiting: c.waiting as u64,
        queued: c.queued as u64,
        on_workers: c.on_workers as u64,
        running: c.running as u64,
        done: c.done as u64,
        failed: c.failed as u64,
    };
    let session_tasks = state
        .clients
        .get(&client)
        .map(|c| c.keys.len() as u64)
        .unwrap_or(0);
    status_with_counts(state, tenant, counts, session_tasks)
}

/// The status a session of `tenant` sees, with its tasks counted already
/// (the dashboard counts every tenant's in one pass).
pub(crate) fn status_with_counts(
    state: &State,
    tenant: TenantId,
    tasks: TaskCounts,
    session_tasks: u64,
) -> ClusterStatus {
    let all = state.sees_all(tenant);
    let only = (!all).then_some(tenant);
    let workers = state
        .core
        .workers()
        .map(|(id, slots, _, _)| {
            let conn = state.workers.get(&id);
            let (assigned, running) = state.core.worker_load_of(id, only);
            let mut worker = WorkerStatus {
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
                held_bytes: conn.map(|c| c.held_bytes).unwrap_or(0),
                spilled_bytes: conn.map(|c| c.spilled_bytes).unwrap_or(0),
            };
            if !all {
                worker.pid = 0;
                worker.peer_address = String::new();
                worker.slurm_job_id = None;
                // What the workers hold is the sum of every tenant's results.
                worker.held_bytes = 0;
                worker.spilled_bytes = 0;
            }
            worker
        })
        .collect();
    ClusterStatus {
        workers,
        tasks,
        recomputed: if all { state.core.recomputed() } else { 0 },
        clients: state
            .clients
            .values()
            .filter(|c| all || c.tenant == tenant)
            .count() as u32,
        session_tasks,
        jobs: state
            .jobs
            .summary(only)
            .into_iter()
            .map(|(name, tasks)| JobStatus { name, tasks })
            .collect(),
    }
}

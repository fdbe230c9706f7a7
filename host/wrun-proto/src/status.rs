//! The cluster's status, typed: what `ClientSession.status` answers, what
//! `wrun status` prints (and `--json` serialises), and what the dashboard
//! and the metrics read. One definition, written and read here only.

use serde::{Deserialize, Serialize};

use crate::wrun_capnp::{cluster_status, job_status, task_counts, worker_status};

/// The whole cluster as one session sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The workers, by id.
    pub workers: Vec<WorkerStatus>,
    /// Tasks by state.
    pub tasks: TaskCounts,
    /// Results lost with a worker and computed again.
    pub recomputed: u64,
    /// Client sessions connected.
    pub clients: u32,
    /// Tasks held by the session that asked.
    pub session_tasks: u64,
    /// Detached jobs.
    pub jobs: Vec<JobStatus>,
}

/// One worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// The scheduler's id of the worker (a restarted worker gets a new one).
    pub id: u64,
    /// Its name (`--name`).
    pub name: String,
    /// Task threads.
    pub threads: u32,
    /// Its memory limit (`--memory`).
    pub memory_bytes: u64,
    /// Its process id.
    pub pid: u32,
    /// Where peers fetch its results.
    pub peer_address: String,
    /// Tasks sent to it, queued there or running.
    pub assigned: u32,
    /// Tasks it reported running.
    pub running: u32,
    /// Leaving gracefully: takes no new tasks.
    pub retiring: bool,
    /// The Slurm job it runs in.
    pub slurm_job_id: Option<String>,
    /// When it will be stopped from outside (Unix ms).
    pub end_time_ms: Option<u64>,
    /// Result bytes it holds, in memory and on disk (as of its last heartbeat).
    #[serde(default)]
    pub held_bytes: u64,
    /// Of them, bytes spilled to disk.
    #[serde(default)]
    pub spilled_bytes: u64,
}

/// Tasks by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounts {
    /// Every task the scheduler knows.
    pub total: u64,
    /// Waiting for a dependency's result.
    pub waiting: u64,
    /// Ready, in the scheduler's queue.
    pub queued: u64,
    /// Sent to a worker (queued there or running).
    pub on_workers: u64,
    /// Of those, reported running.
    pub running: u64,
    /// Finished; the result is kept until released.
    pub done: u64,
    /// Failed for good.
    pub failed: u64,
}

/// A detached job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStatus {
    /// Its name (`job-N`, or the one given with `--job`).
    pub name: String,
    /// Its tasks.
    pub tasks: u64,
}

impl ClusterStatus {
    /// Writes the status into its schema struct.
    pub fn write(&self, mut to: cluster_status::Builder<'_>) {
        let mut workers = to.reborrow().init_workers(self.workers.len() as u32);
        for (i, worker) in self.workers.iter().enumerate() {
            worker.write(workers.reborrow().get(i as u32));
        }
        self.tasks.write(to.reborrow().init_tasks());
        to.set_recomputed(self.recomputed);
        to.set_clients(self.clients);
        to.set_session_tasks(self.session_tasks);
        let mut jobs = to.init_jobs(self.jobs.len() as u32);
        for (i, job) in self.jobs.iter().enumerate() {
            let mut j: job_status::Builder<'_> = jobs.reborrow().get(i as u32);
            j.set_name(&job.name);
            j.set_tasks(job.tasks);
        }
    }

    /// Reads the status from its schema struct.
    pub fn read(from: cluster_status::Reader<'_>) -> Result<ClusterStatus, capnp::Error> {
        Ok(ClusterStatus {
            workers: from
                .get_workers()?
                .iter()
                .map(WorkerStatus::read)
                .collect::<Result<_, _>>()?,
            tasks: TaskCounts::read(from.get_tasks()?),
            recomputed: from.get_recomputed(),
            clients: from.get_clients(),
            session_tasks: from.get_session_tasks(),
            jobs: from
                .get_jobs()?
                .iter()
                .map(|j| {
                    Ok(JobStatus {
                        name: j.get_name()?.to_string()?,
                        tasks: j.get_tasks(),
                    })
                })
                .collect::<Result<_, capnp::Error>>()?,
        })
    }
}

impl WorkerStatus {
    fn write(&self, mut to: worker_status::Builder<'_>) {
        to.set_id(self.id);
        to.set_name(&self.name);
        to.set_threads(self.threads);
        to.set_memory_bytes(self.memory_bytes);
        to.set_pid(self.pid);
        to.set_peer_address(&self.peer_address);
        to.set_assigned(self.assigned);
        to.set_running(self.running);
        to.set_retiring(self.retiring);
        to.set_slurm_job_id(self.slurm_job_id.as_deref().unwrap_or(""));
        to.set_end_time_ms(self.end_time_ms.unwrap_or(0));
        to.set_held_bytes(self.held_bytes);
        to.set_spilled_bytes(self.spilled_bytes);
    }

    fn read(from: worker_status::Reader<'_>) -> Result<WorkerStatus, capnp::Error> {
        Ok(WorkerStatus {
            id: from.get_id(),
            name: from.get_name()?.to_string()?,
            threads: from.get_threads(),
            memory_bytes: from.get_memory_bytes(),
            pid: from.get_pid(),
            peer_address: from.get_peer_address()?.to_string()?,
            assigned: from.get_assigned(),
            running: from.get_running(),
            retiring: from.get_retiring(),
            slurm_job_id: Some(from.get_slurm_job_id()?.to_string()?).filter(|j| !j.is_empty()),
            end_time_ms: Some(from.get_end_time_ms()).filter(|t| *t > 0),
            held_bytes: from.get_held_bytes(),
            spilled_bytes: from.get_spilled_bytes(),
        })
    }
}

impl TaskCounts {
    fn write(&self, mut to: task_counts::Builder<'_>) {
        to.set_total(self.total);
        to.set_waiting(self.waiting);
        to.set_queued(self.queued);
        to.set_on_workers(self.on_workers);
        to.set_running(self.running);
        to.set_done(self.done);
        to.set_failed(self.failed);
    }

    fn read(from: task_counts::Reader<'_>) -> TaskCounts {
        TaskCounts {
            total: from.get_total(),
            waiting: from.get_waiting(),
            queued: from.get_queued(),
            on_workers: from.get_on_workers(),
            running: from.get_running(),
            done: from.get_done(),
            failed: from.get_failed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_the_schema() {
        let status = ClusterStatus {
            workers: vec![WorkerStatus {
                id: 3,
                name: "a".into(),
                threads: 2,
                memory_bytes: 1 << 30,
                pid: 42,
                peer_address: "127.0.0.1:5".into(),
                assigned: 7,
                running: 2,
                retiring: true,
                slurm_job_id: Some("17".into()),
                end_time_ms: None,
                held_bytes: 5 << 20,
                spilled_bytes: 3 << 20,
            }],
            tasks: TaskCounts {
                total: 9,
                waiting: 1,
                queued: 1,
                on_workers: 7,
                running: 2,
                done: 0,
                failed: 0,
            },
            recomputed: 4,
            clients: 2,
            session_tasks: 9,
            jobs: vec![JobStatus {
                name: "job-3".into(),
                tasks: 9,
            }],
        };
        let mut message = capnp::message::Builder::new_default();
        status.write(message.init_root::<cluster_status::Builder<'_>>());
        let reader = message
            .get_root_as_reader::<cluster_status::Reader<'_>>()
            .unwrap();
        assert_eq!(ClusterStatus::read(reader).unwrap(), status);
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["tasks"]["on_workers"], 7);
        assert_eq!(json["workers"][0]["slurm_job_id"], "17");
    }
}

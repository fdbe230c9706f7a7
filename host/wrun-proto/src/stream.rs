//! The task stream, typed: one record per task run, as `wrun events`
//! prints it (JSON lines), `wrun report` draws it and the dashboard shows
//! it live. Like Dask's `get_task_stream`: the scheduler keeps the newest
//! runs of the cluster (`--task-stream`), not every run ever.

use serde::{Deserialize, Serialize};

use crate::wrun_capnp::task_record;

/// One task's run on a worker. Times are Unix µs on the worker's clock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The client's key of the task.
    pub task: u64,
    /// The task function.
    pub name: String,
    /// The worker's name.
    pub worker: String,
    /// The worker's executor thread that ran it.
    pub thread: u32,
    /// When it started running.
    pub start_us: u64,
    /// When it ended.
    pub end_us: u64,
    /// `done`, or the failure's kind (`trap`, `timeout`, ...).
    pub status: String,
    /// The result's size in bytes (0 for a failure).
    pub bytes: u64,
    /// Its inputs fetched from peers before it ran (`None`: all were local).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferRecord>,
}

/// Inputs fetched from peers for one task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRecord {
    /// When the first fetch started (Unix µs).
    pub start_us: u64,
    /// When the last one ended.
    pub end_us: u64,
    /// Bytes fetched.
    pub bytes: u64,
}

impl TaskRecord {
    /// Whether the task failed.
    pub fn failed(&self) -> bool {
        self.status != "done"
    }

    /// Writes the record into its schema struct.
    pub fn write(&self, mut to: task_record::Builder<'_>) {
        to.set_key(self.task);
        to.set_name(&self.name);
        to.set_worker(&self.worker);
        to.set_thread(self.thread);
        to.set_start_us(self.start_us);
        to.set_end_us(self.end_us);
        to.set_status(&self.status);
        to.set_bytes(self.bytes);
        let transfer = self.transfer.unwrap_or_default();
        to.set_transfer_start_us(transfer.start_us);
        to.set_transfer_end_us(transfer.end_us);
        to.set_transfer_bytes(transfer.bytes);
    }

    /// Reads the record from its schema struct.
    pub fn read(from: task_record::Reader<'_>) -> Result<TaskRecord, capnp::Error> {
        let transfer = TransferRecord {
            start_us: from.get_transfer_start_us(),
            end_us: from.get_transfer_end_us(),
            bytes: from.get_transfer_bytes(),
        };
        Ok(TaskRecord {
            task: from.get_key(),
            name: from.get_name()?.to_string()?,
            worker: from.get_worker()?.to_string()?,
            thread: from.get_thread(),
            start_us: from.get_start_us(),
            end_us: from.get_end_us(),
            status: from.get_status()?.to_string()?,
            bytes: from.get_bytes(),
            transfer: (transfer.end_us > 0).then_some(transfer),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_through_the_schema_and_prints_as_json() {
        let record = TaskRecord {
            task: 7,
            name: "inc".into(),
            worker: "w-1".into(),
            thread: 1,
            start_us: 1_000,
            end_us: 1_250,
            status: "trap".into(),
            bytes: 0,
            transfer: Some(TransferRecord {
                start_us: 900,
                end_us: 990,
                bytes: 4096,
            }),
        };
        let mut message = capnp::message::Builder::new_default();
        record.write(message.init_root::<task_record::Builder<'_>>());
        let reader = message
            .get_root_as_reader::<task_record::Reader<'_>>()
            .unwrap();
        assert_eq!(TaskRecord::read(reader).unwrap(), record);
        assert!(record.failed());
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["transfer"]["bytes"], 4096);
        let local = TaskRecord {
            transfer: None,
            ..record
        };
        assert!(
            serde_json::to_value(&local)
                .unwrap()
                .get("transfer")
                .is_none()
        );
    }
}

//! The results this worker holds until the scheduler frees them: in
//! memory, and on disk once the bytes in memory pass the spill threshold
//! (as Dask's workers spill at a fraction of their memory).
//!
//! Values are spilled oldest first, by the executor thread whose result
//! took memory over the threshold, so a worker that makes results faster
//! than it can write them slows down instead of growing. A value being
//! written is still served from memory; one freed meanwhile has its file
//! removed. If spilling fails (the spill limit is reached, or the disk is
//! full) values stay in memory up to the hold limit; past it, the result
//! that does not fit is refused and its task fails, never the worker.
//!
//! Each worker spills into a directory of its own,
//! `wrun-spill-PID-RANDOM` (mode 0700) under `--spill-dir`, removed when
//! the worker ends; the nanny removes the one of a worker that died.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::warn;
use wrun_proto::TaskId;

/// When and where a worker spills results to disk.
#[derive(Debug, Clone)]
pub struct SpillConfig {
    /// Where the worker makes its own spill directory.
    pub dir: PathBuf,
    /// Results in memory above this many bytes are written to disk.
    pub at_bytes: u64,
    /// And while the process's resident memory is above this (0: never
    /// looked at), as many more as it is over: running tasks, buffers and
    /// the allocator's own share count too (Dask's `spill` threshold).
    pub rss_bytes: u64,
    /// Results in memory never pass this: when spilling fails, the result
    /// that would pass it is refused and its task fails.
    pub hold_bytes: u64,
    /// The most bytes on disk.
    pub limit_bytes: u64,
}

/// A result too large for what is left in memory and on disk.
#[derive(Debug, thiserror::Error)]
#[error(
    "no room for a result of {size} bytes: results in memory would pass the worker's hold limit of {hold} bytes, and spilling to disk failed: {reason}"
)]
pub(crate) struct NoRoom {
    size: u64,
    hold: u64,
    reason: String,
}

/// Where a held value is.
pub(crate) enum Held {
    Memory(Arc<Vec<u8>>),
    Disk { path: PathBuf, len: u64 },
}

impl Held {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Held::Memory(bytes) => bytes.len() as u64,
            Held::Disk { len, .. } => *len,
        }
    }

    /// The whole value (read back from disk if it was spilled).
    pub(crate) fn bytes(&self) -> std::io::Result<Arc<Vec<u8>>> {
        match self {
            Held::Memory(bytes) => Ok(bytes.clone()),
            Held::Disk { path, len } => {
                let bytes = std::fs::read(path)?;
                if bytes.len() as u64 != *len {
                    return Err(std::io::Error::other(format!(
                        "spill file {} holds {} bytes, not {len}",
                        path.display(),
                        bytes.len()
                    )));
                }
                Ok(Arc::new(bytes))
            }
        }
    }

    /// At most `max` bytes from `offset` (which is at most the length).
    pub(crate) fn read_at(&self, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let len = self.len();
        let offset = offset.min(len);
        let count = (len - offset).min(max as u64) as usize;
        match self {
            Held::Memory(bytes) => Ok(bytes[offset as usize..offset as usize + count].to_vec()),
            Held::Disk { path, .. } => {
                let mut chunk = vec![0; count];
                File::open(path)?.read_exact_at(&mut chunk, offset)?;
                Ok(chunk)
            }
        }
    }
}

enum Slot {
    /// In memory; `age` orders the spilling, oldest first.
    Memory { bytes: Arc<Vec<u8>>, age: u64 },
    /// Being written to disk, still served from memory.
    Writing { bytes: Arc<Vec<u8>>, age: u64 },
    /// On disk, in the file named by the task and `age` (a value stored
    /// again for the same task gets a new age, so a new file).
    Disk { len: u64, age: u64 },
}

#[derive(Default)]
struct Values {
    slots: HashMap<TaskId, Slot>,
    /// Values in memory that may be spilled, oldest first.
    by_age: BTreeMap<u64, TaskId>,
    next_age: u64,
    /// Bytes of values in memory (those being written included).
    memory: u64,
    /// Bytes on disk (those being written included).
    disk: u64,
    /// Bytes being written (counted in both of the above).
    writing: u64,
}

impl Values {
    /// Takes out `task`, undoing its accounting; returns a file to remove.
    fn remove(&mut self, task: TaskId) -> Option<Slot> {
        let slot = self.slots.remove(&task)?;
        match &slot {
            Slot::Memory { bytes, age } => {
                self.by_age.remove(age);
                self.memory -= bytes.len() as u64;
            }
            // The writer finds it gone, and gives back the disk bytes.
            Slot::Writing { bytes, .. } => self.memory -= bytes.len() as u64,
            Slot::Disk { len, .. } => self.disk -= len,
        }
        Some(slot)
    }
}

struct SpillArea {
    dir: PathBuf,
    at: u64,
    rss: u64,
    hold: u64,
    limit: u64,
}

/// The results this worker made or copied.
#[derive(Default)]
pub(crate) struct ResultStore {
    values: Mutex<Values>,
    spill: Option<SpillArea>,
}

impl ResultStore {
    /// A store that spills as `config` says (into a fresh directory of its
    /// own), or keeps everything in memory.
    pub(crate) fn new(config: Option<&SpillConfig>) -> std::io::Result<ResultStore> {
        let Some(config) = config else {
            return Ok(ResultStore::default());
        };
        std::fs::create_dir_all(&config.dir)?;
        let dir = tempfile::Builder::new()
            .prefix(&spill_prefix(std::process::id()))
            .tempdir_in(&config.dir)?
            .keep();
        Ok(ResultStore {
            values: Mutex::default(),
            spill: Some(SpillArea {
                dir,
                at: config.at_bytes,
                rss: config.rss_bytes,
                hold: config.hold_bytes.max(config.at_bytes),
                limit: config.limit_bytes,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Values> {
        self.values.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, task: TaskId, age: u64) -> Option<PathBuf> {
        Some(self.spill.as_ref()?.dir.join(format!("{}-{age}", task.0)))
    }

    /// Whether `task`'s value is here.
    pub(crate) fn contains(&self, task: TaskId) -> bool {
        self.lock().slots.contains_key(&task)
    }

    /// Where `task`'s value is, if it is here.
    pub(crate) fn get(&self, task: TaskId) -> Option<Held> {
        match self.lock().slots.get(&task)? {
            Slot::Memory { bytes, .. } | Slot::Writing { bytes, .. } => {
                Some(Held::Memory(bytes.clone()))
            }
            Slot::Disk { len, age } => Some(Held::Disk {
                path: self.path(task, *age)?,
                len: *len,
            }),
        }
    }

    /// Keeps `value` as `task`'s result, spilling older ones (or this one)
    /// to disk if memory passes the threshold.
    pub(crate) fn insert(&self, task: TaskId, value: Vec<u8>) -> Result<(), NoRoom> {
        let size = value.len() as u64;
        let bytes = Arc::new(value);
        let victims = {
            let mut values = self.lock();
            let old = values.remove(task);
            let age = values.next_age;
            values.next_age += 1;
            values.by_age.insert(age, task);
            values.memory += size;
            values.slots.insert(task, Slot::Memory { bytes, age });
            let victims = self.choose_victims(&mut values, size);
            drop(values);
            // A value being written is cleaned up by its writer.
            if let Some(Slot::Disk { age, .. }) = old {
                self.remove_file(task, age);
            }
            victims
        };
        let Some(spill) = &self.spill else {
            return Ok(());
        };
        let mut failure = victims.failure;
        for (victim, age, bytes) in victims.chosen {
            if let Err(error) = self.write(victim, age, &bytes) {
                failure.get_or_insert_with(|| error.to_string());
            }
        }
        // Refused only when spilling failed: values other threads are
        // still writing out leave memory in a moment.
        let Some(reason) = failure else {
            return Ok(());
        };
        let mut values = self.lock();
        if values.memory <= spill.hold {
            return Ok(());
        }
        // Over the hold limit: refuse this value if it is still in memory.
        if let Some(Slot::Memory { .. }) = values.slots.get(&task) {
            values.remove(task);
            return Err(NoRoom {
                size,
                hold: spill.hold,
                reason,
            });
        }
        Ok(())
    }

    /// Marks the oldest values in memory for writing until memory is back
    /// under the threshold (as far as the spill limit allows). `added` is
    /// the size of the value just kept.
    fn choose_victims(&self, values: &mut Values, added: u64) -> Victims {
        let Some(spill) = &self.spill else {
            return Victims::default();
        };
        let mut target = spill.at;
        // The process's memory is read only for values large enough to
        // move it (reading /proc costs tens of microseconds; a flood of
        // tiny results must not pay that per task).
        if added >= LOOK_AT_RSS_FROM
            && let Some(over) = self.rss_over()
        {
            target = target.saturating_sub(over);
        }
        self.victims_down_to(values, target)
    }

    /// How far the process's resident memory is over the spill threshold.
    fn rss_over(&self) -> Option<u64> {
        let spill = self.spill.as_ref()?;
        if spill.rss == 0 {
            return None;
        }
        let rss = crate::nanny::rss_bytes(std::process::id())?;
        (rss > spill.rss).then(|| rss - spill.rss)
    }

    /// Spills while the process's resident memory is over the threshold
    /// (running tasks, fetched inputs and buffers grow it too): as many
    /// bytes of results as it is over, oldest first. The worker's memory
    /// monitor calls this every [`MONITOR_EVERY`], as Dask's does.
    pub(crate) fn relieve(&self) {
        let Some(over) = self.rss_over() else {
            return;
        };
        let victims = {
            let mut values = self.lock();
            let target = values.memory.saturating_sub(over);
            self.victims_down_to(&mut values, target)
        };
        for (task, age, bytes) in victims.chosen {
            let _ = self.write(task, age, &bytes);
        }
    }

    /// Marks the oldest values in memory for writing until the bytes in
    /// memory (less those already being written) are at most `target`.
    fn victims_down_to(&self, values: &mut Values, target: u64) -> Victims {
        let mut victims = Victims::default();
        let Some(spill) = &self.spill else {
            return victims;
        };
        let mut writing: u64 = values.writing;
        while values.memory - writing > target {
            let Some((&age, &task)) = values.by_age.iter().next() else {
                break;
            };
            let Some(Slot::Memory { bytes, .. }) = values.slots.get(&task) else {
                unreachable!("by_age lists only values in memory");
            };
            let len = bytes.len() as u64;
            if values.disk + len > spill.limit {
                victims.failure = Some(format!(
                    "the spill limit of {} bytes is reached ({} bytes on disk)",
                    spill.limit, values.disk
                ));
                break;
            }
            let bytes = bytes.clone();
            values.by_age.remove(&age);
            values.disk += len;
            values.writing += len;
            writing += len;
            values.slots.insert(
                task,
                Slot::Writing {
                    bytes: bytes.clone(),
                    age,
                },
            );
            victims.chosen.push((task, age, bytes));
        }
        victims
    }

    /// Writes one chosen value to disk and records where it went.
    fn write(&self, task: TaskId, age: u64, bytes: &Arc<Vec<u8>>) -> std::io::Result<()> {
        let path = self
            .path(task, age)
            .expect("only a spilling store chooses victims");
        let written = write_file(&path, bytes);
        let len = bytes.len() as u64;
        let mut values = self.lock();
        values.writing -= len;
        // The same value, not merely one of the same size, is still
        // waiting for this write.
        let still_writing = matches!(values.slots.get(&task), Some(Slot::Writing { bytes: b, .. }) if Arc::ptr_eq(b, bytes));
        if !still_writing {
            // Freed (or stored again) while it was written.
            values.disk -= len;
            drop(values);
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        match written {
            Ok(()) => {
                values.memory -= len;
                values.slots.insert(task, Slot::Disk { len, age });
                Ok(())
            }
            Err(error) => {
                values.disk -= len;
                let Some(Slot::Writing { bytes, age }) = values.slots.remove(&task) else {
                    unreachable!("checked above");
                };
                values.by_age.insert(age, task);
                values.slots.insert(task, Slot::Memory { bytes, age });
                drop(values);
                let _ = std::fs::remove_file(&path);
                warn!(%task, "spilling a result to {} failed: {error}", path.display());
                Err(error)
            }
        }
    }

    fn remove_file(&self, task: TaskId, age: u64) {
        if let Some(path) = self.path(task, age) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Drops the results of `tasks` (freed by the scheduler).
    pub(crate) fn free(&self, tasks: impl IntoIterator<Item = TaskId>) {
        let mut on_disk = Vec::new();
        {
            let mut values = self.lock();
            for task in tasks {
                if let Some(Slot::Disk { age, .. }) = values.remove(task) {
                    on_disk.push((task, age));
                }
            }
        }
        for (task, age) in on_disk {
            self.remove_file(task, age);
        }
    }

    /// Every result held here, with its size (for a scheduler restarted
    /// on its journal, which asks what survived).
    pub(crate) fn held(&self) -> Vec<(TaskId, u64)> {
        let values = self.lock();
        values
            .slots
            .iter()
            .map(|(task, slot)| {
                let size = match slot {
                    Slot::Memory { bytes, .. } | Slot::Writing { bytes, .. } => bytes.len() as u64,
                    Slot::Disk { len, .. } => *len,
                };
                (*task, size)
            })
            .collect()
    }

    /// Bytes held in all, and of them on disk (a value being written
    /// counts once, in memory).
    pub(crate) fn held_and_spilled(&self) -> (u64, u64) {
        let values = self.lock();
        (
            values.memory + values.disk - values.writing,
            values.disk - values.writing,
        )
    }

    /// Removes the spill directory (when the worker ends).
    pub(crate) fn remove_spill_dir(&self) {
        if let Some(spill) = &self.spill {
            let _ = std::fs::remove_dir_all(&spill.dir);
        }
    }
}

/// How often the worker's memory monitor looks at its resident memory.
pub(crate) const MONITOR_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The smallest new value for which the process's resident memory is read.
const LOOK_AT_RSS_FROM: u64 = 256 << 10;

#[derive(Default)]
struct Victims {
    chosen: Vec<(TaskId, u64, Arc<Vec<u8>>)>,
    /// Why not enough could be chosen.
    failure: Option<String>,
}

fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    // create_new: the directory is this worker's own (0700) and every
    // file name is used once, so nothing is there to follow or overwrite.
    let mut file = File::options().write(true).create_new(true).open(path)?;
    file.write_all(bytes)?;
    Ok(())
}

fn spill_prefix(pid: u32) -> String {
    format!("wrun-spill-{pid}-")
}

/// Removes the spill directories a worker process `pid` left in `dir`
/// (it died without cleaning up); the nanny calls it.
pub fn remove_spill_dirs_of(dir: &Path, pid: u32) {
    let prefix = spill_prefix(pid);
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(&prefix) {
            continue;
        }
        // Only real directories: never follow a link someone put there.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spilling(at: u64, hold: u64, limit: u64) -> (tempfile::TempDir, ResultStore) {
        let root = tempfile::tempdir().unwrap();
        let store = ResultStore::new(Some(&SpillConfig {
            dir: root.path().to_owned(),
            at_bytes: at,
            rss_bytes: 0,
            hold_bytes: hold,
            limit_bytes: limit,
        }))
        .unwrap();
        (root, store)
    }

    fn value(n: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| n.wrapping_add(i as u8)).collect()
    }

    fn on_disk(store: &ResultStore, task: u64) -> bool {
        matches!(store.get(TaskId(task)), Some(Held::Disk { .. }))
    }

    #[test]
    fn values_past_the_threshold_go_to_disk_oldest_first_and_read_back_whole() {
        let (_root, store) = spilling(250, 1000, 10_000);
        for t in 0..5 {
            store.insert(TaskId(t), value(t as u8, 100)).unwrap();
        }
        // 500 bytes made; memory is kept at most 250: the three oldest went.
        assert_eq!(store.held_and_spilled(), (500, 300));
        assert!(on_disk(&store, 0) && on_disk(&store, 1) && on_disk(&store, 2));
        assert!(!on_disk(&store, 3) && !on_disk(&store, 4));
        for t in 0..5 {
            let held = store.get(TaskId(t)).unwrap();
            assert_eq!(*held.bytes().unwrap(), value(t as u8, 100));
            assert_eq!(held.read_at(90, 64).unwrap(), value(t as u8, 100)[90..]);
            assert_eq!(held.read_at(100, 64).unwrap(), Vec::<u8>::new());
        }
    }

    #[test]
    fn the_memory_monitor_spills_while_the_process_is_over_its_threshold() {
        let root = tempfile::tempdir().unwrap();
        let config = |rss_bytes| SpillConfig {
            dir: root.path().to_owned(),
            at_bytes: 1 << 30,
            rss_bytes,
            hold_bytes: 1 << 30,
            limit_bytes: 1 << 30,
        };
        // A threshold no process is under: everything goes to disk.
        let store = ResultStore::new(Some(&config(1))).unwrap();
        for t in 0..3 {
            store.insert(TaskId(t), value(0, 1000)).unwrap();
        }
        assert_eq!(store.held_and_spilled(), (3000, 0), "under --spill-at");
        store.relieve();
        assert_eq!(store.held_and_spilled(), (3000, 3000));
        // One no process is over: nothing moves.
        let store = ResultStore::new(Some(&config(u64::MAX))).unwrap();
        store.insert(TaskId(1), value(0, 1000)).unwrap();
        store.relieve();
        assert_eq!(store.held_and_spilled(), (1000, 0));
    }

    #[test]
    fn freeing_a_spilled_value_removes_its_file() {
        let (_root, store) = spilling(0, 1000, 10_000);
        store.insert(TaskId(7), value(1, 50)).unwrap();
        let Some(Held::Disk { path, .. }) = store.get(TaskId(7)) else {
            panic!("a threshold of 0 spills everything");
        };
        assert!(path.exists());
        store.free([TaskId(7)]);
        assert!(!path.exists());
        assert!(store.get(TaskId(7)).is_none());
        assert_eq!(store.held_and_spilled(), (0, 0));
    }

    #[test]
    fn past_the_spill_limit_values_stay_in_memory_up_to_the_hold_limit_then_the_new_one_is_refused()
    {
        let (_root, store) = spilling(100, 300, 200);
        for t in 0..4 {
            store.insert(TaskId(t), value(0, 100)).unwrap();
        }
        // 200 on disk (the limit), 200 in memory (over 100, under 300).
        assert_eq!(store.held_and_spilled(), (400, 200));
        store.insert(TaskId(4), value(0, 100)).unwrap();
        let error = store.insert(TaskId(5), value(0, 100)).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("the spill limit of 200 bytes is reached"),
            "{error}"
        );
        assert!(store.get(TaskId(5)).is_none());
        // Everything accepted is still there.
        assert_eq!(store.held_and_spilled(), (500, 200));
    }

    #[test]
    fn a_disk_that_refuses_writes_fails_the_result_not_the_store() {
        let (root, store) = spilling(100, 200, 10_000);
        // The spill directory vanishes: every write fails.
        std::fs::remove_dir_all(&store.spill.as_ref().unwrap().dir).unwrap();
        store.insert(TaskId(1), value(0, 100)).unwrap();
        store.insert(TaskId(2), value(0, 100)).unwrap();
        let error = store.insert(TaskId(3), value(0, 100)).unwrap_err();
        assert!(
            error.to_string().contains("spilling to disk failed"),
            "{error}"
        );
        assert_eq!(store.held_and_spilled(), (200, 0));
        assert_eq!(
            *store.get(TaskId(1)).unwrap().bytes().unwrap(),
            value(0, 100)
        );
        drop(root);
    }

    #[test]
    fn without_a_spill_area_everything_stays_in_memory() {
        let store = ResultStore::default();
        store.insert(TaskId(1), value(0, 1 << 20)).unwrap();
        assert_eq!(store.held_and_spilled(), (1 << 20, 0));
    }

    #[test]
    fn the_nanny_removes_only_the_dead_worker_s_spill_directories() {
        let root = tempfile::tempdir().unwrap();
        for name in ["wrun-spill-41-abc", "wrun-spill-4-abc", "wrun-spill-41-def"] {
            std::fs::create_dir(root.path().join(name)).unwrap();
            std::fs::write(root.path().join(name).join("1"), b"x").unwrap();
        }
        remove_spill_dirs_of(root.path(), 41);
        let mut left: Vec<String> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["wrun-spill-4-abc"]);
    }
}

//! The journal on disk: `DIR/journal-<generation>.wal`, a mark and then
//! records, each `[length u32 LE][CRC-32 u32 LE][payload]` (the payload is
//! a Cap'n Proto `JournalRecord`, see `recovery.rs`).
//!
//! One thread of its own writes: the scheduler's thread hands it framed
//! records and goes on; the writer writes what has gathered, `fdatasync`s
//! once for all of it (group commit) and publishes how far the journal is
//! durable. A call that changed something waits for that before it
//! answers, so what a client was told is accepted is on disk.
//!
//! Compaction: the scheduler hands the writer a snapshot (records that
//! recreate the live state) to start the next generation with; the writer
//! writes it to a new file, syncs it and the directory, switches to it and
//! removes the old one. A restart reads only the newest generation.
//! Reading stops at the first record that is short or fails its checksum
//! (a torn tail: the records before it are replayed); a file that does not
//! start with the mark is an error, and nothing is started on top of it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tracing::{error, warn};

/// What every journal file starts with.
const MAGIC: &[u8; 8] = b"WRUNJNL1";
/// Length and checksum before each record.
const FRAME_HEADER: usize = 8;
/// The largest record read back (a module is at most 256 MiB).
const MAX_RECORD: usize = 512 << 20;

/// Why a journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing the journal failed.
    #[error("journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The path is a file, not a directory.
    #[error("journal {0} is not a directory: --journal takes a directory, made if missing")]
    NotADirectory(PathBuf),
    /// The newest journal file does not start as a journal does.
    #[error(
        "{0} is not a wrun journal (it does not begin with the journal's mark); the scheduler does not start on top of it"
    )]
    NotAJournal(PathBuf),
    /// A record passed its checksum but is not a record (a bug, or a file
    /// written by another version).
    #[error("{path}: record {index} is not a journal record: {reason}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// Which record (from 0).
        index: usize,
        /// Why.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

fn file_name(generation: u64) -> String {
    format!("journal-{generation}.wal")
}

/// The newest journal file of `dir`, read: its generation, its records'
/// payloads, and where a torn tail was cut (its byte offset), if any.
pub(crate) struct Read {
    pub(crate) generation: u64,
    pub(crate) path: PathBuf,
    pub(crate) bytes: Vec<u8>,
    /// (start, end) of each good record's payload in `bytes`.
    pub(crate) records: Vec<(usize, usize)>,
    pub(crate) torn_at: Option<usize>,
}

impl Read {
    pub(crate) fn payloads(&self) -> impl Iterator<Item = &[u8]> {
        self.records.iter().map(|(s, e)| &self.bytes[*s..*e])
    }
}

/// Makes `dir` (mode 0700) if missing, and reads its newest journal file;
/// `None` if it has none.
pub(crate) fn read(dir: &Path) -> Result<Option<Read>, JournalError> {
    if dir.exists() && !dir.is_dir() {
        return Err(JournalError::NotADirectory(dir.to_owned()));
    }
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    let mut newest: Option<u64> = None;
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let name = entry.map_err(io(dir))?.file_name();
        let generation = name
            .to_str()
            .and_then(|n| n.strip_prefix("journal-"))
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(generation) = generation {
            newest = newest.max(Some(generation));
        }
    }
    let Some(generation) = newest else {
        return Ok(None);
    };
    let path = dir.join(file_name(generation));
    let bytes = std::fs::read(&path).map_err(io(&path))?;
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(JournalError::NotAJournal(path));
    }
    let (records, torn_at) = frames(&bytes);
    Ok(Some(Read {
        generation,
        path,
        bytes,
        records,
        torn_at,
    }))
}

/// The records of a journal file's bytes, up to the first that is torn.
fn frames(bytes: &[u8]) -> (Vec<(usize, usize)>, Option<usize>) {
    let mut records = Vec::new();
    let mut at = MAGIC.len();
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + FRAME_HEADER) else {
            return (records, Some(at));
        };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let start = at + FRAME_HEADER;
        let Some(payload) = bytes.get(start..start + len).filter(|_| len <= MAX_RECORD) else {
            return (records, Some(at));
        };
        if crc32fast::hash(payload) != crc {
            return (records, Some(at));
        }
        records.push((start, start + len));
        at = start + len;
    }
    (records, None)
}

/// A record framed for the file.
pub(crate) fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

enum Handed {
    Append(Vec<u8>),
    /// Start the next generation with these (framed) records.
    Rotate(Vec<u8>),
}

#[derive(Default)]
struct Queue {
    writes: Vec<Handed>,
    /// Sequence number of the last write handed over.
    handed: u64,
    /// Everything up to this sequence number is on disk.
    durable: u64,
    failed: Option<String>,
    stop: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer (work) and the waiters (progress).
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The journal being written.
pub(crate) struct Journal {
    shared: Arc<Shared>,
    durable: tokio::sync::watch::Receiver<(u64, Option<Arc<str>>)>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Bytes appended since the generation began, and that generation's
    /// snapshot: compaction is due when the tail is much larger.
    pub(crate) tail_bytes: u64,
    pub(crate) snapshot_bytes: u64,
    /// Framed records of the handler running now, handed over together.
    batch: Vec<u8>,
}

/// A journal write failed: nothing more can be promised durable.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the scheduler's journal cannot be written ({0}); the change was not made durable")]
pub(crate) struct NotDurable(pub(crate) Arc<str>);

impl Journal {
    /// Starts a new generation in `dir` with `snapshot` (framed records)
    /// and a writer thread; removes the generation it replaces.
    pub(crate) fn start(
        dir: &Path,
        previous: Option<u64>,
        snapshot: Vec<u8>,
    ) -> Result<Journal, JournalError> {
        let generation = previous.map_or(1, |g| g + 1);
        let snapshot_bytes = snapshot.len() as u64;
        let file = write_generation(dir, generation, &snapshot)?;
        if let Some(previous) = previous {
            let old = dir.join(file_name(previous));
            std::fs::remove_file(&old).map_err(io(&old))?;
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
        });
        let (durable_tx, durable) = tokio::sync::watch::channel((0, None));
        let writer = Writer {
            dir: dir.to_owned(),
            generation,
            file,
            shared: shared.clone(),
            durable: durable_tx,
        };
        let thread = std::thread::Builder::new()
            .name("wrun-journal".to_owned())
            .spawn(move || writer.run())
            .map_err(io(dir))?;
        Ok(Journal {
            shared,
            durable,
            thread: Some(thread),
            tail_bytes: 0,
            snapshot_bytes,
            batch: Vec::new(),
        })
    }

    /// Adds a record to the current handler's batch.
    pub(crate) fn record(&mut self, payload: &[u8]) {
        frame(payload, &mut self.batch);
    }

    /// Hands the batch to the writer; returns the sequence number to wait
    /// for (see [`Journal::durable`]).
    pub(crate) fn hand_over(&mut self) -> u64 {
        let mut queue = self.shared.lock();
        if !self.batch.is_empty() {
            self.tail_bytes += self.batch.len() as u64;
            queue
                .writes
                .push(Handed::Append(std::mem::take(&mut self.batch)));
            queue.handed += 1;
            self.shared.changed.notify_all();
        }
        queue.handed
    }

    /// Starts the next generation with `snapshot` (framed records of the
    /// live state); records handed over after it go to the new file.
    pub(crate) fn rotate(&mut self, snapshot: Vec<u8>) -> u64 {
        self.hand_over();
        let mut queue = self.shared.lock();
        self.snapshot_bytes = snapshot.len() as u64;
        self.tail_bytes = 0;
        queue.writes.push(Handed::Rotate(snapshot));
        queue.handed += 1;
        self.shared.changed.notify_all();
        queue.handed
    }

    /// Resolves once everything up to `seq` is on disk.
    pub(crate) fn durable(
        &self,
        seq: u64,
    ) -> impl std::future::Future<Output = Result<(), NotDurable>> + use<> {
        let mut durable = self.durable.clone();
        async move {
            let state = durable
                .wait_for(|(done, failed)| *done >= seq || failed.is_some())
                .await
                .map_err(|_| NotDurable("the journal writer stopped".into()))?;
            match &state.1 {
                Some(failure) => Err(NotDurable(failure.clone())),
                None => Ok(()),
            }
        }
    }

    /// Blocks this thread until everything up to `seq` is on disk (for
    /// the rare write that must be durable before the scheduler goes on).
    pub(crate) fn wait_durable(&self, seq: u64) -> Result<(), NotDurable> {
        let mut queue = self.shared.lock();
        loop {
            if let Some(failure) = &queue.failed {
                return Err(NotDurable(failure.as_str().into()));
            }
            if queue.durable >= seq {
                return Ok(());
            }
            queue = self
                .shared
                .changed
                .wait(queue)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.hand_over();
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Writes a new generation's file (mark and snapshot), synced with its
/// directory entry, and returns it open for appending.
fn write_generation(dir: &Path, generation: u64, snapshot: &[u8]) -> Result<File, JournalError> {
    let path = dir.join(file_name(generation));
    let partial = dir.join(format!("{}.partial", file_name(generation)));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&partial)
        .map_err(io(&partial))?;
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io(&partial))?;
    file.write_all(MAGIC).map_err(io(&partial))?;
    file.write_all(snapshot).map_err(io(&partial))?;
    file.sync_all().map_err(io(&partial))?;
    std::fs::rename(&partial, &path).map_err(io(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io(&path))
}

struct Writer {
    dir: PathBuf,
    generation: u64,
    file: File,
    shared: Arc<Shared>,
    durable: tokio::sync::watch::Sender<(u64, Option<Arc<str>>)>,
}

impl Writer {
    fn run(mut self) {
        loop {
            let (writes, upto) = {
                let mut queue = self.shared.lock();
                while queue.writes.is_empty() && !queue.stop {
                    queue = self
                        .shared
                        .changed
                        .wait(queue)
                        .unwrap_or_else(|p| p.into_inner());
                }
                if queue.writes.is_empty() {
                    return;
                }
                (std::mem::take(&mut queue.writes), queue.handed)
            };
            let outcome = self.write(writes);
            let mut queue = self.shared.lock();
            match outcome {
                Ok(()) => {
                    queue.durable = upto;
                    let _ = self.durable.send((upto, None));
                }
                Err(failure) => {
                    error!("the journal cannot be written: {failure}");
                    let failure: Arc<str> = failure.into();
                    queue.failed = Some(failure.to_string());
                    let _ = self.durable.send((queue.durable, Some(failure)));
                }
            }
            self.shared.changed.notify_all();
            if queue.failed.is_some() {
                // Nothing more can be promised; the scheduler goes on
                // serving, and every call that needs durability fails.
                return;
            }
        }
    }

    fn write(&mut self, writes: Vec<Handed>) -> Result<(), String> {
        for write in writes {
            match write {
                Handed::Append(bytes) => self.file.write_all(&bytes).map_err(|e| e.to_string())?,
                Handed::Rotate(snapshot) => {
                    self.file.sync_data().map_err(|e| e.to_string())?;
                    let next = self.generation + 1;
                    self.file =
                        write_generation(&self.dir, next, &snapshot).map_err(|e| e.to_string())?;
                    let old = self.dir.join(file_name(self.generation));
                    if let Err(e) = std::fs::remove_file(&old) {
                        warn!("removing the compacted journal {}: {e}", old.display());
                    }
                    self.generation = next;
                }
            }
        }
        self.file.sync_data().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(records: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in records {
            frame(r, &mut out);
        }
        out
    }

    fn payloads(read: &Read) -> Vec<Vec<u8>> {
        read.payloads().map(|p| p.to_vec()).collect()
    }

    #[test]
    fn records_come_back_in_order_across_generations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        assert!(read(&path).unwrap().is_none());
        let mut journal = Journal::start(&path, None, framed(&[b"snap"])).unwrap();
        journal.record(b"one");
        journal.record(b"two");
        let seq = journal.hand_over();
        journal.wait_durable(seq).unwrap();
        let r = read(&path).unwrap().unwrap();
        assert_eq!(r.generation, 1);
        assert_eq!(
            payloads(&r),
            vec![b"snap".to_vec(), b"one".into(), b"two".into()]
        );
        // Compaction: the next generation starts from the snapshot alone.
        journal.record(b"lost in compaction? no: before it");
        journal.rotate(framed(&[b"snap2"]));
        journal.record(b"three");
        let seq = journal.hand_over();
        journal.wait_durable(seq).unwrap();
        let r = read(&path).unwrap().unwrap();
        assert_eq!(r.generation, 2);
        assert_eq!(payloads(&r), vec![b"snap2".to_vec(), b"three".into()]);
        assert!(!path.join(file_name(1)).exists());
        drop(journal);
    }

    #[test]
    fn a_torn_tail_is_cut_at_the_last_good_record_wherever_it_tears() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend(framed(&[b"alpha", b"beta", b"gamma-gamma"]));
        let full = frames(&bytes);
        assert_eq!(full.0.len(), 3);
        assert_eq!(full.1, None);
        let ends: Vec<usize> = full.0.iter().map(|(_, e)| *e).collect();
        for cut in MAGIC.len()..bytes.len() {
            let (records, torn) = frames(&bytes[..cut]);
            let whole = ends.iter().filter(|e| **e <= cut).count();
            assert_eq!(records.len(), whole, "cut at {cut}");
            assert_eq!(
                torn.is_some(),
                !ends.contains(&cut) && cut > MAGIC.len(),
                "cut at {cut}"
            );
        }
        // A flipped bit fails the checksum: replay stops before it.
        let mut flipped = bytes.clone();
        let (start, _) = full.0[1];
        flipped[start] ^= 1;
        let (records, torn) = frames(&flipped);
        assert_eq!(records.len(), 1);
        assert_eq!(torn, Some(full.0[0].1));
    }

    #[test]
    fn what_is_not_a_journal_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("journal-3.wal"), b"#!/bin/sh\nrandom bytes").unwrap();
        let error = read(dir.path()).err().unwrap().to_string();
        assert!(error.contains("is not a wrun journal"), "{error}");
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").unwrap();
        let error = read(&file).err().unwrap().to_string();
        assert!(error.contains("is not a directory"), "{error}");
    }
}

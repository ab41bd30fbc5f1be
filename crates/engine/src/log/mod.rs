//! The one append-only log shared by every replica group of the node.
//!
//! Owns the durability of what groups hand it: Raft entries (`(group, term, index, kind,
//! payload)`) and small per-group state values ("slots": hard state, apply state,
//! membership). Never interprets payloads, knows nothing of Raft beyond "a later write at
//! index i supersedes earlier entries at or after i", and must not depend on the network.
//!
//! - [`record`]: the on-disk record format (header with length, CRC32C, segment sequence;
//!   every batch ends with a batch-end record, so replay tells a torn last batch, which it
//!   cuts off, from damage in the middle of the log, which it refuses to open over).
//! - [`state`]: in-memory bookkeeping deciding when a segment may be recycled.
//! - [`replay`]: opening the directory and rebuilding state from the segments.
//! - [`writer`]: the writer thread: group commit, rolling, preallocation, recycling.
//!
//! A log opened with [`Log::open_stepped`] has no writer thread: its owner writes what is
//! queued by calling [`Log::step`], and can end it as a crash would ([`Log::crash`]: some
//! batches written, the next one torn, the rest lost). Deterministic harnesses use it to
//! decide exactly when a batch becomes durable.
//!
//! Segments are `<dir>/<seq:016x>.log`, preallocated to a fixed size so steady-state
//! appends overwrite allocated blocks and fdatasync needs no metadata. One fdatasync covers a
//! whole batch of every group's writes; a failed write or fdatasync stops the log for good
//! (every later callback gets [`Error::Fatal`]): the kernel may have dropped dirty pages.
//! A full disk (or a process out of descriptors) only makes a batch wait for a segment
//! file, while the writer goes on writing checkpoints, compaction marks and tombstones
//! queued behind it into a reserve at the end of every segment and recycling the segments
//! they free (see [`writer`]).

mod record;
mod replay;
mod state;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{JoinHandle, ThreadId};

use bytes::Bytes;

use crate::{Error, Result};

/// Tuning of the log.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Size of every segment file (a batch larger than this gets a segment of its own).
    pub segment_size: u64,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size: 64 << 20,
        }
    }
}

/// What a Raft entry is, as far as replay needs to give it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// An ordinary entry: a command for the group's state machine.
    Normal,
    /// A membership change (Raft's first configuration-change format).
    ConfChange,
    /// A joint-consensus membership change.
    ConfChangeV2,
}

/// One entry of one group's Raft log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    /// The Raft term it was proposed in.
    pub term: u64,
    /// Its position in the group's log.
    pub index: u64,
    /// What it is, for replay.
    pub kind: EntryKind,
    /// Its payload, opaque to the log.
    pub data: Bytes,
}

/// Writes of one group in one append.
#[derive(Clone, Debug, Default)]
pub struct GroupWrite {
    /// The replica group written.
    pub group: u64,
    /// Contiguous indexes; writing index i supersedes any earlier-written entries of this
    /// group with index >= i (Raft log overwrite).
    pub entries: Vec<LogEntry>,
    /// Small per-group state values: the latest written value per (group, slot) wins.
    pub slots: Vec<(u8, Bytes)>,
}

/// Counters since open.
#[derive(Debug, Default, Clone)]
pub struct LogStats {
    /// fdatasync calls.
    pub syncs: u64,
    /// Batches written (each one write and one fdatasync).
    pub batches: u64,
    /// Records written (entries, slot values, marks, tombstones).
    pub records: u64,
    /// Bytes written, framing included.
    pub bytes: u64,
    /// Segment files currently part of the log.
    pub segments: u64,
}

/// Everything the log held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every group with something left in the log, by id.
    pub groups: HashMap<u64, RecoveredGroup>,
}

/// One group's surviving state.
#[derive(Debug, Default)]
pub struct RecoveredGroup {
    /// Contiguous ascending, after overwrites and compaction (entries at or below the
    /// compacted index may still be present).
    pub entries: Vec<LogEntry>,
    /// The latest value of each slot.
    pub slots: HashMap<u8, Bytes>,
}

type Done = Box<dyn FnOnce(Result<()>) + Send>;

enum Msg {
    Append {
        writes: Vec<GroupWrite>,
        done: Done,
    },
    Compact {
        group: u64,
        index: u64,
    },
    Remove {
        group: u64,
        done: Done,
    },
    /// Slot values, then a compaction mark that depends on them.
    Checkpoint {
        group: u64,
        slots: Vec<(u8, Bytes)>,
        index: u64,
        done: Done,
    },
    /// Refused when queued; failed on the writer thread so every callback runs there.
    Fail {
        done: Done,
        error: Error,
    },
}

#[derive(Default)]
struct Queue {
    msgs: Vec<Msg>,
    shutdown: bool,
}

#[derive(Default)]
struct Counters {
    syncs: AtomicU64,
    batches: AtomicU64,
    records: AtomicU64,
    bytes: AtomicU64,
    segments: AtomicU64,
}

/// State shared by the handles and the writer thread.
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    stats: Counters,
}

impl Shared {
    fn lock_queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Inner {
    shared: Arc<Shared>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread's id; `None` for a stepped log.
    writer_id: Option<ThreadId>,
    /// A stepped log's writer, run by [`Log::step`] on the caller's thread.
    stepped: Mutex<Option<writer::Writer>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    fn shutdown(&self) {
        self.shared.lock_queue().shutdown = true;
        self.shared.wake.notify_all();
        if Some(std::thread::current().id()) == self.writer_id {
            // Called from a callback: the writer exits once it returns.
            return;
        }
        if let Ok(mut stepped) = self.stepped.try_lock()
            && let Some(mut w) = stepped.take()
        {
            // Whatever is still queued is written first, as the thread would.
            let msgs = std::mem::take(&mut self.shared.lock_queue().msgs);
            if !msgs.is_empty() {
                w.process(msgs, writer::Tear::Never);
            }
            w.stop();
        }
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

/// Handle to the node's log; cheap to clone, usable from any thread. The writer thread stops
/// when [`Log::shutdown`] is called or the last handle is dropped.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

impl Log {
    /// Replays every segment in `dir` (creating it if missing) and starts the writer thread.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<(Log, Recovered)> {
        Log::open_with(dir, opts, false)
    }

    /// Replays like [`Log::open`] but starts no writer thread: nothing queued is written
    /// until [`Log::step`] (or [`Log::crash`]) is called, on the caller's thread, and the
    /// callbacks run there. For deterministic harnesses.
    pub fn open_stepped(dir: &Path, opts: LogOptions) -> Result<(Log, Recovered)> {
        Log::open_with(dir, opts, true)
    }

    /// Writes everything queued as one batch (one fdatasync) and runs its callbacks on this
    /// thread. Returns how many queued operations it took; always 0 unless the log was
    /// opened with [`Log::open_stepped`].
    pub fn step(&self) -> usize {
        let mut stepped = self.lock_stepped();
        let Some(w) = stepped.as_mut() else {
            return 0;
        };
        let msgs = std::mem::take(&mut self.inner.shared.lock_queue().msgs);
        let n = msgs.len();
        if n > 0 {
            w.process(msgs, writer::Tear::Never);
        }
        n
    }

    /// Queued operations not yet written (a stepped log's; 0 for a threaded one, which
    /// takes them at once).
    pub fn queued(&self) -> usize {
        if self.lock_stepped().is_none() {
            return 0;
        }
        self.inner.shared.lock_queue().msgs.len()
    }

    /// Ends a stepped log as a crash would: the first `keep` queued operations are written
    /// as one durable batch; of the next batch (the rest) only the first `torn` records
    /// reach the disk, if `torn` is given; nothing after. No callback of the lost work
    /// runs with success. Later appends fail as after [`Log::shutdown`].
    pub fn crash(&self, keep: usize, torn: Option<usize>) {
        let mut stepped = self.lock_stepped();
        if let Some(mut w) = stepped.take() {
            let mut msgs = std::mem::take(&mut self.inner.shared.lock_queue().msgs);
            let rest = msgs.split_off(keep.min(msgs.len()));
            if !msgs.is_empty() {
                w.process(msgs, writer::Tear::Never);
            }
            if let Some(n) = torn
                && !rest.is_empty()
            {
                w.process(rest, writer::Tear::After(n));
            }
            w.stop();
        }
        drop(stepped);
        self.inner.shared.lock_queue().shutdown = true;
    }

    fn lock_stepped(&self) -> MutexGuard<'_, Option<writer::Writer>> {
        self.inner.stepped.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open_with(dir: &Path, opts: LogOptions, stepped: bool) -> Result<(Log, Recovered)> {
        if opts.segment_size < record::HEADER_LEN as u64 {
            return Err(Error::OutOfRange(format!(
                "log segment size {} is smaller than a record header",
                opts.segment_size
            )));
        }
        let replayed = replay::replay(dir, &opts)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            stats: Counters::default(),
        });
        let writer = writer::Writer::new(
            dir.to_path_buf(),
            opts,
            shared.clone(),
            replayed.book,
            replayed.next_seq,
            replayed.free,
        );
        let inner = if stepped {
            Inner {
                shared,
                writer_id: None,
                writer: Mutex::new(None),
                stepped: Mutex::new(Some(writer)),
            }
        } else {
            let handle = std::thread::Builder::new()
                .name("tessera-log-writer".into())
                .spawn(move || writer.run())?;
            Inner {
                shared,
                writer_id: Some(handle.thread().id()),
                writer: Mutex::new(Some(handle)),
                stepped: Mutex::new(None),
            }
        };
        Ok((
            Log {
                inner: Arc::new(inner),
            },
            replayed.recovered,
        ))
    }

    /// Queues writes. `done` runs on the writer thread once they are durable (written and
    /// fdatasync'ed), or with the error. Everything queued while a batch is being written
    /// goes into the next batch, under one fdatasync.
    pub fn append(&self, writes: Vec<GroupWrite>, done: Box<dyn FnOnce(Result<()>) + Send>) {
        let msg = match validate(&writes) {
            Ok(()) => Msg::Append { writes, done },
            Err(error) => Msg::Fail { done, error },
        };
        self.push(msg);
    }

    /// Entries of `group` with index <= `index` are no longer needed (applied and flushed
    /// elsewhere). Not durable by itself: recorded with the next batch. Lets segments be
    /// recycled.
    pub fn compact(&self, group: u64, index: u64) {
        self.push(Msg::Compact { group, index });
    }

    /// Writes `slots` of `group` and then a compaction mark at `index`, durably, then runs
    /// `done`. The mark never becomes durable before the slots, so a caller can hand over
    /// what makes the compacted entries unnecessary (the applied index, its chunk data
    /// already synced) together with the compaction.
    ///
    /// Unlike an [`Log::append`], a checkpoint is written even while the log waits for a
    /// full disk (into the reserve every segment keeps), overtaking batches queued before
    /// it: its slot values supersede any value of the same slots queued earlier, which is
    /// then never written. That lets the log free its own space from the applied index
    /// alone, without waiting behind the batch that needs the space.
    pub fn checkpoint(
        &self,
        group: u64,
        slots: Vec<(u8, Bytes)>,
        index: u64,
        done: Box<dyn FnOnce(Result<()>) + Send>,
    ) {
        let check = [GroupWrite {
            group,
            entries: Vec::new(),
            slots,
        }];
        let msg = match validate(&check) {
            Ok(()) => {
                let [GroupWrite { slots, .. }] = check;
                Msg::Checkpoint {
                    group,
                    slots,
                    index,
                    done,
                }
            }
            Err(error) => Msg::Fail { done, error },
        };
        self.push(msg);
    }

    /// Drops the group's entries and slots, durably (a tombstone record), then runs `done`.
    /// Like a checkpoint, written even while the log waits for a full disk, overtaking
    /// (and dropping) the group's writes queued before it: a stuck group can be removed to
    /// free the log it pins.
    pub fn remove_group(&self, group: u64, done: Box<dyn FnOnce(Result<()>) + Send>) {
        self.push(Msg::Remove { group, done });
    }

    /// The log's counters since it was opened.
    pub fn stats(&self) -> LogStats {
        let c = &self.inner.shared.stats;
        LogStats {
            syncs: c.syncs.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            segments: c.segments.load(Ordering::Relaxed),
        }
    }

    /// Stops the writer thread after draining what is queued. Later appends fail with
    /// [`Error::Fatal`] at once (on the caller's thread: there is no writer left).
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    fn push(&self, msg: Msg) {
        let mut q = self.inner.shared.lock_queue();
        if q.shutdown {
            drop(q);
            if let Msg::Append { done, .. }
            | Msg::Remove { done, .. }
            | Msg::Checkpoint { done, .. }
            | Msg::Fail { done, .. } = msg
            {
                done(Err(Error::Fatal("the log is shut down".into())));
            }
            return;
        }
        let was_empty = q.msgs.is_empty();
        q.msgs.push(msg);
        drop(q);
        if was_empty {
            self.inner.shared.wake.notify_one();
        }
    }
}

fn validate(writes: &[GroupWrite]) -> Result<()> {
    for w in writes {
        for pair in w.entries.windows(2) {
            if pair[0].index.checked_add(1) != Some(pair[1].index) {
                return Err(Error::OutOfRange(format!(
                    "group {}: entry index {} follows {}; entries must be contiguous",
                    w.group, pair[1].index, pair[0].index
                )));
            }
        }
        let too_big = w.entries.iter().map(|e| e.data.len());
        let too_big = too_big.chain(w.slots.iter().map(|(_, v)| v.len()));
        if let Some(len) = too_big.into_iter().find(|&l| l > record::MAX_PAYLOAD) {
            return Err(Error::OutOfRange(format!(
                "group {}: a log payload of {len} bytes exceeds {} bytes",
                w.group,
                record::MAX_PAYLOAD
            )));
        }
    }
    Ok(())
}

//! The log writer thread: group commit, segment rolling, preallocation and recycling.
//!
//! Owns every write to segment files and the [`Book`]. Each wake-up takes everything queued,
//! encodes it into one buffer closed by a batch end (replay tells a torn batch from damage
//! by it, see [`super::record`]), writes it with one `pwrite` into a preallocated segment and
//! makes it durable with one `fdatasync`, then runs every callback. It never waits to
//! gather more work (at queue depth 1 a write costs exactly one fdatasync), never appends
//! into a segment written by an earlier process (its torn tail stays the end of that
//! segment forever), and never carries on after a failed write or fdatasync: from then on
//! every callback gets [`Error::Fatal`].
//!
//! A full disk (no file for the next segment), or no descriptor left to open one with, is
//! a condition, not a failure: the batch waits, and meanwhile the writer keeps doing what
//! frees space, taking compaction notes, checkpoints and removals queued behind it, writing
//! their records into a reserve every segment keeps for them (a segment is made long
//! enough for its batch and its reserve), and recycling the segments they free, which the
//! waiting batch then rolls into. Recycling goes by durable marks only: a noted compaction
//! whose mark is not written yet frees nothing.
//!
//! [`relieve`] holds that waiting work; [`segments`] rolling into new segment files and
//! recycling old ones; [`prealloc`] the helper thread making the spare segment.

use std::collections::BTreeSet;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{error, warn};

mod prealloc;
mod relieve;
mod segments;

use prealloc::Preallocator;

use super::record::{self, Record};
use super::replay::segment_path;
use super::state::Book;
use super::{Done, LogOptions, Msg, Shared};
use crate::{Error, Result};

const MAX_KEPT_BUFFER: usize = 8 << 20;

struct Current {
    seq: u64,
    file: File,
    offset: u64,
    len: u64,
}

/// Whether a batch is torn by a (simulated) power loss part way through its write.
#[derive(Clone, Copy, Debug)]
pub(super) enum Tear {
    /// As the process-wide `log::tear` fail point says (the writer thread's batches).
    FailPoint,
    /// Never: a stepped log's harness decides its crashes itself, whatever fail points
    /// other tests of the process configure.
    Never,
    /// After that many records ([`super::Log::crash`]).
    After(usize),
}

/// Where a batch may go in the current segment.
#[derive(Clone, Copy, Debug)]
pub(super) enum Room {
    /// Before the segment's reserve; a new segment is rolled if it does not fit.
    Normal,
    /// As `Normal`, but written without its batch end (a simulated power loss).
    Torn,
    /// Anywhere in the current segment, reserve included, and never in a new one: the
    /// marks written while the disk is full.
    Reserve,
}

pub(super) struct Writer {
    dir: PathBuf,
    opts: LogOptions,
    shared: Arc<Shared>,
    book: Book,
    current: Option<Current>,
    next_seq: u64,
    free: Vec<PathBuf>,
    /// Groups whose compacted index moved since their last mark was written.
    pending_marks: BTreeSet<u64>,
    fatal: Option<String>,
    buf: Vec<u8>,
    prealloc: Preallocator,
}

impl Writer {
    pub fn new(
        dir: PathBuf,
        opts: LogOptions,
        shared: Arc<Shared>,
        book: Book,
        next_seq: u64,
        free: Vec<PathBuf>,
    ) -> Writer {
        let mut w = Writer {
            dir,
            opts,
            shared,
            book,
            current: None,
            next_seq,
            free,
            pending_marks: BTreeSet::new(),
            fatal: None,
            buf: Vec::new(),
            prealloc: Preallocator::spawn(),
        };
        w.recycle();
        w.shared
            .stats
            .segments
            .store(w.book.segments.len() as u64, Ordering::Relaxed);
        w
    }

    pub fn run(mut self) {
        loop {
            let msgs = {
                let mut q = self.shared.lock_queue();
                while q.msgs.is_empty() && !q.shutdown {
                    q = self.shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
                }
                if q.msgs.is_empty() {
                    break;
                }
                std::mem::take(&mut q.msgs)
            };
            self.process(msgs, Tear::FailPoint);
        }
        self.stop();
    }

    pub fn stop(&mut self) {
        self.prealloc.stop();
    }

    /// Writes one batch, torn as `tear` says.
    pub fn process(&mut self, msgs: Vec<Msg>, tear: Tear) {
        let mut dones: Vec<(Done, Option<Error>)> = Vec::new();
        let mut writes: Vec<Record> = Vec::new();
        let mut checkpoint_marks: Vec<Record> = Vec::new();
        for msg in msgs {
            match msg {
                Msg::Compact { group, index } => {
                    if self.book.compact(group, index) {
                        self.pending_marks.insert(group);
                    }
                }
                Msg::Append { writes: ws, done } => {
                    for w in ws {
                        writes.extend(w.entries.into_iter().map(|entry| Record::Entry {
                            group: w.group,
                            entry,
                        }));
                        writes.extend(w.slots.into_iter().map(|(slot, value)| Record::Slot {
                            group: w.group,
                            slot,
                            value,
                        }));
                    }
                    dones.push((done, None));
                }
                Msg::Remove { group, done } => {
                    writes.push(Record::Tombstone { group });
                    dones.push((done, None));
                }
                Msg::Checkpoint {
                    group,
                    slots,
                    index,
                    done,
                } => {
                    writes.extend(slot_records(group, slots));
                    // Not noted before it is written: a mark written meanwhile (by
                    // `relieve`, while this batch waits) would overtake the slots.
                    checkpoint_marks.push(Record::CompactMark { group, index });
                    dones.push((done, None));
                }
                Msg::Fail { done, error } => dones.push((done, Some(error))),
            }
        }
        if let Some(reason) = &self.fatal {
            return finish(dones, || Err(Error::Fatal(reason.clone())));
        }
        if dones.is_empty() {
            // Only compaction notes arrived: they ride along with the next real write
            // rather than costing an fdatasync of their own.
            return;
        }
        // Values pinning old segments first, so that anything newer in the batch wins.
        // Compaction marks last: a mark drops entries on replay, so it must never become
        // durable ahead of writes that were queued with it (a torn batch keeps a prefix).
        // A group removed in this batch gets no mark after its tombstone. A checkpoint's mark
        // comes after its slots with the others.
        let removed: BTreeSet<u64> = writes
            .iter()
            .filter_map(|r| match r {
                Record::Tombstone { group } => Some(*group),
                _ => None,
            })
            .collect();
        let mut records = self.reappends();
        let marks = self.pending_marks.iter().filter_map(|&group| {
            if removed.contains(&group) {
                return None;
            }
            let index = self.book.groups.get(&group)?.noted;
            Some(Record::CompactMark { group, index })
        });
        if cfg!(tessera_unfixed = "install_compaction") {
            let marks: Vec<Record> = marks.collect();
            records.extend(marks);
            records.extend(writes);
        } else {
            records.extend(writes);
            records.extend(marks);
        }
        records.extend(
            checkpoint_marks
                .into_iter()
                .filter(|r| !removed.contains(&r.group())),
        );
        if records.is_empty() {
            return finish(dones, || Ok(()));
        }
        let tear = match tear {
            Tear::FailPoint => torn_batch(),
            Tear::Never => None,
            Tear::After(n) => Some(n),
        };
        if let Some(keep) = tear {
            // A power loss part way through the batch's write: a prefix of its records
            // reaches the disk, the rest and the fdatasync's answer never do. The batch end,
            // written last, survives only with every record.
            let whole = keep >= records.len();
            records.truncate(keep);
            let reason = "power loss injected by the log::tear fail point".to_string();
            if !records.is_empty() {
                let room = if whole { Room::Normal } else { Room::Torn };
                let _ = self.write_batch(&records, room);
            }
            self.fatal = Some(reason.clone());
            return finish(dones, || Err(Error::Fatal(reason.clone())));
        }
        let mut result = self.write_batch(&records, Room::Normal);
        let mut waited = 0u32;
        while let Err(Error::DiskFull(msg) | Error::Exhausted(msg)) = &result {
            // No room for the next segment (or no descriptor to open it with). Refusing the
            // batch would leave Raft with entries it can never persist; the log stalls
            // instead (reads go on, the leaders refuse new writes), and resumes once space
            // (or a descriptor) is freed. Meanwhile it goes on doing what frees space:
            // writing checkpoints, compaction marks and tombstones, and recycling the
            // segments they free.
            if waited.is_multiple_of(50) {
                error!(dir = %self.dir.display(), %msg, "log stalled: disk full or out of descriptors");
            }
            waited += 1;
            if self.shared.lock_queue().shutdown {
                // Nobody will free space for a log being shut down: give the batch up
                // rather than hang the shutdown.
                break;
            }
            let relieved = if cfg!(tessera_unfixed = "full_log") {
                Ok(false)
            } else {
                self.relieve(&mut records)
            };
            match relieved {
                Ok(true) => {}
                Err(e @ Error::Fatal(_)) => {
                    result = Err(e);
                    break;
                }
                Ok(false) | Err(_) => std::thread::sleep(std::time::Duration::from_millis(200)),
            }
            result = self.write_batch(&records, Room::Normal);
        }
        match result {
            Ok(()) => {
                finish(dones, || Ok(()));
                self.recycle();
            }
            Err(Error::Fatal(reason)) => {
                error!(dir = %self.dir.display(), %reason, "log write failed; the node must stop");
                self.fatal = Some(reason.clone());
                finish(dones, || Err(Error::Fatal(reason.clone())));
            }
            Err(e) => {
                let msg = e.to_string();
                warn!(dir = %self.dir.display(), error = %msg, "log batch refused");
                finish(dones, || {
                    Err(match &e {
                        Error::DiskFull(m) => Error::DiskFull(m.clone()),
                        Error::Exhausted(m) => Error::Exhausted(m.clone()),
                        _ => Error::Io(io::Error::other(msg.clone())),
                    })
                });
            }
        }
        self.shared
            .stats
            .segments
            .store(self.book.segments.len() as u64, Ordering::Relaxed);
    }

    /// Bytes at the end of every segment that ordinary batches leave free, so that the
    /// marks which let segments be recycled can still be written when no new segment can
    /// be created (a full disk).
    fn reserve(&self) -> u64 {
        (self.opts.segment_size / 8).min(1 << 20)
    }

    /// Writes `records` and (unless `room` is [`Room::Torn`]) their batch end into the
    /// current segment (rolling first if they do not fit) with one pwrite and one
    /// fdatasync, then accounts for them.
    pub(super) fn write_batch(&mut self, records: &[Record], room: Room) -> Result<()> {
        let end = !matches!(room, Room::Torn);
        let framing = if end { record::BATCH_END_LEN } else { 0 };
        let size: u64 =
            records.iter().map(|r| r.encoded_len() as u64).sum::<u64>() + framing as u64;
        let reserve = match room {
            Room::Reserve => 0,
            Room::Normal | Room::Torn => self.reserve(),
        };
        let fits = self
            .current
            .as_ref()
            .is_some_and(|c| c.offset + size + reserve <= c.len);
        if !fits {
            if matches!(room, Room::Reserve) {
                return Err(Error::DiskFull(
                    "no room left in the current log segment".into(),
                ));
            }
            // The new segment keeps its reserve free too, even under a batch that fills it.
            self.roll(size + reserve)?;
        }
        let cur = self
            .current
            .as_mut()
            .ok_or_else(|| Error::Fatal("no current log segment after rolling".into()))?;
        self.buf.clear();
        for r in records {
            r.encode(cur.seq, &mut self.buf);
        }
        if end {
            record::encode_batch_end(cur.seq, cur.offset, &mut self.buf);
        }
        let path = segment_path(&self.dir, cur.seq);
        cur.file
            .write_all_at(&self.buf, cur.offset)
            .map_err(|e| fatal(&path, "write", &e))?;
        sync_segment(&cur.file).map_err(|e| fatal(&path, "fdatasync", &e))?;
        cur.offset += size;
        let seq = cur.seq;
        let stats = &self.shared.stats;
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats
            .records
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        stats.bytes.fetch_add(size, Ordering::Relaxed);
        for r in records {
            self.book.apply(seq, r);
            match r {
                Record::Tombstone { group } => {
                    self.pending_marks.remove(group);
                }
                // Only a mark at least as high as the one noted settles it.
                Record::CompactMark { group, index }
                    if self
                        .book
                        .groups
                        .get(group)
                        .is_none_or(|g| *index >= g.noted) =>
                {
                    self.pending_marks.remove(group);
                }
                _ => {}
            }
        }
        if self.buf.capacity() > MAX_KEPT_BUFFER {
            self.buf = Vec::new();
        }
        Ok(())
    }
}

pub(super) fn slot_records(
    group: u64,
    slots: Vec<(u8, bytes::Bytes)>,
) -> impl Iterator<Item = Record> {
    slots
        .into_iter()
        .map(move |(slot, value)| Record::Slot { group, slot, value })
}

pub(super) fn finish(dones: Vec<(Done, Option<Error>)>, result: impl Fn() -> Result<()>) {
    for (done, refused) in dones {
        let r = match refused {
            Some(e) => Err(e),
            None => result(),
        };
        // A panicking callback must not kill the writer: every later append would hang.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| done(r))).is_err() {
            error!("log append callback panicked");
        }
    }
}

fn fatal(path: &Path, what: &str, e: &io::Error) -> Error {
    Error::Fatal(format!("{what} of {} failed: {e}", path.display()))
}

/// How many records of the next batch reach the disk before a simulated power loss (the
/// `log::tear` fail point, configured as `return(N)`); `None` in normal operation.
fn torn_batch() -> Option<usize> {
    fail::fail_point!("log::tear", |arg| arg.and_then(|n| n.parse().ok()));
    None
}

/// `fdatasync` of a log segment; the `log::fdatasync` fail point makes it fail in tests.
fn sync_segment(file: &File) -> io::Result<()> {
    fail::fail_point!("log::fdatasync", |_| Err(io::Error::other(
        "fdatasync failure injected by the log::fdatasync fail point"
    )));
    file.sync_data()
}

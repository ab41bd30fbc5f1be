//! Opening the log directory: classifying its files and replaying every segment, oldest
//! first, into the [`Recovered`] state handed to the caller and the writer's [`Book`].
//!
//! Owns the rules for what survives a crash; writes nothing into segments (it only deletes
//! leftover temporary files). A segment's replay stops at its first record that is torn,
//! fails its checksum or carries another segment's sequence number: that record and
//! everything after it in that segment are never returned. Such a stop is the normal end
//! of a segment (zero fill, stale bytes) or the batch a crash tore. A power loss during a
//! batch's pwrite can keep any subset of its pages, so valid records of that same batch
//! may follow the stop; but the writer starts a batch only after the previous one's
//! fdatasync returned, so a segment holds at most one torn batch, its last. Hence, if a
//! valid record of a later batch follows the stop (one starting after the damaged offset:
//! a batch end claiming such a start, or any record after a batch end), the damage is in
//! the middle of the log (bit rot, a lost write) and opening fails with [`Error::Corrupt`]
//! rather than drop acknowledged records and replay later ones on top. Segments written
//! before batch framing (see [`super::record`]) cannot show batches: there any valid
//! record after the stop means corruption. This holds in every segment, not only the
//! newest: the writer never appends into a segment of an earlier process, so an older
//! segment may end in a torn batch too.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tracing::{debug, warn};

use super::record::{self, Decoded, Found, Record, Stop};
use super::state::{Book, SegmentMeta};
use super::{LogEntry, LogOptions, Recovered, RecoveredGroup};
use crate::{Error, Result};

/// What opening the directory found.
pub(super) struct Replayed {
    pub book: Book,
    pub recovered: Recovered,
    /// Higher than the sequence number of every segment and free file ever seen.
    pub next_seq: u64,
    /// Obsolete segment files kept for reuse, all exactly `segment_size` long.
    pub free: Vec<PathBuf>,
}

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.log"))
}

/// A recycled segment keeps its old sequence number in its name, so sequence numbers are
/// never reused: its stale records can then never match a new segment's number.
pub(super) fn free_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("free-{seq:016x}.seg"))
}

fn parse_hex(s: &str) -> Option<u64> {
    if s.len() == 16 {
        u64::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

#[derive(Default)]
struct GroupReplay {
    entries: VecDeque<LogEntry>,
    slots: HashMap<u8, Bytes>,
}

pub(super) fn replay(dir: &Path, opts: &LogOptions) -> Result<Replayed> {
    std::fs::create_dir_all(dir)?;
    let mut seqs = Vec::new();
    let mut free = Vec::new();
    let mut max_seq = 0u64;
    for dent in std::fs::read_dir(dir)? {
        let dent = dent?;
        let name = dent.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name.strip_suffix(".log").and_then(parse_hex) {
            max_seq = max_seq.max(seq);
            seqs.push(seq);
        } else if let Some(seq) = name
            .strip_prefix("free-")
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(parse_hex)
        {
            max_seq = max_seq.max(seq);
            if dent.metadata()?.len() == opts.segment_size {
                free.push(dent.path());
            } else {
                std::fs::remove_file(dent.path())?;
            }
        } else if name.ends_with(".tmp") {
            // A segment being preallocated when we stopped: never part of the log.
            std::fs::remove_file(dent.path())?;
        }
    }
    seqs.sort_unstable();

    let mut book = Book::default();
    let mut groups: HashMap<u64, GroupReplay> = HashMap::new();
    let last = seqs.last().copied();
    for seq in seqs {
        let path = segment_path(dir, seq);
        let bytes = std::fs::read(&path)?;
        book.segments
            .insert(seq, SegmentMeta::new(path.clone(), bytes.len() as u64));
        let mut off = 0usize;
        let mut count = 0u64;
        while off < bytes.len() {
            match record::decode(&bytes[off..], seq) {
                Ok((Decoded::Record(rec), len)) => {
                    book.apply(seq, &rec);
                    replay_record(&mut groups, rec);
                    off += len;
                    count += 1;
                }
                Ok((Decoded::BatchEnd { .. }, len)) => off += len,
                Err(stop) => {
                    if let Some(next) = later_batch(&bytes, seq, off) {
                        return Err(Error::Corrupt(format!(
                            "log segment {} has a damaged record at offset {off} ({stop}) \
                             followed by a valid record of a later batch at offset {next}: \
                             damage in the middle of the log, not a torn tail",
                            path.display(),
                        )));
                    }
                    // Zero fill and stale bytes end every segment; a torn or damaged record
                    // is expected at the end of a segment written when a crash struck.
                    let suspicious = Some(seq) != last && !matches!(stop, Stop::WrongSeq(_));
                    if suspicious {
                        warn!(path = %path.display(), offset = off, %stop, "log segment ends in a torn or damaged record (expected only if a crash interrupted a write); it and the rest of the segment are ignored");
                    } else {
                        debug!(path = %path.display(), offset = off, %stop, "end of log segment");
                    }
                    break;
                }
            }
        }
        debug!(path = %path.display(), records = count, "replayed log segment");
    }

    let recovered = Recovered {
        groups: groups
            .into_iter()
            .filter(|(_, g)| !g.entries.is_empty() || !g.slots.is_empty())
            .map(|(id, g)| {
                (
                    id,
                    RecoveredGroup {
                        entries: g.entries.into(),
                        slots: g.slots,
                    },
                )
            })
            .collect(),
    };
    Ok(Replayed {
        book,
        recovered,
        next_seq: max_seq + 1,
        free,
    })
}

/// Where the first valid record after the damaged record at `off` of segment `seq` that
/// belongs to a later batch than the damaged one starts, if any: such a batch was written
/// only after the damaged one was durable. Without framing every valid record counts.
fn later_batch(bytes: &[u8], seq: u64, off: usize) -> Option<usize> {
    let mut at = off + 1;
    // Past a batch end, every record belongs to a batch that started after the damage.
    let mut past_batch_end = false;
    while let Some((rel, found)) = record::find_next(bytes.get(at..)?, seq) {
        let pos = at + rel;
        let Found {
            len,
            framed,
            batch_start,
        } = found;
        if !framed || past_batch_end || batch_start.is_some_and(|s| s > off as u64) {
            return Some(pos);
        }
        past_batch_end |= batch_start.is_some();
        at = pos + len;
    }
    None
}

/// Applies one record to the recovered per-group state: overwrite, compaction, tombstone.
fn replay_record(groups: &mut HashMap<u64, GroupReplay>, rec: Record) {
    match rec {
        Record::Entry { group, entry } => {
            let g = groups.entry(group).or_default();
            // Raft log overwrite: index i supersedes everything at or after i.
            while g.entries.back().is_some_and(|e| e.index >= entry.index) {
                g.entries.pop_back();
            }
            // A gap (e.g. the log restarting after a snapshot) leaves the older run
            // disconnected; only the newer, contiguous run is kept.
            if g.entries
                .back()
                .is_some_and(|e| e.index.checked_add(1) != Some(entry.index))
            {
                g.entries.clear();
            }
            g.entries.push_back(entry);
        }
        Record::Slot { group, slot, value } => {
            groups.entry(group).or_default().slots.insert(slot, value);
        }
        Record::CompactMark { group, index } => {
            if let Some(g) = groups.get_mut(&group) {
                while g.entries.front().is_some_and(|e| e.index <= index) {
                    g.entries.pop_front();
                }
            }
        }
        Record::Tombstone { group } => {
            groups.remove(&group);
        }
    }
}

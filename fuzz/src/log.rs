//! `log`: the engine's log opened over segment files built from the input.
//!
//! The input is a program that writes a log directory: records in the on-disk format
//! (`crates/engine/src/log/record.rs`, re-implemented here from its documentation) with
//! valid checksums, so replay's logic is reached, mixed with damage (raw bytes, bit flips,
//! truncation, zero fill, stale records of older segments), batch ends true and false,
//! unframed records, recycled `free-*.seg` files and leftover `.tmp` files. The files are
//! written to a fresh directory and the log is opened over it.
//!
//! Checked: opening returns `Ok` or `Err`, never panics (nor allocates without bound:
//! [`crate::alloc`]); every recovered group's entries are contiguous and ascending; and a
//! log that opened keeps what it recovered plus one durable write across a reopen.

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use tessera_engine::log::{EntryKind, GroupWrite, Log, LogEntry, LogOptions, Recovered};

use crate::input::Input;

// Record types and the one header flag, as `record.rs` numbers them.
pub const TYPE_ENTRY: u8 = 1;
pub const TYPE_SLOT: u8 = 2;
pub const TYPE_TOMBSTONE: u8 = 3;
pub const TYPE_COMPACT: u8 = 4;
pub const TYPE_BATCH_END: u8 = 5;
const FLAG_FRAMED: u8 = 1;

/// The group of the write made after a successful open (the input's groups are 0 to 3).
const PROBE_GROUP: u64 = 1000;

/// One record's header fields, as `record.rs` lays them out (a 44-byte header: CRC32C,
/// payload length, segment sequence, type, kind or slot, flags, reserved, group, term,
/// index), then its payload.
pub struct Raw<'a> {
    pub seq: u64,
    pub rtype: u8,
    pub kind: u8,
    pub flags: u8,
    pub group: u64,
    pub term: u64,
    pub index: u64,
    pub payload: &'a [u8],
}

impl Raw<'_> {
    /// Appends the record with its checksum.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(self.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&[self.rtype, self.kind, self.flags, 0]);
        for v in [self.group, self.term, self.index] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(self.payload);
        let crc = crc32c::crc32c(&out[start + 4..]);
        out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// The files of a log directory being built.
#[derive(Default)]
pub struct Dir {
    /// Segments by sequence number, in creation order.
    pub segments: Vec<(u64, Vec<u8>)>,
    /// Other files: name and content.
    pub others: Vec<(String, Vec<u8>)>,
    /// Per group, the highest index of any compaction mark written: entries at or below
    /// it may be gone after a reopen (replay keeps them, recycling may not), as may
    /// entries at index 0, which the log takes as compacted from the start.
    pub compacted: HashMap<u64, u64>,
    /// Where the current segment's open batch starts.
    batch_start: usize,
    unframed: bool,
}

impl Dir {
    fn current(&mut self) -> (u64, &mut Vec<u8>) {
        if self.segments.is_empty() {
            self.segments.push((1, Vec::new()));
        }
        let (seq, bytes) = self.segments.last_mut().expect("a segment");
        (*seq, bytes)
    }

    fn flags(&self) -> u8 {
        if self.unframed { 0 } else { FLAG_FRAMED }
    }

    /// Appends a record of the current segment.
    pub fn record(
        &mut self,
        rtype: u8,
        kind: u8,
        group: u64,
        term: u64,
        index: u64,
        payload: &[u8],
    ) {
        let (seq, flags) = (self.current().0, self.flags());
        self.raw(Raw {
            seq,
            rtype,
            kind,
            flags,
            group,
            term,
            index,
            payload,
        });
    }

    /// Appends `raw` to the current segment.
    pub fn raw(&mut self, raw: Raw<'_>) {
        if raw.rtype == TYPE_COMPACT {
            let c = self.compacted.entry(raw.group).or_default();
            *c = (*c).max(raw.index);
        }
        raw.encode(self.current().1);
    }

    /// Closes the open batch with a batch end claiming `start` (its true start if `None`).
    pub fn batch_end(&mut self, start: Option<u64>) {
        let start = start.unwrap_or(self.batch_start as u64);
        self.record(TYPE_BATCH_END, 0, 0, 0, start, &[]);
        self.batch_start = self.current().1.len();
    }

    /// Starts segment `seq`.
    pub fn segment(&mut self, seq: u64) {
        self.segments.push((seq, Vec::new()));
        self.batch_start = 0;
    }

    /// Writes the files into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        for (seq, bytes) in &self.segments {
            std::fs::write(dir.join(format!("{seq:016x}.log")), bytes)?;
        }
        for (name, bytes) in &self.others {
            std::fs::write(dir.join(name), bytes)?;
        }
        Ok(())
    }
}

/// Segment sizes the input chooses from: the writer preallocates segments of this size.
const SEGMENT_SIZES: [u64; 4] = [4096, 16 << 10, 64 << 10, 1 << 20];

/// Runs the target on one input.
pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let opts = LogOptions {
        segment_size: SEGMENT_SIZES[usize::from(input.u8() % 4)],
    };
    let dir = build(&mut input, opts.segment_size);
    let path = crate::scratch_dir("log");
    dir.write(&path).expect("write the log directory");
    check(&path, opts, &dir.compacted);
}

/// The directory the input describes.
pub fn build(input: &mut Input<'_>, segment_size: u64) -> Dir {
    let mut dir = Dir::default();
    while !input.is_empty() {
        match input.u8() % 16 {
            0 => {
                let seq = dir.current().0 + 1 + u64::from(input.u8() % 3);
                dir.segment(seq);
            }
            1 => {
                let (group, term, index) =
                    (group(input), u64::from(input.u8()), u64::from(input.u8()));
                let kind = input.u8() % 4; // 3 is no entry kind
                let payload = payload(input);
                dir.record(TYPE_ENTRY, kind, group, term, index, payload);
            }
            2 => {
                let (group, slot) = (group(input), input.u8() % 4);
                let payload = payload(input);
                dir.record(TYPE_SLOT, slot, group, 0, 0, payload);
            }
            3 => {
                let group = group(input);
                dir.record(TYPE_TOMBSTONE, 0, group, 0, 0, &[]);
            }
            4 => {
                let (group, index) = (group(input), u64::from(input.u8()));
                dir.record(TYPE_COMPACT, 0, group, 0, index, &[]);
            }
            5 => dir.batch_end(None),
            6 => {
                let start = u64::from(input.u16());
                dir.batch_end(Some(start));
            }
            7 => {
                let n = usize::from(input.u8());
                let raw = input.bytes(n);
                dir.current().1.extend_from_slice(raw);
            }
            8 => {
                let (at, bit) = (usize::from(input.u16()), input.u8() % 8);
                let bytes = dir.current().1;
                if !bytes.is_empty() {
                    let at = at % bytes.len();
                    bytes[at] ^= 1 << bit;
                }
            }
            9 => {
                let n = usize::from(input.u8());
                let bytes = dir.current().1;
                bytes.truncate(bytes.len().saturating_sub(n));
            }
            10 => {
                let n = usize::from(input.u8()) * 4;
                let bytes = dir.current().1;
                bytes.resize(bytes.len() + n, 0);
            }
            11 => {
                // A stale record of an older use of the file: an older sequence number.
                let (seq, _) = dir.current();
                let stale = seq.saturating_sub(1 + u64::from(input.u8() % 4));
                let (group, index) = (group(input), u64::from(input.u8()));
                let flags = dir.flags();
                dir.raw(Raw {
                    seq: stale,
                    rtype: TYPE_ENTRY,
                    kind: 0,
                    flags,
                    group,
                    term: 1,
                    index,
                    payload: &[],
                });
            }
            12 => dir.unframed = !dir.unframed,
            13 => {
                // A recycled segment: named after a sequence at or above the current one,
                // as the writer names it, holding the current segment's bytes.
                let (seq, bytes) = dir.current();
                let name_seq = seq + u64::from(input.u8() % 4);
                let mut content = bytes.clone();
                let size = if input.u8().is_multiple_of(4) {
                    segment_size / 2
                } else {
                    segment_size
                };
                content.resize(size as usize, 0);
                dir.others
                    .push((format!("free-{name_seq:016x}.seg"), content));
            }
            14 => {
                let name = format!("{:016x}.log.tmp", input.u8());
                let content = input.bytes(16).to_vec();
                dir.others.push((name, content));
            }
            _ => {
                // Any header at all, with a valid checksum.
                let (rtype, kind, flags) = (input.u8() % 8, input.u8(), input.u8());
                let (group, term, index) = (group(input), input.u64(), input.u64());
                let payload = payload(input);
                let seq = dir.current().0;
                dir.raw(Raw {
                    seq,
                    rtype,
                    kind,
                    flags,
                    group,
                    term,
                    index,
                    payload,
                });
            }
        }
    }
    dir
}

fn group(input: &mut Input<'_>) -> u64 {
    u64::from(input.u8() % 4)
}

fn payload<'a>(input: &mut Input<'a>) -> &'a [u8] {
    let n = usize::from(input.u8() % 32);
    input.bytes(n)
}

/// Opens the log over `path` and checks what it recovered.
fn check(path: &Path, opts: LogOptions, compacted: &HashMap<u64, u64>) {
    let Ok((log, first)) = Log::open_stepped(path, opts.clone()) else {
        return;
    };
    contiguous(&first);
    let probe = LogEntry {
        term: 1,
        index: 1,
        kind: EntryKind::Normal,
        data: Bytes::from_static(b"probe"),
    };
    let write = GroupWrite {
        group: PROBE_GROUP,
        entries: vec![probe],
        slots: vec![(0, Bytes::from_static(b"slot"))],
    };
    let (tx, rx) = std::sync::mpsc::channel();
    log.append(
        vec![write],
        Box::new(move |r| tx.send(r.is_ok()).expect("send")),
    );
    log.step();
    let written = rx.recv().expect("the append's callback ran");
    log.shutdown();
    drop(log);

    let (log, second) = Log::open_stepped(path, opts).expect("a log that opened opens again");
    contiguous(&second);
    log.shutdown();
    let mut before = summary(&first);
    if written {
        let slots = vec![(0, b"slot".to_vec())];
        before.insert(PROBE_GROUP, (vec![(1, 1, b"probe".to_vec())], slots));
    }
    let after = summary(&second);
    for (group, (entries, _)) in &mut before {
        // The first entries may be gone, as long as they were compacted.
        let floor = compacted.get(group).copied().unwrap_or(0);
        let kept = after.get(group).map_or(0, |(e, _)| e.len());
        let gone = entries.len().saturating_sub(kept);
        if entries[..gone].iter().all(|&(_, index, _)| index <= floor) {
            entries.drain(..gone);
        }
    }
    before.retain(|_, (entries, slots)| !entries.is_empty() || !slots.is_empty());
    assert_eq!(
        after, before,
        "reopened log (left) against the first open and the write"
    );
}

type Summary = HashMap<u64, (Vec<(u64, u64, Vec<u8>)>, Vec<(u8, Vec<u8>)>)>;

/// Each group's entries (term, index, data) and sorted slots, comparable across opens.
fn summary(r: &Recovered) -> Summary {
    r.groups
        .iter()
        .map(|(&id, g)| {
            let entries = g
                .entries
                .iter()
                .map(|e| (e.term, e.index, e.data.to_vec()))
                .collect();
            let mut slots: Vec<_> = g.slots.iter().map(|(&s, v)| (s, v.to_vec())).collect();
            slots.sort();
            (id, (entries, slots))
        })
        .collect()
}

fn contiguous(r: &Recovered) {
    for (id, g) in &r.groups {
        for pair in g.entries.windows(2) {
            assert_eq!(
                pair[0].index.checked_add(1),
                Some(pair[1].index),
                "group {id}: entries not contiguous"
            );
        }
    }
}

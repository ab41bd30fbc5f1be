//! The on-disk record format of the log, and nothing else: encoding records into a batch
//! buffer and decoding them back from untrusted segment bytes.
//!
//! Layout (little-endian), 44-byte header then payload:
//!
//! | off | size | field                                                                   |
//! |-----|------|-------------------------------------------------------------------------|
//! | 0   | 4    | CRC32C of bytes 4.. of the header followed by the payload               |
//! | 4   | 4    | payload length                                                          |
//! | 8   | 8    | segment sequence number                                                 |
//! | 16  | 1    | record type (1 entry, 2 slot, 3 tombstone, 4 compact mark, 5 batch end) |
//! | 17  | 1    | entry kind, or slot id                                                  |
//! | 18  | 1    | flags: bit 0 "framed" (see below), other bits zero                      |
//! | 19  | 1    | reserved, zero                                                          |
//! | 20  | 8    | group                                                                   |
//! | 28  | 8    | term (entries)                                                          |
//! | 36  | 8    | index (entries, compact marks), batch start offset (batch end)          |
//!
//! The sequence number makes stale bytes of a recycled segment file (which carry an older
//! sequence number) and zero fill (sequence 0, never used) read as "end of segment".
//! Decoding never panics and never trusts the length field beyond the bytes at hand.
//!
//! Batch framing. The writer ends every batch (the bytes of one pwrite) with a batch-end
//! record (type 5, no payload, group and term zero) whose index field holds the segment
//! offset of the batch's first record, and sets the "framed" flag on every record it
//! writes, the batch end included. Replay needs this to tell a torn batch from damage: a
//! power loss during a pwrite can keep a batch's later pages and lose earlier ones, so
//! valid records after a damaged one are no proof of corruption unless they belong to a
//! later batch (see [`super::replay`]). The flag tells a framed segment from an older one
//! even when no batch end of it survives (its only batch torn). Segments written before
//! framing have neither (flags zero, no type 5) and still decode; versions before framing
//! cannot read framed segments (type 5 is unknown to them). Cost: 44 bytes per batch, in
//! the same pwrite.

use bytes::Bytes;

use super::{EntryKind, LogEntry};

pub(super) const HEADER_LEN: usize = 44;
/// The largest payload the length field can describe.
pub(super) const MAX_PAYLOAD: usize = u32::MAX as usize;

const TYPE_ENTRY: u8 = 1;
const TYPE_SLOT: u8 = 2;
const TYPE_TOMBSTONE: u8 = 3;
const TYPE_COMPACT: u8 = 4;
const TYPE_BATCH_END: u8 = 5;

/// Header flag: the record was written by a writer that ends every batch with a batch end.
const FLAG_FRAMED: u8 = 1;

/// Encoded length of a batch end, the framing cost of one batch.
pub(super) const BATCH_END_LEN: usize = HEADER_LEN;

/// One record, as written or as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Record {
    Entry {
        group: u64,
        entry: LogEntry,
    },
    Slot {
        group: u64,
        slot: u8,
        value: Bytes,
    },
    /// Everything of `group` written before this record is gone.
    Tombstone {
        group: u64,
    },
    /// Entries of `group` with index <= `index` are no longer needed.
    CompactMark {
        group: u64,
        index: u64,
    },
}

/// What a valid record of a segment is: one to replay, or the end of a batch.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    Record(Record),
    /// Closes the batch whose first record starts at offset `start` of the segment.
    BatchEnd {
        start: u64,
    },
}

/// What the scan after a damaged record learns of a valid record, without copying its
/// payload.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Found {
    /// Encoded length.
    pub len: usize,
    /// Written with batch framing.
    pub framed: bool,
    /// For a batch end, where its batch starts.
    pub batch_start: Option<u64>,
}

/// Why decoding stopped. At the end of a segment's written part this is normal (zero fill,
/// stale bytes of a recycled file, a write torn by a crash); elsewhere it means damage.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// Fewer bytes left than the header or the claimed payload needs.
    Torn,
    /// The record belongs to another segment (stale bytes) or is zero fill.
    WrongSeq(u64),
    BadChecksum,
    /// Checksum is right but a field holds a value this version does not know.
    BadField(&'static str, u64),
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stop::Torn => write!(f, "torn record"),
            Stop::WrongSeq(s) => write!(f, "record of sequence {s:#x} (stale or zero fill)"),
            Stop::BadChecksum => write!(f, "checksum mismatch"),
            Stop::BadField(name, v) => write!(f, "unknown {name} {v}"),
        }
    }
}

impl Record {
    pub(super) fn group(&self) -> u64 {
        match self {
            Record::Entry { group, .. }
            | Record::Slot { group, .. }
            | Record::Tombstone { group }
            | Record::CompactMark { group, .. } => *group,
        }
    }

    fn payload(&self) -> &[u8] {
        match self {
            Record::Entry { entry, .. } => &entry.data,
            Record::Slot { value, .. } => value,
            Record::Tombstone { .. } | Record::CompactMark { .. } => &[],
        }
    }

    pub(super) fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload().len()
    }

    /// Appends the record, stamped with segment `seq`, to `out`. The payload must be at
    /// most [`MAX_PAYLOAD`] bytes (checked when the write is queued).
    pub(super) fn encode(&self, seq: u64, out: &mut Vec<u8>) {
        let (rtype, kind, term, index) = match self {
            Record::Entry { entry, .. } => {
                (TYPE_ENTRY, kind_code(entry.kind), entry.term, entry.index)
            }
            Record::Slot { slot, .. } => (TYPE_SLOT, *slot, 0, 0),
            Record::Tombstone { .. } => (TYPE_TOMBSTONE, 0, 0, 0),
            Record::CompactMark { index, .. } => (TYPE_COMPACT, 0, 0, *index),
        };
        encode_raw(
            seq,
            [rtype, kind],
            self.group(),
            term,
            index,
            self.payload(),
            out,
        );
    }
}

/// Appends the batch end closing a batch that starts at segment offset `start`.
pub(super) fn encode_batch_end(seq: u64, start: u64, out: &mut Vec<u8>) {
    encode_raw(seq, [TYPE_BATCH_END, 0], 0, 0, start, &[], out);
}

fn encode_raw(
    seq: u64,
    [rtype, kind]: [u8; 2],
    group: u64,
    term: u64,
    index: u64,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&[rtype, kind, FLAG_FRAMED, 0]);
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&term.to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32c::crc32c(&out[start + 4..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A record whose length, sequence number, checksum and fields are verified.
struct Checked<'a> {
    header: &'a [u8],
    payload: &'a [u8],
    rtype: u8,
    kind: u8,
    flags: u8,
}

/// Verifies the record at the start of `buf`, which must carry segment sequence `seq`.
fn check(buf: &[u8], seq: u64) -> Result<Checked<'_>, Stop> {
    let header = buf.get(..HEADER_LEN).ok_or(Stop::Torn)?;
    let found_seq = le_u64(&header[8..16]);
    if found_seq != seq {
        return Err(Stop::WrongSeq(found_seq));
    }
    let stored_crc = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    let total = HEADER_LEN.checked_add(len).ok_or(Stop::Torn)?;
    let payload = buf.get(HEADER_LEN..total).ok_or(Stop::Torn)?;
    let crc = crc32c::crc32c_append(crc32c::crc32c(&header[4..]), payload);
    if crc != stored_crc {
        return Err(Stop::BadChecksum);
    }
    let (rtype, kind, flags) = (header[16], header[17], header[18]);
    if flags & !FLAG_FRAMED != 0 {
        return Err(Stop::BadField("flags", flags.into()));
    }
    match rtype {
        TYPE_ENTRY if kind_from_code(kind).is_none() => {
            Err(Stop::BadField("entry kind", kind.into()))
        }
        TYPE_BATCH_END if !payload.is_empty() => Err(Stop::BadField(
            "batch end payload length",
            payload.len() as u64,
        )),
        TYPE_ENTRY | TYPE_SLOT | TYPE_TOMBSTONE | TYPE_COMPACT | TYPE_BATCH_END => Ok(Checked {
            header,
            payload,
            rtype,
            kind,
            flags,
        }),
        other => Err(Stop::BadField("record type", other.into())),
    }
}

/// Decodes the record at the start of `buf`, which must carry segment sequence `seq`.
/// Returns what it is and its encoded length.
pub(super) fn decode(buf: &[u8], seq: u64) -> Result<(Decoded, usize), Stop> {
    let Checked {
        header,
        payload,
        rtype,
        kind,
        ..
    } = check(buf, seq)?;
    let group = le_u64(&header[20..28]);
    let term = le_u64(&header[28..36]);
    let index = le_u64(&header[36..44]);
    let record = match rtype {
        TYPE_ENTRY => Record::Entry {
            group,
            entry: LogEntry {
                term,
                index,
                kind: kind_from_code(kind).ok_or(Stop::BadField("entry kind", kind.into()))?,
                data: Bytes::copy_from_slice(payload),
            },
        },
        TYPE_SLOT => Record::Slot {
            group,
            slot: kind,
            value: Bytes::copy_from_slice(payload),
        },
        TYPE_TOMBSTONE => Record::Tombstone { group },
        TYPE_COMPACT => Record::CompactMark { group, index },
        TYPE_BATCH_END => return Ok((Decoded::BatchEnd { start: index }, HEADER_LEN)),
        other => return Err(Stop::BadField("record type", other.into())),
    };
    Ok((Decoded::Record(record), HEADER_LEN + payload.len()))
}

/// Where, in `buf`, the first valid record of segment `seq` starts, if anywhere, and what
/// it is. Looks at every byte offset, as damage leaves no trustworthy length to skip by;
/// only offsets carrying `seq` in the header's sequence field are checksummed, and no
/// payload is copied.
pub(super) fn find_next(buf: &[u8], seq: u64) -> Option<(usize, Found)> {
    let tag = seq.to_le_bytes();
    let last = buf.len().checked_sub(HEADER_LEN)?;
    (0..=last).find_map(|at| {
        if buf[at + 8..at + 16] != tag {
            return None;
        }
        let c = check(&buf[at..], seq).ok()?;
        let found = Found {
            len: HEADER_LEN + c.payload.len(),
            framed: c.flags & FLAG_FRAMED != 0,
            batch_start: (c.rtype == TYPE_BATCH_END).then(|| le_u64(&c.header[36..44])),
        };
        Some((at, found))
    })
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn kind_code(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Normal => 0,
        EntryKind::ConfChange => 1,
        EntryKind::ConfChangeV2 => 2,
    }
}

fn kind_from_code(code: u8) -> Option<EntryKind> {
    match code {
        0 => Some(EntryKind::Normal),
        1 => Some(EntryKind::ConfChange),
        2 => Some(EntryKind::ConfChangeV2),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64) -> Record {
        Record::Entry {
            group: 7,
            entry: LogEntry {
                term: 3,
                index,
                kind: EntryKind::ConfChangeV2,
                data: Bytes::from_static(b"payload"),
            },
        }
    }

    #[test]
    fn every_record_type_round_trips() {
        let records = [
            entry(9),
            Record::Slot {
                group: 1,
                slot: 200,
                value: Bytes::from_static(b"hs"),
            },
            Record::Tombstone { group: 2 },
            Record::CompactMark {
                group: 3,
                index: 99,
            },
        ];
        for r in records {
            let mut buf = Vec::new();
            r.encode(5, &mut buf);
            assert_eq!(buf.len(), r.encoded_len());
            assert_eq!(decode(&buf, 5), Ok((Decoded::Record(r.clone()), buf.len())));
            assert_eq!(decode(&buf, 6), Err(Stop::WrongSeq(5)));
        }
        let mut buf = Vec::new();
        encode_batch_end(5, 1234, &mut buf);
        assert_eq!(buf.len(), BATCH_END_LEN);
        let end = Decoded::BatchEnd { start: 1234 };
        assert_eq!(decode(&buf, 5), Ok((end, BATCH_END_LEN)));
    }

    /// Records written before batch framing have a zero flags byte and still decode; the
    /// scan after damage tells them apart.
    #[test]
    fn records_without_the_framed_flag_decode_and_are_reported_unframed() {
        let mut buf = Vec::new();
        entry(1).encode(5, &mut buf);
        buf[18] = 0;
        let crc = crc32c::crc32c(&buf[4..]);
        buf[..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&buf, 5), Ok((Decoded::Record(entry(1)), buf.len())));
        let found = find_next(&buf, 5).map(|(_, f)| f.framed);
        assert_eq!(found, Some(false));
        buf[18] = 0x02;
        let crc = crc32c::crc32c(&buf[4..]);
        buf[..4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&buf, 5), Err(Stop::BadField("flags", 2)));
    }

    #[test]
    fn find_next_skips_damage_and_other_segments_and_reports_batch_ends() {
        let mut buf = vec![0u8; 100];
        entry(1).encode(4, &mut buf);
        let mut damaged = Vec::new();
        entry(2).encode(5, &mut damaged);
        damaged[HEADER_LEN] ^= 1;
        buf.extend_from_slice(&damaged);
        let at = buf.len();
        entry(3).encode(5, &mut buf);
        let end_at = buf.len();
        encode_batch_end(5, 7, &mut buf);
        let first = find_next(&buf, 5);
        let len = entry(3).encoded_len();
        let want = Found {
            len,
            framed: true,
            batch_start: None,
        };
        assert_eq!(first, Some((at, want)));
        let end = Found {
            len: BATCH_END_LEN,
            framed: true,
            batch_start: Some(7),
        };
        assert_eq!(find_next(&buf[at + 1..], 5), Some((end_at - at - 1, end)));
        assert_eq!(find_next(&buf[end_at + 1..], 5), None);
    }

    #[test]
    fn damaged_records_are_rejected_never_panicking() {
        let mut buf = Vec::new();
        entry(1).encode(5, &mut buf);
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut], 5).is_err(), "cut at {cut}");
        }
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad, 5).is_err(), "flip at {i}");
        }
        let mut huge = buf.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge, 5), Err(Stop::Torn));
        assert_eq!(decode(&[0u8; 100], 5), Err(Stop::WrongSeq(0)));
    }
}

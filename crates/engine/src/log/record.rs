//! The on-disk record format of the log, and nothing else: encoding records into a batch
//! buffer and decoding them back from untrusted segment bytes.
//!
//! Layout (little-endian), 44-byte header then payload:
//!
//! | off | size | field                                                     |
//! |-----|------|-----------------------------------------------------------|
//! | 0   | 4    | CRC32C of bytes 4.. of the header followed by the payload  |
//! | 4   | 4    | payload length                                            |
//! | 8   | 8    | segment sequence number                                   |
//! | 16  | 1    | record type (1 entry, 2 slot, 3 tombstone, 4 compact mark) |
//! | 17  | 1    | entry kind, or slot id                                    |
//! | 18  | 2    | reserved, zero                                            |
//! | 20  | 8    | group                                                     |
//! | 28  | 8    | term (entries)                                            |
//! | 36  | 8    | index (entries, compact marks)                            |
//!
//! The sequence number makes stale bytes of a recycled segment file (which carry an older
//! sequence number) and zero fill (sequence 0, never used) read as "end of segment".
//! Decoding never panics and never trusts the length field beyond the bytes at hand.

use bytes::Bytes;

use super::{EntryKind, LogEntry};

pub(super) const HEADER_LEN: usize = 44;
/// The largest payload the length field can describe.
pub(super) const MAX_PAYLOAD: usize = u32::MAX as usize;

const TYPE_ENTRY: u8 = 1;
const TYPE_SLOT: u8 = 2;
const TYPE_TOMBSTONE: u8 = 3;
const TYPE_COMPACT: u8 = 4;

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
        let payload = self.payload();
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&[rtype, kind, 0, 0]);
        out.extend_from_slice(&self.group().to_le_bytes());
        out.extend_from_slice(&term.to_le_bytes());
        out.extend_from_slice(&index.to_le_bytes());
        out.extend_from_slice(payload);
        let crc = crc32c::crc32c(&out[start + 4..]);
        out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Decodes the record at the start of `buf`, which must carry segment sequence `seq`.
/// Returns the record and its encoded length.
pub(super) fn decode(buf: &[u8], seq: u64) -> Result<(Record, usize), Stop> {
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
    let (rtype, kind) = (header[16], header[17]);
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
        other => return Err(Stop::BadField("record type", other.into())),
    };
    Ok((record, total))
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
            assert_eq!(decode(&buf, 5), Ok((r.clone(), buf.len())));
            assert_eq!(decode(&buf, 6), Err(Stop::WrongSeq(5)));
        }
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

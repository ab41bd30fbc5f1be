//! The on-disk format of a group's state in the shared log, besides its entries' payloads:
//! the per-group slots (hard state, applied point, configuration, membership, fences) and
//! the conversion of raft-rs entries to and from the log's records.
//!
//! Owns the byte layout of every slot but the fences' (`fence.rs`). Must never: change a
//! layout without a version a reader can tell apart (replicas restart from what an older
//! build wrote); panic on a slot read back from disk (a short or garbled one decodes to
//! `None`, and the caller treats the group as unrecoverable rather than guess).

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState};
use tessera_engine::{EntryKind, LogEntry};

/// Per-group values kept in the shared log's slots.
pub(crate) const SLOT_HARD_STATE: u8 = 0;
pub(crate) const SLOT_APPLIED: u8 = 1;
pub(crate) const SLOT_MEMBERSHIP: u8 = 2;
/// The Raft configuration as of the last applied conf change: its index (u64 LE) then the
/// protobuf `ConfState`.
pub(crate) const SLOT_CONF: u8 = 3;
/// The writer epoch floors (see `fence.rs`).
pub(crate) const SLOT_FENCES: u8 = 4;

pub(crate) fn encode_hard_state(hs: &HardState) -> Bytes {
    let mut b = Vec::with_capacity(24);
    b.extend_from_slice(&hs.term.to_le_bytes());
    b.extend_from_slice(&hs.vote.to_le_bytes());
    b.extend_from_slice(&hs.commit.to_le_bytes());
    Bytes::from(b)
}

fn u64s<const N: usize>(b: &[u8]) -> Option<[u64; N]> {
    if b.len() != N * 8 {
        return None;
    }
    let mut out = [0u64; N];
    for (i, v) in out.iter_mut().enumerate() {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i * 8..i * 8 + 8]);
        *v = u64::from_le_bytes(a);
    }
    Some(out)
}

pub(crate) fn decode_hard_state(b: &[u8]) -> Option<HardState> {
    let [term, vote, commit] = u64s::<3>(b)?;
    Some(HardState {
        term,
        vote,
        commit,
        ..Default::default()
    })
}

pub(crate) fn encode_applied(index: u64, term: u64) -> Bytes {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&index.to_le_bytes());
    b.extend_from_slice(&term.to_le_bytes());
    Bytes::from(b)
}

pub(crate) fn decode_applied(b: &[u8]) -> Option<(u64, u64)> {
    let [index, term] = u64s::<2>(b)?;
    Some((index, term))
}

pub(crate) fn to_log_entry(e: &Entry) -> LogEntry {
    LogEntry {
        term: e.term,
        index: e.index,
        kind: match e.get_entry_type() {
            EntryType::EntryNormal => EntryKind::Normal,
            EntryType::EntryConfChange => EntryKind::ConfChange,
            EntryType::EntryConfChangeV2 => EntryKind::ConfChangeV2,
        },
        data: e.data.clone(),
    }
}

pub(crate) fn from_log_entry(e: &LogEntry) -> Entry {
    let mut out = Entry {
        term: e.term,
        index: e.index,
        data: e.data.clone(),
        ..Default::default()
    };
    out.set_entry_type(match e.kind {
        EntryKind::Normal => EntryType::EntryNormal,
        EntryKind::ConfChange => EntryType::EntryConfChange,
        EntryKind::ConfChangeV2 => EntryType::EntryConfChangeV2,
    });
    out
}

pub(crate) fn encode_conf(index: u64, cs: &ConfState) -> Bytes {
    let mut b = index.to_le_bytes().to_vec();
    b.extend_from_slice(&cs.write_to_bytes().unwrap_or_default());
    Bytes::from(b)
}

pub(crate) fn decode_conf(b: &[u8]) -> Option<(u64, ConfState)> {
    let idx = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let cs = ConfState::parse_from_bytes(&b[8..]).ok()?;
    Some((idx, cs))
}

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
use serde::{Deserialize, Serialize};
use tessera_engine::{EntryKind, LogEntry};
use tessera_proto::control::{self, GroupSpec, PeerInfo};

/// Per-group values kept in the shared log's slots. The hard state: term, vote and commit
/// index (three u64 LE).
pub(crate) const SLOT_HARD_STATE: u8 = 0;
/// The applied point: index and term (two u64 LE).
pub(crate) const SLOT_APPLIED: u8 = 1;
/// The group's peers and their addresses: a [`StoredMembership`] (JSON).
pub(crate) const SLOT_MEMBERSHIP: u8 = 2;
/// The Raft configuration as of the last applied conf change: its index (u64 LE) then the
/// protobuf `ConfState`.
pub(crate) const SLOT_CONF: u8 = 3;
/// The writer epoch and snapshot sequence floors (versioned: see `fence.rs`).
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

/// The newest layout of the membership slot this build writes (and the newest it reads).
const MEMBERSHIP_FORMAT: u32 = 1;

/// The membership slot as stored: the group's peers as this replica last learned them (at
/// its creation, from a conf change, or from an installed snapshot). Its own type rather
/// than the control plane's `GroupSpec`, so that the manager's messages may change without
/// changing what replicas read back from disk.
///
/// JSON. Format 0 (before this type; no `format` field) is read as the same fields. A
/// build older than format 1 ignores the field, so a downgrade reads what this one wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredMembership {
    #[serde(default)]
    format: u32,
    group_id: u64,
    peers: Vec<StoredPeer>,
    #[serde(default)]
    joining: bool,
    #[serde(default, skip_serializing_if = "is_zero")]
    min_term: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredPeer {
    node_id: u64,
    addr: String,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// Why a membership slot could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum MembershipSlotError {
    #[error("membership slot is not valid: {0}")]
    Invalid(String),
    #[error("membership slot has format {0}, newer than this build reads ({MEMBERSHIP_FORMAT})")]
    NewerFormat(u32),
}

pub(crate) fn encode_membership(spec: &GroupSpec) -> Bytes {
    control::encode(&StoredMembership {
        format: MEMBERSHIP_FORMAT,
        group_id: spec.group_id,
        peers: spec
            .peers
            .iter()
            .map(|p| StoredPeer {
                node_id: p.node_id,
                addr: p.addr.clone(),
            })
            .collect(),
        joining: spec.joining,
        min_term: spec.min_term,
    })
}

pub(crate) fn decode_membership(b: &[u8]) -> Result<GroupSpec, MembershipSlotError> {
    let m: StoredMembership =
        control::decode(b).map_err(|e| MembershipSlotError::Invalid(e.to_string()))?;
    if m.format > MEMBERSHIP_FORMAT {
        return Err(MembershipSlotError::NewerFormat(m.format));
    }
    Ok(GroupSpec {
        group_id: m.group_id,
        peers: m
            .peers
            .into_iter()
            .map(|p| PeerInfo {
                node_id: p.node_id,
                addr: p.addr,
            })
            .collect(),
        joining: m.joining,
        min_term: m.min_term,
    })
}

#[cfg(test)]
mod tests {
    //! Round trips, and golden files: `*_v0*` and the other slots were written by the code
    //! before the membership had a type of its own (`control::encode` of a `GroupSpec`);
    //! `*_v1*` by this one. A replica restarted on a new build must read them all.

    use super::*;

    fn golden(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn peer(n: u64) -> PeerInfo {
        PeerInfo {
            node_id: n,
            addr: format!("10.0.0.{n}:7100"),
        }
    }

    fn member() -> GroupSpec {
        GroupSpec {
            group_id: 42,
            peers: vec![peer(1), peer(2), peer(4)],
            joining: false,
            min_term: 0,
        }
    }

    fn joining() -> GroupSpec {
        GroupSpec {
            group_id: 42,
            peers: vec![peer(2), peer(3)],
            joining: true,
            min_term: 17,
        }
    }

    #[test]
    fn a_membership_round_trips() {
        for spec in [member(), joining()] {
            assert_eq!(decode_membership(&encode_membership(&spec)), Ok(spec));
        }
    }

    #[test]
    fn a_membership_written_before_its_format_had_a_version_is_read() {
        assert_eq!(
            decode_membership(&golden("membership_v0.bin")),
            Ok(member())
        );
        assert_eq!(
            decode_membership(&golden("membership_v0_joining.bin")),
            Ok(joining())
        );
    }

    #[test]
    fn the_membership_layout_is_stable() {
        assert_eq!(
            &encode_membership(&member())[..],
            &golden("membership_v1.bin")[..]
        );
        assert_eq!(
            &encode_membership(&joining())[..],
            &golden("membership_v1_joining.bin")[..]
        );
    }

    #[test]
    fn a_membership_of_a_newer_format_or_garbled_is_refused_not_guessed() {
        let newer = br#"{"format":2,"group_id":42,"peers":[],"joining":false}"#;
        assert_eq!(
            decode_membership(newer),
            Err(MembershipSlotError::NewerFormat(2))
        );
        let v1 = golden("membership_v1.bin");
        for cut in 0..v1.len() {
            assert!(decode_membership(&v1[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_membership(b"\xff\x00garbage").is_err());
    }

    #[test]
    fn the_other_slots_written_before_read_back_the_same() {
        let hs = decode_hard_state(&golden("hard_state.bin")).unwrap();
        assert_eq!((hs.term, hs.vote, hs.commit), (9, 2, 1234));
        assert_eq!(&encode_hard_state(&hs)[..], &golden("hard_state.bin")[..]);
        assert_eq!(decode_applied(&golden("applied.bin")), Some((1200, 8)));
        assert_eq!(&encode_applied(1200, 8)[..], &golden("applied.bin")[..]);
        let (index, cs) = decode_conf(&golden("conf.bin")).unwrap();
        assert_eq!(index, 1190);
        assert_eq!(cs.voters, vec![1, 2, 4]);
        assert_eq!(cs.learners, vec![3]);
        assert_eq!(cs.voters_outgoing, vec![1, 2, 3]);
        assert_eq!(&encode_conf(index, &cs)[..], &golden("conf.bin")[..]);
    }

    #[test]
    fn short_or_garbled_slots_decode_to_nothing() {
        let hs = golden("hard_state.bin");
        assert_eq!(decode_hard_state(&hs[..23]), None);
        assert_eq!(decode_applied(&[1, 2, 3]), None);
        assert_eq!(decode_conf(&[0; 7]), None);
        assert!(decode_conf(&[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]).is_none());
    }
}

//! Writer epochs and snapshot sequences: which attachment may still write each volume in
//! one replica group, and in which layer.
//!
//! Owns the group's per-volume floors: the newest writer epoch and the newest snapshot
//! sequence any entry of the group's log carries for the volume (a `Fence` command, or a
//! write of a newer writer or sequence). The leader refuses to propose a write, zeroes or
//! discard older than the epoch floor (`Reply::Fenced`), or of a sequence below the
//! sequence floor (`Reply::Resequence`), so once a fence is committed, no write of an older
//! attachment or sequence enters the log after it: every later leader has the fence in its
//! log (Raft's leader completeness), hence the floor. For sequences this keeps a group's
//! log monotonic per volume: a write of sequence `s - 1` never follows one of `s`, so a
//! layer below a snapshot is never written after the snapshot's cut.
//!
//! The floors only judge proposals, never applies: every replica applies the same entries,
//! whatever floor it knows. That is what lets the floors be derived from the log as entries
//! arrive (committed or not), kept in a slot written with them, carried in snapshots, and
//! be ahead of the applied index after a crash: a floor too high only refuses writes of an
//! attachment the manager already ended, or of a sequence a snapshot already closed.
//!
//! Must never: lower a floor; refuse a request without an epoch's volume being fenced
//! (epoch 0 is a reader or a client from before attachments, admitted until a fence).
//! Sequence 0 (a client from before snapshots) counts as 1: admitted until a snapshot
//! raises the volume's floor above 1, refused after (it would write below the snapshot).

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tessera_proto::command::Command;
use tessera_proto::control::GroupSpec;

/// The first four bytes of a fences slot of format 2 or later. Format 1 starts with its
/// entry count, which can never be this: the slot would be 64 GiB long.
const SLOT_MARK: u32 = u32::MAX;
/// The newest layout of the fences slot this build writes (and the newest it reads).
const SLOT_FORMAT: u32 = 2;

/// One volume's floors.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Floor {
    epoch: u64,
    seq: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Fences {
    floors: HashMap<u64, Floor>,
    /// A floor rose since [`Fences::take_changed`] was last called.
    changed: bool,
}

/// A sequence as the floors compare it: 0 (from before snapshots) is 1.
fn effective_seq(seq: u64) -> u64 {
    seq.max(1)
}

impl Fences {
    /// Raises the epoch floor of `volume` to `epoch` (never lowers it).
    pub(crate) fn raise(&mut self, volume: u64, epoch: u64) {
        if epoch == 0 {
            return;
        }
        let floor = self.floors.entry(volume).or_default();
        if epoch > floor.epoch {
            floor.epoch = epoch;
            self.changed = true;
        }
    }

    /// Raises the sequence floor of `volume` to `seq` (never lowers it).
    pub(crate) fn raise_seq(&mut self, volume: u64, seq: u64) {
        if seq == 0 {
            return;
        }
        let floor = self.floors.entry(volume).or_default();
        if seq > floor.seq {
            floor.seq = seq;
            self.changed = true;
        }
    }

    /// Notes the epoch and sequence of a command entry that reached the log.
    pub(crate) fn logged(&mut self, entry_data: &[u8]) {
        if let Some((volume, epoch, seq)) = Command::peek_fence(entry_data) {
            self.raise(volume, epoch);
            self.raise_seq(volume, seq);
        }
    }

    /// `Err(floor)` if a write of `epoch` to `volume` must be refused.
    pub(crate) fn admits(&self, volume: u64, epoch: u64) -> Result<(), u64> {
        match self.floors.get(&volume) {
            Some(f) if epoch < f.epoch && !cfg!(tessera_unfixed = "fencing") => Err(f.epoch),
            _ => Ok(()),
        }
    }

    /// `Err(floor)` if a write of sequence `seq` to `volume` must be refused (sent again
    /// with `floor`): the volume's floor is newer. Sequence 0 counts as 1.
    pub(crate) fn admits_seq(&self, volume: u64, seq: u64) -> Result<(), u64> {
        match self.floors.get(&volume) {
            Some(f) if effective_seq(seq) < f.seq => Err(f.seq),
            _ => Ok(()),
        }
    }

    /// The sequence floor of `volume` (0: none).
    pub(crate) fn seq_floor(&self, volume: u64) -> u64 {
        self.floors.get(&volume).map_or(0, |f| f.seq)
    }

    pub(crate) fn merge(&mut self, other: &Fences) {
        for (&v, f) in &other.floors {
            self.raise(v, f.epoch);
            self.raise_seq(v, f.seq);
        }
    }

    /// Whether a floor rose since the last call (the slot and the snapshot data need it).
    pub(crate) fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// `(volume, epoch, seq)`, sorted by volume.
    fn sorted(&self) -> Vec<(u64, u64, u64)> {
        let mut v: Vec<(u64, u64, u64)> = self
            .floors
            .iter()
            .map(|(&v, f)| (v, f.epoch, f.seq))
            .collect();
        v.sort_unstable();
        v
    }

    /// The slot's bytes, little-endian: `mark u32 (u32::MAX) | format u32 (2) | count u32 |
    /// count × (volume u64 | epoch u64 | seq u64)`.
    /// Format 1 (before sequences) was `count u32 | count × (volume u64 | epoch u64)`; it
    /// is still read. A build from before format 2 reads this slot as garbled.
    pub(crate) fn encode(&self) -> Bytes {
        let v = self.sorted();
        let mut b = BytesMut::with_capacity(12 + 24 * v.len());
        b.put_u32_le(SLOT_MARK);
        b.put_u32_le(SLOT_FORMAT);
        b.put_u32_le(v.len() as u32);
        for (volume, epoch, seq) in v {
            b.put_u64_le(volume);
            b.put_u64_le(epoch);
            b.put_u64_le(seq);
        }
        b.freeze()
    }

    /// `None` if the bytes are not a slot written by [`Fences::encode`] (of this format or
    /// format 1), or one of a newer format.
    pub(crate) fn decode(b: &[u8]) -> Option<Fences> {
        let (first, rest) = b.split_first_chunk::<4>()?;
        let mut f = Fences::default();
        if u32::from_le_bytes(*first) != SLOT_MARK {
            // Format 1: the count, then (volume, epoch) pairs.
            let count = u32::from_le_bytes(*first) as usize;
            for [volume, epoch] in u64_records::<2>(rest, count)? {
                f.raise(volume, epoch);
            }
        } else {
            let (format, rest) = rest.split_first_chunk::<4>()?;
            if u32::from_le_bytes(*format) != SLOT_FORMAT {
                return None;
            }
            let (count, rest) = rest.split_first_chunk::<4>()?;
            let count = u32::from_le_bytes(*count) as usize;
            for [volume, epoch, seq] in u64_records::<3>(rest, count)? {
                f.raise(volume, epoch);
                f.raise_seq(volume, seq);
            }
        }
        f.changed = false;
        Some(f)
    }
}

/// `count` records of `N` little-endian u64s, exactly filling `b`.
fn u64_records<const N: usize>(b: &[u8], count: usize) -> Option<Vec<[u64; N]>> {
    if b.len() != count.checked_mul(8 * N)? {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for rec in b.chunks_exact(8 * N) {
        let mut r = [0u64; N];
        for (i, v) in r.iter_mut().enumerate() {
            *v = u64::from_le_bytes(rec[i * 8..i * 8 + 8].try_into().ok()?);
        }
        out.push(r);
    }
    Some(out)
}

/// What a snapshot carries besides the chunk files (its `data`): the group's membership
/// with addresses, and the epoch and sequence floors. JSON, the membership's fields at the
/// top level, so snapshots from before floors existed read with none (and those from
/// before sequence floors with no sequence floor).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotData {
    #[serde(flatten)]
    pub(crate) spec: GroupSpec,
    /// `(volume, epoch)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    fences: Vec<(u64, u64)>,
    /// `(volume, seq)`: the sequence floors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    seqs: Vec<(u64, u64)>,
}

impl SnapshotData {
    pub(crate) fn encode(spec: &GroupSpec, fences: &Fences) -> Bytes {
        let floors = fences.sorted();
        let data = SnapshotData {
            spec: spec.clone(),
            fences: floors
                .iter()
                .filter(|f| f.1 != 0)
                .map(|&(v, e, _)| (v, e))
                .collect(),
            seqs: floors
                .iter()
                .filter(|f| f.2 != 0)
                .map(|&(v, _, s)| (v, s))
                .collect(),
        };
        tessera_proto::control::encode(&data)
    }

    pub(crate) fn decode(b: &[u8]) -> Option<(GroupSpec, Fences)> {
        let d: SnapshotData = tessera_proto::control::decode(b).ok()?;
        let mut f = Fences::default();
        for (v, e) in d.fences {
            f.raise(v, e);
        }
        for (v, s) in d.seqs {
            f.raise_seq(v, s);
        }
        f.changed = false;
        Some((d.spec, f))
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::command::CmdOp;

    #[test]
    fn floors_only_rise_and_refuse_older_epochs() {
        let mut f = Fences::default();
        assert_eq!(f.admits(1, 0), Ok(()), "no floor: everyone writes");
        f.raise(1, 5);
        f.raise(1, 3);
        assert!(f.take_changed());
        assert!(!f.take_changed());
        assert_eq!(f.admits(1, 4), Err(5));
        assert_eq!(f.admits(1, 0), Err(5));
        assert_eq!(f.admits(1, 5), Ok(()));
        assert_eq!(f.admits(1, 6), Ok(()));
        assert_eq!(f.admits(2, 1), Ok(()), "another volume");
        // A newer writer's write raises the floor like a fence.
        let cmd = Command {
            seq: 0,
            op: CmdOp::Write,
            volume: 1,
            chunk: 0,
            offset: 0,
            len: 1,
            id: 9,
            epoch: 7,
            data: Bytes::from_static(b"x"),
        };
        f.logged(&cmd.encode());
        assert_eq!(f.admits(1, 6), Err(7));
    }

    #[test]
    fn slots_and_snapshot_data_round_trip() {
        let mut f = Fences::default();
        f.raise(1, 5);
        f.raise(9, 2);
        f.take_changed();
        let got = Fences::decode(&f.encode()).unwrap();
        assert_eq!(got, f);
        for n in 0..f.encode().len() {
            assert!(Fences::decode(&f.encode()[..n]).is_none());
        }
        let spec = GroupSpec {
            group_id: 3,
            peers: vec![],
            joining: false,
            min_term: 0,
        };
        let (s, g) = SnapshotData::decode(&SnapshotData::encode(&spec, &f)).unwrap();
        assert_eq!((s, g), (spec.clone(), f));
        // Snapshot data from before floors existed: the membership alone.
        let old = tessera_proto::control::encode(&spec);
        let (s, g) = SnapshotData::decode(&old).unwrap();
        assert_eq!((s, g), (spec, Fences::default()));
    }

    fn write(volume: u64, epoch: u64, seq: u64) -> Command {
        Command {
            op: CmdOp::Write,
            volume,
            chunk: 0,
            offset: 0,
            len: 1,
            id: 0,
            epoch,
            seq,
            data: Bytes::from_static(b"x"),
        }
    }

    /// Sequence floors rise from fences and writes alike, never fall, and refuse older
    /// sequences; sequence 0 counts as 1. The epoch floor is untouched by them.
    #[test]
    fn sequence_floors_only_rise_and_refuse_older_sequences() {
        let mut f = Fences::default();
        assert_eq!(f.admits_seq(1, 0), Ok(()), "no floor: every sequence");
        f.logged(&write(1, 0, 1).encode());
        assert_eq!(f.admits_seq(1, 0), Ok(()), "0 counts as 1");
        let fence = Command {
            op: CmdOp::Fence,
            len: 0,
            data: Bytes::new(),
            ..write(1, 0, 4)
        };
        f.logged(&fence.encode());
        assert!(f.take_changed());
        assert_eq!(f.admits_seq(1, 3), Err(4));
        assert_eq!(f.admits_seq(1, 0), Err(4), "an old client below a snapshot");
        assert_eq!(f.admits_seq(1, 4), Ok(()));
        assert_eq!(f.admits(1, 0), Ok(()), "a sequence is not an epoch");
        f.logged(&write(1, 0, 6).encode());
        assert_eq!(f.admits_seq(1, 5), Err(6));
        f.raise_seq(1, 2);
        f.logged(&write(1, 0, 0).encode());
        assert_eq!(f.seq_floor(1), 6);
        assert_eq!(f.admits_seq(2, 0), Ok(()), "another volume");
        // Both at once: a new writer's write of a new sequence.
        f.logged(&write(2, 3, 5).encode());
        assert_eq!(f.admits(2, 2), Err(3));
        assert_eq!(f.admits_seq(2, 4), Err(5));
    }

    fn golden(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn both() -> Fences {
        let mut f = Fences::default();
        f.raise(1, 5);
        f.raise(9, 2);
        f.raise_seq(9, 7);
        f.raise_seq(4, 3);
        f.take_changed();
        f
    }

    /// A slot written before sequences (format 1, `fences_v1.bin`) reads as the same
    /// epoch floors and no sequence floor.
    #[test]
    fn a_slot_from_before_sequences_is_read() {
        let mut want = Fences::default();
        want.raise(1, 5);
        want.raise(9, 2);
        want.take_changed();
        assert_eq!(Fences::decode(&golden("fences_v1.bin")), Some(want));
    }

    #[test]
    fn the_slot_layout_is_stable_and_a_newer_or_garbled_one_is_refused() {
        let f = both();
        assert_eq!(&f.encode()[..], &golden("fences_v2.bin")[..]);
        assert_eq!(Fences::decode(&golden("fences_v2.bin")), Some(f.clone()));
        let mut newer = f.encode().to_vec();
        newer[4] = 3;
        assert_eq!(Fences::decode(&newer), None);
        for n in 0..f.encode().len() {
            assert!(Fences::decode(&f.encode()[..n]).is_none(), "cut at {n}");
        }
        assert_eq!(
            Fences::decode(&Fences::default().encode()),
            Some(Fences::default())
        );
    }

    #[test]
    fn sequence_floors_travel_in_snapshot_data() {
        let spec = GroupSpec {
            group_id: 3,
            peers: vec![],
            joining: false,
            min_term: 0,
        };
        let f = both();
        let (s, g) = SnapshotData::decode(&SnapshotData::encode(&spec, &f)).unwrap();
        assert_eq!((s, g), (spec.clone(), f));
        // Snapshot data from before sequences: epoch floors only.
        let old = br#"{"group_id":3,"peers":[],"joining":false,"fences":[[1,5]]}"#;
        let (_, g) = SnapshotData::decode(old).unwrap();
        assert_eq!((g.admits(1, 4), g.seq_floor(1)), (Err(5), 0));
    }
}

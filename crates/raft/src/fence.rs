//! Writer epochs: which attachment may still write each volume in one replica group.
//!
//! Owns the group's per-volume epoch floor: the newest writer epoch any entry of the
//! group's log carries for the volume (a `Fence` command, or a write of a newer writer).
//! The leader refuses to propose a write, zeroes or discard older than the floor
//! (`Reply::Fenced`), so once a new writer's fence is committed, no write of an older
//! attachment enters the log after it: every later leader has the fence in its log
//! (Raft's leader completeness), hence the floor.
//!
//! The floor only judges proposals, never applies: every replica applies the same entries,
//! whatever floor it knows. That is what lets the floor be derived from the log as entries
//! arrive (committed or not), kept in a slot written with them, carried in snapshots, and
//! be ahead of the applied index after a crash: a floor too high only refuses writes of an
//! attachment the manager already ended.
//!
//! Must never: lower a floor; refuse a request without an epoch's volume being fenced
//! (epoch 0 is a reader or a client from before attachments, admitted until a fence).

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tessera_proto::command::Command;
use tessera_proto::control::GroupSpec;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Fences {
    floors: HashMap<u64, u64>,
    /// A floor rose since [`Fences::take_changed`] was last called.
    changed: bool,
}

impl Fences {
    /// Raises the floor of `volume` to `epoch` (never lowers it).
    pub(crate) fn raise(&mut self, volume: u64, epoch: u64) {
        if epoch == 0 {
            return;
        }
        let floor = self.floors.entry(volume).or_default();
        if epoch > *floor {
            *floor = epoch;
            self.changed = true;
        }
    }

    /// Notes the epoch of a command entry that reached the log.
    pub(crate) fn logged(&mut self, entry_data: &[u8]) {
        if let Some((volume, epoch)) = Command::peek_epoch(entry_data) {
            self.raise(volume, epoch);
        }
    }

    /// `Err(floor)` if a write of `epoch` to `volume` must be refused.
    pub(crate) fn admits(&self, volume: u64, epoch: u64) -> Result<(), u64> {
        match self.floors.get(&volume) {
            Some(&floor) if epoch < floor && !cfg!(tessera_unfixed = "fencing") => Err(floor),
            _ => Ok(()),
        }
    }

    pub(crate) fn merge(&mut self, other: &Fences) {
        for (&v, &e) in &other.floors {
            self.raise(v, e);
        }
    }

    /// Whether a floor rose since the last call (the slot and the snapshot data need it).
    pub(crate) fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    fn sorted(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.floors.iter().map(|(&a, &b)| (a, b)).collect();
        v.sort_unstable();
        v
    }

    /// The slot's bytes: `count u32 | count × (volume u64 | epoch u64)`, little-endian.
    pub(crate) fn encode(&self) -> Bytes {
        let v = self.sorted();
        let mut b = BytesMut::with_capacity(4 + 16 * v.len());
        b.put_u32_le(v.len() as u32);
        for (volume, epoch) in v {
            b.put_u64_le(volume);
            b.put_u64_le(epoch);
        }
        b.freeze()
    }

    /// `None` if the bytes are not a slot written by [`Fences::encode`].
    pub(crate) fn decode(b: &[u8]) -> Option<Fences> {
        let (count, mut rest) = b.split_first_chunk::<4>()?;
        let count = u32::from_le_bytes(*count) as usize;
        if rest.len() != count.checked_mul(16)? {
            return None;
        }
        let mut f = Fences::default();
        while let Some((pair, tail)) = rest.split_first_chunk::<16>() {
            let (v, e) = pair.split_at(8);
            f.raise(
                u64::from_le_bytes(v.try_into().ok()?),
                u64::from_le_bytes(e.try_into().ok()?),
            );
            rest = tail;
        }
        f.changed = false;
        Some(f)
    }
}

/// What a snapshot carries besides the chunk files (its `data`): the group's membership
/// with addresses, and the epoch floors. JSON, the membership's fields at the top level,
/// so snapshots from before floors existed read with none.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotData {
    #[serde(flatten)]
    pub(crate) spec: GroupSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    fences: Vec<(u64, u64)>,
}

impl SnapshotData {
    pub(crate) fn encode(spec: &GroupSpec, fences: &Fences) -> Bytes {
        let data = SnapshotData {
            spec: spec.clone(),
            fences: fences.sorted(),
        };
        tessera_proto::control::encode(&data)
    }

    pub(crate) fn decode(b: &[u8]) -> Option<(GroupSpec, Fences)> {
        let d: SnapshotData = tessera_proto::control::decode(b).ok()?;
        let mut f = Fences::default();
        for (v, e) in d.fences {
            f.raise(v, e);
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
}

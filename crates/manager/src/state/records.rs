//! The records the manager persists, one per row: [`NodeRecord`], [`GroupRecord`],
//! [`VolumeRecord`] (with its [`Attachment`], its [`SnapshotRecord`]s, the [`Reclaim`]s of
//! deleted snapshots' space and, for a clone, its [`ParentLink`]). Their serde form is the database's and the snapshot's format; every
//! field added later is `#[serde(default)]` and left out when empty, so rows written before
//! it load, and rows without it are written as before.
//!
//! Plain data with a few read-only helpers. Must never change a record (only
//! [`State::apply`](super::State::apply) does) nor rename or retype a field without a format
//! change: old databases must keep loading.

use serde::{Deserialize, Serialize};
use tessera_proto::control::SnapshotState;

use super::backup_records::RestoreRecord;

/// A registered storage node, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: u64,
    pub zone: String,
    pub rack: String,
    pub addr: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    /// Being drained: receives no new replica; the reconciler moves everything off it.
    #[serde(default)]
    pub draining: bool,
    /// The node's data-directory token ([`tessera_proto::control::NodeRegistration::disk`]);
    /// 0: unknown.
    #[serde(default)]
    pub disk: u64,
}

/// A replica group and the nodes hosting its replicas, as placed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GroupRecord {
    pub id: u64,
    /// The voters, as last confirmed by the group's leader.
    pub members: Vec<u64>,
    /// A membership change under way: the voters the group is moving to (empty: none).
    /// Persisted so that a restarted manager carries the move on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target: Vec<u64>,
    /// Some replica has reported a leader of the group, so it has a history: a member that
    /// lost its replica must rejoin and wait for a snapshot, never start again as a fresh
    /// voter with an empty log (it could help elect a leader missing committed entries).
    /// Never cleared. Replicated and persisted, so that a restarted or newly elected
    /// manager decides as the one that heard the leader did; rows written before this
    /// field existed read as `false` until the next heartbeat showing a leader.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub established: bool,
    /// The term of the leader that said the last membership change was done: a replica
    /// created to join the group starts there (`GroupSpec::min_term`), so a leader the
    /// group left behind cannot count it. Only grows.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub term: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl GroupRecord {
    /// The voters the group has or is moving to: `target` during a move, else `members`.
    pub fn wanted(&self) -> &[u64] {
        if self.target.is_empty() {
            &self.members
        } else {
            &self.target
        }
    }

    /// Members, then target nodes that are not members yet: every node that may host a
    /// replica of the group now.
    pub fn members_and_target(&self) -> Vec<u64> {
        let mut all = self.members.clone();
        all.extend(self.target.iter().filter(|t| !self.members.contains(t)));
        all
    }
}

/// A volume's metadata, as persisted (its chunk map is stored apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRecord {
    pub id: u64,
    pub name: String,
    pub size: u64,
    pub chunk_size: u64,
    pub created_unix: u64,
    /// The newest writer epoch granted (see `attach.rs`); only grows.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// The client holding the volume read-write, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<Attachment>,
    /// The snapshot sequence every write carries; taking a snapshot records it and moves to
    /// the next. 0 (records from before snapshots) reads as 1: see [`VolumeRecord::seq`].
    #[serde(default, skip_serializing_if = "is_zero", rename = "seq")]
    pub snap_seq: u64,
    /// Its snapshots, oldest (lowest sequence) first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotRecord>,
    /// The snapshot this volume was cloned from, until it is flattened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentLink>,
    /// The snapshot sequence a rollback under way returns the volume to: set when it
    /// starts (with a new writer epoch), cleared once every group applied it. Meanwhile the
    /// volume is neither opened, attached nor snapshotted (its content is mixed), and the
    /// leading manager finishes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_back: Option<u64>,
    /// Deleted snapshots' space still to reclaim, by ascending `low`; each range's top is
    /// the next snapshot at or above `low` (none: the live range). See `reclaims`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reclaims: Vec<Reclaim>,
    /// Created from a backup and still being filled from the store: neither attached nor
    /// opened until [`super::Mutation::RestoreDone`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreRecord>,
}

impl VolumeRecord {
    /// A new volume's record: no epoch, attachment, snapshot or parent yet, sequence 1.
    pub fn new(id: u64, name: &str, size: u64, chunk_size: u64, created_unix: u64) -> Self {
        VolumeRecord {
            id,
            name: name.to_string(),
            size,
            chunk_size,
            created_unix,
            epoch: 0,
            attachment: None,
            snap_seq: 1,
            snapshots: Vec::new(),
            parent: None,
            rolling_back: None,
            reclaims: Vec::new(),
            restore: None,
        }
    }

    /// The current snapshot sequence (at least 1).
    pub fn seq(&self) -> u64 {
        self.snap_seq.max(1)
    }

    pub fn snapshot(&self, name: &str) -> Option<&SnapshotRecord> {
        self.snapshots.iter().find(|s| s.name == name)
    }

    /// A clone whose links to its parent are not all committed yet: not usable.
    pub fn linking(&self) -> bool {
        self.parent.as_ref().is_some_and(|p| p.linking)
    }
}

/// One snapshot of a volume, as persisted in the volume's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub name: String,
    /// It reads every write of a sequence up to this one.
    pub seq: u64,
    pub created_unix: u64,
    /// `Creating` until every group of the volume is fenced with `seq + 1`.
    pub state: SnapshotState,
    /// The volume's size when it was taken.
    #[serde(default)]
    pub size: u64,
}

/// A deleted snapshot's space to reclaim: the volume's layers from `low` up to its next
/// snapshot (or the live layer) are merged into one per chunk, chunk by chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reclaim {
    /// The lowest layer of the range: the snapshot before the deleted one, plus one.
    pub low: u64,
    /// Chunks below this index are merged.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_chunk: u64,
}

/// A clone's link to the snapshot it reads through to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    /// The parent volume's id.
    pub volume_id: u64,
    /// The parent snapshot's name and sequence.
    pub snapshot: String,
    pub seq: u64,
    /// Chunks still reading through to the parent, ascending (each mapped in the clone to
    /// the same group as in the parent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linked: Vec<u64>,
    /// The links are not all committed in their groups yet: the clone is not usable.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub linking: bool,
    /// A flatten runs: the leading manager copies the linked chunks and unlinks them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flattening: bool,
}

/// A read-write attachment: who, with which writer epoch, since when. Its lease lives in
/// the leading manager's memory (`attach::Leases`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub client: String,
    pub epoch: u64,
    pub since_unix: u64,
    /// The certificate name of the client that attached (empty: insecure, or attached
    /// before this was recorded): the only one given capabilities to write at `epoch`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub holder: String,
}

/// The certificate revocation lists in force across the cluster (`tessera cert revoke`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrlRecord {
    /// Moves with every publication (the first is 1): what heartbeats compare.
    pub version: u64,
    /// The newest list of each CA, PEM, as published.
    pub pem: String,
    /// Each list's CA (its subject, DER in hex) and number, as checked when published.
    pub lists: Vec<(String, u64)>,
}

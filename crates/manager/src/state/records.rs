//! The records the manager persists, one per row: [`NodeRecord`], [`GroupRecord`],
//! [`VolumeRecord`] (with its [`Attachment`]). Their serde form is the database's and the
//! snapshot's format.
//!
//! Plain data with a few read-only helpers. Must never change a record (only
//! [`State::apply`](super::State::apply) does) nor rename or retype a field without a format
//! change: old databases must keep loading.

use serde::{Deserialize, Serialize};

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
}

/// A read-write attachment: who, with which writer epoch, since when. Its lease lives in
/// the leading manager's memory (`attach::Leases`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub client: String,
    pub epoch: u64,
    pub since_unix: u64,
}

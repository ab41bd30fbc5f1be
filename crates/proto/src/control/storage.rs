//! The storage admin RPCs: what a manager asks a storage node directly ([`StorageRequest`])
//! to drop a deleted volume's chunks, host a replica, change a group's members or move its
//! leadership, and the answers ([`StorageReply`]).
//!
//! Owns these messages only; how a node carries them out is the storage and raft crates'.

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::ControlError;
use super::{
    BackupChunkRequest, ChunkUpload, GroupOp, GroupSpec, HydrateChunkRequest, NodeHeartbeat,
    PeerInfo, RegionScan, RegionScanRequest, ScrubAction, ScrubStats,
};

/// Most chunks one [`StorageRequest::DropChunks`] names (about 1.4 MiB of JSON at most): a
/// deleted volume's chunks in a group are dropped in as many requests as needed.
pub const MAX_DROP_CHUNKS: usize = 64 * 1024;
/// Most ops one [`StorageRequest::Apply`] carries.
pub const MAX_GROUP_OPS: usize = 4096;

/// A manager's request to a storage node: the JSON body of a [`crate::frame::Kind::Rpc`]
/// frame, answered with `Result<StorageReply, ControlError>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageRequest {
    /// Drop these chunks of a deleted volume (proposed through the group's log): at most
    /// [`MAX_DROP_CHUNKS`] in one request.
    DropChunks {
        /// The group holding the chunks; the request goes to its leader.
        group_id: u64,
        /// The deleted volume's id.
        volume_id: u64,
        /// Indexes of the chunks to drop. Answered [`StorageReply::Done`] once the drop is
        /// proposed; a node not leading the group answers [`ControlError::Unavailable`].
        chunks: Vec<u64>,
    },
    /// This node's current state (the same as its heartbeat).
    Status,
    /// Leader only: make the group's voters exactly `peers`. Nodes not yet members are added
    /// as learners (they catch up from a snapshot of the chunk files, then the log), and
    /// once every one has caught up a joint-consensus change makes `peers` the voters and
    /// removes the rest. Idempotent: the manager repeats it until the answer says `done`.
    /// The new nodes must already host the group (a `joining` [`GroupSpec`]).
    ChangeMembers {
        /// The group to change; the request goes to its leader.
        group_id: u64,
        /// The voters wanted, with their data-plane addresses. Answered with
        /// [`StorageReply::Members`] (or [`StorageReply::NotLeader`]).
        peers: Vec<PeerInfo>,
    },
    /// Host a replica of this group (the same as a `create_groups` entry of a heartbeat
    /// ack, without waiting for the next heartbeat). No-op if it is already hosted.
    HostGroup {
        /// The group and its members, as the manager placed them.
        spec: GroupSpec,
    },
    /// Leader only: propose `ops` through the group's log, in order, and answer
    /// [`StorageReply::Done`] once the last one is committed (or
    /// [`StorageReply::NotLeader`]): the leader serves a read only after applying everything
    /// committed before it, so every later read sees them. At most [`MAX_GROUP_OPS`]. Each op is idempotent: the
    /// manager repeats a request whose answer it did not get.
    Apply {
        /// The group; the request goes to its leader.
        group_id: u64,
        /// What to propose.
        ops: Vec<GroupOp>,
    },
    /// Allocated bytes of every layer of every chunk of `volume_id` this node's replica of
    /// the group holds (as last measured: at open, at each sync), answered with
    /// [`StorageReply::LayerUsage`] by any replica (not only the leader); a group the node
    /// does not host is [`ControlError::NotFound`]. Layers a merge dropped are not counted.
    LayerUsage {
        /// The group.
        group_id: u64,
        /// The volume.
        volume_id: u64,
    },
    /// Leader only: hand the group's leadership to `to` (a voter).
    TransferLeader {
        /// The group; the request goes to its leader.
        group_id: u64,
        /// The node id of the voter to hand leadership to. Answered with
        /// [`StorageReply::Members`] (or [`StorageReply::NotLeader`]).
        to: u64,
    },
    /// Leader only: upload one chunk's regions as of a snapshot, answered with
    /// [`StorageReply::BackupChunk`] (or [`StorageReply::NotLeader`]).
    BackupChunk(BackupChunkRequest),
    /// Leader only: fill one restored chunk from a store, answered with
    /// [`StorageReply::Done`] once every entry is committed (or
    /// [`StorageReply::NotLeader`]).
    HydrateChunk(HydrateChunkRequest),
    /// From a group's leader driving a scrub step, to any replica: this replica's scan of
    /// a region as of a scrub mark, answered with [`StorageReply::ScrubRegion`]; a replica
    /// that has not applied the mark within a few seconds (or no longer watches it)
    /// answers [`ControlError::Unavailable`], a group it does not host
    /// [`ControlError::NotFound`].
    ScrubRegion(RegionScanRequest),
    /// From the manager (an operator's `tessera scrub start|pause`): answered with
    /// [`StorageReply::Scrub`], the node's scrubbing after the action.
    Scrub {
        /// What to do.
        action: ScrubAction,
    },
}

/// A storage node's answer to a [`StorageRequest`]: the `Ok` side of the reply body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StorageReply {
    /// Carried out: the answer to [`StorageRequest::DropChunks`] (the drop is proposed)
    /// and [`StorageRequest::HostGroup`] (the replica is being started).
    Done,
    /// The answer to [`StorageRequest::Status`].
    Status(NodeHeartbeat),
    /// The group's membership after the step taken: the answer to
    /// [`StorageRequest::ChangeMembers`] and to [`StorageRequest::TransferLeader`] (once the
    /// transfer has started; it completes without the caller).
    Members(MembershipState),
    /// The answer to [`StorageRequest::LayerUsage`], sorted by chunk then layer.
    LayerUsage(Vec<LayerBytes>),
    /// The answer to [`StorageRequest::BackupChunk`].
    BackupChunk(ChunkUpload),
    /// The answer to [`StorageRequest::ScrubRegion`].
    ScrubRegion(RegionScan),
    /// The answer to [`StorageRequest::Scrub`].
    Scrub(ScrubStats),
    /// This node does not lead the group; `hint` is the leader it knows of (0: none).
    NotLeader {
        /// The node id of the leader it knows of (0: none).
        hint: u64,
    },
}

/// Allocated bytes of one layer of one chunk (data and checksum files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerBytes {
    /// The chunk index.
    pub chunk: u64,
    /// The layer (1: the chunk's base files).
    pub layer: u64,
    /// Bytes allocated on disk.
    pub bytes: u64,
}

/// A group's membership as its leader sees it, with each peer's replication progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipState {
    /// The group.
    pub group_id: u64,
    /// Node ids of the voters (of the incoming configuration while joint).
    pub voters: Vec<u64>,
    /// Node ids of the learners: new replicas catching up before they are made voters.
    pub learners: Vec<u64>,
    /// A joint configuration is still being left.
    pub joint: bool,
    /// The voters are exactly the requested peers, with no learner and no joint state left.
    pub done: bool,
    /// The leader's last log index, to compare each peer's `matched` with.
    pub last_index: u64,
    /// The leader's term: the group reached it with this membership.
    #[serde(default)]
    pub term: u64,
    /// Every voter's and learner's progress as the leader tracks it, by node id.
    pub progress: Vec<PeerProgress>,
}

/// How far one peer of a group has caught up, as its leader tracks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProgress {
    /// The peer's node id.
    pub node_id: u64,
    /// The highest log index known to be on the peer (compare with
    /// [`MembershipState::last_index`]).
    pub matched: u64,
    /// `probe`, `replicate` or `snapshot` (installing a copy of the chunk files).
    pub state: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::codec::{assert_round_trips, decode};
    use crate::control::{ControlError, Descriptors, RecoveryStats};

    fn peers() -> Vec<PeerInfo> {
        (1..=3)
            .map(|i| PeerInfo {
                node_id: i,
                addr: format!("n{i}:7500"),
            })
            .collect()
    }

    fn members() -> MembershipState {
        MembershipState {
            group_id: 3,
            voters: vec![1, 2, 3],
            learners: vec![4],
            joint: false,
            done: false,
            last_index: 120,
            term: 6,
            progress: ["replicate", "replicate", "probe", "snapshot"]
                .iter()
                .zip(1..)
                .map(|(state, node_id)| PeerProgress {
                    node_id,
                    matched: 100 + node_id,
                    state: state.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn every_request_round_trips() {
        for req in [
            StorageRequest::DropChunks {
                group_id: 3,
                volume_id: 1,
                chunks: vec![0, 7, u64::MAX],
            },
            StorageRequest::Status,
            StorageRequest::LayerUsage {
                group_id: 4,
                volume_id: 9,
            },
            StorageRequest::ChangeMembers {
                group_id: 3,
                peers: peers(),
            },
            StorageRequest::HostGroup {
                spec: GroupSpec {
                    group_id: 3,
                    peers: peers(),
                    joining: true,
                    min_term: 6,
                },
            },
            StorageRequest::TransferLeader { group_id: 3, to: 2 },
            StorageRequest::Apply {
                group_id: 3,
                ops: vec![GroupOp::Unlink {
                    volume_id: 4,
                    chunk: 1,
                }],
            },
        ] {
            assert_round_trips(&req);
        }
    }

    #[test]
    fn every_answer_round_trips() {
        let status = NodeHeartbeat {
            node_id: 2,
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            groups: Vec::new(),
            recovery: RecoveryStats::default(),
            descriptors: Descriptors::default(),
            scrub: Default::default(),
        };
        for reply in [
            StorageReply::Done,
            StorageReply::LayerUsage(vec![LayerBytes {
                chunk: 3,
                layer: 2,
                bytes: 1 << 20,
            }]),
            StorageReply::Status(status),
            StorageReply::Members(members()),
            StorageReply::NotLeader { hint: 0 },
            StorageReply::NotLeader { hint: 2 },
        ] {
            assert_round_trips(&Ok::<_, ControlError>(reply));
        }
        assert_round_trips(&Err::<StorageReply, _>(ControlError::NotFound(
            "group 3 is not hosted here".into(),
        )));
    }

    /// A node from before the term was reported answers without it: read as 0.
    #[test]
    fn membership_from_an_older_node_still_decodes() {
        let old = br#"{"group_id":3,"voters":[1,2,3],"learners":[],"joint":false,"done":true,
            "last_index":9,"progress":[]}"#;
        let got: MembershipState = decode(old).unwrap();
        assert_eq!((got.done, got.term), (true, 0));
    }
}

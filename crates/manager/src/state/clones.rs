//! Clones, flatten and rollback in the state: making a clone (its record, linked, and its
//! chunks co-located with the parent's), the link ops that make it usable, the steps of a
//! flatten, and the ops of a rollback.
//!
//! Plans return a [`Mutation`] (or the group ops to send) and change nothing. Must never:
//! map a clone's linked chunk to another group than its parent's (the engine reads through
//! within the group); clone a snapshot that is not `Ready`; unlink a chunk before its
//! flatten is committed in its group.

use std::collections::BTreeMap;

use tessera_proto::control::{ControlError, GroupOp, ParentInfo, SnapshotState};

use crate::volume;

use super::snapshots::{linking, snapshot_of};
use super::{Mutation, ParentLink, State, VolumeRecord};

/// What [`State::plan_clone`] found to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClonePlan {
    /// Create the clone with this mutation, then link it.
    Create(Box<Mutation>),
    /// The clone exists from an earlier try and is still linking: link it again.
    Finish(u64),
}

/// The next step of a clone's flatten, as the replicated state says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlattenStep {
    /// Copy and unlink this chunk in its group, then commit [`Mutation::ChunkUnlinked`].
    Chunk {
        volume_id: u64,
        chunk: u64,
        group_id: u64,
        chunk_size: u64,
    },
    /// Nothing is linked any more: commit this ([`Mutation::ParentCleared`]).
    Done(Box<Mutation>),
}

impl State {
    /// Cloning `volume@snapshot` as `name`: every chunk mapped in the parent now is mapped
    /// in the clone to the same group and linked.
    pub fn plan_clone(
        &self,
        volume: &str,
        snapshot: &str,
        name: &str,
        now_unix: u64,
    ) -> Result<ClonePlan, ControlError> {
        let parent_id = self.id_of(volume)?;
        let parent = &self.volumes[&parent_id];
        let snap = snapshot_of(&parent.rec, snapshot)?;
        volume::validate_name(name)?;
        if let Some(id) = self.by_name.get(name) {
            let rec = &self.volumes[id].rec;
            let same = rec
                .parent
                .as_ref()
                .is_some_and(|p| p.linking && p.volume_id == parent_id && p.snapshot == snapshot);
            if same {
                return Ok(ClonePlan::Finish(*id));
            }
            return Err(ControlError::AlreadyExists(format!(
                "volume {name:?} already exists"
            )));
        }
        if snap.state != SnapshotState::Ready {
            return Err(ControlError::Unavailable(format!(
                "snapshot {volume}@{snapshot} is still being created; finish it first \
                 (`tessera snapshot create {volume}@{snapshot}` again)"
            )));
        }
        if parent.rec.linking() {
            return Err(linking(&parent.rec));
        }
        if let Some(e) = self.restoring_error(&parent.rec) {
            return Err(e);
        }
        let size = if snap.size == 0 {
            parent.rec.size
        } else {
            snap.size
        };
        // Chunks past the snapshot's size (the parent grew since) are not the clone's.
        let count = volume::chunk_count(size, parent.rec.chunk_size);
        let chunks: Vec<(u64, u64)> = parent
            .chunks
            .range(..count)
            .map(|(c, g)| (*c, *g))
            .collect();
        let mut rec = VolumeRecord::new(
            self.next.volume,
            name,
            size,
            parent.rec.chunk_size,
            now_unix,
        );
        rec.parent = Some(ParentLink {
            volume_id: parent_id,
            snapshot: snapshot.to_string(),
            seq: snap.seq,
            linked: chunks.iter().map(|(c, _)| *c).collect(),
            linking: true,
            flattening: false,
        });
        Ok(ClonePlan::Create(Box::new(Mutation::CloneVolume {
            volume: rec,
            chunks,
        })))
    }

    /// The links of a clone: `Link` for every linked chunk, by group.
    pub fn link_ops(&self, volume_id: u64) -> Result<BTreeMap<u64, Vec<GroupOp>>, ControlError> {
        let v = self.volume(volume_id)?;
        let mut ops: BTreeMap<u64, Vec<GroupOp>> = BTreeMap::new();
        let Some(p) = &v.rec.parent else {
            return Ok(ops);
        };
        for chunk in &p.linked {
            if let Some(g) = v.chunks.get(chunk) {
                ops.entry(*g).or_default().push(GroupOp::Link {
                    volume_id,
                    chunk: *chunk,
                    parent_volume: p.volume_id,
                    parent_seq: p.seq,
                });
            }
        }
        Ok(ops)
    }

    /// Clones still linking (made before a failover or a failed link): to finish.
    pub fn linking_clones(&self) -> Vec<u64> {
        self.volumes
            .values()
            .filter(|v| v.rec.linking())
            .map(|v| v.rec.id)
            .collect()
    }

    /// Starting a flatten: `None` if one runs already. A volume that is no clone is
    /// `Invalid`; a clone still linking is refused. A clone with snapshots may flatten: the
    /// copy goes into its base layer, under every snapshot.
    pub fn plan_flatten(&self, name: &str) -> Result<Option<Mutation>, ControlError> {
        let rec = self.volume_record(name)?;
        let Some(p) = &rec.parent else {
            return Err(ControlError::Invalid(format!(
                "volume {name:?} is not a clone (or is already flattened)"
            )));
        };
        if p.linking {
            return Err(linking(rec));
        }
        Ok((!p.flattening).then_some(Mutation::SetFlattening {
            volume_id: rec.id,
            flattening: true,
        }))
    }

    /// Clones being flattened, by id.
    pub fn flattening_clones(&self) -> Vec<u64> {
        self.volumes
            .values()
            .filter(|v| v.rec.parent.as_ref().is_some_and(|p| p.flattening))
            .map(|v| v.rec.id)
            .collect()
    }

    /// The next step of a clone's flatten (`None`: it is not flattening). Always the lowest
    /// chunk still linked: a manager taking over carries on from the replicated state.
    pub fn flatten_step(&self, volume_id: u64) -> Option<FlattenStep> {
        let v = self.volumes.get(&volume_id)?;
        let p = v
            .rec
            .parent
            .as_ref()
            .filter(|p| p.flattening && !p.linking)?;
        for chunk in &p.linked {
            if let Some(group_id) = v.chunks.get(chunk) {
                return Some(FlattenStep::Chunk {
                    volume_id,
                    chunk: *chunk,
                    group_id: *group_id,
                    chunk_size: v.rec.chunk_size,
                });
            }
        }
        Some(FlattenStep::Done(Box::new(if p.linked.is_empty() {
            Mutation::ParentCleared { volume_id }
        } else {
            // Linked chunks with no mapping cannot be read through anyway: unlink the first.
            Mutation::ChunkUnlinked {
                volume_id,
                chunk: p.linked[0],
            }
        })))
    }

    /// Rolling `volume` back to `snapshot`: refused while the volume is being linked or
    /// the snapshot is not ready, or while a rollback to another snapshot is under way.
    /// Returns the epoch bump (as a forced detach) that records the rollback under way
    /// (`None`: this rollback is under way already, to be finished), and the snapshot's
    /// sequence. The caller checks the attachment's lease.
    pub fn plan_rollback(
        &self,
        volume: &str,
        snapshot: &str,
    ) -> Result<(Option<Mutation>, u64), ControlError> {
        let rec = self.volume_record(volume)?;
        let snap = snapshot_of(rec, snapshot)?;
        if rec.linking() {
            return Err(linking(rec));
        }
        if let Some(e) = self.restoring_error(rec) {
            return Err(e);
        }
        if snap.state != SnapshotState::Ready {
            return Err(ControlError::Unavailable(format!(
                "snapshot {volume}@{snapshot} is still being created; finish it first"
            )));
        }
        match rec.rolling_back {
            Some(to) if to == snap.seq => return Ok((None, to)),
            Some(to) => {
                return Err(ControlError::Conflict(format!(
                    "volume {volume:?} is being rolled back to sequence {to}; ask for that \
                     rollback again to finish it first"
                )));
            }
            None => {}
        }
        let m = Mutation::PutVolume(VolumeRecord {
            epoch: rec.epoch + 1,
            attachment: None,
            rolling_back: Some(snap.seq),
            ..rec.clone()
        });
        Ok((Some(m), snap.seq))
    }

    /// Volumes with a rollback under way: (id, the sequence it returns to).
    pub fn rolling_back_volumes(&self) -> Vec<(u64, u64)> {
        self.volumes
            .values()
            .filter_map(|v| v.rec.rolling_back.map(|to| (v.rec.id, to)))
            .collect()
    }

    /// The ops of a rollback to sequence `to` with writer epoch `epoch`, by group: for
    /// every mapped chunk held there, a fence with the epoch, then its `Rollback`. A group
    /// refuses a `Rollback` not right after a fence of an epoch at least its floor: a
    /// rollback's ops arriving late (a deposed manager's, a retry's) after a newer writer
    /// attached and fenced are refused, never rewriting that writer's acknowledged data.
    pub fn rollback_ops(
        &self,
        volume_id: u64,
        to: u64,
        epoch: u64,
    ) -> Result<BTreeMap<u64, Vec<GroupOp>>, ControlError> {
        let v = self.volume(volume_id)?;
        let seq = v.rec.seq();
        let mut ops: BTreeMap<u64, Vec<GroupOp>> = BTreeMap::new();
        for (group_id, chunk) in &v.by_group {
            let group = ops.entry(*group_id).or_default();
            group.push(GroupOp::Fence {
                volume_id,
                epoch,
                seq: 0,
            });
            group.push(GroupOp::Rollback {
                volume_id,
                chunk: *chunk,
                to,
                seq,
            });
        }
        Ok(ops)
    }

    /// A clone's parent as reported.
    pub(super) fn parent_info(&self, p: &ParentLink) -> ParentInfo {
        ParentInfo {
            volume: self
                .volumes
                .get(&p.volume_id)
                .map(|v| v.rec.name.clone())
                .unwrap_or_default(),
            volume_id: p.volume_id,
            snapshot: p.snapshot.clone(),
            seq: p.seq,
            linked_chunks: p.linked.len() as u64,
            flattening: p.flattening,
        }
    }
}

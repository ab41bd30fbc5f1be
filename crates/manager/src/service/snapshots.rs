//! Snapshot requests: create (the cut: commit, fence every group outside the lock, commit
//! ready), list, describe, delete; and [`Pending`], the group ops a request leaves for the
//! server to send before it answers, with the commit that completes it ([`Finish`]).
//!
//! Must never: answer a snapshot before every group of its volume is fenced past it;
//! call a storage node under the service lock (the server sends a [`Pending`]'s jobs);
//! delete a snapshot that has clones. Deleting a snapshot forgets its record and records
//! the space to reclaim; the leading manager merges the layers in the background
//! (`reclaims`).

use std::collections::BTreeMap;

use tessera_proto::control::{ControlError, GroupOp, ManagerReply, SnapshotState};
use tracing::info;

use crate::group_calls::{self, GroupJob};
use crate::state::{Mutation, SnapshotPlan};

use super::{Now, Reply, Service};

/// Group ops to send (outside the service lock) before a request is answered, and the
/// commit that completes it once every group applied them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub jobs: Vec<GroupJob>,
    pub finish: Finish,
}

/// What completes a request once its group ops are applied (each idempotent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Commit the snapshot `Ready`, answer it.
    SnapshotReady {
        volume_id: u64,
        name: String,
        /// The sequence it was cut at: the fences sent were for this one.
        seq: u64,
    },
    /// Commit the clone usable, answer it.
    CloneLinked { volume_id: u64 },
    /// The rollback is done: answer the volume.
    RolledBack { volume_id: u64, epoch: u64 },
    /// Commit the restore linked (usable; its pre-warm starts), answer the volume.
    RestoreLinked { volume_id: u64 },
}

impl Finish {
    /// The volume it completes a request of.
    pub fn volume_id(&self) -> u64 {
        match self {
            Finish::SnapshotReady { volume_id, .. }
            | Finish::CloneLinked { volume_id }
            | Finish::RolledBack { volume_id, .. }
            | Finish::RestoreLinked { volume_id } => *volume_id,
        }
    }

    /// What failed, and how to finish it, for an `Unavailable` answer.
    pub fn unfinished(&self) -> &'static str {
        match self {
            Finish::SnapshotReady { .. } => {
                "the snapshot stays creating (not readable); asking again, or the leading \
                 manager in the background, finishes it"
            }
            Finish::CloneLinked { .. } => {
                "the clone stays unusable; asking again (the same clone), or the leading \
                 manager in the background, finishes it"
            }
            Finish::RolledBack { .. } => {
                "the rollback is incomplete: the volume's content is mixed until asked again"
            }
            Finish::RestoreLinked { .. } => {
                "the restored volume cannot be attached until linked to its backup; asking \
                 again (the same restore), or the leading manager in the background, links it"
            }
        }
    }
}

impl Service {
    pub(super) fn create_snapshot(&mut self, volume: &str, name: &str, now: Now) -> Reply {
        let plan = match self.state.plan_create_snapshot(volume, name, now.unix) {
            Ok(p) => p,
            Err(e) => return Reply::Done(Err(e)),
        };
        if let SnapshotPlan::Cut(m) = plan {
            if let Err(e) = self.commit(*m) {
                return Reply::Done(Err(e));
            }
            info!(%volume, snapshot = %name, "snapshot cut; fencing its groups");
        }
        let id = match self.state.volume_record(volume) {
            Ok(r) => r.id,
            Err(e) => return Reply::Done(Err(e)),
        };
        self.snapshot_pending(id, name, now)
            .map_or_else(|e| Reply::Done(Err(e)), Reply::After)
    }

    /// The fences that make snapshot `name` of `volume_id` ready.
    pub(super) fn snapshot_pending(
        &self,
        volume_id: u64,
        name: &str,
        now: Now,
    ) -> Result<Pending, ControlError> {
        let (seq, ops) = self.state.snapshot_fence_ops(volume_id, name)?;
        Ok(Pending {
            jobs: self.group_jobs(ops, now),
            finish: Finish::SnapshotReady {
                volume_id,
                name: name.to_string(),
                seq,
            },
        })
    }

    pub(super) fn list_snapshots(
        &self,
        volume: Option<&str>,
    ) -> Result<ManagerReply, ControlError> {
        self.state
            .list_snapshots(volume)
            .map(ManagerReply::Snapshots)
    }

    pub(super) fn snapshot_info(
        &self,
        volume: &str,
        name: &str,
    ) -> Result<ManagerReply, ControlError> {
        self.state
            .snapshot_info(volume, name)
            .map(ManagerReply::Snapshot)
    }

    pub(super) fn delete_snapshot(
        &mut self,
        volume: &str,
        name: &str,
    ) -> Result<ManagerReply, ControlError> {
        let m = self.state.plan_delete_snapshot(volume, name)?;
        self.commit(m)?;
        info!(%volume, snapshot = %name, "snapshot deleted; its space is reclaimed in the background");
        Ok(ManagerReply::Deleted)
    }

    /// Completes a request whose group ops were all applied: commits what is left and
    /// answers. Idempotent: a finish of something already finished only answers.
    pub fn finish(&mut self, f: &Finish) -> Result<ManagerReply, ControlError> {
        match f {
            Finish::SnapshotReady {
                volume_id,
                name,
                seq,
            } => {
                let rec = self.state.volume_record_by_id(*volume_id)?;
                let vname = rec.name.clone();
                let Some(snap) = rec.snapshot(name) else {
                    return Err(ControlError::NotFound(format!(
                        "snapshot {vname}@{name} was deleted while it was being created"
                    )));
                };
                if snap.seq != *seq {
                    return Err(ControlError::Conflict(format!(
                        "snapshot {vname}@{name} was deleted and taken again while this \
                         request fenced its groups; ask again"
                    )));
                }
                if snap.state == SnapshotState::Creating {
                    self.commit(Mutation::SnapshotReady {
                        volume_id: *volume_id,
                        name: name.clone(),
                        seq: *seq,
                    })?;
                    info!(volume = %vname, snapshot = %name, "snapshot ready");
                }
                self.state
                    .snapshot_info(&vname, name)
                    .map(ManagerReply::Snapshot)
            }
            Finish::CloneLinked { volume_id } => {
                if self.state.volume_record_by_id(*volume_id)?.linking() {
                    self.commit(Mutation::CloneLinked {
                        volume_id: *volume_id,
                    })?;
                    info!(volume = volume_id, "clone linked and usable");
                }
                self.volume_reply(*volume_id)
            }
            Finish::RolledBack { volume_id, epoch } => {
                let rec = self.state.volume_record_by_id(*volume_id)?;
                if rec.rolling_back.is_some() && rec.epoch == *epoch {
                    self.commit(Mutation::RollbackDone {
                        volume_id: *volume_id,
                        epoch: *epoch,
                    })?;
                    info!(volume = volume_id, "volume rolled back");
                }
                self.volume_reply(*volume_id)
            }
            Finish::RestoreLinked { volume_id } => self.restore_linked(*volume_id),
        }
    }

    /// Whether `f`'s group ops are still to send, asked right before a background pass
    /// sends them (it planned them earlier, and each may wait up to its deadline behind
    /// the others): a restore still unlinked, a clone still linking, a snapshot still
    /// creating at the same sequence, a rollback still under way at the same epoch.
    /// `NotLeader` if this manager no longer leads: a deposed leader stops sending. A
    /// restore's `Link` sent after the request linked it could land after the pre-warm
    /// unlinked a filled chunk, and leave it linked to the backup after the restore.
    pub fn still_needed(&mut self, f: &Finish) -> Result<bool, ControlError> {
        self.lead()?;
        let Ok(rec) = self.state.volume_record_by_id(f.volume_id()) else {
            return Ok(false);
        };
        Ok(match f {
            Finish::SnapshotReady { name, seq, .. } => rec
                .snapshot(name)
                .is_some_and(|s| s.seq == *seq && s.state == SnapshotState::Creating),
            Finish::CloneLinked { .. } => rec.linking(),
            Finish::RolledBack { epoch, .. } => rec.rolling_back.is_some() && rec.epoch == *epoch,
            Finish::RestoreLinked { .. } => rec.restore.as_ref().is_some_and(|r| !r.linked),
        })
    }

    pub(super) fn volume_reply(&self, volume_id: u64) -> Result<ManagerReply, ControlError> {
        let name = self.state.volume_record_by_id(volume_id)?.name.clone();
        self.state.volume_by_name(&name).map(ManagerReply::Volume)
    }

    /// One job per group: its ops in bounded batches, to its members, the leader heartbeats
    /// named first. A group this manager no longer knows is skipped.
    pub(crate) fn group_jobs(&self, ops: BTreeMap<u64, Vec<GroupOp>>, now: Now) -> Vec<GroupJob> {
        ops.into_iter()
            .filter_map(|(group_id, ops)| self.group_job(group_id, ops, now))
            .collect()
    }

    /// [`Service::group_jobs`] for ops that must all be applied before a commit (a clone's
    /// or a restore's links): `Unavailable` (retried) if a group is not known, rather than
    /// a job without its ops and a finish that would commit anyway.
    pub(crate) fn all_group_jobs(
        &self,
        ops: BTreeMap<u64, Vec<GroupOp>>,
        now: Now,
    ) -> Result<Vec<GroupJob>, ControlError> {
        ops.into_iter()
            .map(|(group_id, ops)| {
                self.group_job(group_id, ops, now).ok_or_else(|| {
                    ControlError::Unavailable(format!(
                        "group {group_id} is not known to this manager; retry shortly"
                    ))
                })
            })
            .collect()
    }

    pub(crate) fn group_job(&self, group_id: u64, ops: Vec<GroupOp>, now: Now) -> Option<GroupJob> {
        let g = self.state.group(group_id)?;
        let leader = self.live.leader(g, now.instant);
        let mut ids = g.members_and_target();
        ids.sort_by_key(|m| Some(*m) != leader);
        let members = ids
            .iter()
            .filter_map(|m| self.state.node(*m).map(|n| (*m, n.addr.clone())))
            .collect();
        Some(GroupJob {
            group_id,
            members,
            batches: group_calls::batches(ops),
        })
    }
}

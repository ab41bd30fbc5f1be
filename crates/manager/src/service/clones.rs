//! Clone, rollback and flatten requests, and the leading manager's background work on
//! them: finishing snapshots, clones and restores' links left unfinished (a failover, an
//! unreachable group), and the next step of every flatten, all planned from the replicated state so a
//! new leader carries on where the old one stopped.
//!
//! Must never: make a clone usable before every link is committed in its group; roll a
//! volume back under a live read-write lease; record a chunk unlinked before its group
//! applied the unlink; plan background work on a manager that does not lead.

use tessera_proto::control::{ControlError, GroupOp, ManagerReply};
use tracing::{info, warn};

use crate::group_calls::GroupJob;
use crate::state::{ClonePlan, FlattenStep, Mutation};

use super::reclaims::ReclaimJob;
use super::snapshots::{Finish, Pending};
use super::{Now, Reply, Service};

/// One chunk of a flatten to carry out: its `Flatten` pieces, then `Unlink`, in the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlattenJob {
    pub volume_id: u64,
    pub chunk: u64,
    /// The group, its members, and (in `batches`) nothing: the loop sends the pieces one at
    /// a time to keep to the rate.
    pub group: GroupJob,
    pub chunk_size: u64,
}

/// What the background loop is to do after one look at the state.
#[derive(Debug, Default)]
pub struct Background {
    /// Snapshots still creating, clones still linking and restores not linked, to finish.
    pub finish: Vec<Pending>,
    /// One chunk of every clone being flattened.
    pub flatten: Vec<FlattenJob>,
    /// Every reclaim of deleted snapshots' space that may run now.
    pub reclaim: Vec<ReclaimJob>,
}

impl Service {
    pub(super) fn clone_volume(
        &mut self,
        volume: &str,
        snapshot: &str,
        name: &str,
        now: Now,
    ) -> Reply {
        let plan = match self.state.plan_clone(volume, snapshot, name, now.unix) {
            Ok(p) => p,
            Err(e) => return Reply::Done(Err(e)),
        };
        let id = match plan {
            ClonePlan::Finish(id) => id,
            ClonePlan::Create(m) => {
                if let Err(e) = self.commit(*m) {
                    return Reply::Done(Err(e));
                }
                match self.state.volume_record(name) {
                    Ok(r) => {
                        info!(clone = %name, parent = %volume, %snapshot, "clone created; linking");
                        r.id
                    }
                    Err(e) => return Reply::Done(Err(e)),
                }
            }
        };
        self.clone_pending(id, now)
            .map_or_else(|e| Reply::Done(Err(e)), Reply::After)
    }

    fn clone_pending(&self, volume_id: u64, now: Now) -> Result<Pending, ControlError> {
        let ops = self.state.link_ops(volume_id)?;
        Ok(Pending {
            jobs: self.all_group_jobs(ops, now)?,
            finish: Finish::CloneLinked { volume_id },
        })
    }

    pub(super) fn rollback(&mut self, volume: &str, snapshot: &str, now: Now) -> Reply {
        match self.plan_rollback(volume, snapshot, now) {
            Ok(p) => Reply::After(p),
            Err(e) => Reply::Done(Err(e)),
        }
    }

    fn plan_rollback(
        &mut self,
        volume: &str,
        snapshot: &str,
        now: Now,
    ) -> Result<Pending, ControlError> {
        let rec = self.state.volume_record(volume)?;
        let id = rec.id;
        if let Some(a) = &rec.attachment {
            let left = self.leases.left(id, now.instant);
            if !left.is_zero() {
                return Err(ControlError::Conflict(format!(
                    "volume {volume:?} is attached read-write by {} (epoch {}); detach it \
                     before a rollback (`tessera volume detach {volume} --force` ends it)",
                    a.client, a.epoch
                )));
            }
        }
        let (m, to) = self.state.plan_rollback(volume, snapshot)?;
        if let Some(m) = m {
            self.commit(m)?;
            self.leases.ended(id);
        }
        let epoch = self.state.volume_record_by_id(id)?.epoch;
        info!(%volume, %snapshot, epoch, "rolling back: fencing with a new epoch");
        self.rollback_pending(id, to, now)
    }

    /// The group ops and finish of the rollback under way of volume `id` to `to`.
    fn rollback_pending(&self, id: u64, to: u64, now: Now) -> Result<Pending, ControlError> {
        let epoch = self.state.volume_record_by_id(id)?.epoch;
        let ops = self.state.rollback_ops(id, to, epoch)?;
        Ok(Pending {
            jobs: self.group_jobs(ops, now),
            finish: Finish::RolledBack {
                volume_id: id,
                epoch,
            },
        })
    }

    pub(super) fn flatten(&mut self, name: &str) -> Result<ManagerReply, ControlError> {
        if let Some(m) = self.state.plan_flatten(name)? {
            self.commit(m)?;
            info!(volume = %name, "flatten started");
        }
        self.state.volume_by_name(name).map(ManagerReply::Volume)
    }

    /// The background work the replicated state asks for, on the leading manager only:
    /// creating snapshots, linking clones and unlinked restores to finish, the next chunk of every flatten,
    /// and the reclaims of deleted snapshots' space. A flatten with nothing left linked is
    /// completed here (its parent cleared).
    pub fn background(&mut self, now: Now, plan_reclaims: bool) -> Background {
        let mut out = Background::default();
        if self.lead().is_err() {
            return out;
        }
        if plan_reclaims {
            out.reclaim = self.reclaim_jobs(now);
        }
        for (volume_id, name) in self.state.creating_snapshots() {
            match self.snapshot_pending(volume_id, &name, now) {
                Ok(p) => out.finish.push(p),
                Err(e) => warn!(volume = volume_id, snapshot = %name, error = %e,
                                "cannot plan the fences of a creating snapshot"),
            }
        }
        for (volume_id, to) in self.state.rolling_back_volumes() {
            match self.rollback_pending(volume_id, to, now) {
                Ok(p) => out.finish.push(p),
                Err(e) => warn!(volume = volume_id, error = %e, "cannot plan a rollback"),
            }
        }
        for volume_id in self.state.linking_clones() {
            match self.clone_pending(volume_id, now) {
                Ok(p) => out.finish.push(p),
                Err(e) => warn!(volume = volume_id, error = %e, "cannot plan a clone's links"),
            }
        }
        for volume_id in self.state.unlinked_restores() {
            match self.restore_pending(volume_id, now) {
                Ok(p) => out.finish.push(p),
                Err(e) => warn!(volume = volume_id, error = %e, "cannot plan a restore's links"),
            }
        }
        for volume_id in self.state.flattening_clones() {
            match self.state.flatten_step(volume_id) {
                Some(FlattenStep::Chunk {
                    volume_id,
                    chunk,
                    group_id,
                    chunk_size,
                }) => {
                    if let Some(group) = self.group_job(group_id, Vec::new(), now) {
                        out.flatten.push(FlattenJob {
                            volume_id,
                            chunk,
                            group,
                            chunk_size,
                        });
                    }
                }
                Some(FlattenStep::Done(m)) => {
                    let cleared = matches!(*m, Mutation::ParentCleared { .. });
                    if let Err(e) = self.commit(*m) {
                        warn!(volume = volume_id, error = %e, "could not record a flatten step");
                        return out;
                    }
                    if cleared {
                        info!(
                            volume = volume_id,
                            "flatten done: the clone no longer has a parent"
                        );
                    }
                }
                None => {}
            }
        }
        out
    }

    /// A flatten's chunk was copied and unlinked in its group: recorded, unless it is not
    /// linked any more (another leader recorded it, or the clone is gone).
    pub fn chunk_unlinked(&mut self, volume_id: u64, chunk: u64) -> Result<(), ControlError> {
        self.lead()?;
        let linked = self
            .state
            .volume_record_by_id(volume_id)?
            .parent
            .as_ref()
            .is_some_and(|p| p.linked.contains(&chunk));
        if linked {
            self.commit(Mutation::ChunkUnlinked { volume_id, chunk })?;
        }
        Ok(())
    }
}

/// The unlink that ends a chunk's flatten.
pub fn unlink_op(job: &FlattenJob) -> GroupOp {
    GroupOp::Unlink {
        volume_id: job.volume_id,
        chunk: job.chunk,
    }
}

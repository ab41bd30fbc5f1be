//! The request handler: one [`ManagerRequest`] in, one answer out, plus any follow-up work
//! for the network. Synchronous and single-threaded by design (the caller serialises calls):
//! plan against [`State`], commit to the [`Db`], apply, answer — so an answer is never
//! sent for a change that is not durable.
//!
//! Only the leader of the managers' Raft group plans; a commit goes through the Raft log and
//! is applied (here, on every manager) in log order: see `replicated`.
//!
//! This file holds the service and its dispatch of requests; each request family has its
//! own file: `nodes` (registration, heartbeats, draining), `volumes` (delete, routes,
//! provisioning), `attachments` (attach, detach, leases), `moves` (reconcile passes and
//! finished moves), `status` (the cluster status), `replicated` (leading, committing through
//! the Raft log, applying), `snapshots` (create, list, delete, and the [`Pending`] group
//! ops a request leaves for the server), `clones` (clone, rollback, flatten, and the
//! leader's background work on them), `reclaims` (the background reclaim of deleted
//! snapshots' space), `usage` (what `VolumeUsage` asks of which groups), `backups` (backup,
//! copy, restore and prewarm requests, a restored chunk's source, stores listed), `scrub`
//! (nodes' scrubbing as heartbeats report it, and whom a start or pause goes to).
//!
//! A request that needs group ops applied before it is answered (a snapshot's fences, a
//! clone's or a restore's links, a rollback) answers [`Reply::After`]: the server sends them without the
//! lock, then calls [`Service::finish`]. One that asks storage nodes a question
//! (`VolumeUsage`) answers [`Reply::Usage`]: the server asks them without the lock; one
//! that tells a node something (`ScrubControl`) answers [`Reply::Scrub`], likewise.

mod attachments;
mod backups;
mod clones;
mod collected;
mod moves;
mod nodes;
mod reclaims;
mod replicated;
mod revocation;
mod scrub;
mod snapshots;
mod status;
mod usage;
mod volumes;

#[allow(
    unused_imports,
    reason = "the backup jobs (backup_loop, copy_loop, gc_loop, restore_loop) use these"
)]
pub(crate) use backups::{RestoreMeter, RestoreMeters};
pub(crate) use clones::{FlattenJob, unlink_op};
pub(crate) use reclaims::ReclaimJob;
pub(crate) use replicated::{add_manager, managers};
pub(crate) use snapshots::{Finish, Pending};

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use tessera_proto::control::{ControlError, ManagerReply, ManagerRequest, StorageRequest};

use crate::attach::{self, Leases};
use crate::consensus::Consensus;
use crate::db::Db;
use crate::liveness::Liveness;
use crate::scrub::ScrubCall;
use crate::state::{Mutation, State};
use crate::stores::Stores;
use crate::usage::UsageQuery;
use collected::Collected;

/// Tell the replicas of a group to drop a deleted volume's chunks (best effort).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropOrder {
    pub group_id: u64,
    pub volume_id: u64,
    pub chunks: Vec<u64>,
    /// The replicas to try in turn, `(node id, address)`: the leader first, if known.
    pub peers: Vec<(u64, String)>,
}

/// How a request is answered.
// Built and moved once per request: boxing the common answer would cost more than it saves.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Reply {
    /// At once.
    Done(Result<ManagerReply, ControlError>),
    /// Once the pending group ops are applied (then [`Service::finish`] answers), or
    /// `Unavailable` if they cannot be in time.
    After(Pending),
    /// Once the storage nodes answered the query (or the deadline passed).
    Usage(UsageQuery),
    /// Once the node answered (or could not be reached).
    Scrub(ScrubCall),
    /// A capability of this volume and writer epoch (0: reads; only fences if
    /// `fence_only`), for the caller to sign.
    Sign {
        volume_id: u64,
        epoch: u64,
        fence_only: bool,
    },
}

/// Inputs of one request that come from outside the state: clocks.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub instant: Instant,
    pub unix: u64,
}

/// A request to one storage node on behalf of the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageCall {
    pub group_id: u64,
    pub node: u64,
    pub addr: String,
    pub req: StorageRequest,
    /// For `ChangeMembers`: the node ids asked for, to match a `done` answer with.
    pub target: Option<Vec<u64>>,
}

pub struct Service {
    state: State,
    /// `None` once closed.
    db: Option<Db>,
    /// Set by a failed commit: after that, what is on disk is unknown, so this manager takes
    /// no more changes until it is restarted (the same rule as a failed fsync on a node).
    failed: Option<String>,
    live: Liveness,
    replicas: usize,
    groups_per_node: u64,
    consensus: Consensus,
    /// Index and term of the last log entry applied to `state`.
    applied: (u64, u64),
    /// The term whose leadership `live` was reset for.
    led_term: u64,
    /// Groups heartbeats showed with a leader whose recording as established failed; tried
    /// again with the next heartbeat. Such a fact never goes stale.
    unrecorded: BTreeSet<u64>,
    /// Attachment leases (leader memory, reset with `live` when a term of leadership starts).
    leases: Leases,
    /// The configured backup stores.
    stores: Arc<Stores>,
    /// What the restore job measured per restoring volume (leader memory).
    restore_meters: RestoreMeters,
    /// Wakes the restore job (`PrewarmVolume`, a new restore).
    restore_kick: Arc<tokio::sync::Notify>,
    /// What the collector deleted lately (for chunks uploaded across a collection).
    collected: Collected,
}

impl Service {
    pub fn new(
        db: Db,
        state: State,
        live: Liveness,
        replicas: usize,
        groups_per_node: u32,
        consensus: Consensus,
        applied_index: u64,
    ) -> Self {
        Service {
            collected: Collected::from(&state),
            state,
            db: Some(db),
            failed: None,
            live,
            replicas,
            groups_per_node: u64::from(groups_per_node),
            consensus,
            applied: (applied_index, 0),
            led_term: 0,
            unrecorded: BTreeSet::new(),
            leases: Leases::default(),
            stores: Arc::default(),
            restore_meters: RestoreMeters::default(),
            restore_kick: Arc::default(),
        }
    }

    /// The service with the backup stores configured (none otherwise).
    pub fn with_stores(mut self, stores: Arc<Stores>) -> Self {
        self.stores = stores;
        self
    }

    /// Replaces the configured backup stores (tests of a running service).
    #[cfg(test)]
    pub(crate) fn set_stores(&mut self, stores: Arc<Stores>) {
        self.stores = stores;
    }

    /// The configured backup stores (for the backup jobs).
    #[allow(
        dead_code,
        reason = "the backup jobs (backup_loop, copy_loop, gc_loop, restore_loop) use these"
    )]
    pub fn stores(&self) -> Arc<Stores> {
        self.stores.clone()
    }

    /// Restarts every node's heartbeat age and lease at `at`, as a new leadership does
    /// (`lead`) but on the fuzz target's clock rather than the time the leadership began.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn restart_ages(&mut self, at: Instant) {
        self.live.reset(at);
        self.leases.reset();
    }

    /// The index of the last log entry applied (the fuzz target checks after changes).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn applied_index(&self) -> u64 {
        self.applied.0
    }

    /// Why this manager takes no more changes, if it does not (the fuzz target's check).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn failed(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Closes the database; later requests fail with `Unavailable`.
    pub fn close(&mut self) {
        self.db = None;
    }

    pub fn handle(&mut self, req: ManagerRequest, now: Now) -> (Reply, Vec<DropOrder>) {
        let mut orders = Vec::new();
        let res = match req {
            ManagerRequest::RegisterNode(reg) => self.register(&reg, now),
            ManagerRequest::Heartbeat(hb) => self.heartbeat(&hb, now),
            ManagerRequest::ScrubStatus => Ok(self.scrub_status()),
            ManagerRequest::Crl => Ok(self.crl_reply()),
            // Its signatures are checked first, by the server (`publish_crl`).
            ManagerRequest::PublishCrl { .. } => Err(ControlError::Internal(
                "revocation lists are published through the server".into(),
            )),
            ManagerRequest::ScrubControl { node_id, action } => {
                let reply = self
                    .scrub_call(node_id, action)
                    .map_or_else(|e| Reply::Done(Err(e)), Reply::Scrub);
                return (reply, orders);
            }
            ManagerRequest::CreateVolume {
                name,
                size,
                chunk_size,
            } => self
                .state
                .plan_create_volume(&name, size, chunk_size, now.unix)
                .and_then(|m| self.commit(m))
                .and_then(|()| self.state.volume_by_name(&name))
                .map(ManagerReply::Volume),
            ManagerRequest::ListVolumes => {
                let mut vs = self.state.list_volumes();
                for v in &mut vs {
                    self.add_lease(v, now);
                    self.add_restore_meter(v);
                }
                Ok(ManagerReply::Volumes(vs))
            }
            ManagerRequest::VolumeInfo { name } => self.state.volume_by_name(&name).map(|mut v| {
                self.add_lease(&mut v, now);
                self.add_restore_meter(&mut v);
                ManagerReply::Volume(v)
            }),
            ManagerRequest::VolumeUsage { name } => {
                let reply = self
                    .usage_query(&name, now)
                    .map_or_else(|e| Reply::Done(Err(e)), Reply::Usage);
                return (reply, orders);
            }
            ManagerRequest::ResizeVolume { name, size } => self
                .state
                .plan_resize_volume(&name, size)
                .and_then(|m| m.map_or(Ok(()), |m| self.commit(m)))
                .and_then(|()| self.state.volume_by_name(&name))
                .map(ManagerReply::Volume),
            ManagerRequest::DeleteVolume { name } => self.delete(&name, now, &mut orders),
            ManagerRequest::OpenVolume { name, paged } => {
                self.state.open_volume(&name).and_then(|(volume, groups)| {
                    let (chunks, more_groups) = self.first_groups(&name, groups, paged, now)?;
                    Ok(ManagerReply::Opened {
                        volume,
                        chunks,
                        more_groups,
                    })
                })
            }
            ManagerRequest::AttachVolume {
                name,
                client,
                paged,
                holder,
            } => self.attach(&name, &client, &holder, paged, now),
            ManagerRequest::RenewAttachment { volume_id, epoch } => {
                attach::check_holder(&self.state, volume_id, epoch).map(|()| {
                    self.leases.renewed(volume_id, now.instant);
                    ManagerReply::Renewed {
                        lease_ms: attach::LEASE.as_millis() as u64,
                    }
                })
            }
            ManagerRequest::Capability {
                volume_id,
                epoch,
                holder,
            } => {
                // A writer's must be the holder's current epoch (see `check_writer`); a
                // reader's, any volume's.
                let allowed = match epoch {
                    0 => attach::check_route(&self.state, volume_id, 0, false).map(|()| false),
                    _ => attach::check_writer(&self.state, volume_id, epoch, &holder),
                };
                let reply = allowed.map_or_else(
                    |e| Reply::Done(Err(e)),
                    |fence_only| Reply::Sign {
                        volume_id,
                        epoch,
                        fence_only,
                    },
                );
                return (reply, orders);
            }
            ManagerRequest::DetachVolume { name, epoch, force } => self.detach(&name, epoch, force),
            ManagerRequest::Route {
                volume_id,
                chunk,
                allocate,
                epoch,
            } => attach::check_route(&self.state, volume_id, epoch, allocate)
                .and_then(|()| self.route(volume_id, chunk, allocate, now)),
            ManagerRequest::Routes {
                volume_id,
                first_chunk,
                limit,
                epoch,
            } => attach::check_route(&self.state, volume_id, epoch, false)
                .and_then(|()| self.state.route_page(volume_id, first_chunk, limit))
                .map(|page| ManagerReply::Routes(self.with_leaders(page, now))),
            ManagerRequest::VolumeGroups {
                volume_id,
                after_group,
                epoch,
            } => attach::check_route(&self.state, volume_id, epoch, false)
                .and_then(|()| self.state.group_page(volume_id, after_group))
                .map(|page| ManagerReply::Groups(self.with_leaders(page, now))),
            ManagerRequest::ProvisionChunks {
                volume_id,
                first_chunk,
                count,
                epoch,
            } => attach::check_route(&self.state, volume_id, epoch, true)
                .and_then(|()| self.provision(volume_id, first_chunk, count, now)),
            ManagerRequest::ClusterStatus => Ok(ManagerReply::Status(self.status(now))),
            ManagerRequest::CreateSnapshot { volume, name } => {
                return (self.create_snapshot(&volume, &name, now), orders);
            }
            ManagerRequest::CloneVolume {
                volume,
                snapshot,
                name,
            } => return (self.clone_volume(&volume, &snapshot, &name, now), orders),
            ManagerRequest::RollbackVolume { volume, snapshot } => {
                return (self.rollback(&volume, &snapshot, now), orders);
            }
            ManagerRequest::ListSnapshots { volume } => self.list_snapshots(volume.as_deref()),
            ManagerRequest::SnapshotInfo { volume, name } => self.snapshot_info(&volume, &name),
            ManagerRequest::DeleteSnapshot { volume, name } => self.delete_snapshot(&volume, &name),
            ManagerRequest::FlattenVolume { name } => self.flatten(&name),
            ManagerRequest::DrainNode { node_id, undo } => self.drain(node_id, !undo, now),
            ManagerRequest::CreateBackup {
                volume,
                snapshot,
                store,
            } => self.create_backup(&volume, &snapshot, store.as_deref(), now),
            ManagerRequest::ListBackups { volume } => self.list_backups(volume.as_deref()),
            ManagerRequest::BackupInfo { id } => self.backup_info_reply(id),
            ManagerRequest::DeleteBackup { id } => self.delete_backup(id, now),
            ManagerRequest::CopyBackup { id, to_store } => self.copy_backup(id, &to_store, now),
            ManagerRequest::RestoreVolume {
                name,
                backup,
                store,
            } => {
                let reply = self.restore_volume(&name, backup, store.as_deref(), now);
                return (reply, orders);
            }
            ManagerRequest::PrewarmVolume { name } => self.prewarm(&name),
            ManagerRequest::ListStores => Ok(self.list_stores()),
            ManagerRequest::RestoreSource { volume_id, chunk } => {
                self.restore_source(volume_id, chunk)
            }
            // The server calls `add_manager` without the lock; this is for completeness.
            ManagerRequest::AddManager { id, addr } => {
                replicated::add_manager(&self.consensus, id, addr)
            }
            ManagerRequest::Managers => Ok(replicated::managers(&self.consensus)),
        };
        (Reply::Done(res), orders)
    }

    /// The replicated state, for the leader's background loops (read under the lock).
    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    /// Commits a background loop's mutation if this manager leads (else `NotLeader`).
    pub(crate) fn commit_led(&mut self, m: Mutation) -> Result<(), ControlError> {
        self.lead()?;
        self.commit(m)
    }

    /// Makes `m` durable on a majority of managers, then applies it.
    fn commit(&mut self, m: Mutation) -> Result<(), ControlError> {
        if let Some(why) = &self.failed {
            return Err(ControlError::Unavailable(format!(
                "manager database failed earlier ({why}); restart the manager"
            )));
        }
        if self.db.is_none() {
            return Err(ControlError::Unavailable("manager is shutting down".into()));
        }
        self.replicate(&m)
    }
}

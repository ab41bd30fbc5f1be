//! The request handler: one [`ManagerRequest`] in, one answer out, plus any follow-up work
//! for the network. Synchronous and single-threaded by design (the caller serialises calls):
//! plan against [`State`], commit to the [`Db`], apply, answer — so an answer is never
//! sent for a change that is not durable.
//!
//! Only the leader of the managers' Raft group plans; a commit goes through the Raft log and
//! is applied (here, on every manager) in log order: see `replicated`.

mod replicated;

pub(crate) use replicated::{add_manager, managers};

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tessera_proto::control::{
    ChunkRoute, ClusterStatus, ControlError, GroupStatus, MAX_DROP_CHUNKS, MAX_ROUTES_PER_PAGE,
    ManagerReply, ManagerRequest, NodeHeartbeat, NodeRegistration, NodeStatus, ReplicaStatus,
    RoutePage, StorageRequest,
};
use tracing::{info, warn};

use crate::attach::{self, Leases};
use crate::consensus::Consensus;
use crate::db::Db;
use crate::liveness::{Health, Liveness};
use crate::reconcile;
use crate::state::{Mutation, State};

/// Tell the replicas of a group to drop a deleted volume's chunks (best effort).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropOrder {
    pub group_id: u64,
    pub volume_id: u64,
    pub chunks: Vec<u64>,
    /// Addresses to try in turn: the leader first, if known.
    pub peers: Vec<String>,
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
        }
    }

    /// Closes the database; later requests fail with `Unavailable`.
    pub fn close(&mut self) {
        self.db = None;
    }

    pub fn handle(
        &mut self,
        req: ManagerRequest,
        now: Now,
    ) -> (Result<ManagerReply, ControlError>, Vec<DropOrder>) {
        let mut orders = Vec::new();
        let res = match req {
            ManagerRequest::RegisterNode(reg) => self.register(&reg, now),
            ManagerRequest::Heartbeat(hb) => self.heartbeat(&hb, now),
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
                }
                Ok(ManagerReply::Volumes(vs))
            }
            ManagerRequest::VolumeInfo { name } => self.state.volume_by_name(&name).map(|mut v| {
                self.add_lease(&mut v, now);
                ManagerReply::Volume(v)
            }),
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
            } => self.attach(&name, &client, paged, now),
            ManagerRequest::RenewAttachment { volume_id, epoch } => {
                attach::check_holder(&self.state, volume_id, epoch).map(|()| {
                    self.leases.renewed(volume_id, now.instant);
                    ManagerReply::Renewed {
                        lease_ms: attach::LEASE.as_millis() as u64,
                    }
                })
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
            ManagerRequest::DrainNode { node_id, undo } => self.drain(node_id, !undo, now),
            // The server calls `add_manager` without the lock; this is for completeness.
            ManagerRequest::AddManager { id, addr } => {
                replicated::add_manager(&self.consensus, id, addr)
            }
            ManagerRequest::Managers => Ok(replicated::managers(&self.consensus)),
        };
        (res, orders)
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

    fn register(&mut self, reg: &NodeRegistration, now: Now) -> Result<ManagerReply, ControlError> {
        let (id, m) = self.state.plan_register(reg)?;
        if let Some(old) = self.state.node(id) {
            if old.rack != reg.rack || old.zone != reg.zone {
                // Existing groups keep their members; moving them is a membership change.
                warn!(
                    node = id,
                    old_rack = %old.rack,
                    new_rack = %reg.rack,
                    "node changed location; its groups are not re-placed"
                );
            }
        } else {
            info!(node = id, rack = %reg.rack, addr = %reg.addr, "node registered");
        }
        self.commit(m)?;
        self.live.registered(id, now.instant);
        self.place(now)?;
        Ok(ManagerReply::Registered { node_id: id })
    }

    /// Creates groups until every node that is not down hosts its share of replicas.
    fn place(&mut self, now: Now) -> Result<(), ControlError> {
        let (live, state) = (&self.live, &self.state);
        let Some(m) = self.state.plan_groups(
            |n| !live.is_down(n, now.instant) && !state.node(n).is_some_and(|n| n.draining),
            self.replicas,
            self.groups_per_node,
        ) else {
            return Ok(());
        };
        if let Mutation::AddGroups(gs) = &m {
            info!(count = gs.len(), "placing new replica groups");
        }
        self.commit(m)
    }

    fn heartbeat(&mut self, hb: &NodeHeartbeat, now: Now) -> Result<ManagerReply, ControlError> {
        if self.state.node(hb.node_id).is_none() {
            return Err(ControlError::NotFound(format!(
                "node {} is not registered",
                hb.node_id
            )));
        }
        self.live.heartbeat(hb, now.instant);
        self.record_established(hb)?;
        let reported = self.live.reported(hb.node_id).collect();
        let (create_groups, remove_groups) =
            reconcile::heartbeat_orders(&self.state, hb.node_id, &reported);
        if !remove_groups.is_empty() {
            info!(node = hb.node_id, groups = ?remove_groups,
                  "telling node to destroy replicas of groups it no longer belongs to");
        }
        Ok(ManagerReply::HeartbeatAck {
            create_groups,
            remove_groups,
        })
    }

    /// Records the groups `hb` shows with a leader as established, together with any an
    /// earlier heartbeat showed but that could not be recorded then. Until that commit
    /// succeeds no heartbeat is answered: a node told nothing is safe, one told to start a
    /// replica of such a group as a fresh voter is not.
    fn record_established(&mut self, hb: &NodeHeartbeat) -> Result<(), ControlError> {
        let state = &self.state;
        self.unrecorded
            .extend(reconcile::newly_established(state, hb));
        self.unrecorded
            .retain(|id| state.group(*id).is_some_and(|g| !g.established));
        if self.unrecorded.is_empty() {
            return Ok(());
        }
        let group_ids: Vec<u64> = self.unrecorded.iter().copied().collect();
        info!(
            count = group_ids.len(),
            "groups have had a leader: recording them as established"
        );
        self.commit(Mutation::SetGroupsEstablished { group_ids })?;
        self.unrecorded.clear();
        Ok(())
    }

    fn drain(
        &mut self,
        node_id: u64,
        draining: bool,
        now: Now,
    ) -> Result<ManagerReply, ControlError> {
        if let Some(m) = self.state.plan_drain(node_id, draining, self.replicas)? {
            self.commit(m)?;
            if draining {
                info!(
                    node = node_id,
                    "draining: its replicas and leaderships will move off"
                );
            } else {
                info!(node = node_id, "drain stopped");
            }
        }
        Ok(ManagerReply::Status(self.status(now)))
    }

    /// One reconcile pass: plans moves and hand-overs, commits the moves, and returns the
    /// calls to make to storage nodes. Stops at the first failed commit.
    pub fn reconcile(
        &mut self,
        now: Now,
        memory: &mut reconcile::Memory,
        limits: reconcile::Limits,
    ) -> Vec<StorageCall> {
        // Only the leading manager hears heartbeats: to any other, every node looks down.
        if self.lead().is_err() {
            return Vec::new();
        }
        if memory.term != self.led_term {
            *memory = reconcile::Memory::default();
            memory.term = self.led_term;
        }
        let t = now.instant;
        memory.lost.update(&self.state, &self.live, t);
        let lost = memory.lost.lost(t, self.live.down_after());
        let settling = memory.settling(t);
        let plan = reconcile::plan(
            &reconcile::Facts {
                state: &self.state,
                live: &self.live,
                now: t,
                lost: &lost,
                settling: &settling,
            },
            limits,
        );
        for m in &plan.moves {
            for (from, to, why) in &m.swaps {
                info!(group = m.group_id, from, to, %why, voters = ?m.from, target = ?m.target,
                      "moving a replica");
            }
            if let Err(e) = self.commit(m.mutation()) {
                warn!(group = m.group_id, error = %e, "could not record a move");
                return Vec::new();
            }
        }
        let mut calls = Vec::new();
        for tr in &plan.transfers {
            let why = if tr.drain {
                "node draining"
            } else {
                "leader balance"
            };
            info!(
                group = tr.group_id,
                from = tr.from,
                to = tr.to,
                why,
                "transferring leadership"
            );
            memory.settle(tr.group_id, t);
            calls.extend(self.call(
                tr.group_id,
                tr.from,
                StorageRequest::TransferLeader {
                    group_id: tr.group_id,
                    to: tr.to,
                },
                None,
            ));
        }
        let hints = memory.take_hints();
        for d in reconcile::drive(&self.state, &self.live, t, &hints) {
            let reconcile::Drive::ChangeMembers {
                group_id,
                leader,
                target,
            } = d;
            let ids = target.iter().map(|p| p.node_id).collect();
            calls.extend(self.call(
                group_id,
                leader,
                StorageRequest::ChangeMembers {
                    group_id,
                    peers: target,
                },
                Some(ids),
            ));
        }
        calls
    }

    fn call(
        &self,
        group_id: u64,
        node: u64,
        req: StorageRequest,
        target: Option<Vec<u64>>,
    ) -> Option<StorageCall> {
        let addr = self.state.node(node)?.addr.clone();
        Some(StorageCall {
            group_id,
            node,
            addr,
            req,
            target,
        })
    }

    /// The leader of `term` reported a move done: the group's voters are `voters`. Ignored
    /// unless the group is still moving to exactly those nodes (it may have been re-aimed
    /// meanwhile).
    pub fn move_done(
        &mut self,
        group_id: u64,
        voters: &[u64],
        term: u64,
    ) -> Result<(), ControlError> {
        let Some(g) = self.state.group(group_id) else {
            return Ok(());
        };
        if g.target.is_empty() || !reconcile::same_nodes(&g.target, voters) {
            return Ok(());
        }
        let (from, target) = (g.members.clone(), g.target.clone());
        self.commit(Mutation::SetGroupMembers {
            group_id,
            members: target.clone(),
            term,
        })?;
        info!(group = group_id, from = ?from, to = ?target, "membership change done");
        Ok(())
    }

    fn delete(
        &mut self,
        name: &str,
        now: Now,
        orders: &mut Vec<DropOrder>,
    ) -> Result<ManagerReply, ControlError> {
        // A volume being written is not deleted under its writer (`rbd rm` refuses an image
        // with watchers too): the holder detaches, or its lease runs out, or an operator
        // ends it with a forced detach first.
        let rec = self.state.volume_record(name)?;
        if let Some(a) = &rec.attachment {
            let left = self.leases.left(rec.id, now.instant);
            if !left.is_zero() {
                return Err(ControlError::Conflict(format!(
                    "volume {name:?} is attached read-write by {} (epoch {}); detach it \
                     first (`tessera volume detach {name} --force` ends it)",
                    a.client, a.epoch
                )));
            }
        }
        let (m, dropped) = self.state.plan_delete_volume(name)?;
        self.commit(m)?;
        self.leases.ended(dropped.volume_id);
        info!(volume = %name, id = dropped.volume_id, "volume deleted");
        for (group_id, chunks) in dropped.by_group {
            let Some(g) = self.state.group(group_id) else {
                continue;
            };
            let leader = self.live.leader(g, now.instant);
            let mut members = g.members.clone();
            members.sort_by_key(|m| Some(*m) != leader);
            let peers: Vec<String> = members
                .iter()
                .filter_map(|m| self.state.node(*m).map(|n| n.addr.clone()))
                .collect();
            // Bounded requests, whatever the volume held in the group.
            for part in chunks.chunks(MAX_DROP_CHUNKS) {
                orders.push(DropOrder {
                    group_id,
                    volume_id: dropped.volume_id,
                    chunks: part.to_vec(),
                    peers: peers.clone(),
                });
            }
        }
        Ok(ManagerReply::Deleted)
    }

    fn route(
        &mut self,
        volume_id: u64,
        chunk: u64,
        allocate: bool,
        now: Now,
    ) -> Result<ManagerReply, ControlError> {
        if let Some(mut r) = self.state.route(volume_id, chunk)? {
            r.leader = self.leader(r.group_id, now);
            return Ok(ManagerReply::Route(Some(r)));
        }
        if !allocate {
            return Ok(ManagerReply::Route(None));
        }
        let live = &self.live;
        let Some(m) = self
            .state
            .plan_map_chunk(volume_id, chunk, |g| live.has_quorum(g, now.instant))
        else {
            let racks = self.state.racks(|n| !live.is_down(n, now.instant));
            return Err(ControlError::Unavailable(if racks < self.replicas {
                format!("need {} racks, have {racks}", self.replicas)
            } else {
                "no replica group has a majority of its nodes up".to_string()
            }));
        };
        self.commit(m)?;
        let mut r = self.state.route(volume_id, chunk)?;
        if let Some(r) = &mut r {
            r.leader = self.leader(r.group_id, now);
        }
        Ok(ManagerReply::Route(r))
    }

    /// Maps the unmapped chunks of a range in one change (see
    /// [`ManagerRequest::ProvisionChunks`]) and answers the range's routes.
    fn provision(
        &mut self,
        volume_id: u64,
        first_chunk: u64,
        count: u32,
        now: Now,
    ) -> Result<ManagerReply, ControlError> {
        let live = &self.live;
        let m = self
            .state
            .plan_map_chunks(volume_id, first_chunk, count, |g| {
                live.has_quorum(g, now.instant)
            })?;
        if let Some(m) = m {
            self.commit(m)?;
        }
        let mut page = self.state.route_page(volume_id, first_chunk, count)?;
        page.routes
            .retain(|r| r.chunk < first_chunk.saturating_add(u64::from(count)));
        Ok(ManagerReply::Routes(self.with_leaders(page, now)))
    }

    /// The groups of an open or attach answer, with leaders. A client from before paging
    /// (`paged` false) fences exactly the groups it is given: a volume with more groups
    /// than one answer holds is refused to it rather than fenced in part.
    fn first_groups(
        &self,
        name: &str,
        page: RoutePage,
        paged: bool,
        now: Now,
    ) -> Result<(Vec<ChunkRoute>, bool), ControlError> {
        let more = page.next.is_some();
        if more && !paged {
            return Err(ControlError::Invalid(format!(
                "volume {name:?} spans more than {MAX_ROUTES_PER_PAGE} replica groups, more \
                 than this client can be told at once; upgrade the client"
            )));
        }
        Ok((self.with_leaders(page, now).routes, more))
    }

    fn with_leaders(&self, mut page: RoutePage, now: Now) -> RoutePage {
        for r in &mut page.routes {
            r.leader = self.leader(r.group_id, now);
        }
        page
    }

    /// Grants `client` the read-write attachment of `name` (see `attach.rs`).
    fn attach(
        &mut self,
        name: &str,
        client: &str,
        paged: bool,
        now: Now,
    ) -> Result<ManagerReply, ControlError> {
        // Refused before anything is granted (see `first_groups`).
        let (_, groups) = self.state.open_volume(name)?;
        self.first_groups(name, groups, paged, now)?;
        let leases = &mut self.leases;
        let (m, epoch) = attach::plan_attach(&self.state, name, client, now.unix, |id| {
            leases.left(id, now.instant)
        })?;
        if let Some(m) = m {
            self.commit(m)?;
            info!(volume = %name, client, epoch, "volume attached read-write");
        }
        let (mut volume, groups) = self.state.open_volume(name)?;
        let (chunks, more_groups) = self.first_groups(name, groups, paged, now)?;
        self.leases.renewed(volume.id, now.instant);
        self.add_lease(&mut volume, now);
        Ok(ManagerReply::Attached {
            volume,
            chunks,
            more_groups,
            epoch,
            lease_ms: attach::LEASE.as_millis() as u64,
        })
    }

    fn detach(
        &mut self,
        name: &str,
        epoch: u64,
        force: bool,
    ) -> Result<ManagerReply, ControlError> {
        let leases = &mut self.leases;
        let now = Instant::now();
        let (m, fence_epoch) =
            attach::plan_detach(&self.state, name, epoch, force, |id| leases.left(id, now))?;
        if let Some(m) = m {
            let id = self.state.volume_record(name)?.id;
            let holder = self.state.volume_record(name)?.attachment.clone();
            self.commit(m)?;
            self.leases.ended(id);
            if let Some(a) = holder {
                info!(volume = %name, client = %a.client, epoch = a.epoch, force,
                      "volume detached");
            }
        }
        Ok(ManagerReply::Detached { fence_epoch })
    }

    /// The attachment's lease as this manager sees it, into a volume's info.
    fn add_lease(&self, v: &mut tessera_proto::control::VolumeInfo, now: Now) {
        if let Some(a) = &mut v.attachment {
            a.lease_left_ms = self
                .leases
                .peek(v.id, now.instant)
                .map(|d| d.as_millis() as u64);
        }
    }

    fn leader(&self, group_id: u64, now: Now) -> Option<u64> {
        self.live.leader(self.state.group(group_id)?, now.instant)
    }

    fn status(&self, now: Now) -> ClusterStatus {
        let t = now.instant;
        let counts = self.state.replica_counts();
        let groups: Vec<GroupStatus> = self
            .state
            .groups()
            .map(|g| GroupStatus {
                group_id: g.id,
                leader: self.live.leader(g, t),
                replicas: g
                    .members
                    .iter()
                    .map(|m| {
                        let report = self.live.report(*m, g.id);
                        ReplicaStatus {
                            node_id: *m,
                            rack: self
                                .state
                                .node(*m)
                                .map(|n| n.rack.clone())
                                .unwrap_or_default(),
                            node_state: self.live.health(*m, t).as_str().to_string(),
                            role: report.map(|r| r.role),
                            commit: report.map_or(0, |r| r.commit),
                            applied: report.map_or(0, |r| r.applied),
                            stuck: report.and_then(|r| r.stuck.clone()),
                        }
                    })
                    .collect(),
                chunks: self.state.group_chunks(g.id),
                degraded: g.members.len() < self.replicas
                    || g.members.iter().any(|m| {
                        self.live.health(*m, t) != Health::Up
                            || (self.live.last_heartbeat_ago(*m, t).is_some()
                                && self.live.report(*m, g.id).is_none_or(|r| r.stuck.is_some()))
                    }),
                moving_to: g.target.clone(),
            })
            .collect();
        let nodes = self
            .state
            .nodes()
            .map(|n| {
                let (capacity_bytes, used_bytes) = self
                    .live
                    .usage(n.id)
                    .unwrap_or((n.capacity_bytes, n.used_bytes));
                NodeStatus {
                    node_id: n.id,
                    zone: n.zone.clone(),
                    rack: n.rack.clone(),
                    addr: n.addr.clone(),
                    state: self.live.health(n.id, t).as_str().to_string(),
                    capacity_bytes,
                    used_bytes,
                    last_heartbeat_ms_ago: self.live.last_heartbeat_ago(n.id, t).map(millis),
                    replicas: counts.get(&n.id).copied().unwrap_or(0),
                    leaders: groups.iter().filter(|g| g.leader == Some(n.id)).count() as u64,
                    draining: n.draining,
                    descriptors: self.live.descriptors(n.id),
                }
            })
            .collect();
        ClusterStatus {
            nodes,
            groups,
            volumes: self.state.volume_count(),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

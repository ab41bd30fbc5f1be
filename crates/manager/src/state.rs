//! The manager's durable state and the pure logic that changes it: no I/O, no clocks.
//!
//! Every change is a [`Mutation`]. A `plan_*` method validates a request against the current
//! state and returns the mutation that carries it out, with every id and timestamp already
//! chosen; the database makes it durable; then [`State::apply`], which cannot fail, changes the
//! memory. A Raft-replicated manager puts the mutation in its log between planning and
//! applying, so `apply` must stay deterministic: it never picks ids, reads clocks or looks at
//! node health.
//!
//! Ids of nodes, groups and volumes are handed out in increasing order and never reused, even
//! after a delete: chunk data a node still holds for a deleted volume can never surface in a
//! new one.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tessera_proto::control::{
    AttachmentInfo, ChunkRoute, ControlError, DEFAULT_CHUNK_SIZE, GroupSpec, MAX_ROUTES_PER_PAGE,
    NodeRegistration, PeerInfo, RoutePage, VolumeInfo,
};

use crate::placement::{self, Candidate};
use crate::volume;

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

/// The routes a page holds when `limit` were asked for (0: as many as may be).
fn page_limit(limit: u32) -> usize {
    match limit {
        0 => MAX_ROUTES_PER_PAGE,
        n => n.min(MAX_ROUTES_PER_PAGE),
    }
    .try_into()
    .unwrap_or(usize::MAX)
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

/// One durable change. Row-shaped on purpose: the database writes exactly these rows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// Register a node or update its address, location or capacity.
    PutNode(NodeRecord),
    AddGroups(Vec<GroupRecord>),
    /// Create a volume or change its size.
    PutVolume(VolumeRecord),
    /// Forget a volume and its whole chunk map.
    DeleteVolume {
        id: u64,
    },
    MapChunk {
        volume_id: u64,
        chunk: u64,
        group_id: u64,
    },
    /// Many [`Mutation::MapChunk`]s of one volume at once: `(chunk, group id)` pairs.
    MapChunks {
        volume_id: u64,
        chunks: Vec<(u64, u64)>,
    },
    /// Start (or re-aim) a membership change of a group; an empty `target` abandons it.
    SetGroupTarget {
        group_id: u64,
        target: Vec<u64>,
    },
    /// A membership change finished: the group's voters are now `members`; clears the
    /// target. `term`: the term of the leader that said so (raises `GroupRecord::term`).
    SetGroupMembers {
        group_id: u64,
        members: Vec<u64>,
        #[serde(default)]
        term: u64,
    },
    SetNodeDraining {
        node_id: u64,
        draining: bool,
    },
    /// Heartbeats showed these groups with a leader: see [`GroupRecord::established`].
    SetGroupsEstablished {
        group_ids: Vec<u64>,
    },
}

/// The next id of each kind: the high-water marks that make ids never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextIds {
    pub node: u64,
    pub group: u64,
    pub volume: u64,
}

impl Default for NextIds {
    fn default() -> Self {
        NextIds {
            node: 1,
            group: 1,
            volume: 1,
        }
    }
}

impl NextIds {
    /// The marks once `m` is applied. Shared by [`State::apply`] and the database, so memory and
    /// disk agree.
    pub fn after(self, m: &Mutation) -> NextIds {
        let mut n = self;
        match m {
            Mutation::PutNode(r) => n.node = n.node.max(r.id.saturating_add(1)),
            Mutation::AddGroups(gs) => {
                for g in gs {
                    n.group = n.group.max(g.id.saturating_add(1));
                }
            }
            Mutation::PutVolume(v) => n.volume = n.volume.max(v.id.saturating_add(1)),
            Mutation::DeleteVolume { .. }
            | Mutation::MapChunk { .. }
            | Mutation::MapChunks { .. }
            | Mutation::SetGroupTarget { .. }
            | Mutation::SetGroupMembers { .. }
            | Mutation::SetNodeDraining { .. }
            | Mutation::SetGroupsEstablished { .. } => {}
        }
        n
    }
}

#[derive(Debug, Clone)]
struct Group {
    rec: GroupRecord,
    /// Chunks of all volumes mapped to this group (derived).
    chunks: u64,
}

#[derive(Debug, Clone)]
struct Volume {
    rec: VolumeRecord,
    /// chunk index → group id.
    chunks: BTreeMap<u64, u64>,
    /// `(group id, chunk index)` of every mapped chunk (derived): the groups holding the
    /// volume, each with a chunk to address it by, found without a scan of the chunks.
    by_group: BTreeSet<(u64, u64)>,
}

/// What a delete leaves for the storage nodes to clean up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedChunks {
    pub volume_id: u64,
    /// group id → chunk indexes of the deleted volume held by that group.
    pub by_group: BTreeMap<u64, Vec<u64>>,
}

/// Everything the manager persists, held in memory.
#[derive(Debug, Clone, Default)]
pub struct State {
    nodes: BTreeMap<u64, NodeRecord>,
    groups: BTreeMap<u64, Group>,
    /// node id → ids of the groups it hosts a replica of (derived; heartbeats ask it).
    groups_by_node: BTreeMap<u64, BTreeSet<u64>>,
    volumes: BTreeMap<u64, Volume>,
    by_name: BTreeMap<String, u64>,
    next: NextIds,
}

/// The state read back from disk is inconsistent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Inconsistent(pub String);

impl State {
    /// Rebuilds the state from persisted rows, checking that they agree with each other.
    pub fn restore(
        nodes: Vec<NodeRecord>,
        groups: Vec<GroupRecord>,
        volumes: Vec<VolumeRecord>,
        chunks: Vec<(u64, u64, u64)>,
        next: NextIds,
    ) -> Result<State, Inconsistent> {
        let mut s = State {
            next,
            ..State::default()
        };
        for n in nodes {
            s.apply(&Mutation::PutNode(n));
        }
        for g in &groups {
            if let Some(m) = g
                .members
                .iter()
                .chain(&g.target)
                .find(|m| !s.nodes.contains_key(m))
            {
                return Err(Inconsistent(format!(
                    "group {} has unknown member node {m}",
                    g.id
                )));
            }
        }
        s.apply(&Mutation::AddGroups(groups));
        for v in volumes {
            if s.by_name.contains_key(&v.name) {
                return Err(Inconsistent(format!("volume name {:?} used twice", v.name)));
            }
            s.apply(&Mutation::PutVolume(v));
        }
        for (volume_id, chunk, group_id) in chunks {
            if !s.volumes.contains_key(&volume_id) || !s.groups.contains_key(&group_id) {
                return Err(Inconsistent(format!(
                    "chunk {chunk} of volume {volume_id} maps to group {group_id}, \
                     but the volume or group does not exist"
                )));
            }
            s.apply(&Mutation::MapChunk {
                volume_id,
                chunk,
                group_id,
            });
        }
        // The stored marks win unless the rows prove them stale.
        s.next.node = s.next.node.max(next.node);
        s.next.group = s.next.group.max(next.group);
        s.next.volume = s.next.volume.max(next.volume);
        Ok(s)
    }

    /// Applies a mutation that was planned against this state and made durable. Never fails:
    /// a mutation naming something that no longer exists changes nothing.
    pub fn apply(&mut self, m: &Mutation) {
        self.next = self.next.after(m);
        match m {
            Mutation::PutNode(n) => {
                self.nodes.insert(n.id, n.clone());
            }
            Mutation::AddGroups(gs) => {
                for g in gs {
                    for m in &g.members {
                        self.groups_by_node.entry(*m).or_default().insert(g.id);
                    }
                    self.groups.insert(
                        g.id,
                        Group {
                            rec: g.clone(),
                            chunks: 0,
                        },
                    );
                }
            }
            Mutation::PutVolume(v) => {
                if let Some(old) = self.volumes.get_mut(&v.id) {
                    self.by_name.remove(&old.rec.name);
                    old.rec = v.clone();
                } else {
                    self.volumes.insert(
                        v.id,
                        Volume {
                            rec: v.clone(),
                            chunks: BTreeMap::new(),
                            by_group: BTreeSet::new(),
                        },
                    );
                }
                self.by_name.insert(v.name.clone(), v.id);
            }
            Mutation::DeleteVolume { id } => {
                if let Some(v) = self.volumes.remove(id) {
                    self.by_name.remove(&v.rec.name);
                    for g in v.chunks.values() {
                        if let Some(g) = self.groups.get_mut(g) {
                            g.chunks = g.chunks.saturating_sub(1);
                        }
                    }
                }
            }
            Mutation::MapChunk {
                volume_id,
                chunk,
                group_id,
            } => self.map_chunk(*volume_id, *chunk, *group_id),
            Mutation::MapChunks { volume_id, chunks } => {
                for (chunk, group_id) in chunks {
                    self.map_chunk(*volume_id, *chunk, *group_id);
                }
            }
            Mutation::SetGroupTarget { group_id, target } => {
                if let Some(g) = self.groups.get_mut(group_id) {
                    g.rec.target = target.clone();
                }
            }
            Mutation::SetGroupMembers {
                group_id,
                members,
                term,
            } => {
                let Some(g) = self.groups.get_mut(group_id) else {
                    return;
                };
                for old in &g.rec.members {
                    if let Some(set) = self.groups_by_node.get_mut(old) {
                        set.remove(group_id);
                        if set.is_empty() {
                            self.groups_by_node.remove(old);
                        }
                    }
                }
                for new in members {
                    self.groups_by_node
                        .entry(*new)
                        .or_default()
                        .insert(*group_id);
                }
                g.rec.members = members.clone();
                g.rec.target.clear();
                g.rec.term = g.rec.term.max(*term);
            }
            Mutation::SetNodeDraining { node_id, draining } => {
                if let Some(n) = self.nodes.get_mut(node_id) {
                    n.draining = *draining;
                }
            }
            Mutation::SetGroupsEstablished { group_ids } => {
                for id in group_ids {
                    if let Some(g) = self.groups.get_mut(id) {
                        g.rec.established = true;
                    }
                }
            }
        }
    }

    pub fn next_ids(&self) -> NextIds {
        self.next
    }

    // ---- nodes and groups ----

    /// The node id a registration gets and the mutation recording it.
    pub fn plan_register(&self, reg: &NodeRegistration) -> Result<(u64, Mutation), ControlError> {
        if reg.node_id == Some(0) {
            return Err(ControlError::Invalid("node id 0 is reserved".into()));
        }
        if reg.rack.is_empty() {
            return Err(ControlError::Invalid("node rack must not be empty".into()));
        }
        if reg.addr.is_empty() {
            return Err(ControlError::Invalid(
                "node address must not be empty".into(),
            ));
        }
        // A known id keeps its identity; an unknown one (the manager's database was wiped)
        // is adopted as is, and the id counter moves past it.
        let id = reg.node_id.unwrap_or(self.next.node);
        Ok((
            id,
            Mutation::PutNode(NodeRecord {
                id,
                zone: reg.zone.clone(),
                rack: reg.rack.clone(),
                addr: reg.addr.clone(),
                capacity_bytes: reg.capacity_bytes,
                used_bytes: reg.used_bytes,
                // A drain outlives restarts of the node: maintenance often restarts it.
                draining: self.nodes.get(&id).is_some_and(|n| n.draining),
            }),
        ))
    }

    /// Starts or stops draining a node; `None` when it is already so.
    pub fn plan_drain(
        &self,
        node_id: u64,
        draining: bool,
        replicas: usize,
    ) -> Result<Option<Mutation>, ControlError> {
        let node = self
            .nodes
            .get(&node_id)
            .ok_or_else(|| ControlError::NotFound(format!("node {node_id} not found")))?;
        if node.draining == draining {
            return Ok(None);
        }
        if draining {
            let racks = self.racks(|n| n != node_id && !self.nodes[&n].draining);
            if racks < replicas {
                return Err(ControlError::Unavailable(format!(
                    "draining node {node_id} would leave {racks} rack(s) of nodes not draining; \
                     {replicas} replicas need {replicas}"
                )));
            }
        }
        Ok(Some(Mutation::SetNodeDraining { node_id, draining }))
    }

    pub fn node(&self, id: u64) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    pub fn groups(&self) -> impl Iterator<Item = &GroupRecord> {
        self.groups.values().map(|g| &g.rec)
    }

    pub fn group(&self, id: u64) -> Option<&GroupRecord> {
        self.groups.get(&id).map(|g| &g.rec)
    }

    /// Chunks of all volumes mapped to group `id`.
    pub fn group_chunks(&self, id: u64) -> u64 {
        self.groups.get(&id).map_or(0, |g| g.chunks)
    }

    /// Replicas hosted by each node (nodes hosting none are absent).
    pub fn replica_counts(&self) -> BTreeMap<u64, u64> {
        self.groups_by_node
            .iter()
            .map(|(node, groups)| (*node, groups.len() as u64))
            .collect()
    }

    /// Distinct racks among the nodes `usable` accepts.
    pub fn racks(&self, usable: impl Fn(u64) -> bool) -> usize {
        self.nodes
            .values()
            .filter(|n| usable(n.id))
            .map(|n| n.rack.as_str())
            .collect::<BTreeSet<_>>()
            .len()
    }

    /// New groups so that every usable node hosts at least `per_node` replicas, each group
    /// on `replicas` distinct racks; `None` when nothing is to be created (all full, or too
    /// few racks).
    pub fn plan_groups(
        &self,
        usable: impl Fn(u64) -> bool,
        replicas: usize,
        per_node: u64,
    ) -> Option<Mutation> {
        let counts = self.replica_counts();
        let candidates = self
            .nodes
            .values()
            .filter(|n| usable(n.id))
            .map(|n| Candidate {
                node_id: n.id,
                rack: n.rack.clone(),
                replicas: counts.get(&n.id).copied().unwrap_or(0),
            })
            .collect();
        let groups = placement::plan_groups(candidates, replicas, per_node, self.next.group);
        (!groups.is_empty()).then_some(Mutation::AddGroups(groups))
    }

    /// A group's membership with addresses, as storage nodes need it to create a replica.
    /// A replica joining through a move gets the members and the target (`joining`); any
    /// other gets the members only, which are the initial voters of a new group.
    pub fn group_spec(&self, g: &GroupRecord, joining: bool) -> GroupSpec {
        GroupSpec {
            group_id: g.id,
            peers: if joining {
                self.peers(g)
            } else {
                self.peer_infos(&g.members)
            },
            joining,
            min_term: if joining { g.term } else { 0 },
        }
    }

    /// Members with addresses, then nodes a move is adding: a client that is told of a new
    /// leader must find its address here.
    pub fn peers(&self, g: &GroupRecord) -> Vec<PeerInfo> {
        self.peer_infos(&g.members_and_target())
    }

    pub fn peer_infos(&self, nodes: &[u64]) -> Vec<PeerInfo> {
        nodes
            .iter()
            .map(|m| PeerInfo {
                node_id: *m,
                addr: self
                    .nodes
                    .get(m)
                    .map(|n| n.addr.clone())
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Groups `node` is a member of.
    pub fn groups_of(&self, node: u64) -> impl Iterator<Item = &GroupRecord> {
        self.groups_by_node
            .get(&node)
            .into_iter()
            .flatten()
            .filter_map(|g| self.group(*g))
    }

    // ---- volumes ----

    pub fn volume_count(&self) -> u64 {
        self.volumes.len() as u64
    }

    pub fn volume_by_name(&self, name: &str) -> Result<VolumeInfo, ControlError> {
        let id = self.id_of(name)?;
        Ok(self.info(&self.volumes[&id]))
    }

    /// Every volume, sorted by name.
    pub fn list_volumes(&self) -> Vec<VolumeInfo> {
        self.by_name
            .values()
            .map(|id| self.info(&self.volumes[id]))
            .collect()
    }

    pub fn plan_create_volume(
        &self,
        name: &str,
        size: u64,
        chunk_size: Option<u64>,
        now_unix: u64,
    ) -> Result<Mutation, ControlError> {
        volume::validate_name(name)?;
        volume::validate_size(name, size)?;
        let chunk_size = chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
        volume::validate_chunk_size(chunk_size)?;
        if self.by_name.contains_key(name) {
            return Err(ControlError::AlreadyExists(format!(
                "volume {name:?} already exists"
            )));
        }
        Ok(Mutation::PutVolume(VolumeRecord {
            id: self.next.volume,
            name: name.to_string(),
            size,
            chunk_size,
            created_unix: now_unix,
            epoch: 0,
            attachment: None,
        }))
    }

    /// Growing a volume; `None` when it already has this size.
    pub fn plan_resize_volume(
        &self,
        name: &str,
        size: u64,
    ) -> Result<Option<Mutation>, ControlError> {
        let id = self.id_of(name)?;
        volume::validate_size(name, size)?;
        let rec = &self.volumes[&id].rec;
        if size < rec.size {
            return Err(ControlError::Invalid(format!(
                "volume {name:?} is {} bytes; shrinking to {size} bytes is not supported",
                rec.size
            )));
        }
        if size == rec.size {
            return Ok(None);
        }
        Ok(Some(Mutation::PutVolume(VolumeRecord {
            size,
            ..rec.clone()
        })))
    }

    /// The delete and the chunks the storage nodes may drop once it is durable.
    pub fn plan_delete_volume(
        &self,
        name: &str,
    ) -> Result<(Mutation, DroppedChunks), ControlError> {
        let id = self.id_of(name)?;
        let mut by_group: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (chunk, group) in &self.volumes[&id].chunks {
            by_group.entry(*group).or_default().push(*chunk);
        }
        Ok((
            Mutation::DeleteVolume { id },
            DroppedChunks {
                volume_id: id,
                by_group,
            },
        ))
    }

    /// The volume by name and the first page of its groups ([`State::group_page`]).
    pub fn open_volume(&self, name: &str) -> Result<(VolumeInfo, RoutePage), ControlError> {
        let id = self.id_of(name)?;
        let v = &self.volumes[&id];
        Ok((self.info(v), self.group_page(id, 0)?))
    }

    /// The routes of the volume's mapped chunks from `first_chunk` on, at most `limit`
    /// (capped at [`MAX_ROUTES_PER_PAGE`]; 0: that many); `next` is the next mapped chunk
    /// (without leaders, which only heartbeats know).
    pub fn route_page(
        &self,
        volume_id: u64,
        first_chunk: u64,
        limit: u32,
    ) -> Result<RoutePage, ControlError> {
        let v = self.volume(volume_id)?;
        let count = volume::chunk_count(v.rec.size, v.rec.chunk_size);
        if first_chunk >= count {
            return Err(ControlError::Invalid(format!(
                "chunk {first_chunk} is out of range: volume {:?} has {count} chunks",
                v.rec.name
            )));
        }
        let limit = page_limit(limit);
        let mut mapped = v.chunks.range(first_chunk..);
        let routes = mapped
            .by_ref()
            .take(limit)
            .map(|(c, g)| self.route_of(*c, *g))
            .collect();
        Ok(RoutePage {
            routes,
            next: mapped.next().map(|(c, _)| *c),
        })
    }

    /// One route for each group holding chunks of the volume, of groups with ids above
    /// `after_group`, in id order: at most [`MAX_ROUTES_PER_PAGE`], each through the
    /// volume's lowest chunk in that group; `next` is the `after_group` of the next page.
    pub fn group_page(&self, volume_id: u64, after_group: u64) -> Result<RoutePage, ControlError> {
        let v = self.volume(volume_id)?;
        let mut routes: Vec<ChunkRoute> = Vec::new();
        let mut from = after_group.checked_add(1);
        while let Some(g) = from {
            let Some(&(group, chunk)) = v.by_group.range((g, 0)..).next() else {
                return Ok(RoutePage { routes, next: None });
            };
            if routes.len() == page_limit(0) {
                let next = routes.last().map(|r| r.group_id);
                return Ok(RoutePage { routes, next });
            }
            routes.push(self.route_of(chunk, group));
            from = group.checked_add(1);
        }
        Ok(RoutePage { routes, next: None })
    }

    /// Maps every unmapped chunk of `first_chunk..first_chunk + count` (at most
    /// [`MAX_ROUTES_PER_PAGE`]), each to the usable group holding the fewest chunks as
    /// [`State::plan_map_chunk`] would one at a time. `None`: nothing to map; an error if
    /// the range is out of the volume or no group is usable.
    pub fn plan_map_chunks(
        &self,
        volume_id: u64,
        first_chunk: u64,
        count: u32,
        usable: impl Fn(&GroupRecord) -> bool,
    ) -> Result<Option<Mutation>, ControlError> {
        let v = self.volume(volume_id)?;
        let total = volume::chunk_count(v.rec.size, v.rec.chunk_size);
        let end = first_chunk.saturating_add(u64::from(count));
        if count > MAX_ROUTES_PER_PAGE || end > total {
            return Err(ControlError::Invalid(format!(
                "chunks {first_chunk}..{end} of volume {:?}: it has {total} chunks, and at \
                 most {MAX_ROUTES_PER_PAGE} are provisioned at once",
                v.rec.name
            )));
        }
        // (chunks, id) of every usable group: the least loaded is taken, then counted.
        let mut load: BTreeSet<(u64, u64)> = self
            .groups
            .values()
            .filter(|g| usable(&g.rec))
            .map(|g| (g.chunks, g.rec.id))
            .collect();
        let mut chunks = Vec::new();
        for chunk in (first_chunk..end).filter(|c| !v.chunks.contains_key(c)) {
            let Some((n, group)) = load.pop_first() else {
                return Err(ControlError::Unavailable(
                    "no replica group has a majority of its nodes up".into(),
                ));
            };
            chunks.push((chunk, group));
            load.insert((n + 1, group));
        }
        Ok((!chunks.is_empty()).then_some(Mutation::MapChunks { volume_id, chunks }))
    }

    fn volume(&self, volume_id: u64) -> Result<&Volume, ControlError> {
        self.volumes
            .get(&volume_id)
            .ok_or_else(|| ControlError::NotFound(format!("volume with id {volume_id} not found")))
    }

    fn map_chunk(&mut self, volume_id: u64, chunk: u64, group_id: u64) {
        let Some(v) = self.volumes.get_mut(&volume_id) else {
            return;
        };
        let old = v.chunks.insert(chunk, group_id);
        if let Some(old) = old {
            v.by_group.remove(&(old, chunk));
        }
        v.by_group.insert((group_id, chunk));
        if let Some(g) = old.and_then(|old| self.groups.get_mut(&old)) {
            g.chunks = g.chunks.saturating_sub(1);
        }
        if let Some(g) = self.groups.get_mut(&group_id) {
            g.chunks += 1;
        }
    }

    /// The route of a chunk if it is mapped, after checking the chunk exists.
    pub fn route(&self, volume_id: u64, chunk: u64) -> Result<Option<ChunkRoute>, ControlError> {
        let v = self.volumes.get(&volume_id).ok_or_else(|| {
            ControlError::NotFound(format!("volume with id {volume_id} not found"))
        })?;
        let count = volume::chunk_count(v.rec.size, v.rec.chunk_size);
        if chunk >= count {
            return Err(ControlError::Invalid(format!(
                "chunk {chunk} is out of range: volume {:?} has {count} chunks",
                v.rec.name
            )));
        }
        Ok(v.chunks.get(&chunk).map(|g| self.route_of(chunk, *g)))
    }

    /// Maps an unmapped chunk (checked with [`State::route`]) to the usable group holding
    /// the fewest chunks, ties to the lowest id; `None` when no group is usable.
    pub fn plan_map_chunk(
        &self,
        volume_id: u64,
        chunk: u64,
        usable: impl Fn(&GroupRecord) -> bool,
    ) -> Option<Mutation> {
        let group = self
            .groups
            .values()
            .filter(|g| usable(&g.rec))
            .min_by_key(|g| (g.chunks, g.rec.id))?;
        Some(Mutation::MapChunk {
            volume_id,
            chunk,
            group_id: group.rec.id,
        })
    }

    fn route_of(&self, chunk: u64, group_id: u64) -> ChunkRoute {
        ChunkRoute {
            chunk,
            group_id,
            peers: self
                .group(group_id)
                .map(|g| self.peers(g))
                .unwrap_or_default(),
            leader: None,
        }
    }

    /// A volume's record by name.
    pub fn volume_record(&self, name: &str) -> Result<&VolumeRecord, ControlError> {
        Ok(&self.volumes[&self.id_of(name)?].rec)
    }

    /// A volume's record by id.
    pub fn volume_record_by_id(&self, id: u64) -> Result<&VolumeRecord, ControlError> {
        self.volumes
            .get(&id)
            .map(|v| &v.rec)
            .ok_or_else(|| ControlError::NotFound(format!("volume with id {id} not found")))
    }

    fn id_of(&self, name: &str) -> Result<u64, ControlError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| ControlError::NotFound(format!("volume {name:?} not found")))
    }

    fn info(&self, v: &Volume) -> VolumeInfo {
        VolumeInfo {
            id: v.rec.id,
            name: v.rec.name.clone(),
            size: v.rec.size,
            chunk_size: v.rec.chunk_size,
            mapped_chunks: v.chunks.len() as u64,
            created_unix: v.rec.created_unix,
            attachment: v.rec.attachment.as_ref().map(|a| AttachmentInfo {
                client: a.client.clone(),
                epoch: a.epoch,
                since_unix: a.since_unix,
                lease_left_ms: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn reg(id: Option<u64>, rack: &str) -> NodeRegistration {
        NodeRegistration {
            node_id: id,
            zone: "z1".into(),
            rack: rack.into(),
            addr: format!("10.0.0.1:{}", 7500 + id.unwrap_or(0)),
            capacity_bytes: 1 << 40,
            used_bytes: 0,
        }
    }

    fn register(s: &mut State, id: Option<u64>, rack: &str) -> u64 {
        let (id, m) = s.plan_register(&reg(id, rack)).unwrap();
        s.apply(&m);
        id
    }

    fn cluster(racks: usize, per_rack: usize, per_node: u64) -> State {
        let mut s = State::default();
        for r in 0..racks {
            for _ in 0..per_rack {
                register(&mut s, None, &format!("r{r}"));
            }
        }
        if let Some(m) = s.plan_groups(|_| true, 3, per_node) {
            s.apply(&m);
        }
        s
    }

    fn create(s: &mut State, name: &str, size: u64) -> u64 {
        let m = s
            .plan_create_volume(name, size, None, 1_700_000_000)
            .unwrap();
        s.apply(&m);
        s.volume_by_name(name).unwrap().id
    }

    fn allocate(s: &mut State, vol: u64, chunk: u64) -> u64 {
        assert_eq!(s.route(vol, chunk).unwrap(), None);
        let m = s.plan_map_chunk(vol, chunk, |_| true).unwrap();
        s.apply(&m);
        s.route(vol, chunk).unwrap().unwrap().group_id
    }

    #[test]
    fn node_ids_start_at_one_and_known_ids_are_kept() {
        let mut s = State::default();
        assert_eq!(register(&mut s, None, "a"), 1);
        assert_eq!(register(&mut s, None, "b"), 2);
        assert_eq!(register(&mut s, Some(1), "a2"), 1);
        assert_eq!(s.node(1).unwrap().rack, "a2");
        // A node from before a wiped database keeps its id; new ids go past it.
        assert_eq!(register(&mut s, Some(10), "c"), 10);
        assert_eq!(register(&mut s, None, "d"), 11);
        assert!(s.plan_register(&reg(Some(0), "x")).is_err());
    }

    #[test]
    fn every_group_spans_three_distinct_racks_and_nodes() {
        for (racks, per_rack) in [(3, 1), (3, 4), (4, 3), (5, 2), (7, 1)] {
            let s = cluster(racks, per_rack, 8);
            assert!(s.groups().count() > 0);
            for g in s.groups() {
                assert_eq!(g.members.len(), 3);
                let racks: BTreeSet<_> = g
                    .members
                    .iter()
                    .map(|m| s.node(*m).unwrap().rack.clone())
                    .collect();
                assert_eq!(racks.len(), 3, "group {g:?} repeats a rack");
            }
        }
    }

    #[test]
    fn placement_fills_every_node_to_the_target_evenly() {
        for (racks, per_rack) in [(3, 1), (3, 4), (4, 3), (6, 2)] {
            let s = cluster(racks, per_rack, 8);
            let counts = s.replica_counts();
            assert_eq!(counts.len(), racks * per_rack);
            let min = *counts.values().min().unwrap();
            let max = *counts.values().max().unwrap();
            assert!(min >= 8, "{counts:?}");
            assert!(max - min <= 1, "unbalanced: {counts:?}");
        }
    }

    #[test]
    fn no_groups_with_fewer_racks_than_replicas() {
        let s = cluster(2, 3, 8);
        assert_eq!(s.groups().count(), 0);
        assert_eq!(s.racks(|_| true), 2);
    }

    #[test]
    fn placement_ignores_unusable_nodes_and_is_idempotent() {
        let mut s = cluster(3, 1, 4);
        let before = s.groups().count();
        assert!(s.plan_groups(|_| true, 3, 4).is_none());
        register(&mut s, None, "r3");
        // Node 4 is down: nothing changes for it.
        assert!(s.plan_groups(|id| id != 4, 3, 4).is_none());
        let m = s.plan_groups(|_| true, 3, 4).unwrap();
        s.apply(&m);
        assert!(s.groups().count() > before);
        assert!(s.replica_counts()[&4] >= 4);
        let ids: Vec<u64> = s.groups().map(|g| g.id).collect();
        assert_eq!(ids, (1..=ids.len() as u64).collect::<Vec<_>>());
    }

    #[test]
    fn volume_names_sizes_and_chunk_sizes_are_validated() {
        let s = State::default();
        let ok = |name: &str, size, cs| s.plan_create_volume(name, size, cs, 0).is_ok();
        assert!(ok("db1", GIB, None));
        assert!(ok("a.b_c-9", 4096, Some(1 << 20)));
        assert!(ok(&"x".repeat(64), GIB, Some(GIB)));
        assert!(!ok(&"x".repeat(65), GIB, None));
        assert!(!ok("", GIB, None));
        assert!(!ok(".hidden", GIB, None));
        assert!(!ok("-flag", GIB, None));
        assert!(!ok("a/b", GIB, None));
        assert!(!ok("é", GIB, None));
        assert!(!ok("db1", 0, None));
        assert!(!ok("db1", 4097, None));
        assert!(!ok("db1", GIB, Some(1 << 19)));
        assert!(!ok("db1", GIB, Some(2 * GIB)));
        assert!(!ok("db1", GIB, Some(3 << 20)));
        let err = s.plan_create_volume("db1", 5, None, 0).unwrap_err();
        assert!(
            matches!(&err, ControlError::Invalid(m) if m.contains('5')),
            "{err:?}"
        );
    }

    #[test]
    fn volume_lifecycle_create_list_grow_delete() {
        let mut s = cluster(3, 1, 2);
        create(&mut s, "zeta", 8 * GIB);
        create(&mut s, "alpha", GIB);
        assert_eq!(
            s.plan_create_volume("alpha", GIB, None, 0),
            Err(ControlError::AlreadyExists(
                "volume \"alpha\" already exists".into()
            ))
        );
        let names: Vec<_> = s.list_volumes().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["alpha", "zeta"]);

        assert_eq!(
            s.plan_resize_volume("zeta", GIB),
            Err(ControlError::Invalid(
                "volume \"zeta\" is 8589934592 bytes; shrinking to 1073741824 bytes is not supported"
                    .into()
            ))
        );
        assert_eq!(s.plan_resize_volume("zeta", 8 * GIB), Ok(None));
        let m = s.plan_resize_volume("zeta", 16 * GIB).unwrap().unwrap();
        s.apply(&m);
        assert_eq!(s.volume_by_name("zeta").unwrap().size, 16 * GIB);
        assert_eq!(
            s.plan_resize_volume("nope", GIB),
            Err(ControlError::NotFound("volume \"nope\" not found".into()))
        );

        let (m, _) = s.plan_delete_volume("alpha").unwrap();
        s.apply(&m);
        assert!(s.volume_by_name("alpha").is_err());
        assert_eq!(s.volume_count(), 1);
    }

    #[test]
    fn allocation_goes_to_the_least_loaded_group() {
        let mut s = cluster(3, 1, 3);
        let groups: Vec<u64> = s.groups().map(|g| g.id).collect();
        assert_eq!(groups, [1, 2, 3]);
        let v = create(&mut s, "v", 64 * GIB);
        let got: Vec<u64> = (0..6).map(|c| allocate(&mut s, v, c)).collect();
        assert_eq!(got, [1, 2, 3, 1, 2, 3]);
        assert_eq!(s.volume_by_name("v").unwrap().mapped_chunks, 6);
        // Only group 3 usable.
        let m = s.plan_map_chunk(v, 6, |g| g.id == 3).unwrap();
        assert!(matches!(m, Mutation::MapChunk { group_id: 3, .. }));
        assert!(s.plan_map_chunk(v, 6, |_| false).is_none());
    }

    #[test]
    fn routes_check_the_chunk_range_and_volume() {
        let mut s = cluster(3, 1, 1);
        // 100 MiB with 64 MiB chunks: chunks 0 and 1.
        let v = create(&mut s, "v", 100 << 20);
        assert!(s.route(v, 1).unwrap().is_none());
        assert!(matches!(s.route(v, 2), Err(ControlError::Invalid(_))));
        assert!(matches!(s.route(v + 1, 0), Err(ControlError::NotFound(_))));
        allocate(&mut s, v, 1);
        let (info, groups) = s.open_volume("v").unwrap();
        assert_eq!(info.mapped_chunks, 1);
        assert_eq!(groups.routes.len(), 1);
        assert_eq!(groups.routes[0].chunk, 1);
        assert_eq!(groups.routes[0].peers.len(), 3);
        assert!(matches!(
            s.route_page(v, 2, 0),
            Err(ControlError::Invalid(_))
        ));
        assert!(matches!(
            s.route_page(v + 1, 0, 0),
            Err(ControlError::NotFound(_))
        ));
    }

    /// No answer grows with the volume: routes come a bounded page at a time, and walking
    /// the cursor visits every mapped chunk once, in order.
    #[test]
    fn routes_come_in_bounded_pages_that_cover_every_mapped_chunk() {
        let mut s = cluster(3, 1, 4);
        // 8 TiB of 64 MiB chunks: 131,072; every third one mapped, in bulk.
        let v = create(&mut s, "big", 8 << 40);
        let want: Vec<u64> = (0..131_072).filter(|c| c % 3 == 0).collect();
        for first in (0..131_072).step_by(MAX_ROUTES_PER_PAGE as usize) {
            let m = Mutation::MapChunks {
                volume_id: v,
                chunks: (first..first + u64::from(MAX_ROUTES_PER_PAGE))
                    .filter(|c| c % 3 == 0)
                    .map(|c| (c, 1 + c % 4))
                    .collect(),
            };
            s.apply(&m);
        }
        assert_eq!(
            s.volume_by_name("big").unwrap().mapped_chunks,
            want.len() as u64
        );
        let mut got = Vec::new();
        let mut next = Some(0);
        let mut pages = 0;
        while let Some(first) = next {
            let page = s.route_page(v, first, 0).unwrap();
            assert!(page.routes.len() <= MAX_ROUTES_PER_PAGE as usize);
            got.extend(page.routes.iter().map(|r| r.chunk));
            next = page.next;
            pages += 1;
        }
        assert_eq!(got, want);
        assert_eq!(pages, want.len().div_ceil(MAX_ROUTES_PER_PAGE as usize));
        // A small limit, from the middle: the next mapped chunk is the cursor.
        let page = s.route_page(v, 4, 2).unwrap();
        assert_eq!(
            page.routes.iter().map(|r| r.chunk).collect::<Vec<_>>(),
            [6, 9]
        );
        assert_eq!(page.next, Some(12));
        // The groups: four, each through its lowest chunk.
        let groups = s.group_page(v, 0).unwrap();
        assert_eq!(
            groups
                .routes
                .iter()
                .map(|r| (r.group_id, r.chunk))
                .collect::<Vec<_>>(),
            [(1, 0), (2, 9), (3, 6), (4, 3)]
        );
        assert_eq!(groups.next, None);
        assert_eq!(s.group_page(v, 2).unwrap().routes.len(), 2);
    }

    /// A volume spread over more groups than a page names them a page at a time.
    #[test]
    fn groups_of_a_volume_come_in_bounded_pages() {
        let n = u64::from(MAX_ROUTES_PER_PAGE) + 7;
        let mut s = cluster(3, 1, n);
        assert!(s.groups().count() as u64 >= n);
        let v = create(&mut s, "wide", (2 * n) << 26);
        // Chunk c in group c / 2 + 1: two chunks in each group.
        s.apply(&Mutation::MapChunks {
            volume_id: v,
            chunks: (0..2 * n).map(|c| (c, c / 2 + 1)).collect(),
        });
        let first = s.group_page(v, 0).unwrap();
        assert_eq!(first.routes.len(), MAX_ROUTES_PER_PAGE as usize);
        assert_eq!(first.next, Some(u64::from(MAX_ROUTES_PER_PAGE)));
        let second = s.group_page(v, first.next.unwrap()).unwrap();
        assert_eq!(second.routes.len(), 7);
        assert_eq!(second.next, None);
        let all: Vec<(u64, u64)> = first
            .routes
            .iter()
            .chain(&second.routes)
            .map(|r| (r.group_id, r.chunk))
            .collect();
        assert_eq!(all, (1..=n).map(|g| (g, 2 * (g - 1))).collect::<Vec<_>>());
        assert_eq!(s.open_volume("wide").unwrap().1, first);
    }

    #[test]
    fn provisioning_maps_only_unmapped_chunks_of_the_range_evenly() {
        let mut s = cluster(3, 1, 4);
        let v = create(&mut s, "p", 64 * GIB);
        allocate(&mut s, v, 5);
        let m = s.plan_map_chunks(v, 0, 16, |_| true).unwrap().unwrap();
        let Mutation::MapChunks { chunks, .. } = &m else {
            panic!("{m:?}");
        };
        assert_eq!(chunks.len(), 15);
        assert!(chunks.iter().all(|(c, _)| *c != 5));
        s.apply(&m);
        let loads: Vec<u64> = s.groups().map(|g| s.group_chunks(g.id)).collect();
        assert_eq!(loads, [4, 4, 4, 4]);
        assert!(s.plan_map_chunks(v, 0, 16, |_| true).unwrap().is_none());
        assert!(s.plan_map_chunks(v, 1020, 5, |_| true).is_err());
        assert!(
            s.plan_map_chunks(v, 0, MAX_ROUTES_PER_PAGE + 1, |_| true)
                .is_err()
        );
        assert!(matches!(
            s.plan_map_chunks(v, 16, 1, |_| false),
            Err(ControlError::Unavailable(_))
        ));
    }

    #[test]
    fn delete_frees_group_load_and_reports_chunks_to_drop() {
        let mut s = cluster(3, 1, 2);
        let a = create(&mut s, "a", 64 * GIB);
        for c in 0..4 {
            allocate(&mut s, a, c);
        }
        let (m, dropped) = s.plan_delete_volume("a").unwrap();
        assert_eq!(dropped.volume_id, a);
        assert_eq!(dropped.by_group[&1], [0, 2]);
        assert_eq!(dropped.by_group[&2], [1, 3]);
        s.apply(&m);
        assert_eq!(s.group_chunks(1), 0);
        assert_eq!(s.group_chunks(2), 0);
        // The name is free again but the id is not.
        let b = create(&mut s, "a", GIB);
        assert!(b > a);
        assert_eq!(s.volume_by_name("a").unwrap().mapped_chunks, 0);
    }

    #[test]
    fn established_is_never_undone_and_is_restored_with_the_group() {
        let mut s = cluster(3, 1, 2);
        assert!(s.groups().all(|g| !g.established));
        s.apply(&Mutation::SetGroupsEstablished {
            group_ids: vec![2, 99],
        });
        s.apply(&Mutation::SetGroupTarget {
            group_id: 2,
            target: vec![3, 2, 1],
        });
        s.apply(&Mutation::SetGroupMembers {
            group_id: 2,
            members: vec![3, 2, 1],
            term: 0,
        });
        assert!(!s.group(1).unwrap().established);
        assert!(s.group(2).unwrap().established);
        // A manager rebuilding the state from its rows knows it too.
        let r = State::restore(
            s.nodes().cloned().collect(),
            s.groups().cloned().collect(),
            vec![],
            vec![],
            s.next_ids(),
        )
        .unwrap();
        assert!(r.group(2).unwrap().established);
        assert!(!r.group(1).unwrap().established);
    }

    #[test]
    fn restore_rejects_dangling_rows_and_keeps_id_marks() {
        let next = NextIds {
            node: 5,
            group: 9,
            volume: 42,
        };
        let s = State::restore(vec![], vec![], vec![], vec![], next).unwrap();
        assert_eq!(s.next_ids(), next);
        assert!(State::restore(vec![], vec![], vec![], vec![(1, 0, 1)], next).is_err());
        let g = GroupRecord {
            id: 1,
            members: vec![7],
            ..GroupRecord::default()
        };
        assert!(State::restore(vec![], vec![g], vec![], vec![], next).is_err());
    }
}

//! Nodes and groups: registering and draining nodes, placing new groups, and the queries
//! about them (a group's members with addresses, the groups a node hosts, replica counts).
//!
//! Plans return a [`Mutation`] and change nothing: only [`State::apply`] does. Must never
//! look at node health: the caller says which nodes are usable.

use std::collections::{BTreeMap, BTreeSet};

use tessera_proto::control::{ControlError, GroupSpec, MAX_NODE_ID, NodeRegistration, PeerInfo};

use crate::placement::{self, Candidate};

use super::{CrlRecord, GroupRecord, Mutation, NodeRecord, State};

impl State {
    /// The node id a registration gets and the mutation recording it.
    pub fn plan_register(&self, reg: &NodeRegistration) -> Result<(u64, Mutation), ControlError> {
        if reg.node_id == Some(0) {
            return Err(ControlError::Invalid("node id 0 is reserved".into()));
        }
        // A node known from before this rule keeps its id.
        if reg
            .node_id
            .is_some_and(|id| id > MAX_NODE_ID && !self.nodes.contains_key(&id))
        {
            return Err(ControlError::Invalid(format!(
                "node ids go up to {MAX_NODE_ID}"
            )));
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
        if reg.node_id.is_none() && id > MAX_NODE_ID {
            return Err(ControlError::Invalid(format!(
                "no node ids left (they go up to {MAX_NODE_ID})"
            )));
        }
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
                disk: match reg.disk {
                    0 => self.nodes.get(&id).map_or(0, |n| n.disk),
                    d => d,
                },
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

    /// The revocation lists in force, if any were published.
    pub fn crl(&self) -> Option<&CrlRecord> {
        self.crl.as_ref()
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
        let groups: Vec<GroupRecord> = placement::plan_groups(candidates, replicas, per_node)
            .into_iter()
            .zip(self.next.group..)
            .map(|(members, id)| GroupRecord {
                id,
                members,
                target: Vec::new(),
                // Nobody has led it yet: its first members start as its initial voters.
                established: false,
                term: 0,
            })
            .collect();
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
}

//! The reconcile rules on made-up clusters: a [`World`] of nodes, heartbeats and a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tessera_proto::control::{GroupState, NodeHeartbeat, NodeRegistration, Role};

use super::memory::LostTracker;
use super::vocabulary::{Plan, Why, replace_member};
use super::*;
use crate::liveness::Liveness;
use crate::state::{GroupRecord, Mutation, State};

mod drive;
mod heartbeat;
mod memory;
mod planner;

const SUSPECT: Duration = Duration::from_secs(1);
const DOWN: Duration = Duration::from_secs(3);

const LIMITS: Limits = Limits {
    max_moves: 8,
    max_moves_per_node: 2,
};

/// A cluster under test: state, heartbeats, and a clock.
struct World {
    state: State,
    live: Liveness,
    t0: Instant,
    now: Instant,
    lost: BTreeSet<(u64, u64)>,
    /// Node ids that send no heartbeats (down).
    silent: BTreeSet<u64>,
}

impl World {
    /// Records the target of moving group `g`'s replica from `from` to `to`.
    fn set_target(&mut self, g: &GroupRecord, from: u64, to: u64) -> Vec<u64> {
        let target = replace_member(&g.members, from, to);
        self.state.apply(&Mutation::SetGroupTarget {
            group_id: g.id,
            target: target.clone(),
        });
        target
    }

    /// Nodes on the given racks, `per_node` replicas each, every group led by its first
    /// member.
    fn new(racks: &[&str], per_node: u64) -> World {
        let mut state = State::default();
        for rack in racks {
            let (_, m) = state
                .plan_register(&NodeRegistration {
                    node_id: None,
                    zone: "z".into(),
                    rack: (*rack).into(),
                    addr: format!("{rack}:1"),
                    capacity_bytes: 1 << 40,
                    used_bytes: 0,
                    disk: 0,
                })
                .unwrap();
            state.apply(&m);
        }
        if let Some(m) = state.plan_groups(|_| true, 3, per_node) {
            state.apply(&m);
        }
        let t0 = Instant::now();
        let mut w = World {
            state,
            live: Liveness::new(t0, SUSPECT, DOWN),
            t0,
            now: t0,
            lost: BTreeSet::new(),
            silent: BTreeSet::new(),
        };
        w.heartbeat_all();
        w
    }

    fn add_node(&mut self, rack: &str) -> u64 {
        let (id, m) = self
            .state
            .plan_register(&NodeRegistration {
                node_id: None,
                zone: "z".into(),
                rack: rack.into(),
                addr: format!("{rack}:1"),
                capacity_bytes: 1 << 40,
                used_bytes: 0,
                disk: 0,
            })
            .unwrap();
        self.state.apply(&m);
        self.live.registered(id, self.now);
        self.heartbeat_all();
        id
    }

    /// Every node not silent reports every group it is a member of; the first member
    /// of a group leads it unless `leaders` says otherwise.
    fn heartbeat_all(&mut self) {
        self.heartbeat_with(&BTreeMap::new());
    }

    fn heartbeat_with(&mut self, leaders: &BTreeMap<u64, u64>) {
        let ids: Vec<u64> = self.state.nodes().map(|n| n.id).collect();
        for id in ids {
            if self.silent.contains(&id) {
                continue;
            }
            let groups = self
                .state
                .groups()
                .filter(|g| g.members_and_target().contains(&id))
                .map(|g| {
                    let leader = leaders.get(&g.id).copied().unwrap_or(g.members[0]);
                    GroupState {
                        group_id: g.id,
                        role: if leader == id {
                            Role::Leader
                        } else {
                            Role::Follower
                        },
                        term: 1,
                        leader,
                        commit: 1,
                        applied: 1,
                        voters: g.members.clone(),
                        learners: Vec::new(),
                        joint: false,
                        stuck: None,
                    }
                })
                .collect();
            let hb = NodeHeartbeat {
                node_id: id,
                capacity_bytes: 1 << 40,
                used_bytes: 0,
                groups,
                recovery: Default::default(),
                descriptors: Default::default(),
                scrub: Default::default(),
            };
            // As the heartbeat handler does: record what the heartbeat shows for good.
            let group_ids: Vec<u64> = newly_established(&self.state, &hb).collect();
            if !group_ids.is_empty() {
                self.state
                    .apply(&Mutation::SetGroupsEstablished { group_ids });
            }
            self.live.heartbeat(&hb, self.now);
        }
    }

    fn kill(&mut self, node: u64) {
        self.silent.insert(node);
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.heartbeat_all();
    }

    fn plan(&self, limits: Limits) -> Plan {
        plan(
            &Facts {
                state: &self.state,
                live: &self.live,
                now: self.now,
                lost: &self.lost,
                settling: &BTreeSet::new(),
            },
            limits,
        )
    }

    /// Applies the moves and finishes them at once, as a leader answering `done` would.
    fn complete(&mut self, p: &Plan) {
        for m in &p.moves {
            self.state.apply(&m.mutation());
            self.state.apply(&Mutation::SetGroupMembers {
                group_id: m.group_id,
                members: m.target.clone(),
                term: 0,
            });
        }
        self.heartbeat_all();
    }

    /// Plans and completes passes until nothing moves (at most `passes`).
    fn settle(&mut self, passes: usize) {
        for _ in 0..passes {
            let p = self.plan(LIMITS);
            if p.moves.is_empty() {
                return;
            }
            self.complete(&p);
        }
        panic!("still moving after {passes} passes");
    }

    fn rack(&self, n: u64) -> String {
        self.state.node(n).unwrap().rack.clone()
    }

    fn assert_placement_rules(&self) {
        for g in self.state.groups() {
            assert_eq!(g.members.len(), 3, "{g:?}");
            let racks: BTreeSet<String> = g.members.iter().map(|m| self.rack(*m)).collect();
            assert_eq!(racks.len(), 3, "group {g:?} repeats a rack");
        }
    }

    fn counts(&self) -> BTreeMap<u64, u64> {
        let mut c: BTreeMap<u64, u64> = self.state.nodes().map(|n| (n.id, 0)).collect();
        c.extend(self.state.replica_counts());
        c
    }
}

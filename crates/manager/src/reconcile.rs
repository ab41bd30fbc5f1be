//! Keeping every group on three healthy racks: re-replication, draining, rebalancing and
//! leader balance, as pure planning. No I/O and no clocks: the caller passes the state, what
//! heartbeats tell ([`Liveness`]) and the time; `reconcile_loop` runs a pass every `reconcile_ms`,
//! commits the moves planned here as [`Mutation::SetGroupTarget`] and sends the storage
//! calls.
//!
//! A *move* is a membership change of one group from its `members` to its persisted
//! `target`, carried out by the group's leader (`StorageRequest::ChangeMembers`): new nodes
//! first host the group as joining replicas (told in heartbeat acks), catch up as learners,
//! then a joint-consensus change makes `target` the voters. When the leader answers `done`,
//! `SetGroupMembers` records the new members and the removed nodes are told to destroy their
//! replica. One move per group at a time; a move is re-aimed (its target changed) only when
//! a node of its target goes down, loses the group or is drained.
//!
//! Priorities, one pass: (1) replace members that are down, lost their replica, or report it
//! stuck (it cannot apply: see `tessera_raft`'s `poller/stuck.rs`), groups missing the most
//! first; (2) move replicas off draining nodes, leaders first; (3) when
//! nothing else is moving, even out replica counts; (4) even out leaderships. Throttles bound
//! the moves in flight in total and per receiving node, so recovery traffic leaves room for
//! client I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use tessera_proto::control::{GroupSpec, NodeHeartbeat, PeerInfo, Role};

use crate::liveness::{Health, Liveness};
use crate::state::{GroupRecord, Mutation, State};

/// Bounds on the work one reconcile pass may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Moves in flight in the whole cluster.
    pub max_moves: usize,
    /// Moves in flight adding a replica to one node (each one copies a group's data to it).
    pub max_moves_per_node: usize,
}

/// Why a replica moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Its node is down.
    Down,
    /// Its node is up but has not hosted the group for longer than the down timeout (its
    /// data was lost, or it never managed to create the replica).
    Lost,
    /// Its node reports the replica stuck (it cannot apply, or was quarantined) for longer
    /// than the down timeout. It holds its node's shared log until it is removed.
    Stuck,
    Draining,
    Rebalance,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::Down => "node down",
            Why::Lost => "replica lost on a live node",
            Why::Stuck => "replica stuck on a live node",
            Why::Draining => "node draining",
            Why::Rebalance => "rebalance",
        })
    }
}

/// A membership change to start (or re-aim): the group's voters become `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub group_id: u64,
    /// The voters the group has or was moving to.
    pub from: Vec<u64>,
    pub target: Vec<u64>,
    /// (node leaving, node replacing it, why), one per replaced node.
    pub swaps: Vec<(u64, u64, Why)>,
}

impl Move {
    pub fn mutation(&self) -> Mutation {
        Mutation::SetGroupTarget {
            group_id: self.group_id,
            target: self.target.clone(),
        }
    }
}

/// A leadership hand-over to ask of the current leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub group_id: u64,
    pub from: u64,
    pub to: u64,
    /// `true`: the leader's node is draining; `false`: leader balance.
    pub drain: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub moves: Vec<Move>,
    pub transfers: Vec<Transfer>,
}

/// What one pass looks at. `lost` holds (node, group) pairs of members that are up but have
/// not hosted the group for longer than the down timeout ([`LostTracker`]); `settling` holds
/// groups whose leadership was just handed over, left alone until heartbeats show the result.
pub struct Facts<'a> {
    pub state: &'a State,
    pub live: &'a Liveness,
    pub now: Instant,
    pub lost: &'a BTreeSet<(u64, u64)>,
    pub settling: &'a BTreeSet<u64>,
}

/// Since when each up node has not reported hosting a group it is a member of, or that a
/// move is adding it to (it should host it as a joining replica one heartbeat after the
/// move starts), or has reported its replica stuck (it cannot apply: it serves nothing and
/// pins its node's shared log until it is removed). Memory only: after a manager restart
/// the clock starts again, which only delays a replacement.
#[derive(Debug, Default)]
pub struct LostTracker {
    missing_since: BTreeMap<(u64, u64), Instant>,
}

impl LostTracker {
    /// Looks at the latest heartbeats. A node that has not heartbeated since it registered
    /// is not judged yet; a node not up is handled by its health instead.
    pub fn update(&mut self, state: &State, live: &Liveness, now: Instant) {
        let mut next = BTreeMap::new();
        for g in state.groups() {
            for m in g.members_and_target() {
                let judged =
                    live.health(m, now) == Health::Up && live.last_heartbeat_ago(m, now).is_some();
                let hosted = live.report(m, g.id).is_some_and(|r| r.stuck.is_none());
                if judged && !hosted {
                    let since = self.missing_since.get(&(m, g.id)).copied().unwrap_or(now);
                    next.insert((m, g.id), since);
                }
            }
        }
        self.missing_since = next;
    }

    /// (node, group) pairs missing for at least `after`.
    pub fn lost(&self, now: Instant, after: Duration) -> BTreeSet<(u64, u64)> {
        self.missing_since
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= after)
            .map(|(k, _)| *k)
            .collect()
    }
}

/// How long a group is left alone after a leadership hand-over was asked: time for the
/// hand-over and for heartbeats to show it.
pub const SETTLE: Duration = Duration::from_secs(3);

/// What the reconciler remembers between passes. Memory only.
#[derive(Debug, Default)]
pub struct Memory {
    /// The managers' Raft term this memory was built in: a manager that leads again after
    /// a gap starts over, as its timers and hints are stale.
    pub term: u64,
    pub lost: LostTracker,
    /// group → when its leadership hand-over was asked.
    transferred: BTreeMap<u64, Instant>,
    /// group → the leader a `NotLeader` answer named, for the next pass.
    hints: BTreeMap<u64, u64>,
}

impl Memory {
    pub fn settle(&mut self, group: u64, now: Instant) {
        self.transferred.insert(group, now);
    }

    /// Groups still settling after a hand-over; forgets the others.
    pub fn settling(&mut self, now: Instant) -> BTreeSet<u64> {
        self.transferred
            .retain(|_, at| now.saturating_duration_since(*at) < SETTLE);
        self.transferred.keys().copied().collect()
    }

    pub fn hint(&mut self, group: u64, leader: u64) {
        self.hints.insert(group, leader);
    }

    pub fn take_hints(&mut self) -> BTreeMap<u64, u64> {
        std::mem::take(&mut self.hints)
    }
}

/// Counters the planner keeps up to date as it plans, so throttles and loads account for
/// what this pass already decided.
struct Books {
    /// node → groups whose wanted voters include it (members, or target during a move).
    load: BTreeMap<u64, usize>,
    /// node → moves in flight adding it.
    incoming: BTreeMap<u64, usize>,
    moving: BTreeSet<u64>,
    /// Groups given a move by this pass.
    planned: BTreeSet<u64>,
}

impl Books {
    fn new(state: &State) -> Books {
        let mut b = Books {
            load: state.nodes().map(|n| (n.id, 0)).collect(),
            incoming: BTreeMap::new(),
            moving: BTreeSet::new(),
            planned: BTreeSet::new(),
        };
        for g in state.groups() {
            for n in g.wanted() {
                *b.load.entry(*n).or_default() += 1;
            }
            if !g.target.is_empty() {
                b.moving.insert(g.id);
                for n in g.target.iter().filter(|n| !g.members.contains(n)) {
                    *b.incoming.entry(*n).or_default() += 1;
                }
            }
        }
        b
    }

    fn load(&self, n: u64) -> usize {
        self.load.get(&n).copied().unwrap_or(0)
    }

    fn incoming(&self, n: u64) -> usize {
        self.incoming.get(&n).copied().unwrap_or(0)
    }

    /// Records a planned move; `g` as it was before.
    fn record(&mut self, g: &GroupRecord, target: &[u64]) {
        for n in g.wanted() {
            if let Some(l) = self.load.get_mut(n) {
                *l = l.saturating_sub(1);
            }
        }
        for n in g.target.iter().filter(|n| !g.members.contains(n)) {
            if let Some(i) = self.incoming.get_mut(n) {
                *i = i.saturating_sub(1);
            }
        }
        for n in target {
            *self.load.entry(*n).or_default() += 1;
        }
        for n in target.iter().filter(|n| !g.members.contains(n)) {
            *self.incoming.entry(*n).or_default() += 1;
        }
        self.moving.insert(g.id);
        self.planned.insert(g.id);
    }
}

struct Planner<'a> {
    f: &'a Facts<'a>,
    limits: Limits,
    books: Books,
    plan: Plan,
}

/// One reconcile pass: the moves to start and the leaderships to hand over.
pub fn plan(f: &Facts<'_>, limits: Limits) -> Plan {
    let mut p = Planner {
        f,
        limits,
        books: Books::new(f.state),
        plan: Plan::default(),
    };
    p.replace_failed();
    p.drain();
    if p.books.moving.is_empty() {
        p.rebalance();
    }
    p.balance_leaders();
    p.plan
}

impl Planner<'_> {
    fn health(&self, n: u64) -> Health {
        self.f.live.health(n, self.f.now)
    }

    fn draining(&self, n: u64) -> bool {
        self.f.state.node(n).is_some_and(|n| n.draining)
    }

    fn rack(&self, n: u64) -> &str {
        self.f.state.node(n).map_or("", |n| n.rack.as_str())
    }

    /// Why node `n` cannot stay among the voters `g` wants, if so: down, or not hosting the
    /// group for longer than the down timeout; or draining, as a node the move is adding (a
    /// draining member is left to [`Planner::drain`]).
    fn failed(&self, g: &GroupRecord, n: u64) -> Option<Why> {
        if self.health(n) == Health::Down {
            Some(Why::Down)
        } else if self.f.lost.contains(&(n, g.id)) {
            let stuck = self
                .f
                .live
                .report(n, g.id)
                .is_some_and(|r| r.stuck.is_some());
            Some(if stuck { Why::Stuck } else { Why::Lost })
        } else if !g.members.contains(&n) && self.draining(n) {
            Some(Why::Draining)
        } else {
            None
        }
    }

    /// Whether a majority of the current voters is alive: otherwise no change can commit.
    fn has_quorum(&self, g: &GroupRecord) -> bool {
        self.f.live.has_quorum(g, self.f.now)
    }

    fn may_start(&self, g: &GroupRecord) -> bool {
        !g.target.is_empty() || self.books.moving.len() < self.limits.max_moves
    }

    /// The healthy node to add to a group keeping `kept`: up, not draining, not in the
    /// group, on a rack no kept node uses, under its incoming throttle; the least loaded,
    /// ties to the most free space (as last heartbeated), then the lowest id.
    fn replacement(&self, g: &GroupRecord, kept: &[u64]) -> Option<u64> {
        let racks: BTreeSet<&str> = kept.iter().map(|k| self.rack(*k)).collect();
        let all = g.members_and_target();
        self.f
            .state
            .nodes()
            .filter(|n| !n.draining && !all.contains(&n.id) && !racks.contains(n.rack.as_str()))
            .filter(|n| self.health(n.id) == Health::Up)
            .filter(|n| !self.f.live.recently_stuck(n.id, self.f.now))
            .filter(|n| self.books.incoming(n.id) < self.limits.max_moves_per_node)
            .min_by_key(|n| {
                let free = self
                    .f
                    .live
                    .usage(n.id)
                    .map_or(0, |(cap, used)| cap.saturating_sub(used));
                (self.books.load(n.id), std::cmp::Reverse(free), n.id)
            })
            .map(|n| n.id)
    }

    fn start(&mut self, g: &GroupRecord, target: Vec<u64>, swaps: Vec<(u64, u64, Why)>) {
        self.books.record(g, &target);
        self.plan.moves.push(Move {
            group_id: g.id,
            from: g.wanted().to_vec(),
            target,
            swaps,
        });
    }

    /// Replaces `leaving` nodes of `g`'s wanted voters where a replacement exists; the others
    /// stay. Returns whether a move was planned.
    fn replace(&mut self, g: &GroupRecord, leaving: &[(u64, Why)]) -> bool {
        let mut target: Vec<u64> = g.wanted().to_vec();
        let mut swaps = Vec::new();
        for &(old, why) in leaving {
            let kept: Vec<u64> = target.iter().copied().filter(|n| *n != old).collect();
            // The rack of `old` is free again unless another kept node uses it.
            let Some(new) = self.replacement(g, &kept) else {
                tracing::debug!(group = g.id, node = old, %why,
                    "no healthy node on a rack of its own to replace it with, or throttled");
                continue;
            };
            if let Some(slot) = target.iter_mut().find(|n| **n == old) {
                *slot = new;
            }
            // Reserve the receiver at once, so that two swaps of one pass see each other.
            *self.books.incoming.entry(new).or_default() += 1;
            swaps.push((old, new, why));
        }
        for (_, new, _) in &swaps {
            if let Some(i) = self.books.incoming.get_mut(new) {
                *i -= 1;
            }
        }
        if swaps.is_empty() {
            return false;
        }
        self.start(g, target, swaps);
        true
    }

    /// (1) Re-replication: groups that lost the most replicas first.
    fn replace_failed(&mut self) {
        type Failed = Vec<(u64, Why)>;
        let mut todo: Vec<(usize, u64, Failed)> = self
            .f
            .state
            .groups()
            .filter_map(|g| {
                let failed: Vec<(u64, Why)> = g
                    .wanted()
                    .iter()
                    .filter_map(|n| self.failed(g, *n).map(|w| (*n, w)))
                    .collect();
                (!failed.is_empty()).then_some((failed.len(), g.id, failed))
            })
            .collect();
        todo.sort_by_key(|(n, id, _)| (std::cmp::Reverse(*n), *id));
        for (_, id, failed) in todo {
            let Some(g) = self.f.state.group(id) else {
                continue;
            };
            if !self.has_quorum(g) {
                tracing::debug!(
                    group = id,
                    "lost its majority: no membership change can commit"
                );
                continue;
            }
            // Full: only moves already in flight may still be re-aimed.
            if self.may_start(g) {
                self.replace(g, &failed);
            }
        }
    }

    /// (2) Draining: hand leadership off a draining node, then move its replicas.
    fn drain(&mut self) {
        let state = self.f.state;
        for g in state.groups() {
            let Some(&d) = g.wanted().iter().find(|n| self.draining(**n)) else {
                continue;
            };
            if self.books.planned.contains(&g.id) {
                continue; // Re-placed by (1) this pass.
            }
            if !g.target.is_empty() && !g.target.contains(&d) {
                continue; // The move in flight removes it already.
            }
            let leader = self.f.live.leader(g, self.f.now);
            if leader == Some(d)
                && g.target.is_empty()
                && let Some(to) = self.leader_heir(g, d)
            {
                if !self.f.settling.contains(&g.id) {
                    self.plan.transfers.push(Transfer {
                        group_id: g.id,
                        from: d,
                        to,
                        drain: true,
                    });
                }
                continue;
            }
            if !self.has_quorum(g) || !self.may_start(g) {
                continue;
            }
            self.replace(g, &[(d, Why::Draining)]);
        }
    }

    /// The voter of `g` other than `from` to hand leadership to: up, not draining, leading
    /// the fewest groups.
    fn leader_heir(&self, g: &GroupRecord, from: u64) -> Option<u64> {
        let leads = self.leader_counts();
        g.members
            .iter()
            .copied()
            .filter(|n| *n != from && !self.draining(*n) && self.health(*n) == Health::Up)
            .filter(|n| self.f.live.report(*n, g.id).is_some())
            .min_by_key(|n| (leads.get(n).copied().unwrap_or(0), *n))
    }

    fn leader_counts(&self) -> BTreeMap<u64, usize> {
        let mut leads = BTreeMap::new();
        for g in self.f.state.groups() {
            if let Some(l) = self.f.live.leader(g, self.f.now) {
                *leads.entry(l).or_default() += 1;
            }
        }
        leads
    }

    /// (3) Rebalance, when nothing else moves: while an up node hosts at least two replicas
    /// fewer than another, move one group from the most to the least loaded, keeping racks
    /// distinct.
    fn rebalance(&mut self) {
        let state = self.f.state;
        let usable: Vec<u64> = state
            .nodes()
            .filter(|n| !n.draining && self.health(n.id) == Health::Up)
            .map(|n| n.id)
            .collect();
        // Only when every group is established and whole (a leader, every member up and
        // hosting it): moving replicas otherwise would only slow recovery down, or move
        // groups that have not even elected a leader yet.
        let healthy = state.groups().all(|g| {
            self.f.live.leader(g, self.f.now).is_some()
                && g.members.iter().all(|m| {
                    self.health(*m) == Health::Up
                        && self
                            .f
                            .live
                            .report(*m, g.id)
                            .is_some_and(|r| r.stuck.is_none())
                })
        });
        if !healthy {
            return;
        }
        while self.books.moving.len() < self.limits.max_moves {
            let Some((g, from, to)) = self.rebalance_step(&usable) else {
                return;
            };
            let Some(g) = state.group(g) else { return };
            let target = replace_member(&g.members, from, to);
            self.start(g, target, vec![(from, to, Why::Rebalance)]);
        }
    }

    /// The (group, donor, receiver) of the next rebalancing move, if any.
    fn rebalance_step(&self, usable: &[u64]) -> Option<(u64, u64, u64)> {
        let mut receivers: Vec<u64> = usable
            .iter()
            .copied()
            .filter(|n| self.books.incoming(*n) < self.limits.max_moves_per_node)
            .filter(|n| !self.f.live.recently_stuck(*n, self.f.now))
            .collect();
        receivers.sort_by_key(|n| (self.books.load(*n), *n));
        let mut donors = usable.to_vec();
        donors.sort_by_key(|n| (std::cmp::Reverse(self.books.load(*n)), *n));
        for &to in &receivers {
            for &from in &donors {
                if self.books.load(from) <= self.books.load(to) + 1 {
                    break;
                }
                if let Some(g) = self.movable_group(from, to) {
                    return Some((g, from, to));
                }
            }
        }
        None
    }

    /// A group of `from` that can take `to` instead: not moving, `to` not in it, racks stay
    /// distinct; preferably one `from` does not lead (no leadership hand-over needed).
    fn movable_group(&self, from: u64, to: u64) -> Option<u64> {
        let to_rack = self.rack(to);
        self.f
            .state
            .groups_of(from)
            .filter(|g| g.target.is_empty() && !self.books.moving.contains(&g.id))
            .filter(|g| !g.members.contains(&to))
            .filter(|g| {
                g.members
                    .iter()
                    .filter(|m| **m != from)
                    .all(|m| self.rack(*m) != to_rack)
            })
            .min_by_key(|g| (self.f.live.leader(g, self.f.now) == Some(from), g.id))
            .map(|g| g.id)
    }

    /// (4) Leader balance: a node leading more than its share (leaders / usable nodes,
    /// rounded down) hands a leadership to a voter of that group leading at least two
    /// fewer. The gap of two is the slack that prevents ping-pong: every hand-over narrows
    /// the spread, so this settles with counts within one of each other wherever groups
    /// allow, and a node leading nothing gets its share even when the others sit at the
    /// rounded-up average.
    fn balance_leaders(&mut self) {
        let state = self.f.state;
        let usable = state
            .nodes()
            .filter(|n| !n.draining && self.health(n.id) == Health::Up)
            .count();
        let mut leads = self.leader_counts();
        let total: usize = leads.values().sum();
        if usable == 0 || total == 0 {
            return;
        }
        let share = total / usable;
        let busy: BTreeSet<u64> = self.plan.transfers.iter().map(|t| t.group_id).collect();
        for g in state.groups() {
            if self.books.moving.contains(&g.id)
                || self.f.settling.contains(&g.id)
                || busy.contains(&g.id)
            {
                continue;
            }
            let Some(from) = self.f.live.leader(g, self.f.now) else {
                continue;
            };
            let from_count = leads.get(&from).copied().unwrap_or(0);
            if from_count <= share || self.draining(from) {
                continue;
            }
            let to = g
                .members
                .iter()
                .copied()
                .filter(|n| *n != from && !self.draining(*n) && self.health(*n) == Health::Up)
                .filter(|n| self.f.live.report(*n, g.id).is_some())
                .filter(|n| leads.get(n).copied().unwrap_or(0) + 2 <= from_count)
                .min_by_key(|n| (leads.get(n).copied().unwrap_or(0), *n));
            let Some(to) = to else { continue };
            *leads.entry(from).or_default() -= 1;
            *leads.entry(to).or_default() += 1;
            self.plan.transfers.push(Transfer {
                group_id: g.id,
                from,
                to,
                drain: false,
            });
        }
    }
}

/// Groups `hb` shows with a leader (a replica leading it, or following a known leader) that
/// the state does not record as established yet: the heartbeat handler records them
/// ([`Mutation::SetGroupsEstablished`]) before it answers. Groups the state does not know
/// are left out.
pub fn newly_established<'a>(
    state: &'a State,
    hb: &'a NodeHeartbeat,
) -> impl Iterator<Item = u64> + 'a {
    hb.groups
        .iter()
        .filter(|g| g.role == Role::Leader || g.leader != 0)
        .map(|g| g.group_id)
        .filter(|id| state.group(*id).is_some_and(|g| !g.established))
}

/// What the manager tells a node in its heartbeat ack: replicas to create and replicas to
/// destroy.
///
/// - Create: every group the node does not report that wants it as a voter (its members,
///   or its target during a move).
///   It joins (starts empty, waits for the leader's snapshot, never campaigns) when it is
///   being added, or when the group is established (has had a leader): a member that lost
///   its replica must not come back as a fresh voter with an empty log, which could elect a
///   replica missing committed entries. Otherwise the group is new and it is one of the
///   initial voters. `established` is replicated state, not what this manager happened to
///   hear, so every manager that takes over decides the same.
/// - Destroy: groups the node reports that the state knows and of which it is neither a
///   member nor a move target. A group the manager does not know is left alone: a wiped
///   or stale manager database must not destroy data.
pub fn heartbeat_orders(
    state: &State,
    node: u64,
    reported: &BTreeSet<u64>,
) -> (Vec<GroupSpec>, Vec<u64>) {
    let create = state
        .groups()
        .filter(|g| !reported.contains(&g.id))
        // A member a move is removing is not re-created: it may just have applied its
        // removal, before the manager heard the move is done.
        .filter(|g| g.wanted().contains(&node))
        .map(|g| {
            let joining = !g.members.contains(&node) || g.established;
            state.group_spec(g, joining)
        })
        .collect();
    let remove = reported
        .iter()
        .copied()
        .filter(|id| {
            state
                .group(*id)
                .is_some_and(|g| !g.members_and_target().contains(&node))
        })
        .collect();
    (create, remove)
}

/// A call to a storage node that drives a move or a hand-over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drive {
    /// Ask `leader` to make the voters exactly `target`.
    ChangeMembers {
        group_id: u64,
        leader: u64,
        target: Vec<PeerInfo>,
    },
}

/// The ChangeMembers calls of this pass: one per moving group whose new nodes all host the
/// group (as joining replicas) and whose leader is known. `hints` are leaders named by
/// `NotLeader` answers, tried before the heartbeats' view.
pub fn drive(
    state: &State,
    live: &Liveness,
    now: Instant,
    hints: &BTreeMap<u64, u64>,
) -> Vec<Drive> {
    let mut out = Vec::new();
    for g in state.groups().filter(|g| !g.target.is_empty()) {
        let joined = g
            .target
            .iter()
            .filter(|n| !g.members.contains(n))
            .all(|n| live.report(*n, g.id).is_some());
        if !joined {
            continue;
        }
        let all = g.members_and_target();
        let hinted = hints
            .get(&g.id)
            .copied()
            .filter(|h| all.contains(h) && !live.is_down(*h, now));
        let Some(leader) = hinted.or_else(|| live.leader(g, now)) else {
            continue;
        };
        out.push(Drive::ChangeMembers {
            group_id: g.id,
            leader,
            target: state.peer_infos(&g.target),
        });
    }
    out
}

/// Whether two lists name the same nodes, in any order.
pub fn same_nodes(a: &[u64], b: &[u64]) -> bool {
    let a: BTreeSet<u64> = a.iter().copied().collect();
    let b: BTreeSet<u64> = b.iter().copied().collect();
    a == b
}

/// `members` with `from` replaced by `to`, in place.
fn replace_member(members: &[u64], from: u64, to: u64) -> Vec<u64> {
    members
        .iter()
        .map(|&m| if m == from { to } else { m })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::control::{GroupState, NodeHeartbeat, NodeRegistration, Role};

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

    #[test]
    fn a_down_node_is_replaced_on_a_free_rack_by_a_healthy_node() {
        let mut w = World::new(&["a", "b", "c", "d", "d"], 3);
        w.kill(1);
        w.advance(DOWN);
        let p = w.plan(LIMITS);
        let affected: Vec<u64> = w.state.groups_of(1).map(|g| g.id).collect();
        assert!(!affected.is_empty());
        assert_eq!(
            p.moves.iter().map(|m| m.group_id).collect::<Vec<_>>(),
            affected
        );
        for m in &p.moves {
            assert!(!m.target.contains(&1));
            let (old, new, why) = m.swaps[0];
            assert_eq!((old, why), (1, Why::Down));
            // Rack "a" has no other node: the replacement comes from a rack the group lacks.
            let kept: BTreeSet<String> = m
                .target
                .iter()
                .filter(|n| **n != new)
                .map(|n| w.rack(*n))
                .collect();
            assert!(!kept.contains(&w.rack(new)), "{m:?}");
        }
        w.complete(&p);
        w.settle(10);
        assert_eq!(w.state.groups_of(1).count(), 0);
        w.assert_placement_rules();
    }

    #[test]
    fn suspect_nodes_are_not_replaced_yet() {
        let mut w = World::new(&["a", "b", "c", "d"], 3);
        w.kill(2);
        w.advance(SUSPECT);
        assert!(w.plan(LIMITS).moves.is_empty());
    }

    #[test]
    fn replacements_skip_draining_down_and_same_rack_nodes() {
        // Node 4 shares rack "b" with a member that stays; node 5 drains; node 6 is down:
        // only node 7 qualifies.
        let mut w = World::new(&["a", "b", "c"], 2);
        let n4 = w.add_node("b");
        let n5 = w.add_node("e");
        let n6 = w.add_node("f");
        let n7 = w.add_node("g");
        w.state.apply(&Mutation::SetNodeDraining {
            node_id: n5,
            draining: true,
        });
        w.kill(n6);
        w.kill(1);
        w.advance(DOWN);
        let p = w.plan(LIMITS);
        assert!(!p.moves.is_empty());
        for m in &p.moves {
            assert_eq!(m.swaps.len(), 1);
            let new = m.swaps[0].1;
            assert_ne!(new, n4);
            assert_eq!(new, n7, "{m:?}");
        }
        // Node 7 takes two moves at a time at most.
        assert!(p.moves.len() <= LIMITS.max_moves_per_node);
    }

    #[test]
    fn between_equally_loaded_nodes_the_one_with_more_free_space_is_chosen() {
        let mut w = World::new(&["a", "b", "c"], 2);
        let fuller = w.add_node("d");
        let emptier = w.add_node("e");
        w.kill(1);
        w.advance(DOWN);
        let groups: Vec<GroupState> = Vec::new();
        w.live.heartbeat(
            &NodeHeartbeat {
                node_id: fuller,
                capacity_bytes: 1 << 40,
                used_bytes: 1 << 39,
                groups,
                recovery: Default::default(),
                descriptors: Default::default(),
            },
            w.now,
        );
        let p = w.plan(LIMITS);
        assert_eq!(p.moves[0].swaps[0].1, emptier, "{p:?}");
    }

    #[test]
    fn groups_that_lost_more_replicas_go_first() {
        let mut w = World::new(&["a", "b", "c", "d", "e", "f"], 3);
        // Group `worst` loses node 1 (down) and its replica on node 2 (lost); the others at
        // most one replica. A group down to one replica has no majority and is skipped.
        let worst = w
            .state
            .groups()
            .find(|g| g.members.contains(&1) && g.members.contains(&2))
            .map(|g| g.id)
            .or_else(|| w.state.groups().map(|g| g.id).last())
            .unwrap();
        let second = w.state.group(worst).unwrap().members[1];
        w.lost.insert((second, worst));
        w.kill(1);
        w.advance(DOWN);
        let p = w.plan(Limits {
            max_moves: 1,
            ..LIMITS
        });
        assert_eq!(p.moves.len(), 1);
        assert_eq!(p.moves[0].group_id, worst);
        assert_eq!(p.moves[0].swaps.len(), 2, "{p:?}");
    }

    #[test]
    fn a_member_that_lost_its_replica_is_replaced_after_the_down_timeout() {
        let mut w = World::new(&["a", "b", "c", "d"], 3);
        let g = w.state.groups_of(1).next().unwrap().id;
        w.lost.insert((1, g));
        let p = w.plan(LIMITS);
        assert_eq!(p.moves.len(), 1);
        assert_eq!(p.moves[0].group_id, g);
        assert_eq!(p.moves[0].swaps[0].0, 1);
        assert_eq!(p.moves[0].swaps[0].2, Why::Lost);
    }

    #[test]
    fn lost_tracker_waits_for_the_down_timeout_and_forgets_recovered_replicas() {
        let mut w = World::new(&["a", "b", "c"], 1);
        let mut t = LostTracker::default();
        // Node 1 heartbeats without its group.
        let hb = |w: &mut World, with: bool| {
            let groups = if with {
                vec![GroupState {
                    group_id: 1,
                    role: Role::Follower,
                    term: 1,
                    leader: 2,
                    commit: 1,
                    applied: 1,
                    voters: vec![],
                    learners: vec![],
                    stuck: None,
                }]
            } else {
                vec![]
            };
            w.live.heartbeat(
                &NodeHeartbeat {
                    node_id: 1,
                    capacity_bytes: 1,
                    used_bytes: 0,
                    groups,
                    recovery: Default::default(),
                    descriptors: Default::default(),
                },
                w.now,
            );
        };
        hb(&mut w, false);
        t.update(&w.state, &w.live, w.now);
        assert!(t.lost(w.now, DOWN).is_empty());
        w.now += DOWN;
        hb(&mut w, false);
        t.update(&w.state, &w.live, w.now);
        assert_eq!(t.lost(w.now, DOWN), BTreeSet::from([(1, 1)]));
        hb(&mut w, true);
        t.update(&w.state, &w.live, w.now);
        assert!(t.lost(w.now, DOWN).is_empty());
        let _ = w.t0;
    }

    /// Issue 12: a replica its node reports stuck (apply stalled on a full disk or a
    /// corrupt block, or quarantined at start) serves nothing and pins its node's shared
    /// log; once the down timeout passed it is replaced like a lost one, and a stuck
    /// leader is not the one the manager asks to drive the change.
    #[test]
    fn a_replica_reported_stuck_is_replaced_after_the_down_timeout() {
        let mut w = World::new(&["a", "b", "c", "d"], 1);
        let g = w.state.groups_of(1).next().unwrap().clone();
        let mut t = LostTracker::default();
        let stuck_report = |w: &mut World| {
            let groups = w
                .state
                .groups()
                .filter(|r| r.members.contains(&1))
                .map(|r| GroupState {
                    group_id: r.id,
                    role: Role::Leader,
                    term: 9,
                    leader: 1,
                    commit: 1,
                    applied: 1,
                    voters: r.members.clone(),
                    learners: vec![],
                    stuck: (r.id == g.id).then(|| "apply stalled: disk full".to_string()),
                })
                .collect();
            let hb = NodeHeartbeat {
                node_id: 1,
                capacity_bytes: 1 << 40,
                used_bytes: 0,
                groups,
                recovery: Default::default(),
                descriptors: Default::default(),
            };
            w.live.heartbeat(&hb, w.now);
        };
        stuck_report(&mut w);
        t.update(&w.state, &w.live, w.now);
        assert!(
            t.lost(w.now, DOWN).is_empty(),
            "not before the down timeout"
        );
        assert_ne!(
            w.live.leader(&g, w.now),
            Some(1),
            "a stuck leader drives nothing"
        );
        w.advance(DOWN);
        stuck_report(&mut w);
        t.update(&w.state, &w.live, w.now);
        w.lost = t.lost(w.now, DOWN);
        assert_eq!(w.lost, BTreeSet::from([(1, g.id)]));
        let p = w.plan(LIMITS);
        let m = p
            .moves
            .iter()
            .find(|m| m.group_id == g.id)
            .expect("replaced");
        assert_eq!(m.swaps.len(), 1);
        assert_eq!((m.swaps[0].0, m.swaps[0].2), (1, Why::Stuck));
        assert!(!m.target.contains(&1));
    }

    #[test]
    fn draining_moves_every_replica_off_after_its_leaderships() {
        let mut w = World::new(&["a", "b", "c", "d", "e"], 3);
        let d = 2;
        w.state.apply(&Mutation::SetNodeDraining {
            node_id: d,
            draining: true,
        });
        let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
        for _ in 0..20 {
            w.heartbeat_with(&leaders);
            let p = w.plan(LIMITS);
            for t in &p.transfers {
                if t.drain {
                    assert_eq!(t.from, d);
                    assert_ne!(t.to, d);
                    leaders.insert(t.group_id, t.to);
                }
            }
            // No move takes a group the draining node still leads.
            for m in &p.moves {
                let g = w.state.group(m.group_id).unwrap();
                assert_ne!(w.live.leader(g, w.now), Some(d), "{m:?}");
            }
            if p.moves.is_empty() && p.transfers.iter().all(|t| !t.drain) {
                break;
            }
            w.complete(&p);
            // Leaders of moved groups stay wherever the test put them, if still members.
            leaders.retain(|g, l| w.state.group(*g).unwrap().members.contains(l));
        }
        assert_eq!(w.counts()[&d], 0);
        w.heartbeat_with(&leaders);
        let leads = w
            .state
            .groups()
            .filter(|g| w.live.leader(g, w.now) == Some(d))
            .count();
        assert_eq!(leads, 0);
        w.assert_placement_rules();
    }

    #[test]
    fn a_new_node_receives_replicas_until_counts_are_even() {
        let mut w = World::new(&["a", "b", "c", "d"], 6);
        let n = w.add_node("e");
        assert_eq!(w.counts()[&n], 0);
        w.settle(20);
        let counts = w.counts();
        let (min, max) = (
            *counts.values().min().unwrap(),
            *counts.values().max().unwrap(),
        );
        assert!(max - min <= 1, "{counts:?}");
        assert!(counts[&n] >= min);
        w.assert_placement_rules();
    }

    #[test]
    fn rebalancing_waits_while_a_group_is_degraded() {
        let mut w = World::new(&["a", "b", "c"], 4);
        w.add_node("d");
        w.kill(1);
        w.advance(SUSPECT);
        assert!(w.plan(LIMITS).moves.is_empty());
    }

    #[test]
    fn throttles_bound_moves_in_total_and_per_receiving_node() {
        let mut w = World::new(&["a", "b", "c", "d", "e", "f"], 6);
        let n = w.add_node("g");
        let p = w.plan(LIMITS);
        let into_n = p
            .moves
            .iter()
            .filter(|m| m.swaps.iter().any(|s| s.1 == n))
            .count();
        assert!(into_n <= LIMITS.max_moves_per_node, "{p:?}");
        let p = w.plan(Limits {
            max_moves: 1,
            max_moves_per_node: 10,
        });
        assert_eq!(p.moves.len(), 1);
        // A move in flight counts: with max_moves 1 no second one starts.
        w.state.apply(&p.moves[0].mutation());
        w.kill(1);
        w.advance(DOWN);
        let p2 = w.plan(Limits {
            max_moves: 1,
            ..LIMITS
        });
        for m in &p2.moves {
            // Only the move in flight may be re-aimed.
            assert_eq!(m.group_id, p.moves[0].group_id);
        }
    }

    /// Five racks; a group of node 1 with a move under way replacing node 1 by `spare[0]`.
    fn moving_node_1_away() -> (World, GroupRecord, Vec<u64>) {
        let mut w = World::new(&["a", "b", "c", "d", "e"], 2);
        let g = w.state.groups_of(1).next().unwrap().clone();
        let spare: Vec<u64> = (1..=5).filter(|n| !g.members.contains(n)).collect();
        w.set_target(&g, 1, spare[0]);
        (w, g, spare)
    }

    #[test]
    fn a_move_whose_new_node_dies_is_re_aimed() {
        let (mut w, g, spare) = moving_node_1_away();
        w.kill(spare[0]);
        w.advance(DOWN);
        let p = w.plan(LIMITS);
        let m = p
            .moves
            .iter()
            .find(|m| m.group_id == g.id)
            .expect("re-aimed");
        assert_eq!(m.swaps[0].0, spare[0]);
        assert_eq!(m.swaps[0].1, spare[1]);
        assert!(!m.target.contains(&1));
    }

    #[test]
    fn a_move_whose_new_node_never_hosts_the_group_is_re_aimed() {
        let (mut w, g, spare) = moving_node_1_away();
        // The new node heartbeats but never reports the group.
        w.lost.insert((spare[0], g.id));
        let p = w.plan(LIMITS);
        let m = p
            .moves
            .iter()
            .find(|m| m.group_id == g.id)
            .expect("re-aimed");
        assert_eq!(m.swaps, [(spare[0], spare[1], Why::Lost)]);
    }

    #[test]
    fn nothing_is_rebalanced_before_every_group_has_a_leader() {
        let mut w = World::new(&["a", "b", "c", "d"], 6);
        w.add_node("e");
        // Heartbeats in which nobody leads group 1.
        let none: BTreeMap<u64, u64> = BTreeMap::from([(1, 0)]);
        w.heartbeat_with(&none);
        assert!(w.plan(LIMITS).moves.is_empty());
        w.heartbeat_all();
        assert!(!w.plan(LIMITS).moves.is_empty());
    }

    #[test]
    fn leaders_spread_over_voters() {
        let mut w = World::new(&["a", "b", "c"], 6);
        // Node 1 leads every group.
        let all: BTreeMap<u64, u64> = w.state.groups().map(|g| (g.id, 1)).collect();
        w.heartbeat_with(&all);
        let mut leaders = all;
        for _ in 0..10 {
            let p = w.plan(LIMITS);
            if p.transfers.is_empty() {
                break;
            }
            for t in &p.transfers {
                assert_eq!(leaders[&t.group_id], t.from);
                leaders.insert(t.group_id, t.to);
            }
            w.heartbeat_with(&leaders);
        }
        let mut per: BTreeMap<u64, usize> = BTreeMap::new();
        for l in leaders.values() {
            *per.entry(*l).or_default() += 1;
        }
        let counts: Vec<usize> = (1..=3).map(|n| per.get(&n).copied().unwrap_or(0)).collect();
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "{per:?}");
    }

    #[test]
    fn a_node_leading_nothing_gets_a_share_even_when_others_sit_at_the_average() {
        // Four nodes on four racks; node 4 leads nothing while nodes 1-3 lead the rest.
        let mut w = World::new(&["a", "b", "c", "d"], 3);
        let mut leaders: BTreeMap<u64, u64> = w
            .state
            .groups()
            .map(|g| (g.id, *g.members.iter().find(|m| **m != 4).unwrap()))
            .collect();
        w.heartbeat_with(&leaders);
        for _ in 0..10 {
            let p = w.plan(LIMITS);
            if p.transfers.is_empty() {
                break;
            }
            for t in &p.transfers {
                leaders.insert(t.group_id, t.to);
            }
            w.heartbeat_with(&leaders);
        }
        let on_4 = leaders.values().filter(|l| **l == 4).count();
        assert!(on_4 >= leaders.len() / 4, "{leaders:?}");
    }

    #[test]
    fn heartbeat_orders_never_remove_a_target_member() {
        let mut w = World::new(&["a", "b", "c", "d"], 2);
        let g = w.state.groups_of(1).next().unwrap().clone();
        let new = (1..=4).find(|n| !g.members.contains(n)).unwrap();
        let target = w.set_target(&g, 1, new);
        // The new node does not host the group yet: it is told to join.
        let hosted: BTreeSet<u64> = w.state.groups_of(new).map(|g| g.id).collect();
        let (create, remove) = heartbeat_orders(&w.state, new, &hosted);
        assert!(remove.is_empty());
        let spec = create.iter().find(|s| s.group_id == g.id).unwrap();
        assert!(spec.joining);
        assert_eq!(spec.peers.len(), 4, "members and target: {spec:?}");
        // Hosting it, mid-move: neither node is told to remove it.
        let hosted_new: BTreeSet<u64> = hosted.iter().copied().chain([g.id]).collect();
        let (_, remove) = heartbeat_orders(&w.state, new, &hosted_new);
        assert!(remove.is_empty());
        let hosted_old: BTreeSet<u64> = w.state.groups_of(1).map(|g| g.id).collect();
        let (_, remove) = heartbeat_orders(&w.state, 1, &hosted_old);
        assert!(remove.is_empty());
        // The leaving member already dropped its replica: it is not told to re-create it.
        let without: BTreeSet<u64> = hosted_old.iter().copied().filter(|x| *x != g.id).collect();
        let (create, _) = heartbeat_orders(&w.state, 1, &without);
        assert!(create.iter().all(|s| s.group_id != g.id));
        // Once done, the old member is told to destroy its replica; unknown groups stay.
        w.state.apply(&Mutation::SetGroupMembers {
            group_id: g.id,
            members: target,
            term: 0,
        });
        let hosted_old: BTreeSet<u64> = hosted_old.into_iter().chain([999]).collect();
        let (_, remove) = heartbeat_orders(&w.state, 1, &hosted_old);
        assert_eq!(remove, vec![g.id]);
    }

    #[test]
    fn a_member_that_lost_its_replica_rejoins_instead_of_bootstrapping() {
        let w = World::new(&["a", "b", "c"], 1);
        // A new group that never had a leader: created as an initial voter.
        let fresh = {
            let mut s = w.state.clone();
            s.apply(&Mutation::AddGroups(vec![GroupRecord {
                id: 50,
                members: vec![1, 2, 3],
                ..GroupRecord::default()
            }]));
            let (create, _) = heartbeat_orders(&s, 1, &BTreeSet::from([1]));
            create
        };
        assert_eq!(fresh.len(), 1);
        assert!(!fresh[0].joining);
        // Group 1 has a leader (node 1, before it lost its replica): node 1 joins.
        let (create, _) = heartbeat_orders(&w.state, 1, &BTreeSet::new());
        assert!(create[0].joining);
        assert_eq!(create[0].peers.len(), 3);
    }

    #[test]
    fn only_groups_shown_with_a_leader_and_not_yet_recorded_become_established() {
        let mut w = World::new(&["a", "b", "c"], 3);
        assert!(w.state.groups().all(|g| g.established));
        w.state.apply(&Mutation::AddGroups(
            (50..=53)
                .map(|id| GroupRecord {
                    id,
                    members: vec![1, 2, 3],
                    ..GroupRecord::default()
                })
                .collect(),
        ));
        let report = |group_id, role, leader| GroupState {
            group_id,
            role,
            term: 1,
            leader,
            commit: 1,
            applied: 1,
            voters: vec![],
            learners: vec![],
            stuck: None,
        };
        let hb = NodeHeartbeat {
            node_id: 1,
            capacity_bytes: 1,
            used_bytes: 0,
            groups: vec![
                report(1, Role::Leader, 1),     // recorded already
                report(50, Role::Leader, 1),    // leads it
                report(51, Role::Follower, 2),  // follows a known leader
                report(52, Role::Candidate, 0), // no leader yet
                report(999, Role::Leader, 1),   // unknown to the state
            ],
            recovery: Default::default(),
            descriptors: Default::default(),
        };
        let got: Vec<u64> = newly_established(&w.state, &hb).collect();
        assert_eq!(got, [50, 51]);
    }

    #[test]
    fn moves_are_driven_only_once_the_new_nodes_host_the_group() {
        let mut w = World::new(&["a", "b", "c", "d"], 2);
        let g = w.state.groups_of(1).next().unwrap().clone();
        let new = (1..=4).find(|n| !g.members.contains(n)).unwrap();
        w.set_target(&g, 1, new);
        // Heartbeats from before the move: the new node does not host the group.
        assert!(drive(&w.state, &w.live, w.now, &BTreeMap::new()).is_empty());
        w.heartbeat_all();
        let calls = drive(&w.state, &w.live, w.now, &BTreeMap::new());
        assert_eq!(calls.len(), 1);
        let Drive::ChangeMembers {
            group_id,
            leader,
            target,
        } = &calls[0];
        assert_eq!(*group_id, g.id);
        assert_eq!(*leader, g.members[0]);
        assert_eq!(target.len(), 3);
        // A NotLeader hint naming a member wins over the heartbeats.
        let hint = g.members[1];
        let calls = drive(&w.state, &w.live, w.now, &BTreeMap::from([(g.id, hint)]));
        assert!(matches!(&calls[0], Drive::ChangeMembers { leader, .. } if *leader == hint));
    }
}

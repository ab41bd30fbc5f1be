//! One reconcile pass, [`plan`]: which groups change membership and which leaderships move.
//! Priorities, in order: replace failed members, drain, rebalance replica counts (only when
//! nothing else moves), balance leaderships; throttled by [`Limits`].
//!
//! Kept whole on purpose: the steps share one set of books, so each accounts for what the
//! steps before it decided. Pure: must never do I/O, read a clock or commit; the caller
//! commits the moves.

use std::collections::{BTreeMap, BTreeSet};

use crate::liveness::Health;
use crate::state::{GroupRecord, State};

use super::vocabulary::{Facts, Limits, Move, Plan, Transfer, Why, replace_member};

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

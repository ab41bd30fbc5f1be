//! What heartbeats tell: when each node was last heard from, its usage, its scrubbing, and
//! its view of every group it hosts. Memory only, never persisted or replicated: every manager learns it afresh
//! from the nodes, which heartbeat every second. What a heartbeat proves for good, that a
//! group has had a leader, is not kept here but recorded in the replicated state
//! (`GroupRecord::established`): a manager that takes over must not forget it.
//!
//! Time is passed in by the caller, so this is deterministic under test.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tessera_proto::control::{Descriptors, GroupState, NodeHeartbeat, Role, ScrubStats};

use crate::state::GroupRecord;

/// A node's health, from the age of the last word heard from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Up,
    Suspect,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Suspect => "suspect",
            Health::Down => "down",
        }
    }
}

#[derive(Debug)]
struct Live {
    /// Registration or heartbeat, whichever came last.
    last_contact: Instant,
    last_heartbeat: Option<Instant>,
    usage: Option<(u64, u64)>,
    descriptors: Option<Descriptors>,
    /// Its scrubbing as its latest heartbeat reported it (`None`: no heartbeat yet).
    scrub: Option<ScrubStats>,
    groups: HashMap<u64, GroupState>,
}

#[derive(Debug)]
pub struct Liveness {
    /// Nodes not heard from since the manager started are aged from this instant, so a
    /// restarted manager does not call the whole cluster down at once.
    started: Instant,
    suspect_after: Duration,
    down_after: Duration,
    nodes: HashMap<u64, Live>,
    /// When each node last reported a stuck replica; kept across its re-registrations.
    stuck_at: HashMap<u64, Instant>,
}

/// How long a node that reported a stuck replica receives no replicas: what made one stuck
/// (a full disk, a failing device) would make a replica moved back stuck again.
pub const STUCK_MEMORY: Duration = Duration::from_secs(600);

impl Liveness {
    pub fn new(started: Instant, suspect_after: Duration, down_after: Duration) -> Self {
        Liveness {
            started,
            suspect_after,
            down_after,
            nodes: HashMap::new(),
            stuck_at: HashMap::new(),
        }
    }

    /// Forgets every report and ages unheard nodes from `now`: for a manager that has just
    /// become leader (nodes only report to the leader, so what it knew is stale).
    pub fn reset(&mut self, now: Instant) {
        self.started = now;
        self.nodes.clear();
    }

    /// A node (re)registered: it is alive, and whatever it reported before its restart is
    /// stale.
    pub fn registered(&mut self, node: u64, now: Instant) {
        self.nodes.insert(
            node,
            Live {
                last_contact: now,
                last_heartbeat: None,
                usage: None,
                descriptors: None,
                scrub: None,
                groups: HashMap::new(),
            },
        );
    }

    pub fn heartbeat(&mut self, hb: &NodeHeartbeat, now: Instant) {
        let live = self.nodes.entry(hb.node_id).or_insert_with(|| Live {
            last_contact: now,
            last_heartbeat: None,
            usage: None,
            descriptors: None,
            scrub: None,
            groups: HashMap::new(),
        });
        live.last_contact = now;
        live.last_heartbeat = Some(now);
        live.usage = Some((hb.capacity_bytes, hb.used_bytes));
        live.descriptors = Some(hb.descriptors);
        live.scrub = Some(hb.scrub.clone());
        live.groups = hb.groups.iter().map(|g| (g.group_id, g.clone())).collect();
        if hb.groups.iter().any(|g| g.stuck.is_some()) {
            self.stuck_at.insert(hb.node_id, now);
        }
    }

    /// Whether `node` reported a stuck replica within [`STUCK_MEMORY`]: it is given no
    /// replicas (they would be stuck again, and replaced again, back and forth).
    pub fn recently_stuck(&self, node: u64, now: Instant) -> bool {
        self.stuck_at
            .get(&node)
            .is_some_and(|t| now.saturating_duration_since(*t) < STUCK_MEMORY)
    }

    pub fn health(&self, node: u64, now: Instant) -> Health {
        let since = self
            .nodes
            .get(&node)
            .map_or(self.started, |l| l.last_contact);
        let age = now.saturating_duration_since(since);
        if age >= self.down_after {
            Health::Down
        } else if age >= self.suspect_after {
            Health::Suspect
        } else {
            Health::Up
        }
    }

    /// How long a node may stay silent before it is down.
    pub fn down_after(&self) -> Duration {
        self.down_after
    }

    pub fn is_down(&self, node: u64, now: Instant) -> bool {
        self.health(node, now) == Health::Down
    }

    pub fn last_heartbeat_ago(&self, node: u64, now: Instant) -> Option<Duration> {
        let at = self.nodes.get(&node)?.last_heartbeat?;
        Some(now.saturating_duration_since(at))
    }

    /// (capacity, used) from the latest heartbeat.
    pub fn usage(&self, node: u64) -> Option<(u64, u64)> {
        self.nodes.get(&node)?.usage
    }

    pub fn descriptors(&self, node: u64) -> Option<Descriptors> {
        self.nodes.get(&node)?.descriptors
    }

    /// Node `node`'s scrubbing from its latest heartbeat (`None`: none since it registered
    /// or since this manager took the lead).
    pub fn scrub(&self, node: u64) -> Option<&ScrubStats> {
        self.nodes.get(&node)?.scrub.as_ref()
    }

    /// Node `node`'s latest report about group `group`.
    pub fn report(&self, node: u64, group: u64) -> Option<&GroupState> {
        self.nodes.get(&node)?.groups.get(&group)
    }

    /// Group ids `node` reported hosting in its latest heartbeat.
    pub fn reported(&self, node: u64) -> impl Iterator<Item = u64> + '_ {
        self.nodes
            .get(&node)
            .into_iter()
            .flat_map(|l| l.groups.keys().copied())
    }

    /// The member that claims leadership of `g` with the highest term, among members (and
    /// nodes a move is adding) not down. A stuck replica is not asked to lead anything: it
    /// refuses requests and hands its leadership over.
    pub fn leader(&self, g: &GroupRecord, now: Instant) -> Option<u64> {
        g.members_and_target()
            .iter()
            .filter(|m| !self.is_down(**m, now))
            .filter_map(|m| {
                let r = self.report(*m, g.id)?;
                (r.role == Role::Leader && r.stuck.is_none()).then_some((r.term, *m))
            })
            .max()
            .map(|(_, m)| m)
    }

    /// Whether a majority of `g`'s members are not down, so it can take writes.
    pub fn has_quorum(&self, g: &GroupRecord, now: Instant) -> bool {
        let alive = g.members.iter().filter(|m| !self.is_down(**m, now)).count();
        alive * 2 > g.members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(node: u64, groups: &[(u64, Role, u64)]) -> NodeHeartbeat {
        NodeHeartbeat {
            node_id: node,
            capacity_bytes: 100,
            used_bytes: 10,
            groups: groups
                .iter()
                .map(|&(group_id, role, term)| GroupState {
                    group_id,
                    role,
                    term,
                    leader: 0,
                    commit: 1,
                    applied: 1,
                    voters: Vec::new(),
                    learners: Vec::new(),
                    joint: false,
                    stuck: None,
                })
                .collect(),
            recovery: Default::default(),
            descriptors: Default::default(),
            scrub: Default::default(),
        }
    }

    /// Issue 12: a node whose replica was stuck is given none for a while, even once it
    /// reports no stuck replica (all were moved off) and after it registers again; else
    /// rebalancing moves a replica back onto it, it gets stuck, is replaced, and so on.
    #[test]
    fn a_node_that_reported_a_stuck_replica_is_remembered() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, Duration::from_secs(5), Duration::from_secs(30));
        l.heartbeat(&hb(1, &[(7, Role::Follower, 1)]), t0);
        assert!(!l.recently_stuck(1, t0));
        let mut stuck = hb(1, &[(7, Role::Follower, 1)]);
        stuck.groups[0].stuck = Some("apply stalled: disk full".into());
        l.heartbeat(&stuck, t0 + Duration::from_secs(1));
        l.registered(1, t0 + Duration::from_secs(2));
        l.heartbeat(&hb(1, &[]), t0 + Duration::from_secs(3));
        assert!(l.recently_stuck(1, t0 + Duration::from_secs(3)));
        assert!(!l.recently_stuck(2, t0 + Duration::from_secs(3)));
        assert!(!l.recently_stuck(1, t0 + Duration::from_secs(1) + STUCK_MEMORY));
    }

    #[test]
    fn health_ages_from_last_contact_or_manager_start() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, Duration::from_secs(5), Duration::from_secs(30));
        assert_eq!(l.health(1, t0 + Duration::from_secs(4)), Health::Up);
        assert_eq!(l.health(1, t0 + Duration::from_secs(5)), Health::Suspect);
        assert_eq!(l.health(1, t0 + Duration::from_secs(30)), Health::Down);
        l.heartbeat(&hb(1, &[]), t0 + Duration::from_secs(29));
        assert_eq!(l.health(1, t0 + Duration::from_secs(30)), Health::Up);
        assert_eq!(
            l.last_heartbeat_ago(1, t0 + Duration::from_secs(30)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(l.last_heartbeat_ago(2, t0), None);
    }

    #[test]
    fn leader_is_the_live_claimant_with_the_highest_term() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, Duration::from_secs(5), Duration::from_secs(30));
        let g = GroupRecord {
            id: 7,
            members: vec![1, 2, 3],
            ..GroupRecord::default()
        };
        assert_eq!(l.leader(&g, t0), None);
        l.heartbeat(&hb(1, &[(7, Role::Leader, 3)]), t0);
        l.heartbeat(&hb(2, &[(7, Role::Leader, 4)]), t0);
        l.heartbeat(&hb(3, &[(7, Role::Follower, 4)]), t0);
        assert_eq!(l.leader(&g, t0), Some(2));
        // Node 2 goes silent; node 1's stale claim is all that is left.
        let later = t0 + Duration::from_secs(31);
        l.heartbeat(&hb(1, &[(7, Role::Leader, 3)]), later);
        l.heartbeat(&hb(3, &[(7, Role::Follower, 4)]), later);
        assert_eq!(l.leader(&g, later), Some(1));
        assert!(l.has_quorum(&g, later));
        assert!(!l.has_quorum(&g, later + Duration::from_secs(31)));
    }

    #[test]
    fn a_new_leader_gives_every_node_a_fresh_grace_period() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, Duration::from_secs(5), Duration::from_secs(30));
        l.heartbeat(&hb(1, &[(7, Role::Leader, 3)]), t0);
        // Leadership came back to this manager long after it last heard node 1.
        let led = t0 + Duration::from_secs(60);
        assert_eq!(l.health(1, led), Health::Down);
        l.reset(led);
        assert_eq!(l.health(1, led + Duration::from_secs(4)), Health::Up);
        assert_eq!(l.health(2, led + Duration::from_secs(4)), Health::Up);
        assert!(l.report(1, 7).is_none(), "stale reports are forgotten");
    }

    /// Issue 16: a node's scrubbing is what its latest heartbeat said; nothing until one
    /// arrives, and nothing again once it registers anew (what it said before is stale).
    #[test]
    fn scrub_stats_are_the_latest_heartbeats() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, Duration::from_secs(5), Duration::from_secs(30));
        l.registered(1, t0);
        assert_eq!(l.scrub(1), None);
        let mut h = hb(1, &[]);
        h.scrub.pass = 2;
        h.scrub.bad_blocks = 3;
        l.heartbeat(&h, t0);
        h.scrub.pass = 3;
        l.heartbeat(&h, t0 + Duration::from_secs(1));
        assert_eq!(l.scrub(1).map(|s| (s.pass, s.bad_blocks)), Some((3, 3)));
        assert_eq!(l.scrub(2), None);
        l.registered(1, t0 + Duration::from_secs(2));
        assert_eq!(l.scrub(1), None);
    }
}

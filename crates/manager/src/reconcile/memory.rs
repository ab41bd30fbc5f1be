//! What the reconciler remembers between passes: since when a member has been missing its
//! replica ([`LostTracker`]), groups settling after a leadership hand-over, and leaders named
//! by `NotLeader` answers ([`Memory`]).
//!
//! Memory only, on the leading manager: never persisted nor replicated. Losing it (a restart,
//! a new leader) must only ever delay a decision, never change one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::liveness::{Health, Liveness};
use crate::state::State;

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

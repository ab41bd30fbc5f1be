//! Replicas that cannot apply (issue 12: resource limits are conditions, not crashes).
//!
//! A replica whose apply stops at a committed entry (a full disk, a corrupt block: see
//! `Group::apply`, which retries and never skips) still appends and acknowledges entries,
//! but serves nothing: reads wait on the applied index. Worse, its flushed index stands
//! still, so the shared log can never compact its entries, and since segments are recycled
//! oldest first, nothing newer either: the node's disk fills.
//!
//! What happens instead:
//! - as leader it acknowledges nothing it could not serve a read for (requests and newly
//!   committed proposals are answered `Unavailable`, waiting reads too: see
//!   `Group::stalled_refusal`) and hands its leadership to the most up-to-date voter; if
//!   it still leads an election timeout later (the transfer was refused: a membership
//!   change it cannot apply is in its log), it steps down. As follower it never
//!   campaigns nor takes a transfer (`admit`);
//! - stalled past `NodeConfig::stuck_after`, or quarantined at start, it is reported stuck
//!   (`GroupState::stuck`, the `tessera_raft_stuck_replicas` gauge); the manager replaces
//!   it through a membership change like a lost replica, then tells this node to destroy
//!   it. The tombstone of the destroyed replica releases its hold on the shared log.
//!
//! A stall on restored blocks not filled yet (`Error::Unfilled`) is handled alike (a
//! leader hands over; reported stuck past `stuck_after`, as any stall), and besides the
//! storage node's hook is told (`ready.rs`): once it has filled the blocks outside the log,
//! the apply retried at the next tick goes on and the stall ends.
//!
//! Must never: remove or destroy a replica the group still counts (that needs the
//! membership change: a stuck replica's log may be part of the majority holding an
//! acknowledged write); skip an entry.

use super::*;

impl Poller {
    /// Every tick: stalled leaders hand their leadership over; the gauge follows the
    /// replicas that are stuck now.
    pub(super) fn check_stuck(&mut self, now: Instant) {
        let timeout = self.cfg.tick * self.cfg.election_ticks as u32;
        for (gid, g) in self.groups.iter_mut() {
            if g.stalled.is_none() || !g.is_leader() || cfg!(tessera_unfixed = "stalled_leader") {
                g.stall_transfer = None;
                continue;
            }
            match g.stall_transfer {
                None => {
                    g.stall_transfer = Some(now);
                    if let Some(to) = heir(g) {
                        tracing::warn!(
                            group = gid,
                            to,
                            "this leader cannot apply: handing its leadership over"
                        );
                        g.start_transfer(to);
                    }
                }
                // The transfer was refused (a membership change this leader cannot apply
                // is in its log) or did not finish: step down in this term (its vote stays
                // cast, so it elects no one else in it). The others elect a leader once
                // they miss its heartbeats; this one, stalled, does not campaign.
                Some(at) if now.saturating_duration_since(at) >= timeout => {
                    tracing::warn!(
                        group = gid,
                        "this leader cannot apply and could not hand over: stepping down"
                    );
                    let term = g.raw.raft.term;
                    g.raw.raft.become_follower(term, raft::INVALID_ID);
                    g.stall_transfer = None;
                }
                Some(_) => {}
            }
            self.dirty.insert(*gid);
        }
        let stuck: HashSet<u64> = self
            .groups
            .values()
            .filter(|g| g.stuck(now, self.cfg.stuck_after).is_some())
            .map(|g| g.id)
            .chain(self.quarantined.keys().copied())
            .collect();
        let added = stuck.difference(&self.counted_stuck).count() as i64;
        let gone = self.counted_stuck.difference(&stuck).count() as i64;
        if added != gone {
            crate::metrics::STUCK_REPLICAS.add(added - gone);
        }
        self.counted_stuck = stuck;
    }

    /// Takes this poller's share out of the gauge (it stops).
    pub(super) fn uncount_stuck(&mut self) {
        let n = self.counted_stuck.len() as i64;
        if n != 0 {
            crate::metrics::STUCK_REPLICAS.add(-n);
        }
        self.counted_stuck.clear();
    }

    /// The state of every replica hosted here, those that cannot serve marked stuck.
    pub(super) fn states(&self, now: Instant) -> Vec<control::GroupState> {
        let mut states: Vec<_> = self
            .groups
            .values()
            .map(|g| {
                let mut s = g.state();
                if !cfg!(tessera_unfixed = "stuck_replicas") {
                    s.stuck = g.stuck(now, self.cfg.stuck_after);
                }
                s
            })
            .collect();
        if !cfg!(tessera_unfixed = "stuck_replicas") {
            states.extend(
                self.quarantined
                    .iter()
                    .map(|(gid, why)| control::GroupState {
                        group_id: *gid,
                        role: control::Role::Follower,
                        term: 0,
                        leader: 0,
                        commit: 0,
                        applied: 0,
                        voters: Vec::new(),
                        learners: Vec::new(),
                        joint: false,
                        stuck: Some(why.clone()),
                    }),
            );
        }
        states.sort_by_key(|s| s.group_id);
        states
    }
}

/// The voter (other than this leader) whose log matches the most of the leader's.
fn heir(g: &Group) -> Option<u64> {
    let r = &g.raw.raft;
    r.prs()
        .iter()
        .filter(|(id, _)| **id != r.id && r.prs().conf().voters().contains(**id))
        .max_by_key(|(id, pr)| (pr.matched, std::cmp::Reverse(**id)))
        .map(|(id, _)| *id)
}

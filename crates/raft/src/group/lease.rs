//! A leader's read lease: which peers answered its heartbeats, and when, and whether a
//! quorum of every configuration in force did recently enough for reads to be served
//! without a round trip.
//!
//! Must never: count an answer to another term's heartbeat, or count a quorum of only one
//! half of a joint configuration.

use std::time::Instant;

use super::Group;

impl Group {
    /// A peer answered a heartbeat this node sent at `sent`.
    pub(crate) fn note_contact(&mut self, peer: u64, sent: Instant) {
        let t = self.contact.entry(peer).or_insert(sent);
        *t = (*t).max(sent);
    }

    /// Whether a quorum (counting this node) answered heartbeats sent within the lease: only
    /// then may a leader serve reads from its own state. A follower that answered a heartbeat
    /// sent at `t` votes for no one else before `t` + an election timeout, so a lease of half
    /// that, counted from the send time, holds even if the answers sat in a queue. Raft's
    /// `check_quorum` alone steps a cut-off leader down only after one to two election
    /// timeouts, and not at all while its poller is stalled.
    ///
    /// Void while a leadership transfer is pending and for the rest of a term in which one
    /// was started (see `lease_void_term`).
    pub(crate) fn lease_valid(&self, now: Instant) -> bool {
        let r = &self.raw.raft;
        if !cfg!(tessera_unfixed = "lease_transfer")
            && (r.lead_transferee.is_some() || self.lease_void_term == r.term)
        {
            return false;
        }
        self.in_contact(now)
    }

    /// Whether a quorum of the configuration in force answered this term's heartbeats within
    /// the last lease period: this node still leads a configuration the group has not left
    /// (a leader cut off from the group hears nobody of its term). Unlike a lease, it holds
    /// during a leadership transfer: the transferee takes over the same configuration.
    pub(crate) fn in_contact(&self, now: Instant) -> bool {
        match now.checked_sub(self.lease) {
            Some(oldest) => self.quorum_heard_since(oldest, false),
            None => false,
        }
    }

    /// Whether a quorum of every configuration in force (both halves of a joint one)
    /// answered heartbeats sent at or after `since` (strictly after if `!inclusive`). This
    /// node counts as having answered.
    pub(crate) fn quorum_heard_since(&self, since: Instant, inclusive: bool) -> bool {
        let me = self.raw.raft.id;
        let heard = |id: u64| {
            id == me
                || self
                    .contact
                    .get(&id)
                    .is_some_and(|t| if inclusive { *t >= since } else { *t > since })
        };
        if cfg!(tessera_unfixed = "joint_lease") {
            let all: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
            return all.iter().filter(|id| heard(**id)).count() > all.len() / 2;
        }
        let majority = |ids: &[u64]| {
            ids.is_empty() || ids.iter().filter(|id| heard(**id)).count() > ids.len() / 2
        };
        // The configuration raft-rs runs with, as last applied (kept beside the log, so no
        // copy is made on every read).
        let mem = self.store.lock();
        let cs = &mem.conf_state;
        !cs.voters.is_empty() && majority(&cs.voters) && majority(&cs.voters_outgoing)
    }
}

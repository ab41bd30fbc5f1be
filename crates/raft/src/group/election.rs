//! Elections decided by the newest configuration in a candidate's log (Raft thesis §4.1: "a
//! server always uses the latest configuration in its log, regardless of whether the entry
//! is committed").
//!
//! raft-rs asks for and counts votes by the configuration a replica has *applied*. A replica
//! whose log holds a membership change it has not applied yet would campaign in the
//! configuration the group is leaving: with the vote of a replica the change removes, it
//! could win a majority of the old configuration while a majority of the new one committed
//! entries it lacks. Two things close that gap here, both only while the log holds such a
//! change (otherwise raft-rs decides alone, as before):
//! - a granted (pre-)vote reaches raft-rs only once the grants received make a majority of
//!   every half of the newest configuration in the log; until then they are held back (a
//!   refusal goes through at once: it can only make raft-rs lose);
//! - vote requests also go to the voters of that configuration that raft-rs does not ask
//!   (those the change adds), so the newest configuration can be won at all.
//!
//! raft-rs still needs its own (applied) majority too: a win needs both, never less than
//! before.
//!
//! Must never: hand raft-rs a grant that would make it win without a majority of the newest
//! configuration; change anything when the log holds no unapplied membership change.

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, EntryType, Message, MessageType};
use raft::{Changer, ProgressTracker};

use std::collections::BTreeSet;

use super::{Group, HeldVotes};

impl Group {
    /// The configuration this replica's log ends with, if its log holds membership changes
    /// it has not applied (`None` otherwise: raft-rs's applied configuration is the newest).
    /// A change raft-rs would refuse is skipped, as `apply_conf_change` skips it.
    pub(crate) fn newest_config(&self) -> Option<ConfState> {
        let applied = self.applied;
        // Copied out: raft-rs's log reads the store, under the same lock.
        let changes: Vec<_> = self
            .store
            .lock()
            .entries
            .iter()
            .filter(|e| e.index > applied && e.get_entry_type() != EntryType::EntryNormal)
            .cloned()
            .collect();
        if changes.is_empty() {
            return None;
        }
        let mut tracker: ProgressTracker = self.raw.raft.prs().clone();
        let next = self.raw.raft.raft_log.last_index() + 1;
        for e in changes {
            let cc = match e.get_entry_type() {
                EntryType::EntryConfChangeV2 => ConfChangeV2::parse_from_bytes(&e.data).ok(),
                EntryType::EntryConfChange => {
                    ConfChange::parse_from_bytes(&e.data).ok().map(|v1| {
                        let mut cc = ConfChangeV2::default();
                        let mut c = raft::eraftpb::ConfChangeSingle::default();
                        c.set_change_type(v1.get_change_type());
                        c.node_id = v1.node_id;
                        cc.mut_changes().push(c);
                        cc
                    })
                }
                EntryType::EntryNormal => None,
            };
            let Some(cc) = cc else { continue };
            let mut changer = Changer::new(&tracker);
            let result = if cc.leave_joint() {
                changer.leave_joint()
            } else if let Some(auto_leave) = cc.enter_joint() {
                changer.enter_joint(auto_leave, &cc.changes)
            } else {
                changer.simple(&cc.changes)
            };
            if let Ok((conf, map)) = result {
                tracker.apply_conf(conf, map, next);
            }
        }
        Some(tracker.conf().to_conf_state())
    }

    /// Whether `m` grants this replica a (pre-)vote: only those go through
    /// [`Group::count_vote`]; every other message steps into raft-rs as it is.
    pub(crate) fn is_vote_grant(m: &Message) -> bool {
        matches!(
            m.get_msg_type(),
            MessageType::MsgRequestVoteResponse | MessageType::MsgRequestPreVoteResponse
        ) && !m.reject
    }

    /// A (pre-)vote grant for this replica ([`Group::is_vote_grant`]): the messages to step
    /// into raft-rs now (none while grants are held back, see the module docs).
    pub(crate) fn count_vote(&mut self, m: Message) -> Vec<Message> {
        let t = m.get_msg_type();
        if !Group::is_vote_grant(&m) || cfg!(tessera_unfixed = "newest_config_votes") {
            return vec![m];
        }
        let Some(newest) = self.newest_config() else {
            self.held_votes = HeldVotes::default();
            return vec![m];
        };
        let key = Some((t, m.term));
        let me = self.raw.raft.id;
        let votes = &mut self.held_votes;
        if votes.kind != key {
            *votes = HeldVotes {
                kind: key,
                granted: BTreeSet::from([me]),
                ..Default::default()
            };
        }
        if votes.released {
            return vec![m];
        }
        if votes.granted.insert(m.from) {
            votes.held.push(m);
        }
        let granted = &votes.granted;
        let majority = |ids: &[u64]| {
            ids.is_empty() || ids.iter().filter(|id| granted.contains(id)).count() > ids.len() / 2
        };
        if !newest.voters.is_empty()
            && majority(&newest.voters)
            && majority(&newest.voters_outgoing)
        {
            votes.released = true;
            std::mem::take(&mut votes.held)
        } else {
            tracing::info!(
                group = self.id,
                granted = ?granted,
                voters = ?newest.voters,
                outgoing = ?newest.voters_outgoing,
                "vote held back: no majority yet of the newest configuration in the log"
            );
            Vec::new()
        }
    }

    /// Adds to `msgs` a copy of each (pre-)vote request for every voter of the newest
    /// configuration in the log that raft-rs, going by the configuration it applied, does
    /// not ask.
    pub(crate) fn widen_vote_requests(&self, msgs: &mut Vec<Message>) {
        if cfg!(tessera_unfixed = "newest_config_votes") {
            return;
        }
        let requests: Vec<Message> = msgs
            .iter()
            .filter(|m| {
                matches!(
                    m.get_msg_type(),
                    MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                )
            })
            .cloned()
            .collect();
        if requests.is_empty() {
            return;
        }
        let Some(newest) = self.newest_config() else {
            return;
        };
        let me = self.raw.raft.id;
        for t in [MessageType::MsgRequestPreVote, MessageType::MsgRequestVote] {
            let Some(request) = requests.iter().rfind(|m| m.get_msg_type() == t) else {
                continue;
            };
            let asked: BTreeSet<u64> = requests
                .iter()
                .filter(|m| m.get_msg_type() == t)
                .map(|m| m.to)
                .collect();
            let unasked = newest
                .voters
                .iter()
                .chain(&newest.voters_outgoing)
                .copied()
                .filter(|id| *id != me && !asked.contains(id))
                .collect::<BTreeSet<u64>>();
            for to in unasked {
                let mut m = request.clone();
                m.to = to;
                msgs.push(m);
            }
        }
    }
}

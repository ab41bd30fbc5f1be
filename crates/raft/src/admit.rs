//! Admission of Raft messages from the network: what a peer may make a group do.
//!
//! Owns the checks between a decoded message and `RawNode::step`. raft-rs trusts its input:
//! a message that cannot apply (a commit index past the local log, entries that do not
//! follow their anchor) reaches an assertion that stops the whole node, and local-only
//! message types (campaign now, propose, transfer) would let any sender drive the group.
//! Such messages are refused here and counted; the node and its other groups carry on.
//!
//! Must never: refuse a message a correct member sends while this replica can use it.
//! Authenticating the sender is not done here (that is the transport's job): a member's
//! identity is taken from the message.

use std::fmt;
use std::time::Instant;

use raft::eraftpb::{Message, MessageType};

use crate::group::Group;

/// Why a message was not stepped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Addressed to another node, or claiming to come from another node than the one that
    /// sent the batch, or from this node itself.
    Misaddressed,
    /// The sender is neither in the group's configuration nor among its known peers.
    NotAMember,
    /// A type raft-rs only generates locally (campaign, propose, transfer, ...).
    LocalOnly,
    /// Term 0, which raft-rs takes for a local message: it skips every term check, so a
    /// candidate would fall back to term 0 and a heartbeat commit past the log.
    NoTerm,
    /// A heartbeat committing past this replica's last entry.
    CommitPastLog,
    /// Entries not numbered from the anchor on, newer than the message's term, or of term 0
    /// (as an anchor past index 0).
    BadEntries,
    /// An answer acknowledging entries this (leading) replica never had.
    AckPastLog,
    /// A `MsgTimeoutNow` not from the leader of this replica's term.
    NotFromLeader,
    /// A vote request inside a lease this replica may have granted before it restarted.
    VoteInLease,
    /// A vote request to a replica that knows no configuration yet.
    NoConfiguration,
    /// A vote request to a learner (of the configuration it applied, and of every change
    /// its log holds) from a candidate that may lack its addition.
    NotAVoter,
    /// A leadership transfer to a replica whose log holds a membership change it has not
    /// applied: it would campaign in a configuration the group may have left.
    MembershipChanging,
    /// A leadership transfer to a replica that cannot apply: it would serve nothing.
    Stalled,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Misaddressed => "misaddressed",
            Refusal::NotAMember => "sender is not a member of the group",
            Refusal::LocalOnly => "local-only message type",
            Refusal::NoTerm => "message of term 0",
            Refusal::CommitPastLog => "commit index past the local log",
            Refusal::BadEntries => "entries do not follow their anchor",
            Refusal::AckPastLog => "acknowledges entries past the local log",
            Refusal::NotFromLeader => "leader transfer not from the current leader",
            Refusal::VoteInLease => "vote request within a lease granted before a restart",
            Refusal::NoConfiguration => "vote request to a replica that knows no configuration",
            Refusal::NotAVoter => "vote request to a learner",
            Refusal::MembershipChanging => {
                "leadership transfer while a membership change is not applied here"
            }
            Refusal::Stalled => "leadership transfer to a replica that cannot apply",
        })
    }
}

/// Decides whether `m`, received in a batch from node `from_node`, may be stepped into `g`.
/// `votes_after`: before this instant the node refuses (pre-)votes that are not part of a
/// leadership transfer (it restarted, and may have answered a leader's heartbeat just
/// before: that answer promised not to vote for anyone else for an election timeout).
pub(crate) fn admit(
    g: &Group,
    from_node: u64,
    m: &Message,
    now: Instant,
    votes_after: Instant,
) -> Result<(), Refusal> {
    if cfg!(tessera_unfixed = "message_admission") {
        return Ok(());
    }
    let r = &g.raw.raft;
    let me = r.id;
    if m.to != me || m.from == me || m.from == 0 || m.from != from_node {
        return Err(Refusal::Misaddressed);
    }
    if !is_member(g, m.from) {
        return Err(Refusal::NotAMember);
    }
    // Every message a peer sends carries its term (raft-rs sends term 0 only for the
    // proposals and read requests it forwards, local-only here).
    if m.term == 0 {
        return Err(Refusal::NoTerm);
    }
    let last = r.raft_log.last_index();
    match m.get_msg_type() {
        MessageType::MsgHup
        | MessageType::MsgBeat
        | MessageType::MsgPropose
        | MessageType::MsgUnreachable
        | MessageType::MsgCheckQuorum
        | MessageType::MsgTransferLeader
        | MessageType::MsgReadIndex
        | MessageType::MsgReadIndexResp => Err(Refusal::LocalOnly),
        MessageType::MsgHeartbeat if m.commit > last && m.term >= r.term => {
            Err(Refusal::CommitPastLog)
        }
        MessageType::MsgAppend => {
            // raft-rs reads term 0 at every index past its log: an entry or an anchor of
            // term 0 there would match entries it does not have, and commit them.
            let anchored = m.entries.iter().enumerate().all(|(i, e)| {
                m.index.checked_add(i as u64 + 1) == Some(e.index)
                    && e.term <= m.term
                    && e.term != 0
            });
            if anchored && m.log_term <= m.term && (m.log_term != 0 || m.index == 0) {
                Ok(())
            } else {
                Err(Refusal::BadEntries)
            }
        }
        MessageType::MsgAppendResponse if !m.reject && m.index > last && m.term == r.term => {
            Err(Refusal::AckPastLog)
        }
        MessageType::MsgTimeoutNow if m.from != r.leader_id || m.term != r.term => {
            Err(Refusal::NotFromLeader)
        }
        MessageType::MsgTimeoutNow
            if g.unapplied_conf_change() && !cfg!(tessera_unfixed = "stale_config") =>
        {
            Err(Refusal::MembershipChanging)
        }
        MessageType::MsgTimeoutNow
            if g.stalled.is_some() && !cfg!(tessera_unfixed = "stalled_leader") =>
        {
            Err(Refusal::Stalled)
        }
        // A new replica, hosted to join the group, knows no configuration until its first
        // snapshot: it is a learner of the current one. Its node may have been a voter of
        // the group before (removed, then added back): a stale member still counting that
        // old voter would take the empty log's vote for a majority and elect itself over
        // entries the group committed. It votes once it has caught up.
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            if r.prs().conf().voters().ids().is_empty()
                && !cfg!(tessera_unfixed = "fresh_votes") =>
        {
            Err(Refusal::NoConfiguration)
        }
        // A learner (a replica being added, perhaps on a node that was a member before:
        // a new incarnation that lost the old one's promises) is counted only by a
        // candidate whose configuration the group has left; its vote could elect one (the
        // simulation found it, seed 0x9b6c547583c9). It votes once a change making it a
        // voter is in its log, or for a candidate that holds its whole log (see
        // `holds_learners_log`).
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            if g.learner_only()
                && !cfg!(tessera_unfixed = "learner_votes")
                && !holds_learners_log(g, m) =>
        {
            Err(Refusal::NotAVoter)
        }
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
            if now < votes_after
                && m.context != raft::CAMPAIGN_TRANSFER
                && !cfg!(tessera_unfixed = "restart_votes") =>
        {
            Err(Refusal::VoteInLease)
        }
        _ => Ok(()),
    }
}

/// Whether candidate `m` holds every entry of this learner's log, its own addition
/// included: its last entry has the term of the learner's last entry, at the same index or
/// beyond. Both entries were then written by the leader of that term, so by log matching the
/// candidate's log holds the learner's whole log (the snapshot the learner installed stands
/// for the group's committed entries up to it, its addition among them). The newest
/// configuration in such a candidate's log counts this node as a learner (or promoted), and
/// only that configuration's majority lets raft-rs have the vote (`Group::count_vote`): a
/// candidate still counting an earlier incarnation of this node as a voter fails the check.
/// Without it, the learner whose vote a joint configuration needs (its leader died before
/// sending it the joint entry) refused everyone, and no one was elected.
/// A newer last term is not enough: a deposed leader's uncommitted entry can carry a term
/// above that of the snapshot's entries while its log lacks them (Raft paper, Figure 8).
fn holds_learners_log(g: &Group, m: &Message) -> bool {
    if cfg!(tessera_unfixed = "learner_snapshot_votes")
        || cfg!(tessera_unfixed = "newest_config_votes")
    {
        return false;
    }
    let log = &g.raw.raft.raft_log;
    let (last, last_term) = (log.last_index(), log.last_term());
    // An empty log (a first install torn before its snapshot was kept) holds nothing to match.
    last_term > 0 && m.log_term == last_term && m.index >= last
}

/// In the configuration this replica knows (any half of it, learners included), or among
/// the peers it was created with or last learned of.
fn is_member(g: &Group, node: u64) -> bool {
    let conf = g.raw.raft.prs().conf();
    conf.voters().contains(node)
        || conf.learners().contains(&node)
        || conf.learners_next().contains(&node)
        || g.spec.peers.iter().any(|p| p.node_id == node)
}

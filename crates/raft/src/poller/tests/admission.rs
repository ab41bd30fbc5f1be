//! Raft messages from the network that must not reach raft-rs.

use super::*;

/// Finding 7: a forged heartbeat (a stranger's node id, a huge term and commit index)
/// and one from a member committing past this replica's log are refused and counted; the
/// node keeps serving, and a later honest message still works.
#[test]
fn forged_or_impossible_raft_messages_are_refused_and_the_node_keeps_serving() {
    let mut n = Node::follower();
    let before = crate::metrics::REFUSED_MESSAGES.get();
    let mut stranger = msg(MessageType::MsgHeartbeat, 99, 1 << 40);
    stranger.commit = 1 << 50;
    n.deliver(99, stranger);
    let mut past_log = msg(MessageType::MsgHeartbeat, 2, 6);
    past_log.commit = 1_000;
    n.deliver(2, past_log);
    let mut campaign = msg(MessageType::MsgHup, 2, 0);
    campaign.to = ME;
    n.deliver(2, campaign);
    let mut gap = append(INIT_INDEX + 1, INIT_INDEX + 2, INIT_INDEX);
    gap.mut_entries()[1].index = 100;
    n.deliver(2, gap);
    assert!(crate::metrics::REFUSED_MESSAGES.get() >= before + 4);
    assert!(n.fatal.lock().unwrap().is_none() && !n.poller.stopped);
    let g = &n.poller.groups[&GROUP];
    assert_eq!(
        g.raw.raft.term, INIT_INDEX,
        "no refused message moved the term"
    );
    assert_eq!(g.raw.raft.state, raft::StateRole::Follower);

    n.deliver(2, append(INIT_INDEX + 1, 8, INIT_INDEX));
    assert_eq!(
        acked(&n.take_sent()),
        8,
        "an honest leader is still followed"
    );
}

/// Found by the `raft` fuzz target (`fuzz/`): raft-rs takes a message of term 0 for a local
/// one and skips its term checks, and reads term 0 at every index past its log. A member's
/// heartbeat or append of term 0, or an append whose entry (or anchor) past this replica's
/// log has term 0, committing past the log, reached raft-rs's assertion and stopped the
/// node (and a candidate stepped down to term 0, forgetting its vote). They are refused.
#[test]
fn messages_and_entries_of_term_zero_are_refused() {
    let mut n = Node::follower();
    let before = crate::metrics::REFUSED_MESSAGES.get();
    let mut heartbeat = msg(MessageType::MsgHeartbeat, 2, 0);
    heartbeat.commit = INIT_INDEX + 2;
    n.deliver(2, heartbeat);
    let mut termless_append = msg(MessageType::MsgAppend, 2, 0);
    (termless_append.index, termless_append.commit) = (INIT_INDEX + 2, INIT_INDEX + 2);
    n.deliver(2, termless_append);
    let mut entry_of_term_zero = append(INIT_INDEX + 1, INIT_INDEX + 1, INIT_INDEX + 1);
    entry_of_term_zero.mut_entries()[0].term = 0;
    n.deliver(2, entry_of_term_zero);
    let mut anchor_of_term_zero = append(INIT_INDEX + 3, INIT_INDEX + 3, INIT_INDEX + 3);
    anchor_of_term_zero.log_term = 0;
    n.deliver(2, anchor_of_term_zero);
    assert!(crate::metrics::REFUSED_MESSAGES.get() >= before + 4);
    assert!(n.fatal.lock().unwrap().is_none() && !n.poller.stopped);
    assert_eq!(
        n.poller.groups[&GROUP].raw.raft.term, INIT_INDEX,
        "the term stays"
    );
    n.deliver(2, append(INIT_INDEX + 1, 8, INIT_INDEX));
    assert_eq!(
        acked(&n.take_sent()),
        8,
        "an honest leader is still followed"
    );
}

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

//! Replaying the log into chunk files at start, and flushes answering past what was applied.

use super::*;

/// Suspected, and confirmed: one group that cannot finish its replay (its tail is not
/// committed: no leader reachable) kept the whole node in replay mode, where every group's
/// read-modify-writes take a block failing its checksum as torn and rewrite it, hiding
/// real corruption. Replay mode is now per group.
#[test]
fn a_group_that_cannot_finish_its_replay_keeps_no_other_group_in_replay_mode() {
    let mut n = Node::follower();
    let mut other = spec(&[2, 1, 3]);
    other.group_id = 2;
    n.poller.handle(Event::CreateGroup(other));
    n.settle();
    // Both groups get entries 6..=8, committed only up to 5.
    for gid in [GROUP, 2] {
        let m = append(INIT_INDEX + 1, INIT_INDEX + 3, INIT_INDEX);
        n.poller.handle(Event::Raft(RaftBatch {
            from_node: 2,
            msgs: vec![(gid, Bytes::from(m.write_to_bytes().unwrap()))],
        }));
        n.settle();
    }
    let mut n = n.restart();
    let store = |n: &Node, gid: u64| n.poller.groups[&gid].chunks.clone();
    assert!(store(&n, GROUP).replaying() && store(&n, 2).replaying());
    // Group 2's leader commits its tail; group 1's never comes back.
    let mut hb = msg(MessageType::MsgHeartbeat, 2, 6);
    hb.commit = INIT_INDEX + 3;
    n.poller.handle(Event::Raft(RaftBatch {
        from_node: 2,
        msgs: vec![(2, Bytes::from(hb.write_to_bytes().unwrap()))],
    }));
    n.settle();
    n.poller.tick(Instant::now() + Duration::from_secs(1));
    n.settle();
    assert!(
        n.poller.groups[&2].applied >= INIT_INDEX + 3,
        "group 2 applied its tail"
    );
    assert!(
        !store(&n, 2).replaying(),
        "group 2 finished its replay and is still in replay mode"
    );
    assert!(store(&n, GROUP).replaying(), "group 1 has not finished");
}

/// A flush that began before a replica was destroyed and hosted anew must not record its
/// applied point for the new replica (which has applied nothing: a crash would then
/// restart it past data it does not hold).
#[test]
fn a_flush_answer_past_a_replicas_applied_index_is_ignored() {
    let mut n = Node::follower();
    let applied = n.poller.groups[&GROUP].applied;
    n.poller.pending_writes.clear();
    n.poller
        .handle(Event::Flushed(vec![(GROUP, applied + 100, 6)]));
    assert!(
        n.poller.pending_writes.is_empty() && n.poller.pending_compacts.is_empty(),
        "a stale flush would record applied {}",
        applied + 100
    );
}

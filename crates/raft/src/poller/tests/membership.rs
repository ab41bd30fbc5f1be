//! Membership changes seen from one replica: removal, joining, "done", leadership transfers during a change.

use super::*;

/// Finding 5: a replica applies the conf change that removes it. It stays (its vote may
/// still be needed: see `apply_committed`), keeps its term across a restart, and once the
/// manager destroys it, nothing of it comes back from the log: before the fix its new
/// membership could reach the log after its tombstone, and replay brought the group back
/// with a default hard state (its term and vote forgotten: it could vote twice in a term).
#[test]
fn a_removed_replica_stays_removed_after_a_restart() {
    let mut n = Node::follower();
    let mut cc = ConfChangeV2::default();
    let mut c = ConfChangeSingle::default();
    c.set_change_type(ConfChangeType::RemoveNode);
    c.node_id = ME;
    cc.mut_changes().push(c);
    cc.set_transition(ConfChangeTransition::Auto);
    let mut e = entry(INIT_INDEX + 1, 6);
    e.set_entry_type(EntryType::EntryConfChangeV2);
    e.data = Bytes::from(cc.write_to_bytes().unwrap());
    let mut m = append(INIT_INDEX + 1, INIT_INDEX + 1, INIT_INDEX + 1);
    m.set_entries(vec![e].into());
    n.deliver(2, m);
    let mut n = n.restart();
    let g = &n.poller.groups[&GROUP];
    assert!(!g.raw.raft.prs().conf().voters().contains(ME));
    assert_eq!(g.raw.raft.term, 6, "the removed replica forgot its term");

    n.poller.handle(Event::RemoveGroup(GROUP));
    n.settle();
    assert!(!n.poller.groups.contains_key(&GROUP));
    let n = n.restart();
    assert!(
        !n.poller.groups.contains_key(&GROUP) && !n.poller.quarantined.contains_key(&GROUP),
        "a destroyed replica came back from the log"
    );
}

/// A settled membership is reported not joint (see the joint case in `leases`).
#[test]
fn a_settled_membership_is_reported_not_joint() {
    let n = leader();
    let st = n.poller.groups[&GROUP].state();
    assert!(!st.joint, "{st:?}");
}

/// The simulation's stuck group (seed 0xd5bd18ce08e2): the leader of a move that removes
/// it committed the step out of the joint configuration, then destroyed its replica before
/// any follower learned of that commit. The two members left still counted it in the
/// joint configuration's outgoing half, where the third voter was a replica far behind
/// that did not know one of them: no election could ever succeed. Now a leader that
/// applies its own removal steps down (raft-rs would stop the node on the next answer it
/// got) and stays, able to vote, until the manager destroys it.
#[test]
fn a_leader_that_applies_its_own_removal_steps_down_and_stays() {
    let mut n = leader();
    let mut cc = ConfChangeV2::default();
    let mut c = ConfChangeSingle::default();
    c.set_change_type(ConfChangeType::RemoveNode);
    c.node_id = ME;
    cc.mut_changes().push(c);
    cc.set_transition(ConfChangeTransition::Auto);
    let g = n.poller.groups.get_mut(&GROUP).unwrap();
    g.raw.propose_conf_change(vec![], cc).unwrap();
    n.poller.dirty.insert(GROUP);
    n.settle();
    ack_appends(&mut n);
    ack_appends(&mut n);
    let g = &n.poller.groups[&GROUP];
    assert!(
        !g.raw.raft.prs().conf().voters().contains(ME),
        "removal not applied"
    );
    assert_ne!(g.raw.raft.state, raft::StateRole::Leader);
    // A late answer from a follower reaches a replica that no longer leads: no assertion.
    let term = g.raw.raft.term;
    let mut late = msg(MessageType::MsgAppendResponse, 2, term);
    late.index = n.last_index();
    n.deliver(2, late);
    assert!(!n.poller.stopped);
    // It still votes for a member that has its log.
    let mut vote = msg(MessageType::MsgRequestVote, 2, term + 1);
    vote.index = n.last_index();
    vote.log_term = term;
    n.poller.votes_after = Instant::now();
    n.deliver(2, vote);
    let granted = n.take_sent().into_iter().any(|(to, m)| {
        to == 2 && m.get_msg_type() == MessageType::MsgRequestVoteResponse && !m.reject
    });
    assert!(granted, "the removed replica did not vote");
    assert!(n.poller.groups.contains_key(&GROUP));
}

/// The simulation's split brain (seed 0x306acf872edd): node 1 was removed from the group,
/// then added back as a new empty replica; a leader the group had left behind (term 6,
/// still counting node 1 as a voter) gave it a snapshot, and the two made a majority of
/// the old configuration while the group ran term 9 under another. The manager now
/// creates a joining replica at the term it recorded for the group's last membership
/// change: the stale leader's snapshot is ignored (also after a restart), the current
/// leader's installed.
#[test]
fn a_joining_replica_ignores_leaders_older_than_the_term_it_was_created_at() {
    let mut n = Node::open(tempfile::tempdir().unwrap());
    let mut joining = spec(&[2, 1, 3, 4]);
    joining.joining = true;
    joining.min_term = 9;
    n.poller.handle(Event::CreateGroup(joining));
    n.settle();
    let old_conf = ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    let stale = |n: &mut Node| {
        n.deliver(2, snapshot_msg(20, &[1, 2, 3], old_conf.clone()));
        let mut m = append(21, 21, 21);
        m.log_term = 6;
        n.deliver(2, m);
    };
    stale(&mut n);
    let mut n = n.restart();
    stale(&mut n);
    let raft = &n.poller.groups[&GROUP].raw.raft;
    assert_eq!(raft.term, 9);
    assert!(
        raft.prs().conf().voters().ids().is_empty(),
        "took the stale snapshot"
    );
    assert_eq!(
        acked(&n.take_sent()),
        0,
        "acknowledged the stale leader's entries"
    );
    // The current leader (node 3, term 9) is followed.
    let mut m = snapshot_msg(
        30,
        &[2, 1, 3, 4],
        ConfState {
            voters: vec![2, 3, 4],
            learners: vec![1],
            ..Default::default()
        },
    );
    m.from = 3;
    m.term = 9;
    m.mut_snapshot().mut_metadata().term = 9;
    n.deliver(3, m);
    let g = &n.poller.groups[&GROUP];
    assert_eq!(g.applied, 30);
    assert!(g.raw.raft.prs().conf().learners().contains(&ME));
}

/// A leader cut off from its quorum may hold a configuration the group has left, and the
/// manager destroys the replicas a "done" leaves out: the simulation found a stale leader
/// answering done, and a healthy voter destroyed (its committed entries then lived on one
/// replica). Done is said only while a quorum answers this term's heartbeats, and still
/// after a leadership transfer voided the lease (else a change could not finish for the
/// rest of a term in which a transfer was tried).
#[test]
fn a_leader_out_of_contact_never_says_a_membership_change_is_done() {
    crate::clock::virtual_clock::start();
    let mut n = leader();
    let ask = |n: &mut Node| {
        let got = Arc::new(Mutex::new(None));
        let g2 = got.clone();
        n.poller.handle(Event::ChangeMembers {
            group: GROUP,
            peers: spec(&[1, 2, 3]).peers,
            respond: Box::new(move |r| *g2.lock().unwrap() = Some(r)),
        });
        n.settle();
        let r = got.lock().unwrap().take();
        match r {
            Some(Ok(state)) => state.done,
            other => panic!("membership answer: {other:?}"),
        }
    };
    assert!(
        ask(&mut n),
        "under a lease, the current configuration is done"
    );
    n.poller.handle(Event::TransferLeader {
        group: GROUP,
        to: 2,
        respond: Box::new(|_| {}),
    });
    n.settle();
    heartbeat_round(&mut n);
    assert!(
        ask(&mut n),
        "a transfer voided the lease, but the quorum still answers: done"
    );
    // Nobody answers for longer than an election timeout.
    crate::clock::virtual_clock::advance(Duration::from_secs(60));
    assert!(!ask(&mut n), "a leader without a lease said done");
}

/// Finding 6 (storage side): the manager's word alone does not destroy a replica that its
/// own configuration lists as a voter while it leads (or hears from a leader).
#[test]
fn a_live_voter_is_not_destroyed_on_the_managers_word() {
    let mut n = leader();
    n.poller.handle(Event::RemoveGroup(GROUP));
    n.settle();
    assert!(
        n.poller.groups.contains_key(&GROUP),
        "a leading voter was destroyed"
    );
}

/// The simulation's split brain at one index (seed 0x73dea6c039f6): a leadership transfer
/// reached a replica whose log held a membership change it had not applied (it did not know
/// it was committed). raft-rs counts votes by the applied configuration, so it campaigned
/// in the old one and won with another stale replica, while the new configuration's
/// majority committed other entries at the same index. A replica now refuses to campaign
/// on a transfer while its log holds an unapplied membership change; the leader refuses
/// to start one during a change.
#[test]
fn no_transfer_campaign_while_a_membership_change_is_unapplied() {
    let mut n = Node::follower();
    n.poller.votes_after = Instant::now();
    let mut cc = ConfChangeV2::default();
    let mut c = ConfChangeSingle::default();
    c.set_change_type(ConfChangeType::RemoveNode);
    c.node_id = 3;
    cc.mut_changes().push(c);
    let mut e = entry(INIT_INDEX + 1, 6);
    e.set_entry_type(EntryType::EntryConfChangeV2);
    e.data = Bytes::from(cc.write_to_bytes().unwrap());
    // Appended, not known committed.
    let mut m = append(INIT_INDEX + 1, INIT_INDEX + 1, INIT_INDEX);
    m.set_entries(vec![e].into());
    n.deliver(2, m);
    let _ = n.take_sent();
    n.deliver(2, msg(MessageType::MsgTimeoutNow, 2, 6));
    let g = &n.poller.groups[&GROUP];
    assert_eq!(g.raw.raft.state, raft::StateRole::Follower);
    let votes = n
        .take_sent()
        .into_iter()
        .filter(|(_, m)| m.get_msg_type() == MessageType::MsgRequestVote)
        .count();
    assert_eq!(
        votes, 0,
        "campaigned in a configuration the group may have left"
    );
    // Once it learns the change is committed and applies it, a transfer works again.
    let mut m = append(INIT_INDEX + 2, INIT_INDEX + 1, INIT_INDEX + 1);
    m.set_entries(Vec::<Entry>::new().into());
    m.index = INIT_INDEX + 1;
    m.log_term = 6;
    n.deliver(2, m);
    n.deliver(2, msg(MessageType::MsgTimeoutNow, 2, 6));
    assert_ne!(
        n.poller.groups[&GROUP].raw.raft.state,
        raft::StateRole::Follower
    );
}

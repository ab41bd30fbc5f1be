//! Elections: who may vote (restarted, configuration-less and learner replicas), and votes counted by the newest configuration in the log.

use super::*;

/// Finding 2 (restart): a follower may have answered a leader's heartbeat just before it
/// restarted, promising to vote for no one else for an election timeout. For that long
/// after it starts it grants no vote (a transfer's forced campaign aside).
#[test]
fn a_restarted_follower_does_not_vote_inside_a_lease_it_may_have_granted() {
    let n = Node::follower();
    let mut n = n.restart();
    n.take_sent();
    let mut vote = msg(MessageType::MsgRequestVote, 3, 7);
    vote.index = 100;
    vote.log_term = 6;
    n.deliver(3, vote.clone());
    let granted = |sent: &[(u64, Message)]| {
        sent.iter()
            .any(|(_, m)| m.get_msg_type() == MessageType::MsgRequestVoteResponse && !m.reject)
    };
    assert!(!granted(&n.take_sent()), "voted right after a restart");
    // Once an election timeout has passed, it votes as usual.
    n.poller.votes_after = Instant::now();
    n.deliver(3, vote);
    assert!(
        granted(&n.take_sent()),
        "a vote after the lease was refused"
    );
}

/// Node `from` asks this node for a pre-vote and a vote in term 9, its log ending at 40
/// (term 8, newer than anything here): the grants sent back.
fn votes_granted(n: &mut Node, from: u64) -> Vec<(u64, Message)> {
    for t in [MessageType::MsgRequestPreVote, MessageType::MsgRequestVote] {
        let mut m = msg(t, from, 9);
        m.index = 40;
        m.log_term = 8;
        n.deliver(from, m);
    }
    n.take_sent()
        .into_iter()
        .filter(|(_, m)| {
            matches!(
                m.get_msg_type(),
                MessageType::MsgRequestVoteResponse | MessageType::MsgRequestPreVoteResponse
            ) && !m.reject
        })
        .collect()
}

/// A new replica, hosted to join the group, knows no configuration until its first
/// snapshot. Its node may have been a voter of the group before (removed, then added back):
/// a stale member still counting that voter must not win the empty log's vote (the
/// simulation found a stale member elected over committed entries this way).
#[test]
fn a_replica_that_knows_no_configuration_does_not_vote() {
    let mut n = Node::open(tempfile::tempdir().unwrap());
    n.poller.votes_after = Instant::now();
    let mut joining = spec(&[2, 1, 3]);
    joining.joining = true;
    n.poller.handle(Event::CreateGroup(joining));
    n.settle();
    let granted = votes_granted(&mut n, 2);
    assert!(granted.is_empty(), "votes granted: {granted:?}");
}

/// The simulation's split brain through a learner's vote (seed 0x9b6c547583c9): node 1,
/// added back to a group it had left, held only the leader's configuration (a torn first
/// install) in which it is a learner. A member cut off since before it left still counted
/// node 1 as a voter and won its vote, then a majority of the old configuration. A replica
/// that is not a voter (in its applied configuration, or in a change its log holds) does not
/// vote, unless the candidate's log ends in the term of its own last entry: a newer term
/// (8 here, the snapshot's 6) does not show that the candidate holds the learner's addition.
#[test]
fn a_learner_does_not_vote() {
    let mut n = Node::open(tempfile::tempdir().unwrap());
    n.poller.votes_after = Instant::now();
    let mut joining = spec(&[2, 1, 3, 4]);
    joining.joining = true;
    n.poller.handle(Event::CreateGroup(joining));
    n.settle();
    n.deliver(
        2,
        snapshot_msg(
            20,
            &[2, 1, 3, 4],
            ConfState {
                voters: vec![2, 3, 4],
                learners: vec![1],
                ..Default::default()
            },
        ),
    );
    assert_eq!(n.poller.groups[&GROUP].applied, 20);
    // Restarted: it knows no leader (so no lease refuses the candidate).
    let mut n = n.restart();
    n.poller.votes_after = Instant::now();
    let _ = n.take_sent();
    let granted = votes_granted(&mut n, 3);
    assert!(granted.is_empty(), "a learner granted votes: {granted:?}");
}

/// A membership change entry (a joint one if it holds more than one change; leaving a
/// joint configuration if it holds none).
fn conf_entry(index: u64, changes: &[(u64, ConfChangeType)]) -> Entry {
    let mut cc = ConfChangeV2::default();
    for (id, t) in changes {
        let mut c = ConfChangeSingle::default();
        c.set_change_type(*t);
        c.node_id = *id;
        cc.mut_changes().push(c);
    }
    cc.set_transition(ConfChangeTransition::Auto);
    let mut e = entry(index, 6);
    e.set_entry_type(EntryType::EntryConfChangeV2);
    e.data = Bytes::from(cc.write_to_bytes().unwrap());
    e
}

/// Has the peers answer this node's (pre-)vote requests of the kind `t`: `grant` grant
/// them, the others refuse. Returns the nodes asked.
fn answer_votes(n: &mut Node, t: MessageType, grant: &[u64]) -> Vec<u64> {
    let resp = match t {
        MessageType::MsgRequestPreVote => MessageType::MsgRequestPreVoteResponse,
        _ => MessageType::MsgRequestVoteResponse,
    };
    let mut asked: Vec<(u64, u64)> = n
        .take_sent()
        .into_iter()
        .filter(|(_, m)| m.get_msg_type() == t)
        .map(|(to, m)| (to, m.term))
        .collect();
    // Grants first: a refusal first would make any count lose at once.
    asked.sort_by_key(|(to, _)| !grant.contains(to));
    for (to, term) in &asked {
        let reject = !grant.contains(to);
        // A refusal carries the voter's term: a pre-vote's is the one before it asks for.
        let pre = resp == MessageType::MsgRequestPreVoteResponse;
        let mut r = msg(resp, *to, if reject && pre { term - 1 } else { *term });
        r.reject = reject;
        n.deliver(*to, r);
    }
    asked.into_iter().map(|(to, _)| to).collect()
}

/// Raft thesis §4.1: a server decides elections by the newest configuration in its log,
/// committed or not; raft-rs counts votes by the one it applied. Group {1,2,3} replaces 3
/// with 4: node 1's log holds 4's addition as a learner (applied), the joint change and
/// the change leaving it (neither known committed here). Past the leave, {2,4} alone
/// commit. Node 1 campaigns: with the vote of removed node 3 it won a majority of
/// {1,2,3}, and led without what {2,4} committed. It now needs a majority of {1,2,4} too,
/// and asks node 4 for it.
#[test]
fn votes_are_counted_by_the_newest_configuration_in_the_log() {
    let mut n = Node::follower();
    n.poller.votes_after = Instant::now();
    let first = INIT_INDEX + 1;
    let mut m = append(first, first + 2, first);
    m.set_entries(
        vec![
            conf_entry(first, &[(4, ConfChangeType::AddLearnerNode)]),
            conf_entry(
                first + 1,
                &[
                    (4, ConfChangeType::AddNode),
                    (3, ConfChangeType::RemoveNode),
                ],
            ),
            conf_entry(first + 2, &[]),
        ]
        .into(),
    );
    n.deliver(2, m);
    {
        let g = &n.poller.groups[&GROUP];
        assert_eq!(g.applied, first, "only the learner's addition is applied");
        assert!(g.raw.raft.prs().conf().learners().contains(&4));
    }
    let _ = n.take_sent();
    let g = n.poller.groups.get_mut(&GROUP).unwrap();
    g.raw.campaign().unwrap();
    n.poller.dirty.insert(GROUP);
    n.settle();
    // Node 2 has entries past the leave and refuses; stale node 3 grants.
    let asked = answer_votes(&mut n, MessageType::MsgRequestPreVote, &[3]);
    let _ = answer_votes(&mut n, MessageType::MsgRequestVote, &[3]);
    assert!(
        !n.poller.groups[&GROUP].is_leader(),
        "elected by a majority of a configuration its log has left"
    );
    assert!(asked.contains(&4), "node 4 was not asked: {asked:?}");
    // Node 4 grants as well: a majority of both, elected.
    n.deliver(4, msg(MessageType::MsgRequestPreVoteResponse, 4, 7));
    let _ = answer_votes(&mut n, MessageType::MsgRequestVote, &[3, 4]);
    assert!(
        n.poller.groups[&GROUP].is_leader(),
        "not elected by {{1,3,4}}"
    );
}

/// Node `id` hosting the group of `peers` (joining it: waiting for a snapshot), its
/// restart lease over.
fn member(id: u64, peers: &[u64], joining: bool) -> Node {
    let mut n = Node::open_as(tempfile::tempdir().unwrap(), id, Duration::from_secs(2));
    n.poller.votes_after = Instant::now();
    let mut s = spec(peers);
    s.joining = joining;
    n.poller.handle(Event::CreateGroup(s));
    n.settle();
    n
}

/// Liveness of the newest-configuration rule (thesis §4.3, joint consensus): group
/// {1,2,3} moves to {1,2,4}, with 3 alive. Leader 2 added 4 as a learner (4 installed a
/// snapshot holding its addition), appended the joint change to node 1 only, and crashed.
/// Node 1 needs a majority of {1,2,4}, so 4's vote; node 3 cannot win (node 1's log is
/// longer). Learner 4 refused every vote, and no one was ever elected (for good if node 2's
/// disk was lost). Node 1 holds all of 4's log: 4 votes for it.
#[test]
fn a_learner_the_joint_configuration_needs_votes_for_a_candidate_holding_its_log() {
    let first = INIT_INDEX + 1;
    let add_learner = conf_entry(first, &[(4, ConfChangeType::AddLearnerNode)]);
    let joint = conf_entry(
        first + 1,
        &[
            (4, ConfChangeType::AddNode),
            (3, ConfChangeType::RemoveNode),
        ],
    );
    let mut nodes = std::collections::BTreeMap::new();
    for (id, entries) in [
        (1, vec![add_learner.clone(), joint]),
        (3, vec![add_learner]),
    ] {
        let mut n = member(id, &[2, 1, 3], false);
        let mut m = append(first, first, first);
        m.to = id;
        m.set_entries(entries.into());
        n.deliver(2, m);
        assert_eq!(n.poller.groups[&GROUP].applied, first);
        nodes.insert(id, n);
    }
    let mut n4 = member(4, &[2, 1, 3, 4], true);
    let mut m = snapshot_msg(
        first,
        &[2, 1, 3, 4],
        ConfState {
            voters: vec![2, 1, 3],
            learners: vec![4],
            ..Default::default()
        },
    );
    m.to = 4;
    n4.deliver(2, m);
    assert_eq!(n4.poller.groups[&GROUP].applied, first);
    nodes.insert(4, n4);
    for n in nodes.values() {
        let _ = n.take_sent();
    }
    // Node 2 is down: ticks, and messages among 1, 3 and 4, for ten election timeouts.
    let ticks = 10 * nodes[&1].poller.cfg.election_ticks;
    for _ in 0..ticks {
        for n in nodes.values_mut() {
            n.poller.tick(Instant::now());
            n.settle();
        }
        loop {
            let sent: Vec<(u64, Message)> = nodes.values().flat_map(|n| n.take_sent()).collect();
            if sent.is_empty() {
                break;
            }
            for (to, m) in sent {
                if let Some(n) = nodes.get_mut(&to) {
                    n.deliver(m.from, m);
                }
            }
        }
        if nodes.values().any(|n| n.poller.groups[&GROUP].is_leader()) {
            break;
        }
    }
    assert!(
        nodes[&1].poller.groups[&GROUP].is_leader(),
        "no leader within {ticks} ticks"
    );
}

//! Snapshots installed on a replica: torn installs, crashes part way, snapshots that are stale, copies that fail, a follower that lost its log.

use super::*;

/// Finding 1: a replica that acknowledged entries 6..=10 installs a snapshot at 20, and
/// power fails part way through the install's log batch. Whatever prefix of the batch
/// survives, the restarted replica still holds (or has applied) everything it
/// acknowledged and is not quarantined; before the fix, the compaction mark at 20 could
/// reach the disk first and replay forgot entries 6..=10 while the applied point stayed 5.
#[cfg(feature = "failpoints")]
#[test]
fn a_crash_while_installing_a_snapshot_never_forgets_acknowledged_entries() {
    let scenario = fail::FailScenario::setup();
    for keep in 0..=7 {
        let mut n = Node::follower();
        n.deliver(2, append(INIT_INDEX + 1, 10, INIT_INDEX));
        assert_eq!(
            acked(&n.take_sent()),
            10,
            "the follower acknowledges 6..=10"
        );

        let m = snapshot_msg(
            20,
            &[2, 1, 3],
            ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            },
        );
        fail::cfg("log::tear", &format!("return({keep})")).unwrap();
        n.deliver(2, m);
        fail::remove("log::tear");
        assert!(
            n.fatal.lock().unwrap().is_some(),
            "the torn batch stops the node"
        );

        let n = n.restart();
        assert!(
            !n.poller.quarantined.contains_key(&GROUP),
            "torn after {keep} records: the replica was quarantined"
        );
        let g = &n.poller.groups[&GROUP];
        assert!(
            g.applied >= 10 || n.last_index() >= 10,
            "torn after {keep} records: applied {} and last index {} are below the \
             acknowledged 10",
            g.applied,
            n.last_index()
        );
    }
    scenario.teardown();
}

/// A joining replica (no configuration yet) crashes while installing its first snapshot,
/// which lists it as a learner. Whatever prefix of the install's log batch survives, the
/// restarted replica must not count itself a voter: restored with the leader's membership
/// but not the snapshot's configuration, it took every listed peer for a voter and voted
/// (the simulation found a removed replica elected with that vote, serving stale reads).
#[cfg(feature = "failpoints")]
#[test]
fn a_torn_first_install_never_makes_a_learner_a_voter() {
    let scenario = fail::FailScenario::setup();
    for keep in 0..=6 {
        let mut n = Node::open(tempfile::tempdir().unwrap());
        let mut joining = spec(&[2, 3, 4, 1]);
        joining.joining = true;
        n.poller.handle(Event::CreateGroup(joining));
        n.settle();
        let m = snapshot_msg(
            20,
            &[2, 3, 4, 1],
            ConfState {
                voters: vec![2, 3, 4],
                learners: vec![ME],
                ..Default::default()
            },
        );
        fail::cfg("log::tear", &format!("return({keep})")).unwrap();
        n.deliver(2, m);
        fail::remove("log::tear");
        let n = n.restart();
        if let Some(g) = n.poller.groups.get(&GROUP) {
            let voters = g.mem().conf_state.voters.clone();
            assert!(
                !voters.contains(&ME),
                "torn after {keep} records: the learner restarted as a voter of {voters:?}"
            );
        }
    }
    scenario.teardown();
}

/// The simulation's second split at one index (seeds 0x328a3d8251a2, 0xd0155267eda): a
/// replica holding a deposed leader's uncommitted entries installs a newer leader's
/// snapshot and crashes part way through the install batch. Whatever prefix survives, it
/// must not restart with the snapshot's commit index over its old tail (it would apply
/// entries the group never committed): either the snapshot's applied point came with the
/// commit index, or neither did.
#[cfg(feature = "failpoints")]
#[test]
fn a_torn_install_never_commits_the_old_tail() {
    let scenario = fail::FailScenario::setup();
    for keep in 0..=7 {
        let mut n = Node::follower();
        // Node 2, leading term 6, sends 6..=25; nothing of it is committed.
        n.deliver(2, append(INIT_INDEX + 1, 25, INIT_INDEX));
        let mut m = snapshot_msg(
            20,
            &[2, 1, 3],
            ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            },
        );
        // From node 3, which leads term 7 with other entries.
        m.from = 3;
        m.term = 7;
        m.mut_snapshot().mut_metadata().term = 7;
        fail::cfg("log::tear", &format!("return({keep})")).unwrap();
        n.deliver(3, m);
        fail::remove("log::tear");

        let n = n.restart();
        let g = &n.poller.groups[&GROUP];
        let committed = g.raw.raft.raft_log.committed;
        assert!(
            committed <= INIT_INDEX || g.applied >= 20,
            "torn after {keep} records: commit index {committed} over an old tail (applied {})",
            g.applied
        );
    }
    scenario.teardown();
}

/// A crash after a snapshot install at 20 was durable but before its compaction mark was:
/// replay finds an older tail reaching 19 (possibly an uncommitted one of an old term)
/// followed by the install's empty marker at 20. The replica must not keep that tail (it
/// could send it to a lagging follower as if it were the committed log), nor treat the
/// marker as the real entry 20.
#[test]
fn a_log_tail_below_an_installed_snapshot_is_not_kept_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let chunks = ChunkStores::open(dir.path()).unwrap().get(GROUP).unwrap();
    let mut entries: Vec<Entry> = (15..20)
        .map(|i| Entry {
            data: Bytes::from_static(b"old"),
            ..entry(i, 5)
        })
        .collect();
    entries.push(entry(20, 6));
    let init = crate::group::GroupInit {
        spec: spec(&[2, 1, 3]),
        conf: None,
        chunks,
        watches: crate::scrub::Watches::new(),
        hard_state: Default::default(),
        applied: (20, 6),
        entries,
        fences: Default::default(),
    };
    let g = crate::group::Group::new(ME, 10, Duration::from_secs(1), init).unwrap();
    let mem = g.mem();
    assert_eq!(
        (mem.compacted_index, mem.compacted_term, mem.last_index()),
        (20, 6, 20),
        "the tail below the snapshot was kept"
    );
}

/// Suspected, and confirmed: a follower's report that its snapshot copy failed, sent over
/// the network, was dropped (`RawNode::step` refuses `MsgSnapStatus` as a local message),
/// so the leader offered a new snapshot only after its 30 s stall timeout. The leader now
/// takes the report and offers a new snapshot at the next heartbeat.
#[test]
fn a_failed_snapshot_copy_reported_by_the_follower_is_offered_again_at_once() {
    let mut n = leader();
    for _ in 0..3 {
        let _ = submit(&mut n, write(0xA, 0xaa));
        ack_appends(&mut n);
    }
    let last = n.last_index();
    n.poller.groups[&GROUP].mem().compact(last);
    // Node 2 lost its log: the leader starts over with it, and only a snapshot will do.
    let mut r = msg(MessageType::MsgAppendResponse, 2, 6);
    r.term = n.poller.groups[&GROUP].raw.raft.term;
    r.reject = true;
    r.index = last;
    r.reject_hint = 0;
    n.deliver(2, r);
    heartbeat_round(&mut n);
    let snapshots = |sent: &[(u64, Message)]| {
        sent.iter()
            .filter(|(to, m)| *to == 2 && m.get_msg_type() == MessageType::MsgSnapshot)
            .count()
    };
    let mut sent = n.take_sent();
    if snapshots(&sent) == 0 {
        heartbeat_round(&mut n);
        sent = n.take_sent();
    }
    assert_eq!(snapshots(&sent), 1, "the leader offers node 2 a snapshot");
    let progress = |n: &Node| n.poller.groups[&GROUP].raw.raft.prs().get(2).unwrap().state;
    assert_eq!(progress(&n), raft::ProgressState::Snapshot);
    // Node 2's copy failed: it says so, as `snapshot_fetched` does (a report of an older
    // copy is ignored).
    let offered = sent
        .iter()
        .find(|(to, m)| *to == 2 && m.get_msg_type() == MessageType::MsgSnapshot)
        .map(|(_, m)| m.clone())
        .unwrap();
    let mut failed = Message::default();
    failed.set_msg_type(MessageType::MsgSnapStatus);
    failed.from = 2;
    failed.to = ME;
    failed.term = offered.term;
    failed.index = offered.get_snapshot().get_metadata().index - 1;
    failed.reject = true;
    n.deliver(2, failed.clone());
    assert_eq!(
        progress(&n),
        raft::ProgressState::Snapshot,
        "a stale report counted"
    );
    failed.index += 1;
    n.deliver(2, failed);
    assert_eq!(
        progress(&n),
        raft::ProgressState::Probe,
        "the report of a failed copy was dropped"
    );
    heartbeat_round(&mut n);
    let sent = n.take_sent();
    assert_eq!(snapshots(&sent), 1, "a new snapshot at the next heartbeat");
}

/// A snapshot no newer than what a follower applied has nothing to copy. It used to be
/// dropped unanswered, and the leader waited in its snapshot state for the 30 s stall
/// timeout (the simulation found a group stuck so); raft-rs now declines it and answers.
#[test]
fn a_snapshot_no_newer_than_the_applied_index_is_answered() {
    let mut n = Node::follower();
    n.deliver(2, append(INIT_INDEX + 1, INIT_INDEX + 3, INIT_INDEX + 3));
    assert!(n.poller.groups[&GROUP].applied >= INIT_INDEX + 3);
    n.take_sent();
    let m = snapshot_msg(
        INIT_INDEX + 2,
        &[2, 1, 3],
        ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        },
    );
    n.deliver(2, m);
    let answered = n
        .take_sent()
        .into_iter()
        .any(|(to, m)| to == 2 && m.get_msg_type() == MessageType::MsgAppendResponse && !m.reject);
    assert!(answered, "the leader got no answer to its snapshot");
}

/// A follower that lost its log (its replica destroyed on the manager's word and hosted
/// anew while the leader still tracked it) rejects the leader's appends with a last index
/// below what it had acknowledged. The leader must start over with it (in the end, a
/// snapshot) rather than take every rejection for a stale one and leave it stuck.
#[test]
fn a_follower_that_lost_its_log_is_replicated_from_scratch() {
    let mut n = leader();
    let matched = n.poller.groups[&GROUP]
        .raw
        .raft
        .prs()
        .get(2)
        .unwrap()
        .matched;
    assert!(matched > INIT_INDEX);
    let mut r = msg(MessageType::MsgAppendResponse, 2, 6);
    r.reject = true;
    r.index = matched;
    r.reject_hint = 0;
    r.term = n.poller.groups[&GROUP].raw.raft.term;
    n.deliver(2, r);
    let pr = n.poller.groups[&GROUP]
        .raw
        .raft
        .prs()
        .get(2)
        .unwrap()
        .clone();
    assert_eq!(
        pr.matched, 0,
        "the leader still believes the follower holds {matched}"
    );
    assert_ne!(pr.state, raft::ProgressState::Replicate);
}

//! A leader's read lease: void during a transfer, a majority of each half of a joint configuration.

use super::*;

/// Finding 2 (transfer): once a leader starts handing leadership over, its lease is void
/// for the rest of its term: the transferee's forced campaign wins votes inside any lease
/// the followers granted, and may win after the transfer was given up here. A read then
/// needs a heartbeat round sent after it arrived (ReadIndex), not the lease.
#[test]
fn a_leader_transferring_leadership_serves_no_read_from_its_lease() {
    // The stuck tests stall node 1's groups through a process-wide fail point, which would
    // refuse the first read here: not while they run.
    let _serial = fail::FailScenario::setup();
    let mut n = leader();
    let got = submit_read(&mut n);
    assert!(
        matches!(*got.lock().unwrap(), Some(Reply::Ok(_))),
        "a read under a fresh lease is served at once"
    );

    let answered = Arc::new(Mutex::new(false));
    let a2 = answered.clone();
    n.poller.handle(Event::TransferLeader {
        group: GROUP,
        to: 2,
        respond: Box::new(move |_| *a2.lock().unwrap() = true),
    });
    n.settle();
    assert!(*answered.lock().unwrap());
    let got = submit_read(&mut n);
    assert!(
        got.lock().unwrap().is_none(),
        "a read was served from the lease while a transfer was pending"
    );
    // The transfer is given up (node 2 never answered); the lease stays void this term.
    let g = n.poller.groups.get_mut(&GROUP).unwrap();
    g.raw.raft.abort_leader_transfer();
    let got2 = submit_read(&mut n);
    assert!(
        got2.lock().unwrap().is_none(),
        "a read was served from a voided lease"
    );
    // A heartbeat round sent after the reads arrived confirms the leadership: both are served.
    heartbeat_round(&mut n);
    assert!(matches!(*got.lock().unwrap(), Some(Reply::Ok(_))));
    assert!(matches!(*got2.lock().unwrap(), Some(Reply::Ok(_))));
}

/// Finding 2 (joint consensus): a lease needs a majority of each configuration. Voters
/// {1, 2, 3} joining from {1, 4, 5}: answers from 2 and 3 make three of five, but only one
/// of the outgoing three.
#[test]
fn a_lease_in_a_joint_configuration_needs_a_majority_of_each_half() {
    let mut n = Node::open(tempfile::tempdir().unwrap());
    let dir = n.dir.path().to_path_buf();
    let chunks = ChunkStores::open(&dir.join("g"))
        .unwrap()
        .get(GROUP)
        .unwrap();
    let init = crate::group::GroupInit {
        spec: spec(&[1, 2, 3, 4, 5]),
        conf: Some((
            INIT_INDEX,
            ConfState {
                voters: vec![1, 2, 3],
                voters_outgoing: vec![1, 4, 5],
                ..Default::default()
            },
        )),
        chunks,
        watches: crate::scrub::Watches::new(),
        hard_state: Default::default(),
        applied: (INIT_INDEX, INIT_INDEX),
        entries: Vec::new(),
        fences: Default::default(),
    };
    let mut g = crate::group::Group::new(ME, 10, Duration::from_secs(1), init).unwrap();
    // Reported joint (voters the union of both halves), so that the scrubber, which takes
    // a majority of the voters, leaves the group alone meanwhile.
    let st = g.state();
    assert!(st.joint, "{st:?}");
    assert_eq!(st.voters.len(), 5);
    let now = Instant::now();
    g.note_contact(2, now);
    g.note_contact(3, now);
    assert!(
        !g.quorum_heard_since(now, true),
        "the outgoing half has not answered"
    );
    g.note_contact(4, now);
    assert!(g.quorum_heard_since(now, true));
    n.poller.stopped = true;
}

//! Client writes: retries applied once, deadlines, writer fences, the free-space floor.

use super::*;

/// A retry of write A (same request id) arriving after a newer write B to the same block
/// must not become a second entry: committed after B, it would undo B, an acknowledged
/// write (the nemesis test found this: a leader change answers A `NotLeader` while A still
/// commits, and the client retries A). The retry is answered with A's own entry, before
/// and after A committed.
#[test]
fn a_retried_write_takes_effect_once_and_never_after_a_newer_write() {
    let mut n = leader();
    let a = submit(&mut n, write(0xA, 0xaa));
    let b = submit(&mut n, write(0xB, 0xbb));
    let last = n.last_index();
    let a_again = submit(&mut n, write(0xA, 0xaa));
    assert_eq!(
        n.last_index(),
        last,
        "the retry of A was proposed again, after B"
    );
    ack_appends(&mut n);
    assert!(ok(&a) && ok(&b) && ok(&a_again), "all three answered Ok");
    // Long after A was applied, one more retry is still answered without a new entry.
    let a_late = submit(&mut n, write(0xA, 0xaa));
    assert!(ok(&a_late));
    assert_eq!(n.last_index(), last);
    let got = submit_read(&mut n);
    match &*got.lock().unwrap() {
        Some(Reply::Ok(data)) => assert!(data.iter().all(|&x| x == 0xbb), "B was undone"),
        other => panic!("read: {other:?}"),
    };
}

/// A leader's uncommitted writes are cut off by the next leader's log, and it leads again
/// with a shorter log: a retry of a write whose entry was past the new end is proposed
/// anew, not looked up beyond the log (raft-rs panics there; the simulation found it).
#[test]
fn a_retry_of_a_write_cut_from_the_log_is_proposed_again() {
    let mut n = leader();
    let _ = submit(&mut n, write(0xA, 0xaa));
    let _ = submit(&mut n, write(0xB, 0xbb));
    let _ = submit(&mut n, write(0xC, 0xcc));
    n.take_sent();
    let term = n.poller.groups[&GROUP].raw.raft.term;
    let first = n.last_index() - 2;
    // Node 2 leads term + 1 and overwrites A's index: B and C are gone.
    let mut m = msg(MessageType::MsgAppend, 2, term + 1);
    m.index = first - 1;
    m.log_term = n.poller.groups[&GROUP]
        .raw
        .raft
        .raft_log
        .term(first - 1)
        .unwrap();
    m.commit = first - 1;
    m.set_entries(vec![entry(first, term + 1)].into());
    n.deliver(2, m);
    assert_eq!(n.last_index(), first);
    // Node 1 leads again (term + 2), its no-op entry at first + 1: C was at first + 2.
    n.poller
        .groups
        .get_mut(&GROUP)
        .unwrap()
        .raw
        .campaign()
        .unwrap();
    n.poller.dirty.insert(GROUP);
    n.settle();
    grant_votes(&mut n);
    assert!(n.poller.groups[&GROUP].is_leader(), "node 1 leads again");
    assert_eq!(n.last_index(), first + 1);
    let c = submit(&mut n, write(0xC, 0xcc));
    assert_eq!(n.last_index(), first + 2, "C proposed again");
    for _ in 0..3 {
        ack_appends(&mut n);
    }
    assert!(
        ok(&c),
        "C answered once its new entry committed: {:?}",
        c.lock().unwrap()
    );
}

/// A request that reaches its leader after its deadline was given up on by its client,
/// which retries: proposed, it could land after the retry and a newer write to the same
/// block (a frame stalled in a storage node's queue past the client's timeout). It is
/// answered `Expired` and never proposed; the same request within its deadline is.
#[test]
fn a_request_past_its_deadline_is_never_proposed() {
    // A leader that has not committed in its term yet cannot tell the client its earlier
    // attempts are not in the group's log (a previous leader may have appended one that
    // will commit): it says "try again", not "expired".
    let mut n = Node::open(tempfile::tempdir().unwrap());
    n.poller.votes_after = Instant::now();
    n.poller.handle(Event::CreateGroup(spec(&[1, 2, 3])));
    n.settle();
    grant_votes(&mut n);
    assert!(n.poller.groups[&GROUP].is_leader());
    let mut late = write(0xC, 0xcc);
    late.deadline_ms = 1;
    let got = submit(&mut n, late);
    assert!(
        matches!(*got.lock().unwrap(), Some(Reply::Unavailable(_))),
        "answered {:?}",
        got.lock().unwrap()
    );

    let mut n = leader();
    let last = n.last_index();
    let unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut late = write(0xD, 0xdd);
    late.deadline_ms = unix_ms - 1;
    let got = submit(&mut n, late.clone());
    assert!(
        matches!(*got.lock().unwrap(), Some(Reply::Expired(_))),
        "answered {:?}",
        got.lock().unwrap()
    );
    assert_eq!(n.last_index(), last, "a late request was proposed");
    late.deadline_ms = unix_ms + 60_000;
    let got = submit(&mut n, late);
    assert_eq!(n.last_index(), last + 1);
    ack_appends(&mut n);
    assert!(ok(&got));
}

fn with_epoch(mut r: Request, epoch: u64) -> Request {
    r.epoch = epoch;
    r
}

fn fence(epoch: u64) -> Request {
    with_epoch(Request::other(Op::Fence, read().addr, 0, 0), epoch)
}

fn fenced(r: &Arc<Mutex<Option<Reply>>>) -> bool {
    matches!(*r.lock().unwrap(), Some(Reply::Fenced(_)))
}

/// One writer per volume: once a new writer's fence (epoch 2) is in the log, writes of
/// the old attachment (epoch 1) and unattached ones are refused, never proposed; the new
/// writer's go through. The floor survives a restart (from its slot and the log) and
/// reaches a replica that catches up by snapshot.
#[test]
fn writes_of_an_older_epoch_are_refused_after_a_fence() {
    let mut n = leader();
    let old = submit(&mut n, with_epoch(write(0xA, 0xaa), 1));
    ack_appends(&mut n);
    assert!(ok(&old), "before any fence, epoch 1 writes");
    let f = submit(&mut n, fence(2));
    ack_appends(&mut n);
    assert!(ok(&f), "the fence is answered once applied");
    let last = n.last_index();
    let stale = submit(&mut n, with_epoch(write(0xB, 0xbb), 1));
    let unattached = submit(&mut n, write(0xC, 0xcc));
    assert!(fenced(&stale) && fenced(&unattached));
    assert_eq!(n.last_index(), last, "a fenced write was proposed");
    // A retry of a write that entered the log before the fence gets its outcome.
    let retry = submit(&mut n, with_epoch(write(0xA, 0xaa), 1));
    assert!(ok(&retry));
    let new = submit(&mut n, with_epoch(write(0xD, 0xdd), 2));
    ack_appends(&mut n);
    assert!(ok(&new));
    // A fence and an older write handled in the same round (before any Ready): the write
    // is still refused, never proposed after the fence.
    let answer = |n: &mut Node, req: Request| {
        let got = Arc::new(Mutex::new(None));
        let g2 = got.clone();
        n.poller.handle(Event::Request(
            req,
            Box::new(move |r| *g2.lock().unwrap() = Some(r)),
            Instant::now(),
        ));
        got
    };
    let f3 = answer(&mut n, fence(3));
    let same_round = answer(&mut n, with_epoch(write(0xE, 0xee), 2));
    n.settle();
    ack_appends(&mut n);
    assert!(
        ok(&f3) && fenced(&same_round),
        "{:?}",
        same_round.lock().unwrap()
    );
    match &*submit_read(&mut n).lock().unwrap() {
        Some(Reply::Ok(data)) => assert!(data.iter().all(|&x| x == 0xdd)),
        other => panic!("read: {other:?}"),
    };

    let n = n.restart();
    let g = &n.poller.groups[&GROUP];
    assert_eq!(g.fences.admits(read().addr.volume, 2), Err(3));
    let data = g.mem().snapshot_data.clone();

    // A replica that learns the group from a snapshot knows the floor, also after a crash.
    let mut f = Node::follower();
    let mut snap = snapshot_msg(
        40,
        &[2, 1, 3],
        ConfState {
            voters: vec![1, 2, 3],
            ..Default::default()
        },
    );
    snap.mut_snapshot().data = data;
    f.deliver(2, snap);
    assert_eq!(f.poller.groups[&GROUP].applied, 40);
    let f = f.restart();
    assert_eq!(
        f.poller.groups[&GROUP].fences.admits(read().addr.volume, 2),
        Err(3)
    );
}

/// Issue 12: below the free-space floor every request that allocates is refused with
/// `DiskFull` (write-zeroes provisions its range with FALLOC_FL_ZERO_RANGE, so it
/// allocates like a write), while a discard, which frees space, still goes through; once
/// space is back, writes are accepted again.
#[test]
fn below_the_free_space_floor_allocating_requests_are_refused_and_discards_are_not() {
    let mut n = leader();
    n.poller.cfg.min_free_bytes = u64::MAX;
    n.poller.next_space_check = Instant::now();
    let full =
        |r: &Arc<Mutex<Option<Reply>>>| matches!(*r.lock().unwrap(), Some(Reply::DiskFull(_)));
    let mut zeroes = Request::other(Op::WriteZeroes, read().addr, 0, 4096);
    zeroes.id = 0xB;
    let z = submit(&mut n, zeroes);
    assert!(full(&z), "write-zeroes: {:?}", z.lock().unwrap());
    let w = submit(&mut n, write(0xA, 0xaa));
    assert!(full(&w), "write: {:?}", w.lock().unwrap());
    let mut discard = Request::other(Op::Discard, read().addr, 0, 4096);
    discard.id = 0xC;
    let d = submit(&mut n, discard);
    ack_appends(&mut n);
    assert!(ok(&d), "discard: {:?}", d.lock().unwrap());

    n.poller.cfg.min_free_bytes = 0;
    n.poller.next_space_check = Instant::now();
    let w = submit(&mut n, write(0xD, 0xdd));
    ack_appends(&mut n);
    assert!(ok(&w), "write once space is back: {:?}", w.lock().unwrap());
}

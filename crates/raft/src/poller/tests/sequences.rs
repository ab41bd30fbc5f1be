//! Snapshot sequences: writes of a sequence below the volume's floor refused with
//! `Resequence` (never proposed), the floor surviving restarts and travelling in snapshot
//! data, the manager's group operations answered once committed, and reads as of a
//! snapshot and block status handed to the engine with the request's sequence.
//!
//! Each holds the fail point scenario: the stuck tests stall node 1 process-wide.

use tessera_proto::control::GroupOp;
use tessera_proto::data::BlockState;

use super::*;

fn with_seq(mut r: Request, seq: u64) -> Request {
    r.seq = seq;
    r
}

fn fence_seq(seq: u64) -> Request {
    with_seq(Request::other(Op::Fence, read().addr, 0, 0), seq)
}

fn resequenced(r: &Arc<Mutex<Option<Reply>>>) -> Option<u64> {
    match *r.lock().unwrap() {
        Some(Reply::Resequence { seq }) => Some(seq),
        _ => None,
    }
}

pub(super) fn apply_ops(n: &mut Node, ops: Vec<GroupOp>) -> Arc<Mutex<Option<Reply>>> {
    let got = Arc::new(Mutex::new(None));
    let g2 = got.clone();
    n.poller.handle(Event::GroupOps {
        group: GROUP,
        ops,
        respond: Box::new(move |r| *g2.lock().unwrap() = Some(r)),
    });
    n.settle();
    got
}

pub(super) fn answer(r: &Arc<Mutex<Option<Reply>>>) -> Option<Reply> {
    r.lock().unwrap().clone()
}

/// Once a fence of sequence 3 is in the log, writes of sequence 2, and of clients from
/// before snapshots (sequence 0), are refused with the floor and never proposed; the
/// floor survives a restart (slot and log) and reaches a replica by snapshot.
#[test]
fn writes_of_an_older_sequence_are_refused_after_a_fence() {
    let _serial = fail::FailScenario::setup();
    let mut n = leader();
    let before = submit(&mut n, with_seq(write(0xA, 0xaa), 1));
    ack_appends(&mut n);
    assert!(ok(&before), "before any fence: {:?}", answer(&before));
    let f = submit(&mut n, fence_seq(3));
    ack_appends(&mut n);
    assert!(ok(&f), "the fence: {:?}", answer(&f));
    let last = n.last_index();
    let older = submit(&mut n, with_seq(write(0xB, 0xbb), 2));
    let unsequenced = submit(&mut n, write(0xC, 0xcc));
    let mut zeroes = with_seq(Request::other(Op::WriteZeroes, read().addr, 0, 4096), 1);
    zeroes.id = 0xD;
    let zeroes = submit(&mut n, zeroes);
    let mut discard = with_seq(Request::other(Op::Discard, read().addr, 0, 4096), 2);
    discard.id = 0xE;
    let discard = submit(&mut n, discard);
    for (what, r) in [
        ("seq 2", &older),
        ("seq 0", &unsequenced),
        ("zeroes", &zeroes),
        ("discard", &discard),
    ] {
        assert_eq!(resequenced(r), Some(3), "{what}: {:?}", answer(r));
    }
    assert_eq!(n.last_index(), last, "a refused write was proposed");
    ack_appends(&mut n);
    match &*submit_read(&mut n).lock().unwrap() {
        Some(Reply::Ok(data)) => {
            assert!(data.iter().all(|&x| x == 0xaa), "a refused write applied")
        }
        other => panic!("read: {other:?}"),
    }
    // An older fence does not lower it.
    let f = submit(&mut n, fence_seq(2));
    ack_appends(&mut n);
    assert!(ok(&f));

    let n = n.restart();
    let g = &n.poller.groups[&GROUP];
    assert_eq!(g.fences.admits_seq(read().addr.volume, 2), Err(3));
    assert_eq!(g.fences.admits_seq(read().addr.volume, 3), Ok(()));
    let data = g.mem().snapshot_data.clone();

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
        f.poller.groups[&GROUP]
            .fences
            .admits_seq(read().addr.volume, 2),
        Err(3)
    );
}

/// A write of a newer sequence raises the floor as it reaches the log, committed or not:
/// a write of an older sequence after it is refused, in the same round and after a
/// restart (the floor is derived from the log again).
#[test]
fn a_write_of_a_newer_sequence_raises_the_floor() {
    let _serial = fail::FailScenario::setup();
    let mut n = leader();
    let last = n.last_index();
    // Not acknowledged: it stays uncommitted (layers above 1 do not apply on this branch).
    let newer = Arc::new(Mutex::new(None));
    let older = Arc::new(Mutex::new(None));
    for (req, got) in [
        (with_seq(write(0xA, 0xaa), 2), newer.clone()),
        (with_seq(write(0xB, 0xbb), 1), older.clone()),
    ] {
        n.poller.handle(Event::Request(
            req,
            Box::new(move |r| *got.lock().unwrap() = Some(r)),
            Instant::now(),
        ));
    }
    n.settle();
    assert_eq!(resequenced(&older), Some(2), "{:?}", answer(&older));
    assert_eq!(
        n.last_index(),
        last + 1,
        "only the newer write is in the log"
    );
    n.take_sent();
    let n = n.restart();
    assert_eq!(
        n.poller.groups[&GROUP]
            .fences
            .admits_seq(read().addr.volume, 1),
        Err(2)
    );
}

/// The manager's group operations: answered once the last is committed (not before), on
/// the leader only; a fence among them raises the floors at once; an operation that
/// could never apply is refused before anything is proposed.
#[test]
fn group_ops_are_answered_once_committed_and_only_by_the_leader() {
    let _serial = fail::FailScenario::setup();
    let mut n = leader();
    let fence = |seq| GroupOp::Fence {
        volume_id: read().addr.volume,
        epoch: 0,
        seq,
    };
    let last = n.last_index();
    let done = apply_ops(&mut n, vec![fence(4), fence(5)]);
    assert_eq!(n.last_index(), last + 2, "both proposed");
    assert_eq!(answer(&done), None, "answered before it committed");
    // Raised at proposal: a write of the old sequence is refused before the commit.
    let w = submit(&mut n, with_seq(write(0xA, 0xaa), 4));
    assert_eq!(resequenced(&w), Some(5));
    ack_appends(&mut n);
    assert!(ok(&done), "{:?}", answer(&done));
    let w = submit(&mut n, with_seq(write(0xB, 0xbb), 1));
    assert_eq!(resequenced(&w), Some(5));

    let empty = apply_ops(&mut n, vec![]);
    assert!(ok(&empty));
    let last = n.last_index();
    let bad = apply_ops(
        &mut n,
        vec![
            fence(6),
            GroupOp::Rollback {
                volume_id: 1,
                chunk: 0,
                to: 5,
                seq: 5,
            },
        ],
    );
    assert!(
        matches!(answer(&bad), Some(Reply::BadRequest(_))),
        "{:?}",
        answer(&bad)
    );
    assert_eq!(
        n.last_index(),
        last,
        "nothing of a refused batch is proposed"
    );
    let to_nothing = apply_ops(
        &mut n,
        vec![GroupOp::Rollback {
            volume_id: 1,
            chunk: 0,
            to: 0,
            seq: 5,
        }],
    );
    assert!(matches!(answer(&to_nothing), Some(Reply::BadRequest(_))));
    assert_eq!(n.last_index(), last);

    let mut f = Node::follower();
    let r = apply_ops(&mut f, vec![fence(2)]);
    assert!(
        matches!(answer(&r), Some(Reply::NotLeader { .. })),
        "{:?}",
        answer(&r)
    );
    let got = Arc::new(Mutex::new(None));
    let g2 = got.clone();
    f.poller.handle(Event::GroupOps {
        group: 99,
        ops: vec![fence(2)],
        respond: Box::new(move |r| *g2.lock().unwrap() = Some(r)),
    });
    assert_eq!(answer(&got), Some(Reply::GroupNotFound));
}

/// A rollback is proposed only right after a fence of the volume's newest writer epoch:
/// one arriving after a newer writer fenced the volume (a deposed manager's, a late retry)
/// is refused whole, and so is one without its fence or into a layer a snapshot was cut at.
#[test]
fn a_rollback_older_than_the_volumes_writer_is_refused() {
    let _serial = fail::FailScenario::setup();
    let mut n = leader();
    let volume_id = read().addr.volume;
    let fence = |epoch, seq| GroupOp::Fence {
        volume_id,
        epoch,
        seq,
    };
    let rollback = |seq| GroupOp::Rollback {
        volume_id,
        chunk: 0,
        to: 1,
        seq,
    };
    // The rollback's epoch 4 and sequence 3, then a newer writer fences with epoch 5.
    let ok_first = apply_ops(&mut n, vec![fence(0, 3), fence(4, 0)]);
    ack_appends(&mut n);
    assert!(ok(&ok_first));
    let newer = apply_ops(&mut n, vec![fence(5, 0)]);
    ack_appends(&mut n);
    assert!(ok(&newer));
    let last = n.last_index();
    for batch in [
        vec![fence(4, 0), rollback(3)],
        vec![rollback(3)],
        vec![fence(5, 0), rollback(2)],
    ] {
        let r = apply_ops(&mut n, batch.clone());
        assert!(
            matches!(answer(&r), Some(Reply::BadRequest(_))),
            "{batch:?}: {:?}",
            answer(&r)
        );
        assert_eq!(n.last_index(), last, "{batch:?}: nothing proposed");
    }
    // The current writer's rollback goes through.
    let r = apply_ops(&mut n, vec![fence(5, 0), rollback(3)]);
    ack_appends(&mut n);
    assert!(ok(&r), "{:?}", answer(&r));
}

/// A read as of a snapshot and a block status reach the engine with the request's
/// sequence; a block status of a range that is not whole blocks is refused.
#[test]
fn as_of_reads_and_block_status_go_to_the_engine_with_their_sequence() {
    let _serial = fail::FailScenario::setup();
    let mut n = leader();
    let w = submit(&mut n, with_seq(write(0xA, 0xaa), 1));
    ack_appends(&mut n);
    assert!(ok(&w));
    let ask = |n: &mut Node, op, seq, len| {
        let r = submit(n, with_seq(Request::other(op, read().addr, 0, len), seq));
        ack_appends(n);
        answer(&r)
    };
    match ask(&mut n, Op::Read, 0, 4096) {
        Some(Reply::Ok(d)) => assert!(d.iter().all(|&x| x == 0xaa)),
        other => panic!("live read: {other:?}"),
    }
    // As of snapshot 1 (the write's layer): the engine's answer, whichever it is on this
    // branch (its skeleton refuses, naming the call) or with layers (the write's data).
    match ask(&mut n, Op::Read, 1, 4096) {
        Some(Reply::Ok(d)) => assert!(d.iter().all(|&x| x == 0xaa)),
        Some(Reply::Io(m)) => assert!(m.contains("read_as_of"), "{m}"),
        other => panic!("read as of 1: {other:?}"),
    }
    match ask(&mut n, Op::BlockStatus, 0, 2 * 4096) {
        Some(Reply::Ok(d)) => assert_eq!(&d[..], &[BlockState::Data as u8, BlockState::Hole as u8]),
        Some(Reply::Io(m)) => assert!(m.contains("block_status"), "{m}"),
        other => panic!("block status: {other:?}"),
    }
    for (off, len) in [(0, 100), (512, 4096)] {
        let r = submit(
            &mut n,
            Request::other(Op::BlockStatus, read().addr, off, len),
        );
        assert!(
            matches!(answer(&r), Some(Reply::BadRequest(_))),
            "{off}+{len}: {:?}",
            answer(&r)
        );
    }
}

/// Writes of a newer sequence go to a newer layer: the live volume reads them, a read as
/// of the older snapshot does not; a clone's chunk linked by a group operation reads its
/// parent as of the snapshot.
#[test]
fn a_write_after_a_snapshot_leaves_the_snapshot_as_it_was() {
    let _serial = fail::FailScenario::setup();
    let mut n = leader();
    let w = submit(&mut n, with_seq(write(0xA, 0xaa), 1));
    ack_appends(&mut n);
    assert!(ok(&w));
    let cut = apply_ops(
        &mut n,
        vec![GroupOp::Fence {
            volume_id: 1,
            epoch: 0,
            seq: 2,
        }],
    );
    ack_appends(&mut n);
    assert!(ok(&cut), "{:?}", answer(&cut));
    let w = submit(&mut n, with_seq(write(0xB, 0xbb), 2));
    ack_appends(&mut n);
    assert!(ok(&w), "{:?}", answer(&w));
    let link = apply_ops(
        &mut n,
        vec![GroupOp::Link {
            volume_id: 2,
            chunk: 0,
            parent_volume: 1,
            parent_seq: 1,
        }],
    );
    ack_appends(&mut n);
    assert!(ok(&link), "{:?}", answer(&link));
    let read_of = |n: &mut Node, volume, seq| {
        let mut r = with_seq(read(), seq);
        r.addr.volume = volume;
        let got = submit(n, r);
        ack_appends(n);
        match answer(&got) {
            Some(Reply::Ok(d)) => d,
            other => panic!("read of {volume} as of {seq}: {other:?}"),
        }
    };
    assert!(read_of(&mut n, 1, 0).iter().all(|&x| x == 0xbb), "live");
    assert!(
        read_of(&mut n, 1, 1).iter().all(|&x| x == 0xaa),
        "snapshot 1"
    );
    assert!(
        read_of(&mut n, 2, 0).iter().all(|&x| x == 0xaa),
        "the clone"
    );
    assert!(n.fatal.lock().unwrap().is_none());
}

/// An operation the chunk store refuses for what it asks (here a link to a second
/// parent) is refused the same on every replica: the entry is skipped, the node does not
/// stop, and the entries after it apply.
#[test]
fn an_operation_the_chunk_store_refuses_is_skipped_not_fatal() {
    let _serial = fail::FailScenario::setup();
    let mut n = leader();
    let link = |parent_volume| GroupOp::Link {
        volume_id: 2,
        chunk: 0,
        parent_volume,
        parent_seq: 1,
    };
    let r = apply_ops(&mut n, vec![link(1), link(3)]);
    ack_appends(&mut n);
    assert!(ok(&r), "{:?}", answer(&r));
    let w = submit(&mut n, with_seq(write(0xA, 0xaa), 1));
    ack_appends(&mut n);
    assert!(ok(&w), "{:?}", answer(&w));
    assert!(ok(&submit_read(&mut n)));
    assert_eq!(n.poller.groups[&GROUP].applied, n.last_index());
    assert!(
        n.fatal.lock().unwrap().is_none(),
        "{:?}",
        n.fatal.lock().unwrap()
    );
    assert_eq!(
        n.poller.groups[&GROUP].chunks.link_of(2, 0).expect("link"),
        Some((1, 1))
    );
}

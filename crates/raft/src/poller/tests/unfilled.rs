//! Applies stalled on restored blocks not filled yet (a partial write committed over an
//! Unfilled block of a chunk linked to RESTORED): the storage node's hook is told, at
//! most once a second, the blocks are filled outside the log (`ChunkStore::hydrate`,
//! from another thread), and the apply, retried at the next tick, goes on: as follower
//! and as leader (which hands its leadership over meanwhile).

use tessera_engine::chunk::{BLOCK_SIZE, RESTORED};
use tessera_proto::command::{CmdOp, Command};
use tessera_proto::control::RESTORED_PARENT;

use super::*;

type Calls = Arc<Mutex<Vec<(u64, u64, u64, Vec<u32>)>>>;

const B: usize = BLOCK_SIZE as usize;

/// Installs a hook recording its calls.
fn hook(n: &mut Node) -> Calls {
    let calls: Calls = Arc::default();
    let c = calls.clone();
    let hook: crate::UnfilledHook = Arc::new(move |g, v, ch, blocks| {
        c.lock().unwrap().push((g, v, ch, blocks));
    });
    n.poller.handle(Event::UnfilledHook(hook));
    n.settle();
    calls
}

fn cmd(op: CmdOp, offset: usize, data: Bytes) -> Bytes {
    Command {
        seq: 0,
        op,
        volume: 1,
        chunk: 0,
        offset: offset as u32,
        len: data.len() as u32,
        id: 0,
        epoch: 0,
        data,
    }
    .encode()
}

/// Fills block 0 of volume 1 chunk 0 with the backup's bytes (3s) from another thread, as
/// the storage node does.
fn fill_outside_the_log(n: &Node) {
    let chunks = n.poller.groups[&GROUP].chunks.clone();
    std::thread::spawn(move || chunks.hydrate(1, 0, 0, &[3u8; B]))
        .join()
        .unwrap()
        .expect("hydrate");
}

fn tick(n: &mut Node) {
    n.poller.tick(Instant::now());
    n.settle();
}

/// Block 0: the backup's 3s under "abc" at 10; block 1: 7s.
fn expected() -> Vec<u8> {
    let mut want = vec![3u8; 2 * B];
    want[10..13].copy_from_slice(b"abc");
    want[B..].fill(7);
    want
}

#[test]
fn a_follower_stalled_on_unfilled_blocks_tells_the_hook_and_resumes_once_filled() {
    let mut n = Node::follower();
    let calls = hook(&mut n);
    let mut m = msg(MessageType::MsgAppend, 2, 6);
    m.index = INIT_INDEX;
    m.log_term = INIT_INDEX;
    m.commit = INIT_INDEX + 3;
    let data = [
        cmd(CmdOp::Link, 0, Command::link_data(RESTORED_PARENT, 9)),
        // Over block 0, not filled: the apply stalls here, acknowledged at commit.
        cmd(CmdOp::Write, 10, Bytes::from_static(b"abc")),
        // Behind it: waits.
        cmd(CmdOp::Write, B, Bytes::from(vec![7u8; B])),
    ];
    let entries: Vec<Entry> = (data.into_iter().enumerate())
        .map(|(i, data)| Entry {
            index: INIT_INDEX + 1 + i as u64,
            term: 6,
            data,
            ..Default::default()
        })
        .collect();
    m.set_entries(entries.into());
    n.deliver(2, m);
    let g = &n.poller.groups[&GROUP];
    assert_eq!(
        g.applied,
        INIT_INDEX + 1,
        "the partial write stalls the apply"
    );
    assert!(g.stalled.is_some());
    assert_eq!(*calls.lock().unwrap(), vec![(GROUP, 1, 0, vec![0])]);
    // Retried at each tick; told again only a second later. Not reported stuck before
    // `stuck_after` (as any stall).
    tick(&mut n);
    assert_eq!(
        calls.lock().unwrap().len(),
        1,
        "told more than once a second"
    );
    assert!(n.poller.states(Instant::now())[0].stuck.is_none());
    // A fill waits for the applier's entries, and an apply for a running fill: held here.
    let chunks = n.poller.groups[&GROUP].chunks.clone();
    let excluded = chunks.try_exclude_fills().expect("no fill running");
    let (tx, rx) = std::sync::mpsc::channel();
    let filler = chunks.clone();
    let t = std::thread::spawn(move || {
        filler.hydrate(1, 0, 0, &[3u8; B]).expect("hydrate");
        tx.send(()).unwrap();
    });
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    drop(excluded);
    t.join().unwrap();
    tick(&mut n);
    let g = &n.poller.groups[&GROUP];
    assert_eq!(g.applied, INIT_INDEX + 3, "the apply did not resume");
    assert!(g.stalled.is_none() && g.unfilled.is_none());
    let got = g.chunks.read_as_of(1, 0, 0, 2 * B as u64, 0).expect("read");
    assert_eq!(&got[..], &expected()[..]);
    // Filled: a fill again (a late lazy fill) changes nothing.
    fill_outside_the_log(&n);
    let got = n.poller.groups[&GROUP]
        .chunks
        .read_as_of(1, 0, 0, 2 * B as u64, 0);
    assert_eq!(&got.expect("read")[..], &expected()[..]);
    assert_eq!(calls.lock().unwrap().len(), 1);
}

#[test]
fn a_leader_stalled_on_unfilled_blocks_hands_over_tells_the_hook_and_resumes_once_filled() {
    let mut n = leader();
    let calls = hook(&mut n);
    // As a committed Link(RESTORED) applied leaves it (the poller tests send no Link).
    n.poller.groups[&GROUP]
        .chunks
        .link(1, 0, RESTORED, 9)
        .unwrap();
    let addr = read().addr;
    let mut partial = Request::write(addr, 10, Bytes::from_static(b"abc"));
    partial.id = 0xA1;
    let mut whole = Request::write(addr, B as u32, Bytes::from(vec![7u8; B]));
    whole.id = 0xA2;
    let (w1, w2) = (submit(&mut n, partial), submit(&mut n, whole));
    ack_appends(&mut n);
    assert!(ok(&w1), "acknowledged at commit: {:?}", w1.lock().unwrap());
    let g = &n.poller.groups[&GROUP];
    assert!(g.stalled.is_some(), "the partial write stalls the apply");
    assert!(g.applied < n.last_index());
    assert_eq!(*calls.lock().unwrap(), vec![(GROUP, 1, 0, vec![0])]);
    let _ = w2;
    tick(&mut n);
    let handed_over = n
        .take_sent()
        .into_iter()
        .any(|(_, m)| m.get_msg_type() == MessageType::MsgTimeoutNow);
    assert!(handed_over, "the stalled leader kept its leadership");
    fill_outside_the_log(&n);
    tick(&mut n);
    let g = &n.poller.groups[&GROUP];
    assert_eq!(g.applied, n.last_index(), "the apply did not resume");
    assert!(g.stalled.is_none());
    assert!(g.stuck(Instant::now(), Duration::ZERO).is_none());
    let got = g.chunks.read_as_of(1, 0, 0, 2 * B as u64, 0).expect("read");
    assert_eq!(&got[..], &expected()[..]);
    assert_eq!(calls.lock().unwrap().len(), 1);
}

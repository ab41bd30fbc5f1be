//! A restore's fill through a group's log (`Event::Hydrate`, `RaftNode::hydrate`) on three
//! simulated replicas: answered once committed, applied by every replica of the chunk
//! linked to the backup where nothing was written (a client's write before it keeps its
//! bytes), refused off the leader and for a range that could never apply.

use tessera_proto::control::{GroupOp, RESTORED_PARENT};

use super::*;

fn slot() -> (Slot<Reply>, crate::Respond) {
    let s: Slot<Reply> = Arc::default();
    let s2 = s.clone();
    (s, Box::new(move |r| *s2.lock().unwrap() = Some(r)))
}

/// Steps the calm world from `*step` until `s` is answered.
fn answer(sim: &mut Sim, s: &Slot<Reply>, step: &mut usize) -> Reply {
    for _ in 0..200 {
        if let Some(r) = s.lock().unwrap().clone() {
            return r;
        }
        sim.step(*step, false).unwrap();
        *step += 1;
    }
    panic!("no answer after 200 steps");
}

fn hydrate(sim: &mut Sim, node: u64, offset: u32, data: Vec<u8>) -> Slot<Reply> {
    let (s, respond) = slot();
    sim.node(node).unwrap().poller.handle(Event::Hydrate {
        group: GROUP,
        volume: 9,
        chunk: 0,
        offset,
        data: Bytes::from(data),
        respond,
    });
    s
}

#[test]
fn a_hydrate_fills_every_replica_but_never_over_a_write() {
    let _serial = fail::FailScenario::setup();
    let mut sim = Sim::new(0x15);
    let mut step = 0;
    while step < 50 {
        sim.step(step, false).unwrap();
        step += 1;
    }
    let leader = sim.leader().expect("a leader after 50 calm steps");
    let addr = ChunkAddr {
        group: GROUP,
        volume: 9,
        chunk: 0,
    };
    // The manager links the restored chunk to its backup before anything writes it (a
    // hydrate of a chunk not linked to it does nothing).
    let (ls, respond) = slot();
    sim.node(leader).unwrap().poller.handle(Event::GroupOps {
        group: GROUP,
        ops: vec![GroupOp::Link {
            volume_id: 9,
            chunk: 0,
            parent_volume: RESTORED_PARENT,
            parent_seq: 1,
        }],
        respond,
    });
    let got = answer(&mut sim, &ls, &mut step);
    assert!(matches!(got, Reply::Ok(_)), "the link: {got:?}");
    // A client's write of block 1 before the fill.
    let mut w = Request::write(addr, 4096, Bytes::from(vec![0xee; 4096]));
    w.id = 1 << 100;
    let (ws, respond) = slot();
    sim.node(leader)
        .unwrap()
        .poller
        .handle(Event::Request(w, respond, Instant::now()));
    let got = answer(&mut sim, &ws, &mut step);
    assert!(matches!(got, Reply::Ok(_)), "the write: {got:?}");

    let backup: Vec<u8> = (0..4u8).flat_map(|i| vec![i + 1; 4096]).collect();
    let h = hydrate(&mut sim, leader, 0, backup.clone());
    let got = answer(&mut sim, &h, &mut step);
    assert!(matches!(got, Reply::Ok(_)), "the hydrate: {got:?}");

    let follower = (1..=3).find(|&id| id != leader).unwrap();
    let off_leader = hydrate(&mut sim, follower, 0, backup.clone());
    let got = answer(&mut sim, &off_leader, &mut step);
    assert!(matches!(got, Reply::NotLeader { .. }), "{got:?}");
    for (offset, len) in [
        (1, 4096),
        (0, 4095),
        (0, (4 << 20) + 4096),
        (u32::MAX - 4095, 8192),
    ] {
        let bad = hydrate(&mut sim, leader, offset, vec![1; len]);
        let got = answer(&mut sim, &bad, &mut step);
        assert!(
            matches!(got, Reply::BadRequest(_)),
            "{offset}+{len}: {got:?}"
        );
    }

    let mut want = backup.clone();
    want[4096..8192].fill(0xee);
    for _ in 0..50 {
        sim.step(step, false).unwrap();
        step += 1;
    }
    for id in 1..=3 {
        let store = sim.stores.stores.lock().unwrap()[&id]
            .existing(GROUP)
            .expect("the group's store");
        let got = store.read(9, 0, 0, 4 * 4096).unwrap();
        assert!(got[..] == want[..], "replica {id} reads other bytes");
    }
}

//! A request held back in a storage node's queue must not land after newer writes.
//!
//! A storage node reads a connection's frames only while the connection's in-flight budget
//! has room; a group that cannot commit holds that budget. A write queued behind it, for
//! another (healthy) group led by the same node, waits in the socket while the client gives
//! up on it, and its client (or the next connection of an NBD client that hung up) writes
//! the block anew. When the stall ends the old frame is read at last: it must be refused
//! (its deadline passed), never proposed after the newer write.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Opts, direct, signal};
use tessera_net::{FrameReader, write_frame};
use tessera_proto::control::{ManagerReply, ManagerRequest};
use tessera_proto::data::{ChunkAddr, MAX_IO, Op, Reply, Request};
use tessera_proto::frame::Frame;

const CHUNK: u64 = 64 << 20;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_queued_behind_a_stalled_group_never_lands_after_newer_writes() {
    // Four nodes: two groups led by one node can have different followers, so stopping
    // one group's followers leaves the other a majority.
    // No reconcile passes: the manager's leader balancing must not move a leadership in
    // the middle of the interleaving.
    // A memory budget of 2 GiB gives each connection the largest share of it, 64 MiB (see
    // `[ingress]`): sixteen writes of MAX_IO fill it, the last one read whole before the
    // connection stops being read, so that X waits in the socket behind it.
    let c = Cluster::start(Opts {
        nodes: 4,
        manager_extra: "reconcile_ms = 3600000\n".into(),
        storage_extra: "[ingress]\nmemory_bytes = 2147483648\n".into(),
        ..Opts::default()
    });
    c.wait_ready(4).await;
    c.create_volume("st", "4GiB", "64MiB");
    let client = c.client().await;
    let vol = client.open("st").await.expect("open");
    let epoch = vol.epoch().expect("attached");
    for chunk in 0..64u64 {
        vol.write(chunk * CHUNK, Bytes::from(vec![1u8; 4096]))
            .await
            .expect("map the chunk");
    }
    let mut group_of = BTreeMap::new();
    for chunk in 0..64u64 {
        let req = ManagerRequest::Route {
            volume_id: vol.info().id,
            chunk,
            allocate: false,
            epoch,
        };
        if let Ok(ManagerReply::Route(Some(r))) = client.call(&req).await {
            group_of.insert(r.group_id, chunk);
        }
    }

    // Two groups with one leader L and different replica sets: G1's followers (A, B) are
    // stopped, G2 keeps L and a node outside G1.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (l, g1, g2, stop) = loop {
        let s = c.status().await.expect("status");
        let groups: Vec<_> = s
            .groups
            .iter()
            .filter(|g| g.leader.is_some() && group_of.contains_key(&g.group_id))
            .collect();
        let members = |g: &tessera_proto::control::GroupStatus| -> BTreeSet<u64> {
            g.replicas.iter().map(|r| r.node_id).collect()
        };
        let pair = groups.iter().find_map(|a| {
            groups
                .iter()
                .find(|b| {
                    a.group_id != b.group_id && a.leader == b.leader && members(a) != members(b)
                })
                .map(|b| (*a, *b))
        });
        // The nodes' own word (a read served from the leader's lease), not the heartbeats'.
        let mut confirmed = None;
        if let Some((a, b)) = pair {
            let leader_addr = &c.nodes[c.node_index(&s, a.leader.expect("leader"))].addr;
            let mut leads = true;
            for g in [a.group_id, b.group_id] {
                let at = ChunkAddr {
                    group: g,
                    volume: vol.info().id,
                    chunk: group_of[&g],
                };
                let read = Request::other(Op::Read, at, 0, 4096);
                leads &= matches!(
                    direct(&c.manager_security(), leader_addr, &read).await,
                    Some(Reply::Ok(_))
                );
            }
            confirmed = leads.then_some((a, b));
        }
        if let Some((a, b)) = confirmed {
            let leader = a.leader.expect("leader");
            let followers: Vec<u64> = members(a).into_iter().filter(|n| *n != leader).collect();
            let idx = |id: u64| c.node_index(&s, id);
            break (
                idx(leader),
                a.group_id,
                b.group_id,
                followers.into_iter().map(idx).collect::<Vec<_>>(),
            );
        }
        assert!(
            Instant::now() < deadline,
            "no two groups with one leader and different members: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let leader_addr = c.nodes[l].addr.clone();
    let addr = |group: u64| ChunkAddr {
        group,
        volume: vol.info().id,
        chunk: group_of[&group],
    };
    let write = |group: u64, id: u128, byte: u8, len: usize, deadline_ms: u64| Request {
        epoch,
        id,
        deadline_ms,
        ..Request::write(addr(group), 0, Bytes::from(vec![byte; len]))
    };

    for &i in &stop {
        signal(c.nodes[i].child.as_ref().expect("running"), "STOP");
    }
    // Connection 1: G1's writes fill the connection's budget (they cannot commit), then
    // the old write X to G2 waits behind them, with a short deadline.
    let s1 = c
        .manager_security()
        .connect(
            &leader_addr,
            tessera_net::Expect::Any,
            Duration::from_secs(5),
        )
        .await
        .expect("connect");
    let (r1, mut w1) = s1.into_split();
    let budget_fillers = 16u64;
    for k in 0..budget_fillers {
        let req = write(
            g1,
            1000 + k as u128,
            0x11,
            MAX_IO as usize,
            unix_ms() + 30_000,
        );
        write_frame(&mut w1, &Frame::new(req.kind(), 1 + k, req.encode()))
            .await
            .expect("send");
    }
    let x = write(g2, 0x58, b'X', 4096, unix_ms() + 300);
    let x_frame = 100;
    write_frame(&mut w1, &Frame::new(x.kind(), x_frame, x.encode()))
        .await
        .expect("send X");
    // The frames' last bytes may still wait in the client's TLS buffer (the node reads no
    // more once its budget is full): pushed out as the node reads again.
    let flushing = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        w1.flush().await.expect("flush");
        w1
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Connection 2: the newer write W to the same block, acknowledged while X waits.
    let newer = write(g2, 0x57, b'W', 4096, unix_ms() + 5_000);
    let s2 = c
        .manager_security()
        .connect(
            &leader_addr,
            tessera_net::Expect::Any,
            Duration::from_secs(5),
        )
        .await
        .expect("connect");
    let (r2, mut w2) = s2.into_split();
    write_frame(&mut w2, &Frame::new(newer.kind(), 1, newer.encode()))
        .await
        .expect("send W");
    let f = tokio::time::timeout(Duration::from_secs(10), FrameReader::new(r2).next())
        .await
        .expect("W answered in time")
        .expect("read")
        .expect("frame");
    assert_eq!(
        Reply::decode(&f.body).expect("reply"),
        Reply::Ok(Bytes::new()),
        "W was not acknowledged while G1 stalled"
    );

    // The stall ends well after X's deadline: G1 answers, the budget frees, X is read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for &i in &stop {
        signal(c.nodes[i].child.as_ref().expect("running"), "CONT");
    }
    let mut reader = FrameReader::new(r1);
    let mut x_reply = None;
    let until = Instant::now() + Duration::from_secs(60);
    while x_reply.is_none() && Instant::now() < until {
        let f = tokio::time::timeout(Duration::from_secs(30), reader.next())
            .await
            .expect("answers after the stall")
            .expect("read")
            .expect("frame");
        if f.request_id == x_frame {
            x_reply = Some(Reply::decode(&f.body).expect("reply"));
        }
    }
    let x_reply = x_reply.expect("X answered");
    drop(flushing.await.expect("flushed"));
    eprintln!("the old write X was answered {x_reply:?}");
    assert!(
        !matches!(x_reply, Reply::Ok(_)),
        "X was applied after its deadline"
    );
    let got = vol.read(group_of[&g2] * CHUNK, 4096).await.expect("read");
    assert!(
        got.iter().all(|&b| b == b'W'),
        "the block reads {:#x}: the old write landed after the newer one",
        got[0]
    );
}

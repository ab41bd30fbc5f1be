//! A storage node's data port under resource exhaustion, with real processes: 5,000
//! connections that never speak (strangers, refused at once past the per-address cap of
//! handshakes), 1,000 idle clients with valid certificates, slow senders (frames of 4 MiB
//! bodies trickled in), and clients that pipeline 1 MiB reads, then fall silent without
//! reading their answers, all at once, with an `[ingress]` memory budget of 256 MiB per
//! node. Every node's resident memory stays under its budget, slow senders and non-readers
//! are cut off, strangers are counted, and a real client's writes and reads are served
//! throughout.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::metrics::counter;
use common::{Cluster, Opts, direct, free_port};
use tessera_proto::control::{ManagerReply, ManagerRequest};
use tessera_proto::data::{ChunkAddr, Op, Reply, Request};
use tessera_proto::frame::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BUDGET: u64 = 256 << 20;
const STRANGERS: usize = 5_000;
const SLOW: usize = 32;
const NON_READERS: usize = 8;
const IDLE: usize = 1_000;

/// A process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("a memory field")
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Raises this process's soft open-file limit towards `n` (the strangers need a
/// descriptor each), within its hard limit.
fn allow_files(n: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct; they affect only this process.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = n.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// Whether `conn`'s peer closed it within `within` (reading and discarding what it sent).
async fn closed<R: tokio::io::AsyncRead + Unpin>(conn: &mut R, within: Duration) -> bool {
    let mut buf = vec![0u8; 1 << 20];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_slow_senders_and_non_readers_leave_a_node_within_its_budget() {
    allow_files(16_384);
    let mut c = Cluster::start(Opts {
        nodes: 0,
        nofile: Some(16_384),
        ..Default::default()
    });
    let mut metrics = Vec::new();
    for i in 0..3 {
        let m = format!("127.0.0.1:{}", free_port());
        c.add_node(
            i,
            &format!(
                "metrics_listen = \"{m}\"\n[ingress]\nmemory_bytes = {BUDGET}\nframe_secs = 3\n"
            ),
        );
        metrics.push(m);
    }
    c.wait_ready(3).await;
    c.create_volume("v", "64MiB", "16MiB");
    let client = c.client().await;
    let vol = client.open("v").await.expect("open v");
    vol.write(0, Bytes::from(vec![0x5a; 1 << 20]))
        .await
        .expect("first write");

    // The leader of chunk 0: the node that serves its reads.
    let route = match client
        .call(&ManagerRequest::Route {
            volume_id: vol.info().id,
            chunk: 0,
            allocate: false,
            epoch: 0,
        })
        .await
        .expect("route")
    {
        ManagerReply::Route(Some(r)) => r,
        other => panic!("no route: {other:?}"),
    };
    let addr = ChunkAddr {
        group: route.group_id,
        volume: vol.info().id,
        chunk: 0,
    };
    let read = Request::other(Op::Read, addr, 0, 1 << 20);
    let mut leader = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader.is_none() && Instant::now() < deadline {
        for (i, n) in c.nodes.iter().enumerate() {
            if matches!(
                direct(&c.manager_security(), &n.addr, &read).await,
                Some(Reply::Ok(_))
            ) {
                leader = Some(i);
            }
        }
    }
    let leader = leader.expect("a leader serving reads");
    let node = c.nodes[leader].addr.clone();
    let pid = c.nodes[leader].child.as_ref().expect("running").id();
    let refused_before = counter(
        &metrics[leader],
        "tessera_storage_refused_connections_total",
    );
    let (rss_before, _) = memory(pid);
    eprintln!(
        "leader node {leader} at {node}: {} MiB resident",
        rss_before >> 20
    );

    // Strangers: connections from 127.0.0.2 that never say a word.
    let mut strangers = Vec::new();
    let target: std::net::SocketAddr = node.parse().expect("an address");
    for _ in 0..STRANGERS {
        let s = tokio::net::TcpSocket::new_v4().expect("socket");
        s.bind("127.0.0.2:0".parse().unwrap()).expect("bind");
        if let Ok(conn) = s.connect(target).await {
            strangers.push(conn);
        }
    }
    assert!(
        strangers.len() > STRANGERS * 9 / 10,
        "{} connected",
        strangers.len()
    );
    // Past the per-address cap of handshakes they are refused at once, long before the
    // handshake deadline (10 s) would drop them.
    let quick = (STRANGERS * 9 / 10) as u64 - 128;
    let waited = Instant::now();
    while counter(
        &metrics[leader],
        "tessera_storage_refused_connections_total",
    ) - refused_before
        < quick
    {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "strangers not refused at once"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Idle clients with valid certificates: connected, then silent.
    let mut idle = Vec::new();
    for _ in 0..IDLE {
        let conn = c
            .security()
            .connect(&node, tessera_net::Expect::Any, Duration::from_secs(10))
            .await;
        idle.push(conn.expect("an idle client connects"));
    }

    // Slow senders: a frame announcing a 4 MiB write body, then a kilobyte a second.
    let big = Request::write(addr, 0, Bytes::from(vec![1u8; 4 << 20]));
    let wire = Frame::new(big.kind(), 1, big.encode()).to_bytes();
    let mut slow = Vec::new();
    for _ in 0..SLOW {
        let conn = c
            .security()
            .connect(&node, tessera_net::Expect::Any, Duration::from_secs(5))
            .await;
        let (r, mut w) = conn.expect("a slow sender connects").into_split();
        let wire = wire.clone();
        let trickle = tokio::spawn(async move {
            let _ = w.write_all(&wire[..64 * 1024 + 28]).await;
            for k in 0..30 {
                let at = 64 * 1024 + 28 + k * 1024;
                if w.write_all(&wire[at..at + 1024]).await.is_err() {
                    return;
                }
                let _ = w.flush().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        slow.push((r, trickle));
    }

    // Non-readers: 1 MiB reads, pipelined, answers never read; sent to every node, as
    // leadership may move while the test runs (a follower's answers are small).
    let mut non_readers = Vec::new();
    let cap = c.capability_frame(vol.info().id, 0).await;
    for k in 0..NON_READERS * 3 {
        let at = c.nodes[k % 3].addr.clone();
        let conn = c
            .security()
            .connect(&at, tessera_net::Expect::Any, Duration::from_secs(5))
            .await;
        let (r, mut w) = conn.expect("a non-reader connects").into_split();
        let frame = Frame::new(read.kind(), 7, read.encode()).to_bytes();
        // A client the manager let read the volume: its capability, 64 reads, then
        // silence: the connection stays open, its answers unread.
        let cap = cap.clone();
        let flood = tokio::spawn(async move {
            if w.write_all(&cap).await.is_err() {
                return;
            }
            for _ in 0..64 {
                if w.write_all(&frame).await.is_err() {
                    return;
                }
            }
            let _ = w.flush().await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
        non_readers.push((k % 3, r, flood));
    }
    let pids: Vec<u32> = c
        .nodes
        .iter()
        .map(|n| n.child.as_ref().expect("running").id())
        .collect();

    // The real client, meanwhile: writes and reads back, each served.
    let mut peak_rss = 0;
    let served_until = Instant::now() + Duration::from_secs(12);
    let mut round = 0u64;
    while Instant::now() < served_until {
        let at = (round % 64) * (64 << 10);
        let data = Bytes::from(vec![round as u8; 64 << 10]);
        vol.write(at, data.clone())
            .await
            .expect("the real client writes");
        assert_eq!(vol.read(at, 64 << 10).await.expect("and reads"), data);
        peak_rss = peak_rss.max(pids.iter().map(|p| memory(*p).0).max().unwrap_or(0));
        round += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(round > 10, "only {round} rounds served");
    for (i, p) in pids.iter().enumerate() {
        let (rss, hwm) = memory(*p);
        eprintln!(
            "node {i}: {} MiB resident, {} MiB at its peak (budget {} MiB); {round} rounds \
             served, sampled peak of all nodes {} MiB",
            rss >> 20,
            hwm >> 20,
            BUDGET >> 20,
            peak_rss >> 20
        );
        assert!(hwm < BUDGET, "node {i}'s peak memory {} MiB", hwm >> 20);
    }

    // Strangers past the per-address cap of handshakes were refused at once, the others
    // at their handshake deadline (10 s): counted.
    let refused = counter(
        &metrics[leader],
        "tessera_storage_refused_connections_total",
    );
    assert!(
        refused - refused_before >= (STRANGERS * 9 / 10) as u64,
        "refused {} of {} strangers",
        refused - refused_before,
        strangers.len()
    );
    // Slow senders and non-readers were cut off.
    for (mut r, t) in slow {
        assert!(
            closed(&mut r, Duration::from_secs(20)).await,
            "a slow sender still served"
        );
        t.abort();
    }
    // The node that served the reads (its answers filled the non-readers' shares) cut
    // every non-reader off; the others' answers were small enough to sit in the sockets.
    // (The flooding halves stay open meanwhile: a closed one would end the connection.)
    let mut checks = tokio::task::JoinSet::new();
    let mut floods = Vec::new();
    for (i, mut r, t) in non_readers {
        floods.push(t);
        checks.spawn(async move { (i, closed(&mut r, Duration::from_secs(5)).await) });
    }
    let mut cut = [true; 3];
    while let Some(done) = checks.join_next().await {
        let (i, closed) = done.expect("a check");
        cut[i] &= closed;
    }
    floods.iter().for_each(|t| t.abort());
    assert!(cut.iter().any(|c| *c), "no node cut its non-readers off");
    drop((strangers, idle));
}

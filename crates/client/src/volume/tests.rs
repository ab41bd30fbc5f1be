//! Unit tests of volume handles: splitting, route pages against a manager played by the
//! test, and writes held back behind abandoned ones against a storage node played by it.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tessera_proto::control::{ControlError, ManagerReply, ManagerRequest};
use tessera_proto::data::{Reply, Request};
use tessera_proto::frame::Kind;

use super::*;

fn vol(size: u64, chunk_size: u64) -> VolumeInfo {
    VolumeInfo {
        seq: 0,
        parent: None,
        snapshots: Vec::new(),
        reclaims: Vec::new(),
        restore: None,
        id: 1,
        name: "v".into(),
        size,
        chunk_size,
        mapped_chunks: 0,
        created_unix: 0,
        attachment: None,
    }
}

fn pieces(size: u64, cs: u64, off: u64, len: u64) -> Result<Vec<(u64, u32, u32, usize)>> {
    // Build a Volume without a live client: only splitting is exercised.
    let inner = VolumeInner {
        client: Client::offline(),
        info: vol(size, cs),
        routes: RwLock::new(HashMap::new()),
        last_page: tokio::sync::Mutex::new(None),
        unpaged: AtomicBool::new(false),
        attachment: None,
        seq: Arc::new(AtomicU64::new(1)),
        snapshot: None,
    };
    let v = Volume {
        inner: Arc::new(inner),
    };
    Ok(v.pieces(off, len)?
        .into_iter()
        .map(|p| (p.chunk, p.offset, p.len, p.at))
        .collect())
}

#[test]
fn splits_at_chunk_boundaries_and_max_io() {
    let mib = 1 << 20;
    assert_eq!(
        pieces(64 * mib, 8 * mib, 0, 4096).unwrap(),
        [(0, 0, 4096, 0)]
    );
    assert_eq!(
        pieces(64 * mib, 8 * mib, 8 * mib - 100, 200).unwrap(),
        [(0, (8 * mib - 100) as u32, 100, 0), (1, 0, 100, 100)]
    );
    let p = pieces(64 * mib, 16 * mib, 0, 10 * mib).unwrap();
    assert_eq!(p.len(), 3);
    assert_eq!(p[2], (0, 8 * mib as u32, 2 * mib as u32, 8 * mib as usize));
    assert!(pieces(64 * mib, 8 * mib, 64 * mib - 1, 2).is_err());
    assert!(pieces(64 * mib, 8 * mib, u64::MAX, 2).is_err());
    assert!(pieces(64 * mib, 8 * mib, 64 * mib, 0).unwrap().is_empty());
}

/// A manager played by the test, holding the routes of `mapped` chunks (group 1 on one
/// node): answers route lookups and records each request's kind. `old`: a manager from
/// before paged lookups, which cannot decode `Routes` or `VolumeGroups`.
async fn fake_manager(mapped: Vec<u64>, old: bool) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tessera_proto::control::RoutePage;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    let route = |chunk| ChunkRoute {
        seq: 0,
        chunk,
        group_id: 1,
        peers: vec![tessera_proto::control::PeerInfo {
            node_id: 1,
            addr: "127.0.0.1:9".into(),
        }],
        leader: Some(1),
    };
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let (log, mapped) = (log.clone(), mapped.clone());
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut frames = tessera_net::FrameReader::new(r);
                while let Ok(Some(f)) = frames.next().await {
                    let req: ManagerRequest = tessera_proto::control::decode(&f.body).unwrap();
                    let kind = format!("{req:?}");
                    let kind = kind.split([' ', '(']).next().unwrap_or("").to_string();
                    log.lock().unwrap().push(kind.clone());
                    let res: std::result::Result<ManagerReply, ControlError> = match req {
                        ManagerRequest::ListVolumes => Ok(ManagerReply::Volumes(vec![])),
                        ManagerRequest::Route { chunk, .. } => Ok(ManagerReply::Route(
                            mapped.contains(&chunk).then(|| route(chunk)),
                        )),
                        _ if old => Err(ControlError::Invalid(format!(
                            "malformed request: unknown variant `{kind}`, expected one of \
                             `RegisterNode`, `Heartbeat`"
                        ))),
                        ManagerRequest::Routes {
                            first_chunk, limit, ..
                        } => {
                            let mut from = mapped.iter().filter(|c| **c >= first_chunk);
                            let routes: Vec<ChunkRoute> = from
                                .by_ref()
                                .take(if limit == 0 { 1024 } else { limit as usize })
                                .map(|c| route(*c))
                                .collect();
                            Ok(ManagerReply::Routes(RoutePage {
                                routes,
                                next: from.next().copied(),
                            }))
                        }
                        other => panic!("unexpected {other:?}"),
                    };
                    let reply = tessera_net::rpc_reply(f.request_id, &res);
                    tessera_net::write_frame(&mut w, &reply).await.unwrap();
                }
            });
        }
    });
    (addr, seen)
}

/// Tasks missing routes of nearby chunks at the same time share page fetches; nothing is
/// looked up chunk by chunk. A page tells an unmapped chunk only to lookups that began
/// before it was asked for (else a chunk mapped in between could read as zeroes), so
/// the tasks that arrived while the first page was on its way share a second one.
#[tokio::test]
async fn concurrent_misses_fetch_one_page_of_routes() {
    let mapped: Vec<u64> = (0..200).filter(|c| c % 3 != 1).collect();
    let (addr, seen) = fake_manager(mapped.clone(), false).await;
    let client = Client::connect(vec![addr]).await.expect("connect");
    let v = Volume::read_only(client, vol(1 << 30, 1 << 20), vec![]);
    let mut tasks = Vec::new();
    for chunk in 0..64u64 {
        let v = v.clone();
        tasks.push(tokio::spawn(async move {
            (chunk, v.route(chunk, false, false).await.expect("route"))
        }));
    }
    for t in tasks {
        let (chunk, r) = t.await.unwrap();
        assert_eq!(r.is_some(), mapped.contains(&chunk), "chunk {chunk}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0], "ListVolumes");
    assert!(
        (2..=3).contains(&seen.len()) && seen[1..].iter().all(|k| k == "Routes"),
        "{seen:?}"
    );
}

/// Against a manager from before paging, the client looks chunks up one by one.
#[tokio::test]
async fn a_manager_without_paged_lookups_is_asked_chunk_by_chunk() {
    let (addr, seen) = fake_manager(vec![3, 5], true).await;
    let client = Client::connect(vec![addr]).await.expect("connect");
    let v = Volume::read_only(client, vol(1 << 30, 1 << 20), vec![]);
    assert!(v.route(3, false, false).await.expect("route").is_some());
    assert!(v.route(4, false, false).await.expect("route").is_none());
    assert!(v.route(5, false, false).await.expect("route").is_some());
    assert!(v.inner.unpaged.load(Ordering::Relaxed));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, ["ListVolumes", "Routes", "Route", "Route", "Route"]);
}

/// A storage node played by the test: records each request with its arrival time (Unix
/// ms), never answers the first, answers every later one Ok.
async fn silent_first_node() -> (String, Arc<std::sync::Mutex<Vec<(u64, Request)>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: Arc<std::sync::Mutex<Vec<(u64, Request)>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut frames = tessera_net::FrameReader::new(r);
        while let Ok(Some(f)) = frames.next().await {
            let req = Request::decode(f.kind, &f.body).unwrap();
            let first = {
                let mut seen = log.lock().unwrap();
                seen.push((
                    tessera_proto::data::Request::deadline_in(Duration::ZERO),
                    req,
                ));
                seen.len() == 1
            };
            if !first {
                let reply = tessera_proto::frame::Frame::new(
                    Kind::Reply,
                    f.request_id,
                    Reply::Ok(Bytes::new()).encode(),
                );
                tessera_net::write_frame(&mut w, &reply).await.unwrap();
            }
        }
    });
    (addr, seen)
}

/// A write the caller stopped waiting for (its NBD client hung up) may still sit in a
/// node's queue until its deadline: the next write to the same chunk is not sent before
/// then (it could overtake it from a new connection), a write to another chunk is.
#[tokio::test]
async fn a_write_after_an_abandoned_one_waits_for_its_deadline() {
    let (addr, seen) = silent_first_node().await;
    let client = Client::offline();
    let cs = 1 << 20;
    let route = |chunk| ChunkRoute {
        seq: 0,
        chunk,
        group_id: 1,
        peers: vec![tessera_proto::control::PeerInfo {
            node_id: 1,
            addr: addr.clone(),
        }],
        leader: Some(1),
    };
    let a = Attachment::share(&client, "v", 1, 7, Duration::from_secs(600));
    let v = Volume::attached(client, vol(4 * cs, cs), vec![route(0), route(1)], a);
    let block = || Bytes::from(vec![0xab; 4096]);

    let x = tokio::spawn({
        let v = v.clone();
        async move { v.write(0, block()).await }
    });
    while seen.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    x.abort();
    let _ = x.await;
    v.write(cs, block()).await.expect("another chunk");
    v.write(0, block()).await.expect("the same chunk, later");

    let seen = seen.lock().unwrap();
    let x_deadline = seen[0].1.deadline_ms;
    assert_eq!(seen[0].1.epoch, 7);
    let (other_at, other) = &seen[1];
    assert_eq!(other.addr.chunk, 1);
    assert!(
        *other_at < x_deadline,
        "a write to another chunk was held back"
    );
    let (same_at, same) = &seen[2];
    assert_eq!(same.addr.chunk, 0);
    assert!(
        *same_at >= x_deadline,
        "sent at {same_at} ms, before the abandoned write's deadline {x_deadline}"
    );
}

/// A storage node played by the test: records every request and answers it with
/// `answer(request, how many came before it)`.
async fn scripted_node(
    answer: fn(&Request, usize) -> Reply,
) -> (String, Arc<std::sync::Mutex<Vec<Request>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: Arc<std::sync::Mutex<Vec<Request>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut frames = tessera_net::FrameReader::new(r);
                while let Ok(Some(f)) = frames.next().await {
                    let req = Request::decode(f.kind, &f.body).unwrap();
                    let reply = {
                        let mut seen = log.lock().unwrap();
                        let reply = answer(&req, seen.len());
                        seen.push(req);
                        reply
                    };
                    let frame =
                        tessera_proto::frame::Frame::new(Kind::Reply, f.request_id, reply.encode());
                    tessera_net::write_frame(&mut w, &frame).await.unwrap();
                }
            });
        }
    });
    (addr, seen)
}

fn route_to(addr: &str, chunk: u64, seq: u64) -> ChunkRoute {
    ChunkRoute {
        seq,
        chunk,
        group_id: 1,
        peers: vec![tessera_proto::control::PeerInfo {
            node_id: 1,
            addr: addr.to_string(),
        }],
        leader: Some(1),
    }
}

/// A snapshot was taken while a write was on its way: the group refuses it with the new
/// sequence, and the client sends it again at once (same id, new sequence, no back-off),
/// the caller never sees an error, and every handle of the volume writes with the new
/// sequence from then on.
#[tokio::test]
async fn a_resequenced_write_is_resent_at_once_with_the_new_sequence() {
    let (addr, seen) = scripted_node(|req, n| match n {
        0 => Reply::Resequence { seq: 5 },
        _ if req.seq < 5 => Reply::Resequence { seq: 5 },
        _ => Reply::Ok(Bytes::new()),
    })
    .await;
    let client = Client::offline();
    let cs = 1 << 20;
    let mut info = vol(4 * cs, cs);
    info.seq = 3;
    let a = Attachment::share(&client, "v", 1, 7, Duration::from_secs(600));
    let v = Volume::attached(
        client.clone(),
        info.clone(),
        vec![route_to(&addr, 0, 0), route_to(&addr, 1, 0)],
        a.clone(),
    );
    let other = Volume::attached(client, info, vec![route_to(&addr, 1, 0)], a);
    assert_eq!(v.seq(), 3);
    let started = std::time::Instant::now();
    v.write(0, Bytes::from(vec![1u8; 4096]))
        .await
        .expect("a resequenced write succeeds");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "backed off: {:?}",
        started.elapsed()
    );
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].seq, seen[1].seq), (3, 5));
        assert_eq!(seen[0].id, seen[1].id, "one id for every attempt");
        assert_ne!(seen[0].id, 0);
    }
    assert_eq!(
        other.seq(),
        5,
        "the sequence is the volume's, not the handle's"
    );
    other.discard(cs, 4096).await.expect("discard");
    assert_eq!(seen.lock().unwrap()[2].seq, 5);
}

/// A node that answers `Resequence` with a sequence no newer than the one sent cannot make
/// the client spin: it is retried like a transient failure, with back-off.
#[tokio::test]
async fn a_resequence_to_an_older_sequence_is_not_adopted() {
    let (addr, seen) = scripted_node(|_, n| match n {
        0..=2 => Reply::Resequence { seq: 2 },
        _ => Reply::Ok(Bytes::new()),
    })
    .await;
    let client = Client::offline();
    let mut info = vol(1 << 20, 1 << 20);
    info.seq = 4;
    let a = Attachment::share(&client, "v", 1, 7, Duration::from_secs(600));
    let v = Volume::attached(client, info, vec![route_to(&addr, 0, 0)], a);
    v.write(0, Bytes::from(vec![1u8; 4096]))
        .await
        .expect("write");
    assert_eq!(v.seq(), 4);
    assert!(seen.lock().unwrap().iter().all(|r| r.seq == 4));
}

/// Routes carry the volume's sequence when the manager answered: a newer one is adopted
/// before the chunk is written (a chunk mapped after a snapshot is in no fenced group).
/// A record from before snapshots (sequence 0) writes with 1.
#[tokio::test]
async fn routes_raise_the_sequence_and_zero_reads_as_one() {
    let (addr, seen) = scripted_node(|_, _| Reply::Ok(Bytes::new())).await;
    let client = Client::offline();
    let a = Attachment::share(&client, "v", 1, 7, Duration::from_secs(600));
    let v = Volume::attached(
        client.clone(),
        vol(1 << 20, 1 << 20),
        vec![route_to(&addr, 0, 0)],
        a,
    );
    assert_eq!(v.seq(), 1);
    v.write(0, Bytes::from(vec![1u8; 512]))
        .await
        .expect("write");
    v.cache(vec![route_to(&addr, 0, 9)]);
    v.write(0, Bytes::from(vec![1u8; 512]))
        .await
        .expect("write");
    let r = Volume::read_only(client, vol(1 << 20, 1 << 20), vec![route_to(&addr, 0, 0)]);
    r.read(0, 512).await.expect("read");
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.iter().map(|r| r.seq).collect::<Vec<_>>(),
        [0, 9, 0],
        "writes carry the volume's sequence (1 travels as its absence, 0), live reads 0"
    );
}

fn snapshot_of(seq: u64, size: u64) -> tessera_proto::control::SnapshotInfo {
    tessera_proto::control::SnapshotInfo {
        volume: "v".into(),
        volume_id: 1,
        name: "s1".into(),
        seq,
        created_unix: 0,
        state: tessera_proto::control::SnapshotState::Ready,
        clones: Vec::new(),
        size,
    }
}

/// A snapshot handle reads as of the snapshot's sequence, within the volume's size when
/// it was taken, and refuses every write.
#[tokio::test]
async fn a_snapshot_reads_as_of_its_sequence_and_never_writes() {
    let (addr, seen) = scripted_node(|req, _| {
        Reply::Ok(match req.op {
            Op::BlockStatus => Bytes::from(vec![2u8; (req.len / 4096) as usize]),
            _ => Bytes::from(vec![7u8; req.len as usize]),
        })
    })
    .await;
    let cs = 1 << 20;
    // The manager knows chunk 0 only: chunk 1 is unmapped.
    let (manager, _) = fake_manager(vec![0], false).await;
    let client = Client::connect(vec![manager]).await.expect("connect");
    let v = Volume::snapshot(
        client,
        vol(4 * cs, cs),
        vec![route_to(&addr, 0, 0)],
        snapshot_of(4, 2 * cs),
    );
    assert_eq!(v.size(), 2 * cs);
    assert_eq!(v.read(100, 10).await.unwrap(), vec![7u8; 10]);
    assert!(matches!(
        v.read(2 * cs, 1).await,
        Err(Error::OutOfRange { .. })
    ));
    for e in [
        v.write(0, Bytes::from_static(b"x")).await,
        v.write_zeroes(0, 4096).await,
        v.discard(0, 4096).await,
    ] {
        let e = e.unwrap_err();
        assert!(
            matches!(&e, Error::ReadOnly(m) if m.contains("v@s1")),
            "{e}"
        );
    }
    // Chunk 0 is mapped (data), chunk 1 is not (a hole, asked of nobody).
    let ext = v.block_status(4000, cs).await.unwrap();
    assert_eq!(
        ext,
        [
            Extent {
                offset: 4000,
                len: cs - 4000,
                state: tessera_proto::data::BlockState::Data
            },
            Extent {
                offset: cs,
                len: 4000,
                state: tessera_proto::data::BlockState::Hole
            },
        ]
    );
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter().all(|r| r.seq == 4),
        "every request as of the snapshot"
    );
    let status: Vec<_> = seen.iter().filter(|r| r.op == Op::BlockStatus).collect();
    assert_eq!(status.len(), 1);
    assert_eq!((status[0].offset, status[0].len), (0, cs as u32));
}

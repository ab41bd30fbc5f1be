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

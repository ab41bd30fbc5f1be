//! The copy against a real source: a data port serving catch-up requests on loopback.

use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_engine::chunk::BLOCK_SIZE;
use tessera_engine::{ChunkStore, ChunkStores};
use tessera_net::FrameReader;
use tessera_proto::control::RecoveryStats;
use tessera_proto::copy::MAX_LIST_PAGE;
use tessera_proto::data::{Op, Reply, Request};
use tessera_proto::frame::{Frame, Kind};
use tessera_raft::{FetchJob, SnapshotFetcher};

use super::copy::copy_replica;
use super::{CopyError, Fetcher, Floor, Throttle};
use crate::catch_up::{CopySources, serve_catch_up};

const GROUP: u64 = 7;
const B: usize = BLOCK_SIZE as usize;

/// A node to copy from: serves the catch-up requests of `chunks` on 127.0.0.1, as the
/// data port does. Returns its address.
async fn serve_copies(chunks: Arc<ChunkStores>) -> String {
    serve_copies_then(chunks, |_| {}).await
}

/// As [`serve_copies`], calling `after` with each request once it is answered.
async fn serve_copies_then(
    chunks: Arc<ChunkStores>,
    after: impl Fn(&Request) + Send + Sync + 'static,
) -> String {
    serve_copies_as(chunks, false, after).await
}

/// As [`serve_copies_then`]; `before_layers`: as a node from before layers serves them
/// (it ignores `Request::seq`: the list in chunks, layer 1 of each).
async fn serve_copies_as(
    chunks: Arc<ChunkStores>,
    before_layers: bool,
    after: impl Fn(&Request) + Send + Sync + 'static,
) -> String {
    let after = Arc::new(after);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let chunks = chunks.clone();
            let after = after.clone();
            tokio::spawn(async move {
                let (r, mut w) = stream.into_split();
                let mut reader = FrameReader::new(r);
                let mut copied = CopySources::default();
                while let Ok(Some(f)) = reader.next().await {
                    // A node from before sequences knows the 64-byte header only, and
                    // refuses a longer body as its decoder did.
                    let old_len = 64
                        + if f.kind == Kind::Write {
                            f.body.len().max(64) - 64
                        } else {
                            0
                        };
                    let req = if before_layers && f.kind != Kind::Write && f.body.len() != old_len {
                        Err(tessera_proto::DecodeError::Invalid("trailing bytes".into()))
                    } else {
                        Request::decode(f.kind, &f.body)
                    };
                    let reply = match &req {
                        Ok(req) => match copied.source(&chunks, req.addr.group) {
                            Some(store) => serve_catch_up(&chunks, &store, req),
                            None => Reply::GroupNotFound,
                        },
                        Err(e) => Reply::BadRequest(e.to_string()),
                    };
                    let (head, data) = reply.encode_parts();
                    let frame = Frame::with_tail(Kind::Reply, f.request_id, head, data);
                    if tessera_net::write_frame(&mut w, &frame).await.is_err() {
                        break;
                    }
                    if let Ok(req) = &req {
                        after(req);
                    }
                }
            });
        }
    });
    addr
}

/// One copy of group `GROUP` from `from_addr` into `store`, as a snapshot would start.
async fn copy(store: &Arc<ChunkStore>, from_addr: &str) -> Result<(), CopyError> {
    copy_in_pages(store, from_addr, MAX_LIST_PAGE).await
}

/// As [`copy`], on a node whose free-space floor is `min_free_bytes`.
async fn copy_above(
    store: &Arc<ChunkStore>,
    from_addr: &str,
    min_free_bytes: u64,
) -> Result<(), CopyError> {
    copy_with(store, from_addr, MAX_LIST_PAGE, min_free_bytes).await
}

/// [`copy`], asking for `list_page` chunks of the list at a time.
async fn copy_in_pages(
    store: &Arc<ChunkStore>,
    from_addr: &str,
    list_page: u32,
) -> Result<(), CopyError> {
    copy_with(store, from_addr, list_page, 0).await
}

/// [`copy`], `list_page` chunks of the list at a time, above a floor of `min_free_bytes`.
async fn copy_with(
    store: &Arc<ChunkStore>,
    from_addr: &str,
    list_page: u32,
    min_free_bytes: u64,
) -> Result<(), CopyError> {
    let floor = Floor {
        dir: std::env::temp_dir(),
        min_free_bytes,
    };
    let job = FetchJob {
        group: GROUP,
        from: 2,
        from_addr: from_addr.to_string(),
        index: 1,
        store: store.clone(),
    };
    let stats = Mutex::new(RecoveryStats::default());
    copy_replica(
        &job,
        &tessera_net::Security::insecure(),
        &Throttle::new(1 << 30),
        &floor,
        &stats,
        &mut 0,
        list_page,
    )
    .await
}

/// After a power loss a block's new checksum may be on disk without its new data. Its
/// checksum then equals the source's, but its bytes do not: the copy must fetch it
/// rather than skip it, and the replica must read back the source's bytes.
#[tokio::test]
async fn a_block_that_fails_its_own_checksum_is_fetched_even_if_checksums_agree() {
    // The copy syncs chunk files: not while a fail point case has one configured.
    let _serial = fail::FailScenario::setup();
    let from_dir = tempfile::tempdir().expect("tempdir");
    let from = Arc::new(ChunkStores::open(from_dir.path()).expect("stores"));
    let source = from.get(GROUP).expect("source store");
    let mut want = vec![0u8; 4 * B];
    want[..B].fill(1);
    want[B..2 * B].fill(2);
    want[3 * B..].fill(4);
    let write_want = |store: &ChunkStore| {
        store.write(1, 0, 0, &want[..2 * B])?;
        store.write(1, 0, 3 * BLOCK_SIZE, &want[3 * B..])
    };
    write_want(&source).expect("source write");
    let addr = serve_copies(from.clone()).await;

    let to_dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChunkStore::open(to_dir.path()).expect("store"));
    write_want(&store).expect("replica write");
    // Block 1: the new checksum reached the disk, the data page did not. Block 2: never
    // written (stored 0) on either side, but bytes landed in the data file.
    let data = std::fs::OpenOptions::new()
        .write(true)
        .open(to_dir.path().join(format!("{:016x}/{:08x}.dat", 1, 0)))
        .expect("open the data file");
    data.write_all_at(&[9u8; B], BLOCK_SIZE)
        .expect("tear block 1");
    data.write_all_at(&[9u8; 100], 2 * BLOCK_SIZE + 7)
        .expect("tear block 2");
    drop(data);
    assert_eq!(
        store.checksums(1, 0, 0, 4).expect("crcs"),
        source.checksums(1, 0, 0, 4).expect("crcs"),
        "the stored checksums agree"
    );

    copy(&store, &addr).await.expect("the copy");
    let got = store.read(1, 0, 0, 4 * BLOCK_SIZE);
    match got {
        Ok(got) => assert!(got[..] == want[..], "the replica holds the source's bytes"),
        Err(e) => panic!("the replica must read back the source's bytes: {e}"),
    }
}

/// A failed fdatasync may have dropped the copied pages: the copy fails, and so does
/// every later attempt (the leader offers the snapshot again, every block now compares
/// equal in the page cache and a retried fdatasync has nothing left to write), rather
/// than declare durable a replica whose data may be lost.
/// Issue 12: a snapshot copy allocates like a client write, so below the node's
/// free-space floor it fails (the leader offers the snapshot again later) instead of
/// filling the disk; with space, the same copy goes through.
#[tokio::test]
async fn a_copy_below_the_free_space_floor_fails_and_writes_nothing() {
    let _serial = fail::FailScenario::setup();
    let from_dir = tempfile::tempdir().expect("tempdir");
    let from = Arc::new(ChunkStores::open(from_dir.path()).expect("stores"));
    from.get(GROUP)
        .expect("source store")
        .write(1, 0, 0, &[5u8; 8 * B])
        .expect("source write");
    let addr = serve_copies(from.clone()).await;
    let to_dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChunkStore::open(to_dir.path()).expect("store"));

    let refused = copy_above(&store, &addr, u64::MAX).await;
    assert!(
        matches!(&refused, Err(CopyError::Failed(m)) if m.contains("below the floor")),
        "got {refused:?}"
    );
    assert_eq!(
        store.chunk_blocks(1, 0).expect("blocks"),
        0,
        "a block was copied"
    );
    copy(&store, &addr)
        .await
        .expect("the copy once space is back");
    let got = store.read(1, 0, 0, 8 * B as u64).expect("read");
    assert!(got.iter().all(|&b| b == 5));
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_failed_sync_fails_the_copy_and_every_retry() {
    let scenario = fail::FailScenario::setup();
    let from_dir = tempfile::tempdir().expect("tempdir");
    let from = Arc::new(ChunkStores::open(from_dir.path()).expect("stores"));
    from.get(GROUP)
        .expect("source store")
        .write(1, 0, 0, &[5u8; 8 * B])
        .expect("source write");
    let addr = serve_copies(from.clone()).await;
    let to_dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChunkStore::open(to_dir.path()).expect("store"));

    fail::cfg("chunk::fdatasync", "return").expect("fail point");
    let failed = copy(&store, &addr).await;
    fail::remove("chunk::fdatasync");
    let retried = copy(&store, &addr).await;
    assert!(
        matches!(retried, Err(CopyError::Fatal(_))),
        "a copy after a failed fdatasync must not succeed, got {retried:?}"
    );
    assert!(matches!(failed, Err(CopyError::Fatal(_))), "got {failed:?}");
    scenario.teardown();
}

/// The source's replica is destroyed after it listed its chunks, and the group hosted
/// there anew, empty: its chunk files are gone, and a missing file reads as zeroes with
/// matching (zero) checksums. The copy must fail (the leader offers a new snapshot)
/// rather than install those zeroes over this replica's data.
#[tokio::test]
async fn a_copy_from_a_replica_destroyed_midway_fails_rather_than_install_zeroes() {
    let _serial = fail::FailScenario::setup();
    let from_dir = tempfile::tempdir().expect("tempdir");
    let from = Arc::new(ChunkStores::open(from_dir.path()).expect("stores"));
    from.get(GROUP)
        .expect("source store")
        .write(1, 0, 0, &[5u8; 4 * B])
        .expect("source write");
    let destroyer = from.clone();
    let addr = serve_copies_then(from.clone(), move |req| {
        if req.op == Op::CatchUpList {
            destroyer.remove(GROUP).expect("destroy the source replica");
            destroyer.get(GROUP).expect("host the group anew");
        }
    })
    .await;
    let to_dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChunkStore::open(to_dir.path()).expect("store"));
    store.write(1, 0, 0, &[3u8; 4 * B]).expect("older data");

    let res = copy(&store, &addr).await;
    assert!(
        matches!(res, Err(CopyError::Failed(_))),
        "a copy whose source was destroyed midway must fail, got {res:?}"
    );
}

/// A replica destroyed while a copy writes into it keeps its files until the fetcher
/// answers (the poller's `remove_after_copy`), then loses them. So the answer must come
/// after the copy's last write: a chunk store does not refuse writes once removed, and a
/// later write would recreate the deleted directories, files of a destroyed replica.
#[tokio::test]
async fn a_copy_answers_after_its_last_write_so_a_destroyed_replica_stays_gone() {
    let _serial = fail::FailScenario::setup();
    let from_dir = tempfile::tempdir().expect("tempdir");
    let from = Arc::new(ChunkStores::open(from_dir.path()).expect("stores"));
    let source = from.get(GROUP).expect("source store");
    for chunk in 0..8 {
        source
            .write(1, chunk, 0, &[6u8; 32 * B])
            .expect("source write");
    }
    let addr = serve_copies(from.clone()).await;
    let to_dir = tempfile::tempdir().expect("tempdir");
    let to = Arc::new(ChunkStores::open(to_dir.path()).expect("stores"));
    let job = FetchJob {
        group: GROUP,
        from: 2,
        from_addr: addr,
        index: 1,
        store: to.get(GROUP).expect("replica store"),
    };
    // 1 MiB at 2 MiB/s: a quarter second past the throttle's burst allowance.
    let fetcher = Fetcher {
        throttle: Arc::new(Throttle::new(2 << 20)),
        stats: Arc::default(),
        list_page: MAX_LIST_PAGE,
        security: tessera_net::Security::insecure(),
        floor: Arc::new(Floor {
            dir: to_dir.path().to_path_buf(),
            min_free_bytes: 0,
        }),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let remover = to.clone();
    fetcher.fetch(
        job,
        Box::new(move |res| {
            // What the poller does for a replica destroyed during the copy.
            let removed = remover.remove(GROUP);
            let _ = tx.send((res, removed));
        }),
    );
    let (res, removed) = rx.await.expect("the fetcher answers");
    res.expect("the copy");
    removed.expect("delete the replica's files");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = to_dir.path().join(format!("{GROUP:016x}"));
    assert!(!dir.exists(), "{} was recreated", dir.display());
}

#[tokio::test]
async fn throttle_paces_to_the_rate() {
    let t = Throttle::new(10 << 20);
    let started = Instant::now();
    for _ in 0..6 {
        t.take(1 << 20).await;
    }
    // 6 MiB at 10 MiB/s, less the quarter-second burst allowance.
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// Blocks the source's layer lacks (checksum 0) are cleared here, without fetching them;
/// blocks it holds, zeroes included, are copied as they are.
#[tokio::test]
async fn blocks_the_source_lacks_are_cleared_and_the_others_copied() {
    let _serial = fail::FailScenario::setup();
    let from_dir = tempfile::tempdir().expect("tempdir");
    let from = Arc::new(ChunkStores::open(from_dir.path()).expect("stores"));
    let source = from.get(GROUP).expect("source store");
    source.write(1, 0, 0, &[7u8; 4 * B]).expect("w");
    source
        .write(1, 0, 2 * BLOCK_SIZE, &[0u8; B])
        .expect("zero data");
    source
        .discard(1, 0, BLOCK_SIZE, BLOCK_SIZE)
        .expect("discard");
    let reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = reads.clone();
    let addr = serve_copies_then(from.clone(), move |req| {
        if req.op == Op::CatchUpRead {
            seen.fetch_add(u64::from(req.len), std::sync::atomic::Ordering::Relaxed);
        }
    })
    .await;
    let to_dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChunkStore::open(to_dir.path()).expect("store"));
    store.write(1, 0, 0, &[3u8; 4 * B]).expect("older data");
    copy(&store, &addr).await.expect("the copy");
    assert_eq!(
        store.checksums(1, 0, 0, 4).expect("crcs"),
        source.checksums(1, 0, 0, 4).expect("crcs"),
    );
    assert_eq!(&store.checksums(1, 0, 1, 1).expect("crc")[..], &[0u8; 4]);
    let got = store.read(1, 0, 0, 4 * BLOCK_SIZE).expect("read");
    assert_eq!(got, source.read(1, 0, 0, 4 * BLOCK_SIZE).expect("read"));
    assert_eq!(
        reads.load(std::sync::atomic::Ordering::Relaxed),
        3 * BLOCK_SIZE,
        "the lacking block is not fetched"
    );
}

/// A chunk list longer than a page is copied page by page: every chunk of the source
/// arrives, and the chunks the source no longer holds are dropped wherever they fall
/// (before, between and after the listed ones, across page boundaries).
#[tokio::test]
async fn a_chunk_list_longer_than_a_page_is_copied_page_by_page() {
    let _serial = fail::FailScenario::setup();
    let from_dir = tempfile::tempdir().expect("tempdir");
    let from = Arc::new(ChunkStores::open(from_dir.path()).expect("stores"));
    let source = from.get(GROUP).expect("source store");
    // Volumes 1 and 3: 23 chunks, every other chunk index.
    let held: Vec<(u64, u64)> = (0..23).map(|i| (1 + 2 * (i / 12), 2 * (i % 12))).collect();
    for &(v, c) in &held {
        source
            .write(v, c, 0, &[(c + v) as u8 + 1; B])
            .expect("source write");
    }
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = requests.clone();
    let addr = serve_copies_then(from.clone(), move |req| {
        if req.op == Op::CatchUpList {
            assert!(req.len <= 5, "asked for {} chunks", req.len);
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .await;

    let to_dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChunkStore::open(to_dir.path()).expect("store"));
    // Stale chunks: before the first, between listed ones, in a volume the source
    // lacks, after the last.
    let stale = [(0, 7), (1, 3), (1, 9), (2, 0), (3, 21), (9, 9)];
    for &(v, c) in &stale {
        store.write(v, c, 0, &[0xee; B]).expect("stale write");
    }
    copy_in_pages(&store, &addr, 5).await.expect("the copy");

    assert_eq!(store.list_chunks().expect("list"), held);
    for &(v, c) in &held {
        let got = store.read(v, c, 0, BLOCK_SIZE).expect("read");
        assert!(got.iter().all(|b| *b == (c + v) as u8 + 1), "chunk {v}/{c}");
    }
    assert_eq!(
        requests.load(std::sync::atomic::Ordering::Relaxed),
        held.len().div_ceil(5),
        "one list request per page"
    );
}

/// A node from before layers lists chunks and serves layer 1 whatever layer is asked:
/// the copy takes its list as layer 1 of each chunk, pages by chunks, and drops what the
/// source does not hold.
#[tokio::test]
async fn a_copy_from_a_node_before_layers_copies_layer_one_page_by_page() {
    let _serial = fail::FailScenario::setup();
    let from_dir = tempfile::tempdir().expect("tempdir");
    let from = Arc::new(ChunkStores::open(from_dir.path()).expect("stores"));
    let source = from.get(GROUP).expect("source store");
    let held: Vec<(u64, u64)> = (0..7).map(|c| (1, 2 * c)).collect();
    for &(v, c) in &held {
        source.write(v, c, 0, &[c as u8 + 1; 2 * B]).expect("write");
    }
    let lists = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = lists.clone();
    let addr = serve_copies_as(from.clone(), true, move |req| {
        if req.op == Op::CatchUpList {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    })
    .await;
    let to_dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(ChunkStore::open(to_dir.path()).expect("store"));
    store.write(1, 1, 0, &[0xee; B]).expect("stale chunk");
    store.write(1, 4, 0, &[0xee; 3 * B]).expect("older data");
    copy_in_pages(&store, &addr, 3).await.expect("the copy");
    assert_eq!(store.list_chunks().expect("list"), held);
    for &(v, c) in &held {
        assert_eq!(
            store.read(v, c, 0, 3 * BLOCK_SIZE).expect("read"),
            source.read(v, c, 0, 3 * BLOCK_SIZE).expect("read"),
            "chunk {v}/{c}"
        );
    }
    assert_eq!(lists.load(std::sync::atomic::Ordering::Relaxed), 3);
}

mod layers;

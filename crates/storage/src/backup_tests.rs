//! Promises of a leader's backup and hydration of a chunk, on one in-process node (a
//! single-voter group, real log and chunk files) and a directory store. The node and
//! store are shared with the lazy fill's tests (`lazy/node_tests.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_engine::{Log, LogOptions};
use tessera_proto::control::{GroupSpec, Hash, PeerInfo, StoreKind};
use tessera_proto::data::RaftBatch;
use tessera_raft::{FetchError, FetchJob, NodeConfig, SnapshotFetcher, Transport};

use super::*;

pub(crate) const GROUP: u64 = 5;
/// A group of two voters whose second node never answers: never a leader.
const LEADERLESS: u64 = 6;
const MIB: u64 = 1 << 20;
/// A chunk of three regions, the last one short.
const CHUNK_BYTES: u64 = 2 * MIB + 64 * 1024;

struct NoPeers;
impl Transport for NoPeers {
    fn send(&self, _: u64, _: RaftBatch) {}
    fn set_peer(&self, _: u64, _: &str) {}
}

struct NoCopies;
impl SnapshotFetcher for NoCopies {
    fn fetch(&self, _: FetchJob, done: Box<dyn FnOnce(Result<(), FetchError>) + Send>) {
        done(Err(FetchError::Retry("no copies in these tests".into())));
    }
}

pub(crate) struct One {
    _tmp: tempfile::TempDir,
    pub(crate) raft: RaftNode,
    pub(crate) chunks: Arc<ChunkStores>,
    stores: StoreCache,
    pub(crate) store_dir: std::path::PathBuf,
    reads_waiting: std::sync::atomic::AtomicUsize,
}

impl One {
    /// The node's data directory.
    pub(crate) fn data_dir(&self) -> &std::path::Path {
        self._tmp.path()
    }

    fn node(&self) -> Node<'_> {
        Node {
            id: 1,
            raft: &self.raft,
            chunks: &self.chunks,
            stores: &self.stores,
            reads_waiting: &self.reads_waiting,
        }
    }

    pub(crate) fn spec(&self) -> StoreSpec {
        StoreSpec {
            name: "local".into(),
            zone: "zone1".into(),
            kind: StoreKind::Dir {
                path: self.store_dir.to_string_lossy().into_owned(),
            },
        }
    }

    /// Applies `op` through the group's log; returns once it is applied (a read is served
    /// only then).
    pub(crate) async fn apply(&self, op: control::GroupOp) {
        let (tx, rx) = oneshot::channel();
        self.raft.apply_ops(
            GROUP,
            vec![op],
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let got = rx.await.expect("an answer");
        assert!(matches!(got, Reply::Ok(_)), "group op: {got:?}");
        self.call(Request::other(Op::Read, addr(1), 0, 4096)).await;
    }

    /// Links chunk 0 of `volume` to backup 9, as a restore does before filling it (a
    /// hydrate fills only a chunk so linked).
    pub(crate) async fn restoring(&self, volume: u64) {
        self.apply(control::GroupOp::Link {
            volume_id: volume,
            chunk: 0,
            parent_volume: control::RESTORED_PARENT,
            parent_seq: 9,
        })
        .await;
    }

    /// Unlinks chunk 0 of `volume`, as the manager does once it is filled: blocks still
    /// unheld read as zeroes.
    async fn filled(&self, volume: u64) {
        self.apply(control::GroupOp::Unlink {
            volume_id: volume,
            chunk: 0,
        })
        .await;
    }

    pub(crate) async fn call(&self, req: Request) -> Reply {
        let (tx, rx) = oneshot::channel();
        self.raft.submit(
            req,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await.expect("an answer")
    }

    async fn write(&self, volume: u64, offset: u64, data: Vec<u8>, seq: u64, id: u128) {
        let mut req = Request::write(addr(volume), offset as u32, Bytes::from(data));
        req.seq = seq;
        req.id = id;
        let got = self.call(req).await;
        assert!(matches!(got, Reply::Ok(_)), "write: {got:?}");
    }

    async fn read(&self, volume: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for r in 0..CHUNK_BYTES.div_ceil(MIB) {
            let len = MIB.min(CHUNK_BYTES - r * MIB);
            let req = Request::other(Op::Read, addr(volume), (r * MIB) as u32, len as u32);
            match self.call(req).await {
                Reply::Ok(d) => out.extend_from_slice(&d),
                other => panic!("read: {other:?}"),
            }
        }
        out
    }

    pub(crate) fn backup(&self, seq: u64, after: u64) -> BackupChunkRequest {
        BackupChunkRequest {
            group_id: GROUP,
            volume_id: 1,
            chunk: 0,
            chunk_bytes: CHUNK_BYTES,
            seq,
            after,
            store: self.spec(),
            window: 2,
            force: false,
        }
    }

    fn hydrate(&self, volume: u64, regions: Vec<RegionRef>) -> HydrateChunkRequest {
        HydrateChunkRequest {
            group_id: GROUP,
            volume_id: volume,
            chunk: 0,
            store: self.spec(),
            regions,
            window: 2,
        }
    }
}

pub(crate) fn addr(volume: u64) -> ChunkAddr {
    ChunkAddr {
        group: GROUP,
        volume,
        chunk: 0,
    }
}

fn peer(node_id: u64) -> PeerInfo {
    PeerInfo {
        node_id,
        addr: format!("127.0.0.1:{}", 1 + node_id),
    }
}

/// One node leading group `GROUP` (and hosting `LEADERLESS`, which it cannot lead).
pub(crate) async fn one_node() -> One {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (log, recovered) = Log::open(&tmp.path().join("log"), LogOptions::default()).expect("log");
    let chunks = Arc::new(ChunkStores::open(&tmp.path().join("groups")).expect("chunks"));
    let mut cfg = NodeConfig::new(1, tmp.path().to_path_buf());
    cfg.tick = Duration::from_millis(10);
    cfg.min_free_bytes = 0;
    let raft = RaftNode::start(
        cfg,
        log,
        recovered,
        chunks.clone(),
        Arc::new(NoPeers),
        Arc::new(NoCopies),
        Arc::new(|_: &tessera_raft::Fatal| {}),
    )
    .expect("raft");
    for (group_id, peers) in [(GROUP, vec![peer(1)]), (LEADERLESS, vec![peer(1), peer(2)])] {
        raft.create_group(GroupSpec {
            group_id,
            peers,
            joining: false,
            min_term: 0,
        });
    }
    let one = One {
        store_dir: tmp.path().join("store"),
        _tmp: tmp,
        raft,
        chunks,
        stores: StoreCache::default(),
        reads_waiting: Default::default(),
    };
    // The manager's check at its start leaves the marker a node looks for.
    Store::open(&one.spec())
        .expect("open")
        .check()
        .await
        .expect("check");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let req = Request::other(Op::Read, addr(1), 0, 4096);
        if matches!(one.call(req).await, Reply::Ok(_)) {
            return one;
        }
        assert!(Instant::now() < deadline, "the node never led its group");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn object_path(one: &One, h: &Hash) -> std::path::PathBuf {
    one.store_dir.join(keys::object(h))
}

fn upload_of(got: Result<StorageReply, ControlError>) -> ChunkUpload {
    match got {
        Ok(StorageReply::BackupChunk(u)) => u,
        other => panic!("backup: {other:?}"),
    }
}

/// Regions 0 and 2 hold data as of sequence 1 (region 1 none); sequence 2 writes a block
/// of region 1. Backed up as of 1 (full), then as of 2 after 1 (incremental).
#[tokio::test]
async fn a_chunk_backs_up_its_regions_and_then_only_the_changed_ones() {
    let one = one_node().await;
    one.write(1, 0, vec![1; 8192], 1, 1).await;
    one.write(1, 2 * MIB + 4096, vec![2; 4096], 1, 2).await;
    let snap1 = one.read(1).await;

    let full = upload_of(backup_chunk(one.node(), one.backup(1, 0)).await);
    let regions: Vec<(u32, bool)> = full
        .regions
        .iter()
        .map(|r| (r.region, r.object.is_some()))
        .collect();
    assert_eq!(regions, [(0, true), (1, false), (2, true)], "{full:?}");
    assert_eq!(full.read_bytes, CHUNK_BYTES);
    assert_eq!((full.uploaded_objects, full.present_objects), (2, 0));
    // Each object is in the store and decodes to the chunk's bytes of its region.
    for r in &full.regions {
        let Some(h) = r.object else { continue };
        let bytes = std::fs::read(object_path(&one, &h)).expect("the object is stored");
        let region = region::decode("local", &h, &bytes).expect("it decodes");
        let mut image = vec![0u8; usize::from(region.blocks) * 4096];
        for (first, data) in region.runs() {
            let at = usize::from(first) * 4096;
            image[at..at + data.len()].copy_from_slice(&data);
        }
        let from = r.region as usize * MIB as usize;
        assert_eq!(
            image[..],
            snap1[from..from + image.len()],
            "region {}",
            r.region
        );
    }
    // Again: the store has every object, nothing is put.
    let again = upload_of(backup_chunk(one.node(), one.backup(1, 0)).await);
    assert_eq!((again.uploaded_objects, again.present_objects), (0, 2));
    assert_eq!(again.regions, full.regions);

    one.write(1, MIB + 8192, vec![3; 4096], 2, 3).await;
    let incremental = upload_of(backup_chunk(one.node(), one.backup(2, 1)).await);
    assert_eq!(incremental.regions.len(), 1, "{incremental:?}");
    assert_eq!(incremental.regions[0].region, 1);
    assert!(incremental.regions[0].object.is_some());
    assert_eq!(incremental.uploaded_objects, 1);

    // Restored into volume 2: region 1 from the incremental backup, the others from the
    // full one; a block written before the fill keeps its bytes.
    let mut regions = full.regions.clone();
    regions[1] = incremental.regions[0];
    one.restoring(2).await;
    one.write(2, 4096, vec![0xee; 4096], 1, 4).await;
    let got = hydrate_chunk(one.node(), one.hydrate(2, regions.clone())).await;
    assert_eq!(got, Ok(StorageReply::Done));
    let got = hydrate_chunk(one.node(), one.hydrate(2, regions.clone())).await;
    assert_eq!(got, Ok(StorageReply::Done), "filling again");
    one.filled(2).await;
    let mut want = one.read(1).await;
    want[4096..8192].fill(0xee);
    assert!(
        one.read(2).await == want,
        "the restored chunk reads other bytes"
    );
    // Filling once unlinked (a late or repeated fill) changes nothing.
    let got = hydrate_chunk(one.node(), one.hydrate(2, regions)).await;
    assert_eq!(got, Ok(StorageReply::Done));
    assert!(one.read(2).await == want);
}

#[tokio::test]
async fn a_corrupt_object_fails_the_fill_and_writes_nothing() {
    let one = one_node().await;
    one.write(1, 0, vec![9; 4 * 4096], 1, 1).await;
    let full = upload_of(backup_chunk(one.node(), one.backup(1, 0)).await);
    let h = full.regions[0].object.expect("region 0 has data");
    let path = object_path(&one, &h);
    let mut bytes = std::fs::read(&path).expect("stored");
    let n = bytes.len();
    bytes[n - 3] ^= 0x55;
    std::fs::write(&path, bytes).expect("corrupt it");
    one.restoring(3).await;
    let got = hydrate_chunk(one.node(), one.hydrate(3, full.regions.clone())).await;
    match got {
        Err(ControlError::Invalid(m)) => {
            assert!(
                m.contains("corrupt") && m.contains(&keys::object(&h)),
                "{m}"
            )
        }
        other => panic!("a corrupt object: {other:?}"),
    }
    let got = hydrate_chunk(one.node(), one.hydrate(3, full.regions.clone())).await;
    assert!(matches!(got, Err(ControlError::Invalid(_))), "{got:?}");
    one.filled(3).await;
    assert!(
        one.read(3).await.iter().all(|&b| b == 0),
        "something was written"
    );
    // A missing object is the store's error: retried by the manager.
    std::fs::remove_file(&path).expect("remove it");
    let got = hydrate_chunk(one.node(), one.hydrate(3, full.regions)).await;
    assert!(matches!(got, Err(ControlError::Unavailable(_))), "{got:?}");
}

#[tokio::test]
async fn only_the_leader_moves_chunks_and_bad_requests_are_refused() {
    let one = one_node().await;
    let mut req = one.backup(1, 0);
    req.group_id = LEADERLESS;
    let got = backup_chunk(one.node(), req).await;
    assert!(matches!(got, Ok(StorageReply::NotLeader { .. })), "{got:?}");
    let mut req = one.hydrate(
        1,
        vec![RegionRef {
            region: 0,
            object: Some(Hash([1; 32])),
        }],
    );
    req.group_id = LEADERLESS;
    let got = hydrate_chunk(one.node(), req).await;
    assert!(matches!(got, Ok(StorageReply::NotLeader { .. })), "{got:?}");
    // A group not hosted here: the manager is told to ask another member.
    let mut req = one.backup(1, 0);
    req.group_id = 99;
    let got = backup_chunk(one.node(), req).await;
    assert_eq!(got, Ok(StorageReply::NotLeader { hint: 0 }));
    let mut req = one.hydrate(1, Vec::new());
    req.group_id = 99;
    let got = hydrate_chunk(one.node(), req).await;
    assert_eq!(got, Ok(StorageReply::NotLeader { hint: 0 }));
    for chunk_bytes in [0, (4 << 30) + 1, MIB + 512] {
        let mut req = one.backup(1, 0);
        req.chunk_bytes = chunk_bytes;
        let got = backup_chunk(one.node(), req).await;
        assert!(
            matches!(got, Err(ControlError::Invalid(_))),
            "{chunk_bytes}: {got:?}"
        );
    }
    let req = one.hydrate(
        1,
        vec![RegionRef {
            region: 4096,
            object: Some(Hash([1; 32])),
        }],
    );
    let got = hydrate_chunk(one.node(), req).await;
    assert!(matches!(got, Err(ControlError::Invalid(_))), "{got:?}");
}

/// The commit index of `GROUP` on the node.
async fn commit_index(one: &One) -> u64 {
    let (tx, rx) = oneshot::channel();
    one.raft.status(Box::new(move |groups| {
        let _ = tx.send(groups);
    }));
    let groups = rx.await.expect("status");
    groups
        .iter()
        .find(|g| g.group_id == GROUP)
        .map(|g| g.commit)
        .expect("the group")
}

/// Every other block of region 0 and region 1 whole, region 2 one block: one entry fills
/// the whole chunk (regions packed up to `MAX_IO`), not one per run of blocks; the blocks
/// the backup does not hold read as zeroes.
#[tokio::test]
async fn a_fill_proposes_whole_regions_packed_into_few_entries() {
    let one = one_node().await;
    for b in (0..256u64).step_by(2) {
        one.write(1, b * 4096, vec![b as u8 | 1; 4096], 1, u128::from(b) + 1)
            .await;
    }
    one.write(1, MIB, vec![7; MIB as usize], 1, 1000).await;
    one.write(1, 2 * MIB + 8192, vec![8; 4096], 1, 1001).await;
    let full = upload_of(backup_chunk(one.node(), one.backup(1, 0)).await);
    assert_eq!(
        full.regions.iter().filter(|r| r.object.is_some()).count(),
        3
    );
    one.restoring(2).await;
    let before = commit_index(&one).await;
    let got = hydrate_chunk(one.node(), one.hydrate(2, full.regions.clone())).await;
    assert_eq!(got, Ok(StorageReply::Done));
    assert_eq!(commit_index(&one).await - before, 1, "entries proposed");
    one.filled(2).await;
    assert!(one.read(2).await == one.read(1).await);
}

/// An incremental backup that reads no region 0 does not count the probe read of it.
#[tokio::test]
async fn the_probe_read_is_counted_only_when_its_region_is_backed_up() {
    let one = one_node().await;
    one.write(1, 0, vec![1; 4096], 1, 1).await;
    one.write(1, 2 * MIB, vec![2; 4096], 2, 2).await;
    let incremental = upload_of(backup_chunk(one.node(), one.backup(2, 1)).await);
    assert_eq!(incremental.regions.len(), 1, "{incremental:?}");
    assert_eq!(incremental.read_bytes, CHUNK_BYTES - 2 * MIB);
}

/// A directory store the manager never checked (no marker: a node's own disk, say) is
/// refused, saying why; once checked, it is used.
#[tokio::test]
async fn a_directory_store_without_the_marker_is_refused() {
    let one = one_node().await;
    one.write(1, 0, vec![1; 4096], 1, 1).await;
    let mut req = one.backup(1, 0);
    let elsewhere = one.store_dir.with_file_name("elsewhere");
    req.store.kind = StoreKind::Dir {
        path: elsewhere.to_string_lossy().into_owned(),
    };
    match backup_chunk(one.node(), req.clone()).await {
        Err(ControlError::Invalid(m)) => assert!(
            m.contains("is not shared with node 1") && m.contains("tessera-store"),
            "{m}"
        ),
        other => panic!("an unshared directory store: {other:?}"),
    }
    assert!(!elsewhere.join("objects").exists(), "nothing is put there");
    Store::open(&req.store)
        .expect("open")
        .check()
        .await
        .expect("check");
    upload_of(backup_chunk(one.node(), req).await);
}

/// A hydration whose manager closed the connection (it gave up) is stopped with it, not
/// left running: here its object is a FIFO no one writes, so it would wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_given_up_on_stops_with_its_connection() {
    use std::sync::atomic::Ordering;
    use tessera_proto::control::StorageRequest;
    use tessera_proto::frame::{Frame, Kind};

    let one = one_node().await;
    let hash = Hash([0xab; 32]);
    let fifo = object_path(&one, &hash);
    std::fs::create_dir_all(fifo.parent().expect("a parent")).expect("dir");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    // Lets the blocked open of the FIFO end, pass or fail (O_NONBLOCK: never waits).
    struct Release(std::path::PathBuf);
    impl Drop for Release {
        fn drop(&mut self) {
            use std::os::unix::fs::OpenOptionsExt;
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(0o4000)
                .open(&self.0);
        }
    }
    let _release = Release(fifo.clone());
    let shared = Arc::new(crate::server::Shared {
        raft: one.raft.clone(),
        node_id: 1,
        capacity: Box::new(|| (0, 0)),
        chunks: one.chunks.clone(),
        recovery: Default::default(),
        descriptors: 0,
        stores: Default::default(),
        lazy: Arc::new(crate::lazy::Lazy::new(
            1,
            Vec::new(),
            Default::default(),
            Default::default(),
        )),
        moving: Default::default(),
        scrub: crate::scrub::Scrubber::detached(one.data_dir()),
        security: Default::default(),
        gate: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let at = listener.local_addr().expect("addr");
    let serving = tokio::spawn(crate::server::accept_loop(listener, shared.clone()));
    let mut conn = tokio::net::TcpStream::connect(at).await.expect("connect");
    let req = StorageRequest::HydrateChunk(one.hydrate(
        1,
        vec![RegionRef {
            region: 0,
            object: Some(hash),
        }],
    ));
    let frame = Frame::new(Kind::Rpc, 1, control::encode(&req));
    tessera_net::write_frame(&mut conn, &frame)
        .await
        .expect("send");
    let until = |n: usize| {
        let shared = shared.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while shared.moving.load(Ordering::Relaxed) != n {
                assert!(Instant::now() < deadline, "never {n} running");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    until(1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(shared.moving.load(Ordering::Relaxed), 1, "still waiting");
    drop(conn);
    until(0).await;
    serving.abort();
}

/// A read answered `Unfilled` (a chunk still restoring) is named, never printed with the
/// megabytes of data it carries.
#[test]
fn an_unfilled_answer_is_named_not_printed() {
    let answer = Reply::Unfilled {
        data: Bytes::from(vec![7u8; 1 << 20]),
        blocks: vec![1, 2],
    };
    match raft_answer(3, "reading chunk 0", Some(answer)) {
        Err(Stop::Failed(ControlError::Unavailable(m))) => {
            assert!(m.contains("chunk not filled from its backup yet"), "{m}");
            assert!(m.len() < 200, "{} bytes of message", m.len());
        }
        Err(Stop::Failed(e)) => panic!("{e}"),
        Err(Stop::NotLeader(_)) => panic!("not leader"),
        Ok(_) => panic!("an unfilled read answered Ok"),
    }
}

/// A pre-warm fetches its whole window only while no client read waits for a store on the
/// node; one object at a time otherwise (never none: the fill goes on).
#[test]
fn a_prewarm_fetches_one_object_at_a_time_while_client_reads_wait() {
    use crate::backup::prewarm_window;
    assert_eq!(prewarm_window(8, 0), 8);
    assert_eq!(prewarm_window(8, 1), 1);
    assert_eq!(prewarm_window(8, 40), 1);
    assert_eq!(prewarm_window(0, 0), 1);
}

//! Scrubbing on three in-process nodes (real logs, chunk files, TCP transport and data
//! ports, one three-voter group): a block rotted on disk (a byte flipped in its chunk file)
//! is found by a pass and repaired from the other two through the log; a leader read that
//! meets a rotten block is repaired and answered with the right bytes; rot on two of three
//! replicas is reported, never "fixed".

use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_engine::{ChunkStores, Log, LogOptions};
use tessera_proto::command::{CmdOp, Command};
use tessera_proto::control::{
    ControlError, GroupSpec, PeerInfo, RegionScanRequest, ScrubAction, ScrubStats, StorageReply,
    StorageRequest,
};
use tessera_proto::data::{ChunkAddr, Op, Reply, Request};
use tessera_proto::frame::Frame;
use tessera_raft::{FetchError, FetchJob, NodeConfig, RaftNode, SnapshotFetcher};
use tokio::sync::{Semaphore, mpsc};

use super::{ScrubConfig, Scrubber};
use crate::server::{Shared, submit_data};
use crate::transport::TcpTransport;

const GROUP: u64 = 7;
const VOLUME: u64 = 1;

struct NoCopies;
impl SnapshotFetcher for NoCopies {
    fn fetch(&self, _: FetchJob, done: Box<dyn FnOnce(Result<(), FetchError>) + Send>) {
        done(Err(FetchError::Retry("no copies in these tests".into())));
    }
}

struct Node {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    shared: Arc<Shared>,
}

fn addr() -> ChunkAddr {
    ChunkAddr {
        group: GROUP,
        volume: VOLUME,
        chunk: 0,
    }
}

/// Three nodes hosting `GROUP`; the index of its leader.
async fn cluster() -> (Vec<Node>, usize) {
    cluster_at(256 << 20).await
}

/// [`cluster`] whose nodes scrub at `bytes_per_sec`.
async fn cluster_at(bytes_per_sec: u64) -> (Vec<Node>, usize) {
    let mut listeners = Vec::new();
    for _ in 0..3 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listeners.push(l);
    }
    let peers: Vec<PeerInfo> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| PeerInfo {
            node_id: i as u64 + 1,
            addr: l.local_addr().expect("addr").to_string(),
        })
        .collect();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_path_buf();
        let (log, rec) = Log::open(&dir.join("log"), LogOptions::default()).expect("log");
        let chunks = Arc::new(ChunkStores::open(&dir.join("groups")).expect("chunks"));
        let transport = Arc::new(TcpTransport::new(
            tokio::runtime::Handle::current(),
            Default::default(),
        ));
        // The default 100 ms tick (elections after a second or more): with a 10 ms tick a
        // leader lost its lease whenever a loaded machine delayed its heartbeats by 100 ms.
        let mut cfg = NodeConfig::new(id, dir.clone());
        cfg.min_free_bytes = 0;
        let raft = RaftNode::start(
            cfg,
            log,
            rec,
            chunks.clone(),
            transport.clone(),
            Arc::new(NoCopies),
            Arc::new(|_: &tessera_raft::Fatal| {}),
        )
        .expect("raft");
        let scrub = Scrubber::new(
            ScrubConfig {
                bytes_per_sec,
                period_secs: 3600,
            },
            &dir,
            transport,
        );
        let shared = Arc::new(Shared {
            raft: raft.clone(),
            node_id: id,
            capacity: Box::new(|| (0, 0)),
            chunks,
            recovery: Default::default(),
            descriptors: 0,
            stores: Default::default(),
            lazy: Arc::new(crate::lazy::Lazy::new(
                id,
                Vec::new(),
                Default::default(),
                Default::default(),
            )),
            moving: Default::default(),
            scrub,
            security: Default::default(),
            gate: Default::default(),
        });
        tokio::spawn(crate::server::accept_loop(listener, shared.clone()));
        raft.create_group(GroupSpec {
            group_id: GROUP,
            peers: peers.clone(),
            joining: false,
            min_term: 0,
        });
        nodes.push(Node {
            _tmp: tmp,
            dir,
            shared,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for (i, n) in nodes.iter().enumerate() {
            let led = super::pass::led_groups(&n.shared).await;
            if led.iter().any(|(g, v)| *g == GROUP && v.len() == 3) {
                return (nodes, i);
            }
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A data request through the data port's path (`submit_data`) of `node`.
async fn call(node: &Node, req: Request) -> Reply {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let permit = Arc::new(Semaphore::new(1))
        .acquire_owned()
        .await
        .expect("permit");
    submit_data(&node.shared, req, 1, tx, permit);
    let (frame, _): (Frame, _) = rx.recv().await.expect("an answer");
    let mut body = frame.body.to_vec();
    body.extend_from_slice(&frame.tail);
    Reply::decode(&Bytes::from(body)).expect("a reply")
}

/// Writes 4 blocks of distinct bytes at block 0 through the leader (following its hint
/// should leadership have moved: `leader` is then the new one); once every replica applied
/// them. The bytes.
async fn write(nodes: &[Node], leader: &mut usize) -> Vec<u8> {
    let data: Vec<u8> = (0..4 * 4096).map(|i| (i / 7 % 251) as u8).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    // A leader just elected may ask for a retry until its first entry commits.
    loop {
        let mut req = Request::write(addr(), 0, Bytes::from(data.clone()));
        req.id = 1;
        let got = call(&nodes[*leader], req).await;
        match got {
            Reply::Ok(_) => break,
            Reply::NotLeader { hint } if (1..=3).contains(&hint) => *leader = hint as usize - 1,
            _ => {}
        }
        assert!(Instant::now() < deadline, "write: {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in nodes {
        loop {
            let store = n.shared.chunks.existing(GROUP);
            let held = store.and_then(|s| s.read_in(VOLUME, 0, 1, 0, data.len() as u64).ok());
            if held.is_some_and(|b| b[..] == data[..]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a replica never applied the write"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    data
}

/// Flips a byte of block `block` in `node`'s chunk file (rot under the engine).
fn rot(node: &Node, block: u64) {
    let path = node
        .dir
        .join("groups")
        .join(format!("{GROUP:016x}"))
        .join(format!("{VOLUME:016x}"))
        .join(format!("{:08x}.dat", 0));
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("chunk file");
    let at = block * 4096 + 100;
    let mut byte = [0u8; 1];
    f.seek(SeekFrom::Start(at)).expect("seek");
    std::io::Read::read_exact(&mut f, &mut byte).expect("read");
    f.seek(SeekFrom::Start(at)).expect("seek");
    f.write_all(&[byte[0] ^ 0x5a]).expect("write");
    f.sync_all().expect("sync");
}

/// Starts a pass on `node` and waits for it to end; its stats then.
async fn pass(node: &Node) -> ScrubStats {
    let before = node.shared.scrub.stats(&node.shared.raft.watches()).pass;
    // Asked before the task runs, the start is taken by the first pass (a node that never
    // scrubbed starts at once anyway): exactly one pass.
    node.shared
        .scrub
        .act(ScrubAction::Start)
        .expect("scrubbing is on");
    let task = tokio::spawn(super::run(node.shared.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = node.shared.scrub.stats(&node.shared.raft.watches());
        if s.pass > before && !s.running && s.last_pass_done_ms >= s.pass_started_ms {
            task.abort();
            assert_eq!(s.pass, before + 1, "{s:?}");
            return s;
        }
        assert!(Instant::now() < deadline, "the pass never ended: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn block_of(node: &Node, block: u64) -> Result<Bytes, tessera_engine::Error> {
    let store = node.shared.chunks.existing(GROUP).expect("hosted");
    store.read_in(VOLUME, 0, 1, block * 4096, 4096)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotten_block_on_a_follower_is_found_and_repaired_by_a_pass() {
    let (nodes, mut leader) = cluster().await;
    let data = write(&nodes, &mut leader).await;
    let follower = (leader + 1) % 3;
    rot(&nodes[follower], 2);
    assert!(block_of(&nodes[follower], 2).is_err(), "the rot is seen");

    let s = pass(&nodes[leader]).await;
    assert_eq!(s.regions, 1, "{s:?}");
    assert_eq!(s.bad_blocks, 1, "{s:?}");
    assert_eq!(s.repaired, 1, "{s:?}");
    assert_eq!(s.unrepairable, 0, "{s:?}");
    assert!(s.blocks_checked >= 4, "{s:?}");
    // Committed on the leader; the follower applies it a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while block_of(&nodes[follower], 2).is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fixed = block_of(&nodes[follower], 2).expect("repaired");
    assert_eq!(fixed[..], data[2 * 4096..3 * 4096]);
    let w = nodes[follower].shared.raft.watches();
    assert_eq!(w.repair_blocks_applied(), 1);
    assert!(super::metrics::REPAIRED_BLOCKS.get() >= 1);
    // The heartbeats carry it: the follower's repaired block, the leader's findings.
    let hb = crate::heartbeat_of(&nodes[follower].shared).await.scrub;
    assert_eq!(hb.repair_blocks_applied, 1);
    let hb = crate::heartbeat_of(&nodes[leader].shared).await.scrub;
    assert_eq!(
        (hb.bad_blocks, hb.repaired, hb.bytes_per_sec),
        (1, 1, 256 << 20)
    );
    // The cursor was saved at the pass's end: a restarted node would know it.
    let (_, saved) = super::cursor::Cursor::load(&nodes[leader].dir);
    assert_eq!((saved.pass, saved.repaired), (s.pass, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_read_of_a_rotten_block_is_repaired_and_answered() {
    let (nodes, mut leader) = cluster().await;
    let data = write(&nodes, &mut leader).await;
    rot(&nodes[leader], 1);
    let got = call(
        &nodes[leader],
        Request::other(Op::Read, addr(), 0, 4 * 4096),
    )
    .await;
    match got {
        Reply::Ok(b) => assert_eq!(b[..], data[..]),
        other => panic!("read: {other:?}"),
    }
    assert_eq!(
        block_of(&nodes[leader], 1).expect("repaired")[..],
        data[4096..8192]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_block_rotten_on_two_replicas_is_reported_not_fixed() {
    let (nodes, mut leader) = cluster().await;
    write(&nodes, &mut leader).await;
    rot(&nodes[leader], 3);
    rot(&nodes[(leader + 1) % 3], 3);
    let s = pass(&nodes[leader]).await;
    assert_eq!(
        (s.bad_blocks, s.unrepairable, s.repaired),
        (2, 1, 0),
        "{s:?}"
    );
    // A read touching it fails, naming it; one beside it is served.
    match call(
        &nodes[leader],
        Request::other(Op::Read, addr(), 3 * 4096, 4096),
    )
    .await
    {
        Reply::Corrupt(m) => assert!(m.contains("still corrupt"), "{m}"),
        other => panic!("read: {other:?}"),
    }
    let got = call(&nodes[leader], Request::other(Op::Read, addr(), 0, 4096)).await;
    assert!(matches!(got, Reply::Ok(_)), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_node_runs_no_pass_until_started_and_remembers_the_pause() {
    let (nodes, mut leader) = cluster().await;
    write(&nodes, &mut leader).await;
    let n = &nodes[leader];
    let paused = crate::server::rpc(
        &n.shared,
        StorageRequest::Scrub {
            action: ScrubAction::Pause,
        },
    )
    .await;
    match paused {
        Ok(StorageReply::Scrub(s)) => assert!(s.paused && !s.running && s.pass == 0, "{s:?}"),
        other => panic!("pause: {other:?}"),
    }
    let task = tokio::spawn(super::run(n.shared.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = n.shared.scrub.stats(&n.shared.raft.watches());
    assert_eq!((s.pass, s.regions), (0, 0), "a paused node scrubbed: {s:?}");
    // A node started again on the same directory is still paused.
    let again = Scrubber::new(
        ScrubConfig::default(),
        &n.dir,
        Arc::new(TcpTransport::new(
            tokio::runtime::Handle::current(),
            Default::default(),
        )),
    );
    assert!(again.stats(&n.shared.raft.watches()).paused);
    task.abort();
    let s = pass(n).await;
    assert!(!s.paused && s.regions == 1, "{s:?}");
}

/// A pass that finds no group led (a follower; a node whose elections have not settled)
/// is not recorded done, which would put the next pass a whole period away: it stays
/// under way, its cursor kept, and looks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pass_that_leads_nothing_stays_under_way() {
    let (nodes, leader) = cluster().await;
    let n = &nodes[(leader + 1) % nodes.len()];
    n.shared.scrub.act(ScrubAction::Start).expect("start");
    let task = tokio::spawn(super::run(n.shared.clone()));
    tokio::time::sleep(Duration::from_millis(600)).await;
    task.abort();
    let s = n.shared.scrub.stats(&n.shared.raft.watches());
    assert_eq!(s.pass, 1, "{s:?}");
    assert!(
        super::plan::in_pass(&s),
        "recorded done leading nothing: {s:?}"
    );
    assert_eq!((s.last_pass_done_ms, s.regions), (0, 0), "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_of_a_group_not_hosted_is_not_found() {
    let (nodes, _) = cluster().await;
    let req = RegionScanRequest {
        group_id: GROUP + 1,
        mark: 1,
        volume: VOLUME,
        chunk: 0,
        first: 0,
        count: 8,
        node_id: 0,
        urgent: false,
    };
    let got = crate::server::rpc(&nodes[0].shared, StorageRequest::ScrubRegion(req)).await;
    assert!(matches!(got, Err(ControlError::NotFound(_))), "{got:?}");
}

/// A scrub mark over blocks `0..count` of the chunk, committed through `leader`; its id.
async fn mark(leader: &Node, count: u64) -> u64 {
    let mark = 0x5eed_0001;
    let cmd = Command {
        op: CmdOp::ScrubMark,
        volume: VOLUME,
        chunk: 0,
        offset: 0,
        len: u32::try_from(count * 4096).expect("small"),
        id: 0,
        epoch: 0,
        seq: 0,
        data: Command::scrub_mark_data(mark),
    };
    let got = super::region::propose(&leader.shared, GROUP, cmd).await;
    assert!(matches!(got, Reply::Ok(_)), "mark: {got:?}");
    mark
}

fn scan_req(mark: u64, count: u64, node_id: u64, urgent: bool) -> RegionScanRequest {
    RegionScanRequest {
        group_id: GROUP,
        mark,
        volume: VOLUME,
        chunk: 0,
        first: 0,
        count,
        node_id,
        urgent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_meant_for_another_node_is_refused() {
    let (nodes, leader) = cluster().await;
    let n = &nodes[leader];
    let other = n.shared.node_id % 3 + 1;
    let got = crate::server::rpc(
        &n.shared,
        StorageRequest::ScrubRegion(scan_req(1, 8, other, false)),
    )
    .await;
    match got {
        Err(ControlError::Invalid(m)) => assert!(m.contains("meant for node"), "{m}"),
        other => panic!("scan: {other:?}"),
    }
}

/// A scan is dated by its own mark: one asking about another region than its mark's is
/// refused, and one whose mark this node does not watch (never applied here, expired, or
/// a restart since) gives up after waiting for it; neither holds a scan slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_of_another_region_or_of_an_unwatched_mark_is_refused() {
    let (nodes, mut leader) = cluster().await;
    write(&nodes, &mut leader).await;
    let n = &nodes[leader];
    let mark = mark(n, 8).await;
    let id = n.shared.node_id;
    let scan = |mark, count| {
        super::replica::serve(&n.shared, scan_req(mark, count, id, true), 20 * SECOND)
    };
    match scan(mark, 16).await {
        Err(ControlError::Invalid(m)) => assert!(m.contains("not the region asked for"), "{m}"),
        other => panic!("a scan of 16 blocks under a mark of 8: {other:?}"),
    }
    match scan(mark ^ 1, 8).await {
        Err(ControlError::Unavailable(m)) => assert!(m.contains("does not watch"), "{m}"),
        other => panic!("a scan of a mark never applied: {other:?}"),
    }
    assert_eq!(
        n.shared.scrub.scans.available_permits(),
        super::replica::MAX_SCANS,
        "a refused scan holds no slot"
    );
    let got = scan(mark, 8).await.expect("the scan its mark covers");
    assert_eq!(got.blocks.len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_is_paced_before_its_reads_for_the_whole_region_unless_urgent() {
    // 1 MiB/s: a region of 1024 blocks costs 4 s of pacing per layer, although only 4 of
    // its blocks are held.
    let (nodes, mut leader) = cluster_at(1 << 20).await;
    write(&nodes, &mut leader).await;
    let n = &nodes[leader];
    let mark = mark(n, 1024).await;
    let id = n.shared.node_id;
    let started = Instant::now();
    let got = super::replica::serve(&n.shared, scan_req(mark, 1024, id, true), SECOND).await;
    let scan = got.expect("an urgent scan is not paced");
    assert_eq!(scan.blocks.len(), 4);
    assert!(started.elapsed() < SECOND);
    let got = super::replica::serve(&n.shared, scan_req(mark, 1024, id, false), SECOND).await;
    match got {
        Err(ControlError::Unavailable(m)) => assert!(m.contains("took over"), "{m}"),
        other => panic!("a paced scan of 4 MiB at 1 MiB/s answered within 1 s: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scans_served_at_once_are_bounded_and_a_waiting_one_gives_up_at_its_deadline() {
    let (nodes, mut leader) = cluster().await;
    write(&nodes, &mut leader).await;
    let n = &nodes[leader];
    let mark = mark(n, 8).await;
    let req = scan_req(mark, 8, n.shared.node_id, true);
    let busy = n
        .shared
        .scrub
        .scans
        .clone()
        .acquire_many_owned(super::replica::MAX_SCANS as u32)
        .await
        .expect("slots");
    let got = super::replica::serve(&n.shared, req, Duration::from_millis(300)).await;
    assert!(matches!(got, Err(ControlError::Unavailable(_))), "{got:?}");
    drop(busy);
    let got = super::replica::serve(&n.shared, req, SECOND).await;
    assert_eq!(got.expect("a slot free").blocks.len(), 4);
}

const SECOND: Duration = Duration::from_secs(1);

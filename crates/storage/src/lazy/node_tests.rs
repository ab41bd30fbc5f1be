//! The lazy fill on one in-process node (a single-voter group, real log and chunk files,
//! the engine's restored chunks) and a directory store, through the data port's request
//! path (`server::submit_data`): reads of unfilled blocks answered with the backup's
//! bytes then hydrated, partial writes filled first, a fetch failing everywhere answered
//! `Unavailable`, client reads counted into a backup's report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_backup::{Store, keys, manifest, region};
use tessera_proto::control::{
    GroupOp, REGION_BYTES, RESTORED_PARENT, RestoreSource, StorageReply, StorageRequest,
};
use tessera_proto::data::{ChunkAddr, Op, Reply, Request};
use tessera_proto::frame::Frame;
use tokio::sync::{Semaphore, mpsc};

use super::blocks::BLOCK;
use super::source::source_of;
use super::tests::region_bytes;
use super::{Hash, Lazy};
use crate::backup::tests::{One, addr, one_node};
use crate::server::{Shared, submit_data};

const VOLUME: u64 = 1;

/// Links chunk `chunk` of the volume to the backup `9` (a restore), through the log.
async fn link(one: &One, chunk: u64) {
    one.apply(GroupOp::Link {
        volume_id: VOLUME,
        chunk,
        parent_volume: RESTORED_PARENT,
        parent_seq: 9,
    })
    .await;
}

/// Puts the backup of a chunk in the node's store: region 0 and 2 hold data (their
/// objects), region 1 none. Its segment's answer, as the managers would give it.
async fn put_backup(one: &One) -> (RestoreSource, [Vec<u8>; 2]) {
    let regions = [region_bytes(0, 256), region_bytes(2, 256)];
    let answer = put_regions(one, 0, &[(0, &regions[0]), (2, &regions[1])]).await;
    (answer, regions)
}

/// Puts a backup of chunk `chunk` holding `regions` (each its bytes, possibly short) in
/// the node's store; its segment's answer.
async fn put_regions(one: &One, chunk: u64, regions: &[(u32, &Vec<u8>)]) -> RestoreSource {
    let store = Store::open(&one.spec()).expect("open");
    let mut named = Vec::new();
    for &(r, bytes) in regions {
        let enc = region::encode(bytes).expect("non-zero");
        store
            .put(&keys::object(&enc.hash), enc.bytes)
            .await
            .expect("put");
        named.push((r, enc.hash));
    }
    let (segment, bytes) = manifest::Segment {
        format: manifest::FORMAT,
        chunk,
        regions: named,
    }
    .encode();
    store
        .put(&keys::segment(&segment), bytes)
        .await
        .expect("put");
    RestoreSource {
        backup: 9,
        segment: Some(segment),
        stores: vec![one.spec()],
    }
}

fn shared_of(one: &One) -> Arc<Shared> {
    Arc::new(Shared {
        raft: one.raft.clone(),
        node_id: 1,
        capacity: Box::new(|| (0, 0)),
        chunks: one.chunks.clone(),
        recovery: Default::default(),
        descriptors: 0,
        stores: Default::default(),
        lazy: Arc::new(Lazy::new(
            1,
            Vec::new(),
            Default::default(),
            Default::default(),
        )),
        moving: Default::default(),
        scrub: crate::scrub::Scrubber::detached(one.data_dir()),
        security: Default::default(),
        gate: Default::default(),
    })
}

/// Caches `answer` as the source of `chunk` (no manager in these tests).
async fn seed(lazy: &Arc<Lazy>, chunk: u64, answer: RestoreSource) {
    let stores = lazy.stores.clone();
    lazy.sources
        .get(VOLUME, chunk, move || async move {
            source_of(&stores, 1, chunk, answer).await
        })
        .await
        .expect("source");
}

/// A request through the data port's path, as a client's.
async fn submit(shared: &Arc<Shared>, req: Request) -> Reply {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let permit = Arc::new(Semaphore::new(1))
        .acquire_owned()
        .await
        .expect("permit");
    submit_data(shared, req, 1, tx, permit);
    let (frame, _): (Frame, _) = rx.recv().await.expect("an answer");
    let mut body = frame.body.to_vec();
    body.extend_from_slice(&frame.tail);
    Reply::decode(&Bytes::from(body)).expect("a reply")
}

fn chunk_addr(chunk: u64) -> ChunkAddr {
    ChunkAddr {
        chunk,
        ..addr(VOLUME)
    }
}

fn read_req(chunk: u64, offset: u64, len: u64) -> Request {
    Request::other(Op::Read, chunk_addr(chunk), offset as u32, len as u32)
}

/// Waits until the node's own read path (no lazy fill) serves the range: filled.
async fn filled(one: &One, chunk: u64, offset: u64, len: u64) -> Bytes {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match one.call(read_req(chunk, offset, len)).await {
            Reply::Ok(d) => return d,
            Reply::Unfilled { .. } => {}
            other => panic!("read: {other:?}"),
        }
        assert!(Instant::now() < deadline, "never hydrated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn block(v: &[u8], i: u64) -> &[u8] {
    &v[(i * BLOCK) as usize..((i + 1) * BLOCK) as usize]
}

/// A read over unfilled blocks answers the backup's bytes (a block the client wrote since
/// the restore its own), counts in the access record, and the region is then hydrated:
/// the node's own read path serves it.
#[tokio::test]
async fn a_read_of_unfilled_blocks_answers_the_backups_bytes_then_hydrates() {
    let one = one_node().await;
    let (answer, regions) = put_backup(&one).await;
    let shared = shared_of(&one);
    seed(&shared.lazy, 0, answer).await;
    link(&one, 0).await;
    let mut w = Request::write(chunk_addr(0), BLOCK as u32, Bytes::from(vec![0xAB; 4096]));
    w.id = 1;
    assert!(matches!(submit(&shared, w).await, Reply::Ok(_)));

    let got = match submit(&shared, read_req(0, 0, 4 * BLOCK)).await {
        Reply::Ok(d) => d,
        other => panic!("read: {other:?}"),
    };
    assert_eq!(&got[..BLOCK as usize], block(&regions[0], 0));
    assert!(
        block(&got, 1).iter().all(|&b| b == 0xAB),
        "the client's write lost"
    );
    assert_eq!(block(&got, 2), block(&regions[0], 2));
    assert_eq!(shared.lazy.reads(VOLUME, 0), 1);

    let region0 = filled(&one, 0, 0, REGION_BYTES).await;
    assert_eq!(block(&region0, 255), block(&regions[0], 255));
    assert!(
        block(&region0, 1).iter().all(|&b| b == 0xAB),
        "hydrated over a write"
    );
    // Region 1 has no object: its blocks read as zeroes, with nothing fetched.
    let got = match submit(&shared, read_req(0, REGION_BYTES, 2 * BLOCK)).await {
        Reply::Ok(d) => d,
        other => panic!("read of a zero region: {other:?}"),
    };
    assert!(got.iter().all(|&b| b == 0));
}

/// A partial write over an unfilled block (of a region with an object, and of one
/// without) completes: the block is filled first, and keeps the backup's other bytes.
#[tokio::test]
async fn a_partial_write_over_unfilled_blocks_fills_them_first() {
    let one = one_node().await;
    let (answer, regions) = put_backup(&one).await;
    let shared = shared_of(&one);
    seed(&shared.lazy, 0, answer).await;
    link(&one, 0).await;
    for (id, at) in [
        (1u128, 2 * REGION_BYTES + BLOCK + 100),
        (2, REGION_BYTES + 10),
    ] {
        let mut w = Request::write(chunk_addr(0), at as u32, Bytes::from(vec![0xCD; 512]));
        w.id = id;
        assert!(Lazy::needs_fill(&w));
        let got = tokio::time::timeout(Duration::from_secs(10), submit(&shared, w))
            .await
            .expect("the write never completed");
        assert!(
            matches!(got, Reply::Ok(_)),
            "partial write at {at}: {got:?}"
        );
        let b = at / BLOCK;
        let data = filled(&one, 0, b * BLOCK, BLOCK).await;
        let inner = (at % BLOCK) as usize;
        let mut want = if b / 256 == 2 {
            block(&regions[1], b % 256).to_vec()
        } else {
            vec![0u8; BLOCK as usize]
        };
        want[inner..inner + 512].fill(0xCD);
        assert!(data[..] == want[..], "block {b} after a partial write");
    }
    // Any partial write is probed (a Link may be committed and not applied here yet); a
    // whole-block one never.
    let w = Request::write(chunk_addr(5), 100, Bytes::from(vec![1; 512]));
    assert!(Lazy::needs_fill(&w));
    let w = Request::write(chunk_addr(5), 4096, Bytes::from(vec![1; 4096]));
    assert!(!Lazy::needs_fill(&w));
}

/// A region whose object no store serves fails the read `Unavailable`, naming the
/// region, the chunk and the store; nothing is served.
#[tokio::test]
async fn a_read_whose_region_no_store_serves_is_unavailable() {
    let one = one_node().await;
    let (mut answer, _) = put_backup(&one).await;
    let (missing, bytes) = manifest::Segment {
        format: manifest::FORMAT,
        chunk: 1,
        regions: vec![(0, Hash([7; 32]))],
    }
    .encode();
    Store::open(&one.spec())
        .expect("open")
        .put(&keys::segment(&missing), bytes)
        .await
        .expect("put");
    answer.segment = Some(missing);
    let shared = shared_of(&one);
    seed(&shared.lazy, 1, answer).await;
    link(&one, 1).await;
    match submit(&shared, read_req(1, 0, BLOCK)).await {
        Reply::Unavailable(m) => assert!(
            m.contains("restore: fetching region 0 of chunk 1 from store local"),
            "{m}"
        ),
        other => panic!("read of a region no store serves: {other:?}"),
    }
}

/// The access record: the client reads a node served of a chunk are what its backup
/// reports (`ChunkUpload::reads`), for a restore's pre-warm order; other chunks' reads
/// are not counted in.
#[tokio::test]
async fn a_backup_reports_the_client_reads_of_its_chunk() {
    let one = one_node().await;
    let shared = shared_of(&one);
    let mut w = Request::write(chunk_addr(0), 0, Bytes::from(vec![3; 4096]));
    w.id = 1;
    assert!(matches!(submit(&shared, w).await, Reply::Ok(_)));
    for chunk in [0, 0, 0, 1] {
        assert!(matches!(
            submit(&shared, read_req(chunk, 0, BLOCK)).await,
            Reply::Ok(_)
        ));
    }
    let req = StorageRequest::BackupChunk(one.backup(1, 0));
    match crate::server::rpc(&shared, req).await {
        Ok(StorageReply::BackupChunk(u)) => assert_eq!(u.reads, 3, "{u:?}"),
        other => panic!("backup: {other:?}"),
    }
}

/// A probe (the group's read of a partial block) answered anything but `Ok` or `Unfilled`
/// (a leader that has not committed yet, one that lost its lead) is the write's answer,
/// with nothing proposed: proposed, the write could be acknowledged at commit and stall
/// every replica at apply. A block still unfilled after its hydrate committed is
/// `Unavailable`, and a request past its deadline `Expired`, nothing proposed either.
#[tokio::test]
async fn a_partial_write_whose_probe_fails_is_not_proposed() {
    let one = one_node().await;
    let (answer, _) = put_backup(&one).await;
    let shared = shared_of(&one);
    seed(&shared.lazy, 0, answer).await;
    link(&one, 0).await;
    let lazy = &shared.lazy;
    let w = Request::write(chunk_addr(0), 100, Bytes::from(vec![0xEE; 512]));
    let cases = [
        Reply::NotLeader { hint: 2 },
        Reply::Unavailable("group 1 has a new leader that has not committed yet".into()),
        Reply::GroupNotFound,
    ];
    for answer in cases {
        let want = format!("{answer:?}");
        let got = lazy
            .prepare_write_probed(&one.raft, &w, |_, _| {
                let answer = answer.clone();
                async move { answer }
            })
            .await;
        assert_eq!(format!("{got:?}"), format!("Err({want})"), "probe {want}");
    }
    // Unfilled even after the fill committed (the stand-in never sees it filled).
    let unfilled = || async {
        Reply::Unfilled {
            data: Bytes::new(),
            blocks: vec![0],
        }
    };
    match lazy
        .prepare_write_probed(&one.raft, &w, |_, _| unfilled())
        .await
    {
        Err(Reply::Unavailable(m)) => assert!(m.contains("still unfilled"), "{m}"),
        other => panic!("a block still unfilled: {other:?}"),
    }
    let mut late = w.clone();
    late.deadline_ms = 1;
    let got = lazy.prepare_write(&one.raft, &late).await;
    assert!(matches!(got, Err(Reply::Expired(_))), "{got:?}");
    // Nothing was written (block 0 was filled, by the fill of the one still unfilled).
    let data = match one.call(read_req(0, 0, BLOCK)).await {
        Reply::Ok(data) | Reply::Unfilled { data, .. } => data,
        other => panic!("block 0 after refused writes: {other:?}"),
    };
    assert!(!data.contains(&0xEE), "a refused write was applied");
}

/// The last region of a backup's last chunk may be short (a volume whose size is not a
/// multiple of the chunk size, grown since): a partial write past its decoded end
/// completes (the hydrate padded with zeroes covers the block), and so do reads there,
/// whose hydrate fills the blocks too.
#[tokio::test]
async fn blocks_past_a_short_regions_end_are_filled_as_zeroes() {
    let one = one_node().await;
    let short = region_bytes(1, 2);
    let answer = put_regions(&one, 0, &[(1, &short)]).await;
    let shared = shared_of(&one);
    seed(&shared.lazy, 0, answer).await;
    link(&one, 0).await;
    // Block 5 of region 1: past the region's 2 blocks.
    let at = REGION_BYTES + 5 * BLOCK + 100;
    let mut w = Request::write(chunk_addr(0), at as u32, Bytes::from(vec![0xCD; 512]));
    w.id = 1;
    let got = tokio::time::timeout(Duration::from_secs(10), submit(&shared, w))
        .await
        .expect("the write never completed");
    assert!(matches!(got, Reply::Ok(_)), "partial write: {got:?}");
    let data = filled(&one, 0, REGION_BYTES + 5 * BLOCK, BLOCK).await;
    let mut want = vec![0u8; BLOCK as usize];
    want[100..612].fill(0xCD);
    assert!(
        data[..] == want[..],
        "the block past the short region's end"
    );
    assert_eq!(
        &filled(&one, 0, REGION_BYTES, 2 * BLOCK).await[..],
        &short[..]
    );

    // A read past the end of the short region of another chunk: zeroes, then hydrated.
    let answer = put_regions(&one, 1, &[(1, &short)]).await;
    seed(&shared.lazy, 1, answer).await;
    link(&one, 1).await;
    let got = match submit(&shared, read_req(1, REGION_BYTES + BLOCK, 4 * BLOCK)).await {
        Reply::Ok(d) => d,
        other => panic!("read: {other:?}"),
    };
    assert_eq!(&got[..BLOCK as usize], block(&short, 1));
    assert!(got[BLOCK as usize..].iter().all(|&b| b == 0));
    let data = filled(&one, 1, REGION_BYTES + 3 * BLOCK, BLOCK).await;
    assert!(data.iter().all(|&b| b == 0));
}

/// An apply stalled on unfilled blocks (the Raft node's hook): the node fills them
/// outside the log, straight into the group's replica, from the backup's regions (zeroes
/// for a region without an object, and past a short region's end); blocks the client
/// wrote keep their data. The filled blocks are dirty in a scrub watch of the chunk.
#[tokio::test]
async fn a_stalled_applys_blocks_are_filled_outside_the_log() {
    let one = one_node().await;
    let (answer, regions) = put_backup(&one).await;
    let shared = shared_of(&one);
    seed(&shared.lazy, 0, answer).await;
    link(&one, 0).await;
    let mut w = Request::write(
        chunk_addr(0),
        (3 * BLOCK) as u32,
        Bytes::from(vec![0xAB; 4096]),
    );
    w.id = 1;
    assert!(matches!(submit(&shared, w).await, Reply::Ok(_)));
    let group = chunk_addr(0).group;
    let watches = one.raft.watches();
    let mark = scrub_mark(&one, group, 1024).await;
    shared
        .lazy
        .fill_stalled(
            (one.chunks.clone(), watches.clone()),
            group,
            VOLUME,
            0,
            vec![2, 3, 300, 513],
        )
        .await;
    let Some(tessera_raft::scrub::DirtySince::Blocks(dirty)) = watches.dirty(group, mark) else {
        panic!("the mark's watch is gone");
    };
    for b in [2, 3, 300, 513] {
        assert!(
            dirty.contains(&b),
            "filled block {b} is not dirty: {dirty:?}"
        );
    }
    assert!(!dirty.contains(&301), "block 301 was not filled");
    let one = &one;
    let read = |at: u64| async move {
        match one.call(read_req(0, at * BLOCK, BLOCK)).await {
            Reply::Ok(d) => d,
            other => panic!("block {at} after the fill: {other:?}"),
        }
    };
    assert_eq!(&read(2).await[..], block(&regions[0], 2));
    assert!(read(3).await.iter().all(|&b| b == 0xAB), "the write lost");
    assert!(read(300).await.iter().all(|&b| b == 0));
    assert_eq!(&read(513).await[..], block(&regions[1], 1));
    // Blocks not named and in no region fetched stay unfilled.
    assert!(matches!(
        one.call(read_req(0, 301 * BLOCK, BLOCK)).await,
        Reply::Unfilled { .. }
    ));
}

/// A scrub mark over the first `blocks` blocks of chunk 0, committed and applied (watched).
async fn scrub_mark(one: &One, group: u64, blocks: u64) -> u64 {
    use tessera_proto::command::{CmdOp, Command};
    let mark = 77;
    let cmd = Command {
        op: CmdOp::ScrubMark,
        volume: VOLUME,
        chunk: 0,
        offset: 0,
        len: (blocks * BLOCK) as u32,
        id: 0,
        epoch: 0,
        seq: 0,
        data: Command::scrub_mark_data(mark),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    one.raft.propose_scrub(
        group,
        cmd,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    let committed = rx.await.expect("an answer");
    assert!(matches!(committed, Reply::Ok(_)), "mark: {committed:?}");
    let watches = one.raft.watches();
    let until = Instant::now() + Duration::from_secs(10);
    while watches.watch(group, mark).is_none() {
        assert!(Instant::now() < until, "the mark was never applied");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        watches.dirty(group, mark),
        Some(tessera_raft::scrub::DirtySince::Blocks(vec![]))
    );
    mark
}

/// End to end through the Raft node's hook (installed as at node start): a partial write
/// proposed without its fill (as one acknowledged at commit before a Link applied here
/// would be) stalls the apply, and the node fills the block outside the log: the write
/// applies over the backup's bytes.
#[tokio::test]
async fn a_stalled_apply_resumes_once_the_hook_filled_its_blocks() {
    let one = one_node().await;
    let (answer, regions) = put_backup(&one).await;
    let shared = shared_of(&one);
    seed(&shared.lazy, 0, answer).await;
    shared.lazy.on_unfilled(&one.raft, one.chunks.clone());
    link(&one, 0).await;
    let at = 2 * REGION_BYTES + 7 * BLOCK + 100;
    let mut w = Request::write(chunk_addr(0), at as u32, Bytes::from(vec![0xCD; 512]));
    w.id = 1;
    // Straight to the Raft node: no probe, no fill.
    let got = tokio::time::timeout(Duration::from_secs(10), one.call(w))
        .await
        .expect("the stalled apply never resumed");
    assert!(matches!(got, Reply::Ok(_)), "{got:?}");
    // Acknowledged at commit: reads answer Unavailable until the apply resumed.
    let deadline = Instant::now() + Duration::from_secs(10);
    let data = loop {
        match one.call(read_req(0, at - 100, BLOCK)).await {
            Reply::Ok(d) => break d,
            Reply::Unavailable(m) => assert!(Instant::now() < deadline, "still stalled: {m}"),
            other => panic!("read: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut want = block(&regions[1], 7).to_vec();
    want[100..612].fill(0xCD);
    assert!(data[..] == want[..], "the block after the stalled write");
}

/// A read's hydrate is not proposed again when the same entry committed lately (reads
/// served between its commit and its apply), nor past the node's budget of reads'
/// hydrates in the air; the read is answered all the same.
#[tokio::test]
async fn reads_hydrates_are_skipped_when_committed_lately_or_past_their_budget() {
    let one = one_node().await;
    let (answer, regions) = put_backup(&one).await;
    let shared = shared_of(&one);
    seed(&shared.lazy, 0, answer).await;
    link(&one, 0).await;
    let lazy = &shared.lazy;
    lazy.recent.insert((VOLUME, 0, 0));
    lazy.read_hydrates
        .forget_permits(super::budget::READ_HYDRATE_KIB);
    let read = |at: u64| {
        let shared = shared.clone();
        async move {
            match submit(&shared, read_req(0, at * BLOCK, BLOCK)).await {
                Reply::Ok(d) => d,
                other => panic!("read of block {at}: {other:?}"),
            }
        }
    };
    let one = &one;
    let unfilled = |at: u64| async move {
        matches!(
            one.call(read_req(0, at * BLOCK, BLOCK)).await,
            Reply::Unfilled { .. }
        )
    };
    assert_eq!(&read(0).await[..], block(&regions[0], 0));
    assert_eq!(&read(512).await[..], block(&regions[1], 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(unfilled(0).await, "hydrated though committed lately");
    assert!(unfilled(512).await, "hydrated past the budget");
    lazy.read_hydrates
        .add_permits(super::budget::READ_HYDRATE_KIB);
    assert_eq!(&read(512).await[..], block(&regions[1], 0));
    assert_eq!(
        &filled(one, 0, 512 * BLOCK, BLOCK).await[..],
        block(&regions[1], 0)
    );
    assert_eq!(&read(0).await[..], block(&regions[0], 0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(unfilled(0).await, "hydrated though committed lately");
}

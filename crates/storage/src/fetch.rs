//! Copying a replica's chunk data from another node (the receiving half of a snapshot).
//!
//! Owns: the node's recovery throttle and its recovery counters. A copy compares block
//! checksums chunk by chunk and fetches only the blocks that differ, so a replica that was
//! away for a while moves what changed, and a brand-new one moves everything once. A block
//! is skipped only if its local bytes also match its local checksum: after a power loss the
//! new checksum may be on disk without the new data.
//!
//! Must never: block the node's runtime on disk I/O (writes and syncs run on the blocking
//! pool), or report a copy done before its data is durable. A failed sync of the copied data
//! is [`CopyError::Fatal`]; the chunk store keeps failing every later sync, so no retry of the
//! copy can report that data durable either. Nor may a copy allocate below the node's
//! free-space floor (where client writes are refused too): it fails, to be retried, rather
//! than fill the disk under the log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_engine::ChunkStore;
use tessera_engine::chunk::BLOCK_SIZE;
use tessera_metrics::Lazy;
use tessera_net::FrameReader;
use tessera_proto::control::RecoveryStats;
use tessera_proto::copy::ChunkListPage;
use tessera_proto::data::{ChunkAddr, Op, Reply, Request};
use tessera_proto::frame::{Frame, Kind};
use tessera_raft::{FetchError, FetchJob, SnapshotFetcher};
use tokio::net::tcp::OwnedWriteHalf;

static FETCHED: Lazy = Lazy::new(
    "tessera_recovery_fetch_seconds",
    "One piece (up to 1 MiB) of chunk data copied from a peer to rebuild a replica",
);

/// Blocks fetched with one request.
const RUN_BLOCKS: u64 = 256;
/// Checksums asked for with one request.
const CRC_BLOCKS: u64 = 64 * 1024;

/// Paces recovery traffic: at most `rate` bytes a second into this node, so rebuilding
/// replicas leaves the disk to client I/O.
pub(crate) struct Throttle {
    bytes_per_sec: f64,
    next: Mutex<Instant>,
}

impl Throttle {
    pub(crate) fn new(bytes_per_sec: u64) -> Throttle {
        Throttle {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            next: Mutex::new(Instant::now()),
        }
    }

    async fn take(&self, bytes: u64) {
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            // Idle time does not bank more than a quarter second of burst.
            let start = (*next).max(now - Duration::from_millis(250));
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
            next.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

pub(crate) struct Fetcher {
    pub(crate) throttle: Arc<Throttle>,
    pub(crate) stats: Arc<Mutex<RecoveryStats>>,
    /// Chunks asked for with one request for the source's chunk list.
    pub(crate) list_page: u32,
    pub(crate) floor: Arc<Floor>,
}

/// The free-space floor of the node's data directory: below it nothing new is allocated.
pub(crate) struct Floor {
    pub(crate) dir: PathBuf,
    pub(crate) min_free_bytes: u64,
}

impl Floor {
    /// Fails (for a later retry) when the data directory is below the floor.
    fn check(&self, group: u64) -> Result<(), CopyError> {
        if cfg!(tessera_unfixed = "snapshot_floor") {
            return Ok(());
        }
        match tessera_engine::fsutil::fs_space(&self.dir) {
            Ok((_, avail)) if avail < self.min_free_bytes => Err(CopyError::Failed(format!(
                "{} has {avail} bytes free, below the floor of {}: not copying group {group}",
                self.dir.display(),
                self.min_free_bytes
            ))),
            Ok(_) => Ok(()),
            Err(e) => Err(CopyError::Failed(format!(
                "checking free space on {}: {e}",
                self.dir.display()
            ))),
        }
    }
}

impl SnapshotFetcher for Fetcher {
    fn fetch(&self, job: FetchJob, done: Done) {
        let throttle = self.throttle.clone();
        let stats = self.stats.clone();
        let list_page = self.list_page;
        let floor = self.floor.clone();
        lock(&stats).in_progress.push(job.group);
        // Answered even if the copy task dies: the replica waits for this answer.
        let done = Answer(Some(done));
        tokio::spawn(async move {
            let group = job.group;
            let started = Instant::now();
            let mut moved = 0;
            let res = copy_replica(&job, &throttle, &floor, &stats, &mut moved, list_page).await;
            {
                let mut s = lock(&stats);
                s.in_progress.retain(|g| *g != group);
                if res.is_ok() {
                    s.snapshots += 1;
                }
            }
            match &res {
                Ok(()) => tracing::info!(
                    group,
                    from = job.from,
                    index = job.index,
                    bytes = moved,
                    secs = started.elapsed().as_secs_f64(),
                    "snapshot copied"
                ),
                Err(e @ CopyError::Fatal(_)) => {
                    tracing::error!(group, from = job.from, "snapshot copy failed: {e}")
                }
                Err(e) => tracing::warn!(group, from = job.from, "snapshot copy failed: {e}"),
            }
            done.send(res.map_err(|e| match e {
                CopyError::Fatal(m) => FetchError::Fatal(m),
                CopyError::Failed(m) => FetchError::Retry(m),
            }));
        });
    }
}

type Done = Box<dyn FnOnce(Result<(), FetchError>) + Send>;

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
enum CopyError {
    /// Worth another try: the source went away or answered wrongly, a local write failed.
    #[error("{0}")]
    Failed(String),
    /// Making the copied data durable failed: the kernel may have dropped its pages, so
    /// this replica's data must never be reported durable, and the node must stop (as after
    /// a failed log fsync; [`tessera_engine::Error::Fatal`]).
    #[error("fatal storage failure, the node must stop: {0}")]
    Fatal(String),
}

impl From<String> for CopyError {
    fn from(msg: String) -> Self {
        CopyError::Failed(msg)
    }
}

struct Answer(Option<Done>);

impl Answer {
    fn send(mut self, res: Result<(), FetchError>) {
        if let Some(f) = self.0.take() {
            f(res);
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(FetchError::Retry(
                "the copy task ended without an answer".into(),
            )));
        }
    }
}

fn lock(s: &Mutex<RecoveryStats>) -> std::sync::MutexGuard<'_, RecoveryStats> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// One request/answer connection to the node being copied from.
struct Source {
    reader: FrameReader<tokio::net::tcp::OwnedReadHalf>,
    writer: OwnedWriteHalf,
    next_id: u64,
}

impl Source {
    async fn connect(addr: &str) -> Result<Source, String> {
        let s = tessera_net::connect(addr, Duration::from_secs(5))
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let (r, w) = s.into_split();
        Ok(Source {
            reader: FrameReader::new(r),
            writer: w,
            next_id: 1,
        })
    }

    async fn ask(&mut self, req: Request) -> Result<Bytes, String> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = Frame::new(req.kind(), id, req.encode());
        let work = async {
            tessera_net::write_frame(&mut self.writer, &frame)
                .await
                .map_err(|e| e.to_string())?;
            let f = self
                .reader
                .next()
                .await
                .map_err(|e| e.to_string())?
                .ok_or("connection closed")?;
            if f.kind != Kind::Reply || f.request_id != id {
                return Err(format!("unexpected {:?} frame", f.kind));
            }
            match Reply::decode(&f.body).map_err(|e| e.to_string())? {
                Reply::Ok(b) => Ok(b),
                other => Err(format!("{other:?}")),
            }
        };
        tokio::time::timeout(Duration::from_secs(30), work)
            .await
            .map_err(|_| "timed out".to_string())?
    }
}

fn snap_req(op: Op, group: u64, volume: u64, chunk: u64, offset: u32, len: u32) -> Request {
    Request::other(
        op,
        ChunkAddr {
            group,
            volume,
            chunk,
        },
        offset,
        len,
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> tessera_engine::Result<T> + Send + 'static,
) -> Result<T, CopyError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(tessera_engine::Error::Fatal(msg))) => Err(CopyError::Fatal(msg)),
        Ok(Err(e)) => Err(CopyError::Failed(e.to_string())),
        Err(e) => Err(CopyError::Failed(e.to_string())),
    }
}

/// Copies the group's chunks from the source, a page of its chunk list at a time (at most
/// `list_page` chunks: no answer grows with what the group holds): local chunks the
/// source's list skips are dropped, listed ones copied. Chunks the source gains or drops
/// between pages are the same as those written or dropped while a chunk is copied: the log
/// after the snapshot's index, re-applied, brings them in line.
async fn copy_replica(
    job: &FetchJob,
    throttle: &Throttle,
    floor: &Floor,
    stats: &Mutex<RecoveryStats>,
    moved: &mut u64,
    list_page: u32,
) -> Result<(), CopyError> {
    let g = job.group;
    let mut src = Source::connect(&job.from_addr).await?;
    let store = job.store.clone();
    // Sorted, as the source's list is.
    let local = blocking(move || store.list_chunks()).await?;
    let mut local = local.into_iter().peekable();
    let mut cursor = Some((0, 0));
    while let Some(from) = cursor {
        let req = ChunkListPage::request(g, from, list_page);
        let page = ChunkListPage::decode(&src.ask(req).await?)
            .map_err(|e| format!("chunk list from node {}: {e}", job.from))?;
        if page
            .entries
            .first()
            .is_some_and(|e| (e.volume, e.chunk) < from)
        {
            return Err(format!("node {} listed chunks before {from:?}", job.from).into());
        }
        cursor = page.next_cursor();
        // Local chunks up to the page's end that it does not list are gone at the source.
        let listed: std::collections::BTreeSet<(u64, u64)> =
            page.entries.iter().map(|e| (e.volume, e.chunk)).collect();
        while let Some(&(v, c)) = local.peek()
            && cursor.is_none_or(|end| (v, c) < end)
        {
            local.next();
            if !listed.contains(&(v, c)) {
                let store = job.store.clone();
                blocking(move || store.drop_chunk(v, c)).await?;
            }
        }
        for e in &page.entries {
            copy_chunk(
                job,
                &mut src,
                throttle,
                floor,
                stats,
                moved,
                (e.volume, e.chunk, e.blocks),
            )
            .await?;
        }
    }
    let store = job.store.clone();
    blocking(move || store.sync()).await
}

async fn copy_chunk(
    job: &FetchJob,
    src: &mut Source,
    throttle: &Throttle,
    floor: &Floor,
    stats: &Mutex<RecoveryStats>,
    moved: &mut u64,
    (volume, chunk, blocks): (u64, u64, u64),
) -> Result<(), CopyError> {
    let g = job.group;
    let store = job.store.clone();
    let local_blocks = blocking(move || store.chunk_blocks(volume, chunk)).await?;
    let mut first = 0;
    while first < blocks {
        let n = CRC_BLOCKS.min(blocks - first);
        let theirs = src
            .ask(snap_req(
                Op::SnapChecksums,
                g,
                volume,
                chunk,
                first as u32,
                n as u32,
            ))
            .await?;
        let store = job.store.clone();
        let mine = blocking(move || store.checksums(volume, chunk, first, n)).await?;
        if theirs.len() != mine.len() {
            return Err(format!("{} checksum bytes for {n} blocks", theirs.len()).into());
        }
        lock(stats).bytes_compared += n * BLOCK_SIZE;
        let mut differs: Vec<bool> = theirs
            .chunks_exact(4)
            .zip(mine.chunks_exact(4))
            .map(|(t, m)| t != m)
            .collect();
        // Equal checksums are trusted only for blocks whose bytes here match the checksum
        // stored here (see the module doc). Blocks past the local files hold nothing to check.
        let local = local_blocks.saturating_sub(first).min(n);
        if local > 0 {
            let store = job.store.clone();
            let intact = blocking(move || store.verify_blocks(volume, chunk, first, local)).await?;
            for (d, ok) in differs.iter_mut().zip(intact) {
                *d |= !ok;
            }
        }
        let differs = |i: u64| differs[i as usize];
        let mut i = 0;
        while i < n {
            if !differs(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < n && i - start < RUN_BLOCKS && differs(i) {
                i += 1;
            }
            let (off, len) = ((first + start) * BLOCK_SIZE, (i - start) * BLOCK_SIZE);
            floor.check(g)?;
            throttle.take(len).await;
            let t = Instant::now();
            let data = src
                .ask(snap_req(
                    Op::SnapRead,
                    g,
                    volume,
                    chunk,
                    off as u32,
                    len as u32,
                ))
                .await?;
            FETCHED.observe_since(t);
            if data.len() as u64 != len {
                return Err(format!("asked {len} bytes, got {}", data.len()).into());
            }
            lock(stats).bytes_fetched += len;
            *moved += len;
            let store = job.store.clone();
            blocking(move || write_blocks(&store, volume, chunk, off, &data)).await?;
        }
        first += n;
    }
    if local_blocks > blocks {
        // The source's chunk ends earlier: what is past its end reads as zeroes there.
        let store = job.store.clone();
        let (off, len) = (blocks * BLOCK_SIZE, (local_blocks - blocks) * BLOCK_SIZE);
        blocking(move || store.discard(volume, chunk, off, len)).await?;
    }
    Ok(())
}

/// Writes fetched blocks; all-zero ones are written as holes (as on the source, where a
/// block reads as zeroes when it was never written or was zeroed).
fn write_blocks(
    store: &ChunkStore,
    volume: u64,
    chunk: u64,
    offset: u64,
    data: &[u8],
) -> tessera_engine::Result<()> {
    let bs = BLOCK_SIZE as usize;
    let mut i = 0;
    let nblocks = data.len() / bs;
    while i < nblocks {
        let zero = data[i * bs..(i + 1) * bs].iter().all(|&b| b == 0);
        let start = i;
        while i < nblocks && data[i * bs..(i + 1) * bs].iter().all(|&b| b == 0) == zero {
            i += 1;
        }
        let at = offset + (start * bs) as u64;
        if zero {
            store.discard(volume, chunk, at, ((i - start) * bs) as u64)?;
        } else {
            store.write(volume, chunk, at, &data[start * bs..i * bs])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::FileExt;

    use tessera_engine::ChunkStores;

    use tessera_proto::copy::MAX_LIST_PAGE;

    use crate::server::{CopySources, serve_snapshot};

    const GROUP: u64 = 7;
    const B: usize = BLOCK_SIZE as usize;

    /// A node to copy from: serves the snapshot requests of `chunks` on 127.0.0.1, as the
    /// data port does. Returns its address.
    async fn serve_copies(chunks: Arc<ChunkStores>) -> String {
        serve_copies_then(chunks, |_| {}).await
    }

    /// As [`serve_copies`], calling `after` with each request once it is answered.
    async fn serve_copies_then(
        chunks: Arc<ChunkStores>,
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
                        let req = Request::decode(f.kind, &f.body);
                        let reply = match &req {
                            Ok(req) => match copied.source(&chunks, req.addr.group) {
                                Some(store) => serve_snapshot(&chunks, &store, req),
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
            if req.op == Op::SnapList {
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

    #[test]
    fn zero_blocks_become_holes_and_data_is_written() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = ChunkStore::open(tmp.path()).expect("store");
        store.write(1, 0, 0, &[7u8; 3 * 4096]).expect("w");
        let mut data = vec![0u8; 3 * 4096];
        data[2 * 4096..].fill(9);
        write_blocks(&store, 1, 0, 0, &data).expect("write blocks");
        let got = store.read(1, 0, 0, 3 * 4096).expect("read");
        assert_eq!(&got[..], &data[..]);
        let crcs = store.checksums(1, 0, 0, 3).expect("crcs");
        assert_eq!(&crcs[..8], &[0u8; 8], "zeroed blocks are holes again");
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
            if req.op == Op::SnapList {
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
}

//! One copy of a replica: the source's chunk list a page at a time, each chunk's checksums
//! compared with the local ones, and only the blocks that differ (or fail their own local
//! checksum) fetched and written. Disk work runs on the blocking pool.

use std::sync::Mutex;
use std::time::Instant;

use tessera_engine::ChunkStore;
use tessera_engine::chunk::BLOCK_SIZE;
use tessera_metrics::Lazy;
use tessera_proto::control::RecoveryStats;
use tessera_proto::copy::ChunkListPage;
use tessera_proto::data::Op;
use tessera_raft::FetchJob;

use super::source::{Source, snap_req};
use super::{CopyError, Floor, Throttle, lock};

static FETCHED: Lazy = Lazy::new(
    "tessera_recovery_fetch_seconds",
    "One piece (up to 1 MiB) of chunk data copied from a peer to rebuild a replica",
);

/// Blocks fetched with one request.
const RUN_BLOCKS: u64 = 256;
/// Checksums asked for with one request.
const CRC_BLOCKS: u64 = 64 * 1024;

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
pub(super) async fn copy_replica(
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
pub(super) fn write_blocks(
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

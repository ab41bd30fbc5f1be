//! One copy of a replica (a Raft catch-up): the source's list of chunk layers a page at a
//! time, each layer's checksums compared with the local ones, and only the blocks that
//! differ (or fail their own local checksum) fetched and written, layer by layer as stored
//! (nothing read through to lower layers or parents); each chunk's link set as the
//! source's. Disk work runs on the blocking pool.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Instant;

use tessera_engine::chunk::BLOCK_SIZE;
use tessera_metrics::Lazy;
use tessera_proto::control::RecoveryStats;
use tessera_proto::copy::{ChunkEntry, ChunkListPage};
use tessera_proto::data::Op;
use tessera_raft::FetchJob;

use super::source::{Source, catch_up_req};
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

/// Copies the group's chunk layers and links from the source, a page of its list at a
/// time (at most `list_page` entries: no answer grows with what the group holds): local
/// chunks the source's list skips are dropped, and so are local layers of a listed chunk it
/// skips; listed layers are copied, and each listed chunk's link set as the source's.
/// Layers the source gains or drops between pages are the same as those written or
/// dropped while a layer is copied: the log after the snapshot's index, re-applied, brings
/// them in line.
pub(super) async fn copy_replica(
    job: &FetchJob,
    security: &tessera_net::Security,
    throttle: &Throttle,
    floor: &Floor,
    stats: &Mutex<RecoveryStats>,
    moved: &mut u64,
    list_page: u32,
) -> Result<(), CopyError> {
    let g = job.group;
    let mut src = Source::connect(security, job.from, &job.from_addr).await?;
    let store = job.store.clone();
    // Sorted, as the source's list is.
    let local = blocking(move || store.list_layers()).await?;
    let mut local = local.into_iter().peekable();
    let mut cursor = Some((0, 0, 1));
    // The last chunk the previous page listed: its layers may go on in this page.
    let mut prev_last: Option<(u64, u64)> = None;
    // The last local chunk dropped whole (its other layers need nothing more).
    let mut dropped: Option<(u64, u64)> = None;
    // A source from before layers refuses a list request carrying the layer cursor (its
    // body is longer than it knows); it holds layer 1 only and is asked as it understands.
    let mut before_layers = false;
    while let Some(from) = cursor {
        let mut req = ChunkListPage::request(g, from, list_page);
        if before_layers {
            req.seq = 0;
        }
        let answer = match src.ask(req.clone()).await {
            Err(e) if !before_layers && e.starts_with("BadRequest") => {
                before_layers = true;
                req.seq = 0;
                src.ask(req).await?
            }
            other => other?,
        };
        let page = ChunkListPage::decode(&answer)
            .map_err(|e| format!("chunk list from node {}: {e}", job.from))?;
        let before = |e: &ChunkEntry| {
            if page.layers {
                e.key() < from
            } else {
                (e.volume, e.chunk) < (from.0, from.1)
            }
        };
        if page.entries.first().is_some_and(before) {
            return Err(format!("node {} listed chunks before {from:?}", job.from).into());
        }
        cursor = page.next_cursor();
        // Local layers up to the page's end that it does not list are gone at the source:
        // the whole chunk if the source lists none of its layers.
        let listed: BTreeSet<(u64, u64, u64)> = page.entries.iter().map(ChunkEntry::key).collect();
        let chunks: BTreeSet<(u64, u64)> =
            page.entries.iter().map(|e| (e.volume, e.chunk)).collect();
        while let Some(&k) = local.peek()
            && cursor.is_none_or(|end| (k.volume, k.chunk, k.layer) < end)
        {
            local.next();
            let (v, c, l) = (k.volume, k.chunk, k.layer);
            if listed.contains(&(v, c, l)) || dropped == Some((v, c)) {
                continue;
            }
            let store = job.store.clone();
            if chunks.contains(&(v, c)) || prev_last == Some((v, c)) {
                blocking(move || store.drop_layer(v, c, l)).await?;
            } else {
                dropped = Some((v, c));
                blocking(move || store.drop_chunk(v, c)).await?;
            }
        }
        // A chunk's link is taken from its first listing only, before any of its layers
        // is copied: a later page may report a newer link state (the source flattened and
        // unlinked the chunk meanwhile) than the layers already copied under the earlier
        // one, and replaying the Flatten entries needs the link the copied data goes with.
        // The replayed Unlink clears it in its turn.
        let mut linked = prev_last;
        for e in &page.entries {
            if linked != Some((e.volume, e.chunk)) {
                linked = Some((e.volume, e.chunk));
                set_link(job, e.volume, e.chunk, e.link).await?;
            }
            copy_layer(job, &mut src, throttle, floor, stats, moved, e).await?;
        }
        prev_last = page.entries.last().map(|e| (e.volume, e.chunk));
    }
    let store = job.store.clone();
    blocking(move || store.sync()).await
}

/// Makes the local chunk's link the source's (`None`: not linked).
async fn set_link(
    job: &FetchJob,
    volume: u64,
    chunk: u64,
    want: Option<(u64, u64)>,
) -> Result<(), CopyError> {
    let store = job.store.clone();
    blocking(move || {
        let have = store.link_of(volume, chunk)?;
        if have == want {
            return Ok(());
        }
        if have.is_some() {
            store.unlink(volume, chunk)?;
        }
        match want {
            Some((parent, parent_seq)) => store.link(volume, chunk, parent, parent_seq),
            None => Ok(()),
        }
    })
    .await
}

/// Makes one local layer the source's: checksums compared a range at a time, blocks the
/// source's layer lacks (stored checksum 0) cleared, the others that differ fetched.
async fn copy_layer(
    job: &FetchJob,
    src: &mut Source,
    throttle: &Throttle,
    floor: &Floor,
    stats: &Mutex<RecoveryStats>,
    moved: &mut u64,
    e: &ChunkEntry,
) -> Result<(), CopyError> {
    let g = job.group;
    let (volume, chunk, layer, blocks) = (e.volume, e.chunk, e.layer, e.blocks);
    let store = job.store.clone();
    let local_blocks = blocking(move || store.chunk_blocks_in(volume, chunk, layer)).await?;
    let mut first = 0;
    while first < blocks {
        let n = CRC_BLOCKS.min(blocks - first);
        let theirs = src
            .ask(catch_up_req(
                Op::CatchUpChecksums,
                (g, volume, chunk, layer),
                first as u32,
                n as u32,
            ))
            .await?;
        let store = job.store.clone();
        let mine = blocking(move || store.checksums_in(volume, chunk, layer, first, n)).await?;
        if theirs.len() != mine.len() || theirs.len() as u64 != n * 4 {
            return Err(format!("{} checksum bytes for {n} blocks", theirs.len()).into());
        }
        lock(stats).bytes_compared += n * BLOCK_SIZE;
        let mut differs: Vec<bool> = theirs
            .chunks_exact(4)
            .zip(mine.chunks_exact(4))
            .map(|(t, m)| t != m)
            .collect();
        let absent: Vec<bool> = theirs.chunks_exact(4).map(|t| t == [0; 4]).collect();
        // Equal checksums are trusted only for blocks whose bytes here match the checksum
        // stored here (see the module doc). Blocks past the local files hold nothing to check.
        let local = local_blocks.saturating_sub(first).min(n);
        if local > 0 {
            let store = job.store.clone();
            let intact =
                blocking(move || store.verify_blocks_in(volume, chunk, layer, first, local))
                    .await?;
            for (d, ok) in differs.iter_mut().zip(intact) {
                *d |= !ok;
            }
        }
        let mut i = 0;
        while i < n {
            if !differs[i as usize] {
                i += 1;
                continue;
            }
            // A run of differing blocks the source's layer all holds, or all lacks.
            let start = i;
            let lacks = absent[i as usize];
            while i < n
                && i - start < RUN_BLOCKS
                && differs[i as usize]
                && absent[i as usize] == lacks
            {
                i += 1;
            }
            let (off, len) = ((first + start) * BLOCK_SIZE, (i - start) * BLOCK_SIZE);
            let store = job.store.clone();
            if lacks {
                // Cleared, not discarded: a discard above layer 1 (or in a linked chunk)
                // would write "written as zero" markers, which the source does not hold.
                blocking(move || store.clear_in(volume, chunk, layer, off, len)).await?;
                continue;
            }
            floor.check(g)?;
            throttle.take(len).await;
            let t = Instant::now();
            let data = src
                .ask(catch_up_req(
                    Op::CatchUpRead,
                    (g, volume, chunk, layer),
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
            blocking(move || store.write_in(volume, chunk, layer, off, &data)).await?;
        }
        first += n;
    }
    if local_blocks > blocks {
        // The source's layer ends earlier: it holds nothing past its end.
        let store = job.store.clone();
        let (off, len) = (blocks * BLOCK_SIZE, (local_blocks - blocks) * BLOCK_SIZE);
        blocking(move || store.clear_in(volume, chunk, layer, off, len)).await?;
    }
    Ok(())
}

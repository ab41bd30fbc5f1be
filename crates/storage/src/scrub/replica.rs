//! A replica's scan of a region for the leader driving a scrub step
//! (`StorageRequest::ScrubRegion`), on any replica, the leader's own included: once its
//! watch of the mark exists, every layer of the chunk is read and classified (paced by
//! this node's scrub rate before each read, unless the leader says the scan is urgent),
//! then the blocks changed since the mark are asked for — after the reads, so that a
//! block not dirty then was read as of the mark. The scan names every layer the chunk has
//! here (`RegionScan::layers`), so that the leader compares a layer only among replicas
//! having it.
//!
//! Reads only; must never answer a scan without a watch (its blocks could not be dated),
//! nor one meant for another node; at most [`MAX_SCANS`] scans read at once and none runs
//! past [`SCAN_DEADLINE`], whatever peers ask.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_engine::chunk::Scanned;
use tessera_proto::control::{
    BlockCheck, ControlError, RegionScan, RegionScanRequest, SCRUB_REGION_BLOCKS, ScannedBlock,
};
use tessera_raft::scrub::DirtySince;

use crate::server::Shared;

/// How long a replica waits to apply the mark it is asked about.
const WATCH_WAIT: Duration = Duration::from_secs(10);
/// The longest a scan may take, its waits included: past it the replica gives up
/// (`Unavailable`) before the leader's own timeout (60 s) gives up on it.
pub(crate) const SCAN_DEADLINE: Duration = Duration::from_secs(50);
/// Scans this node serves at once (each reads up to 4 MiB a layer into memory).
pub(crate) const MAX_SCANS: usize = 4;

/// This replica's scan of `req`'s region, paced by the node's scrub rate unless
/// `req.urgent` (a read repair's: a client waits).
pub(crate) async fn scan_region(
    shared: &Shared,
    req: RegionScanRequest,
) -> Result<RegionScan, ControlError> {
    serve(shared, req, SCAN_DEADLINE).await
}

/// [`scan_region`] giving up after `deadline`.
pub(crate) async fn serve(
    shared: &Shared,
    req: RegionScanRequest,
    deadline: Duration,
) -> Result<RegionScan, ControlError> {
    tokio::time::timeout(deadline, scan(shared, req))
        .await
        .unwrap_or_else(|_| {
            Err(ControlError::Unavailable(format!(
                "node {}: scan of group {} volume {} chunk {} blocks {}+{} took over {deadline:?}",
                shared.node_id, req.group_id, req.volume, req.chunk, req.first, req.count
            )))
        })
}

async fn scan(shared: &Shared, req: RegionScanRequest) -> Result<RegionScan, ControlError> {
    let g = req.group_id;
    if req.count == 0
        || req.count > SCRUB_REGION_BLOCKS
        || req
            .first
            .checked_add(req.count)
            .is_none_or(|end| end > u64::MAX / 4096)
    {
        return Err(ControlError::Invalid(format!(
            "a scrub region of {} blocks from block {}; 1 to {SCRUB_REGION_BLOCKS} inside a chunk",
            req.count, req.first
        )));
    }
    if req.node_id != 0 && req.node_id != shared.node_id {
        return Err(ControlError::Invalid(format!(
            "a scan meant for node {} asked of node {} (a stale address?)",
            req.node_id, shared.node_id
        )));
    }
    let store = shared.chunks.existing(g).ok_or_else(|| {
        ControlError::NotFound(format!(
            "node {} holds no replica of group {g}",
            shared.node_id
        ))
    })?;
    let watches = shared.raft.watches();
    // Waiting costs no memory: polled with a backoff (a few dozen lookups over the whole
    // wait), before the scan slot is taken, so that requests for marks never applied
    // cannot hold the slots real scans need.
    let until = Instant::now() + WATCH_WAIT;
    let mut poll = Duration::from_millis(1);
    let watched = loop {
        if let Some(w) = watches.watch(g, req.mark) {
            break w;
        }
        if Instant::now() >= until {
            return Err(ControlError::Unavailable(format!(
                "node {} does not watch scrub mark {:#x} of group {g} (not applied within \
                 {WATCH_WAIT:?}, expired, or restarted since)",
                shared.node_id, req.mark
            )));
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(Duration::from_millis(200));
    };
    if (watched.volume, watched.chunk, watched.first, watched.count)
        != (req.volume, req.chunk, req.first, req.count)
    {
        return Err(ControlError::Invalid(format!(
            "scrub mark {:#x} of group {g} covers {watched:?}, not the region asked for",
            req.mark
        )));
    }
    // One of the node's scan slots, held by every read of the scan (also one still running
    // after the scan gave up), so that at most `MAX_SCANS` buffers exist at once, but for
    // slices queued for hashing by scans that gave up (dropped unhashed when the idle
    // thread reaches them).
    let slot = Arc::new(
        shared
            .scrub
            .scans
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ControlError::Internal(e.to_string()))?,
    );
    let (v, c) = (req.volume, req.chunk);
    let engine = |e: tessera_engine::Error| {
        ControlError::Unavailable(format!("scanning group {g} volume {v} chunk {c}: {e}"))
    };
    let join = |e: tokio::task::JoinError| ControlError::Internal(e.to_string());
    let s = store.clone();
    let layers = tokio::task::spawn_blocking(move || s.chunk_layers(v, c))
        .await
        .map_err(join)?
        .map_err(engine)?;
    let mut blocks = Vec::new();
    let end = req.first + req.count;
    let slices = (req.first..end).step_by(super::SCAN_SLICE as usize);
    for (layer, first) in layers
        .layers
        .iter()
        .flat_map(|&l| slices.clone().map(move |f| (l, f)))
    {
        // In slices, each paced before it is read, for all it reads (every block, held or
        // not): a steady trickle rather than a region's 4 MiB at once.
        let count = super::SCAN_SLICE.min(end - first);
        if !req.urgent {
            shared.scrub.pace(count * 4096).await;
        }
        let s = store.clone();
        let held_slot = slot.clone();
        let urgent = req.urgent;
        // The read (under the chunk's read lock, which the apply's writes wait for) always
        // at normal priority; a paced scan's hashing is background work, on the node's
        // idle thread (see `idle`), off the lock.
        let read = tokio::task::spawn_blocking(move || {
            let _slot = held_slot;
            let stored = s.read_stored(v, c, layer, first, count)?;
            Ok::<_, tessera_engine::Error>(if urgent {
                Ok(stored.classify())
            } else {
                Err(stored)
            })
        })
        .await
        .map_err(join)?
        .map_err(engine)?;
        let scanned = match read {
            Ok(scanned) => scanned,
            Err(stored) => shared
                .scrub
                .idle
                .run(move || stored.classify())
                .await
                .ok_or_else(|| {
                    ControlError::Internal(format!(
                        "scanning group {g} volume {v} chunk {c}: hashing panicked"
                    ))
                })?,
        };
        let before = blocks.len();
        for (block, state) in (first..).zip(scanned) {
            let state = match state {
                Scanned::Absent => continue,
                Scanned::Zero => BlockCheck::Zero,
                Scanned::Data { hash } => BlockCheck::Data { hash },
                Scanned::Bad => BlockCheck::Bad,
            };
            blocks.push(ScannedBlock {
                layer,
                block,
                state,
            });
        }
        shared.scrub.checked((blocks.len() - before) as u64);
    }
    drop(slot);
    // After the reads: a block dirty only after them was still read as of the mark, and
    // is left out all the same (harmless).
    let (dirty, all_dirty) = match watches.dirty(g, req.mark) {
        Some(DirtySince::Blocks(b)) => (b, false),
        Some(DirtySince::All) => (Vec::new(), true),
        None => {
            return Err(ControlError::Unavailable(format!(
                "scrub mark {:#x} of group {g} expired during the scan",
                req.mark
            )));
        }
    };
    for b in bad_unchanged(&blocks, &dirty, all_dirty) {
        tracing::warn!(
            node = shared.node_id,
            group = g,
            volume = v,
            chunk = c,
            layer = b.layer,
            block = b.block,
            "scrub: block fails its checksum"
        );
    }
    blocks.sort_by_key(|b| (b.layer, b.block));
    Ok(RegionScan {
        holds_chunk: !layers.layers.is_empty() || layers.link.is_some(),
        link: layers.link,
        blocks,
        // Every layer the chunk has here (ascending), also those without a block in the
        // region: the leader compares a layer only among the replicas having it.
        layers: layers.layers,
        dirty,
        all_dirty,
    })
}

/// The `Bad` blocks not changed since the mark: a block changed meanwhile may have been
/// read half-written, and is no finding.
fn bad_unchanged<'a>(
    blocks: &'a [ScannedBlock],
    dirty: &[u64],
    all_dirty: bool,
) -> Vec<&'a ScannedBlock> {
    if all_dirty {
        return Vec::new();
    }
    let dirty: BTreeSet<u64> = dirty.iter().copied().collect();
    blocks
        .iter()
        .filter(|b| b.state == BlockCheck::Bad && !dirty.contains(&b.block))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(block: u64, state: BlockCheck) -> ScannedBlock {
        ScannedBlock {
            layer: 1,
            block,
            state,
        }
    }

    #[test]
    fn only_bad_blocks_unchanged_since_the_mark_are_reported() {
        let blocks = [
            block(1, BlockCheck::Bad),
            block(2, BlockCheck::Bad),
            block(3, BlockCheck::Zero),
        ];
        let got: Vec<u64> = bad_unchanged(&blocks, &[2, 3], false)
            .iter()
            .map(|b| b.block)
            .collect();
        assert_eq!(got, vec![1]);
        assert!(bad_unchanged(&blocks, &[], true).is_empty());
    }
}

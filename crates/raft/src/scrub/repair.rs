//! Applying a group's `ScrubMark` (a watch starts) and `Repair` (blocks rewritten where this
//! replica watches the mark, the block is unchanged since and differs from the wanted
//! state) entries. Called by the apply loop in log order; never fails an entry for what it
//! carries (an undecodable one, a mark over more than a scrub region or a repair of more
//! blocks than one proposal may carry, is logged and applies nothing, so apply never stalls
//! on it nor spends the poller's time on it).

use tessera_engine::ChunkStore;
use tessera_engine::chunk::{BLOCK_SIZE, Scanned, block_hash};
use tessera_proto::command::{Command, Wanted};

use tessera_proto::control::SCRUB_REGION_BLOCKS;
use tessera_proto::data::MAX_IO;

use super::{Watched, Watches};

/// Most blocks one Repair entry rewrites (as many as one proposal may carry).
const MAX_REPAIR_BLOCKS: u64 = MAX_IO as u64 / BLOCK_SIZE;

/// A `ScrubMark` entry: the replica starts watching its region (not while the chunk store
/// replays its log: a watch must see every change after its mark, and a replayed entry
/// may already be on disk).
pub(crate) fn apply_mark(
    watches: &Watches,
    chunks: &ChunkStore,
    group: u64,
    index: u64,
    cmd: &Command,
) {
    let Some(mark) = cmd.scrub_mark() else {
        tracing::error!(group, index, "scrub mark without a mark id; not applied");
        return;
    };
    if chunks.replaying() {
        return;
    }
    let (offset, len) = (u64::from(cmd.offset), u64::from(cmd.len));
    let first = offset / BLOCK_SIZE;
    let count = (offset + len).div_ceil(BLOCK_SIZE) - first;
    if count > SCRUB_REGION_BLOCKS {
        // No scrub step marks more (the leader proposes one region at a time); a larger
        // watch would make every `Watches::dirty` walk it under the lock the poller needs.
        tracing::error!(
            group,
            index,
            volume = cmd.volume,
            chunk = cmd.chunk,
            count,
            "scrub mark over more than {SCRUB_REGION_BLOCKS} blocks; not watched"
        );
        return;
    }
    let watched = Watched {
        volume: cmd.volume,
        chunk: cmd.chunk,
        first,
        count,
    };
    watches.start(group, mark, watched);
}

/// A `Repair` entry: each block of its range that this replica's watch of the mark covers,
/// that is not dirty, and whose local state in the layer differs from the wanted one (a
/// block failing its checksum always does), is rewritten to it, then marked dirty (after
/// the write, so that a retry after a failed write still repairs it).
pub(crate) fn apply_repair(
    watches: &Watches,
    chunks: &ChunkStore,
    group: u64,
    index: u64,
    cmd: &Command,
) -> tessera_engine::Result<()> {
    let Some(parts) = cmd.repair_parts() else {
        tracing::error!(group, index, "undecodable repair entry; not applied");
        return Ok(());
    };
    let (v, c, layer) = (cmd.volume, cmd.chunk, parts.layer);
    if parts.wanted.len() as u64 > MAX_REPAIR_BLOCKS {
        // Refused at proposal too; one from the log anyway (an older leader, a bug) must not
        // make the poller read and allocate up to a whole chunk's blocks to compare.
        tracing::error!(
            group,
            index,
            volume = v,
            chunk = c,
            blocks = parts.wanted.len(),
            "repair of more than {MAX_REPAIR_BLOCKS} blocks; not applied"
        );
        return Ok(());
    }
    let Some(region) = watches.watch(group, parts.mark) else {
        // Restarted, caught up, expired: the next scrub finds the block again.
        tracing::debug!(
            group,
            index,
            mark = parts.mark,
            "repair of a mark not watched here"
        );
        return Ok(());
    };
    let first = u64::from(cmd.offset) / BLOCK_SIZE;
    let count = parts.wanted.len() as u64;
    if (region.volume, region.chunk) != (v, c)
        || first < region.first
        || first + count > region.first + region.count
    {
        tracing::error!(
            group,
            index,
            volume = v,
            chunk = c,
            "repair outside its mark's region; not applied"
        );
        return Ok(());
    }
    let Some(dirty) = watches.dirty_of(group, parts.mark, first, count) else {
        return Ok(());
    };
    if dirty.iter().all(|&d| d) {
        return Ok(());
    }
    // Replicas may hold the same blocks in different layers (a merge skipped on a full
    // disk); the scrubber compares a layer only among the replicas holding it, so a repair
    // never creates a layer above 1 here. A listing that fails is no reason to stop the node: the
    // next scrub finds the block again.
    let layer = tessera_engine::chunk::layer_of(layer);
    match chunks.chunk_layers(v, c) {
        // Layer 1 is the chunk's base: a replica that lost the chunk's files is given
        // them back block by block.
        _ if layer == 1 => {}
        Ok(held) if held.layers.contains(&layer) => {}
        Ok(_) => {
            tracing::debug!(
                group,
                index,
                volume = v,
                chunk = c,
                layer,
                "repair of a layer not held here"
            );
            return Ok(());
        }
        Err(e) => {
            tracing::warn!(
                group,
                index,
                volume = v,
                chunk = c,
                "repair not applied: listing the chunk's layers: {e}"
            );
            return Ok(());
        }
    }
    // A region that cannot be read (a latent sector error: what scrubbing is for) is no
    // reason to stop the node either: every block is taken as bad and rewritten with the
    // majority's state, which is right whatever this replica holds (the blocks unchanged
    // since the mark, as below). A shortage of descriptors waits like any entry.
    let scanned = match chunks.scan_in(v, c, layer, first, count) {
        Ok(s) => s,
        Err(e @ tessera_engine::Error::Exhausted(_)) => return Err(e),
        Err(e) => {
            tracing::warn!(
                group,
                index,
                volume = v,
                chunk = c,
                layer,
                first,
                count,
                "repair reads the region's blocks as bad: {e}"
            );
            Vec::new()
        }
    };
    let bs = BLOCK_SIZE as usize;
    let zero = [0u8; BLOCK_SIZE as usize];
    let mut data_at = 0;
    let mut rewritten = 0;
    let mut result = Ok(());
    for (i, &want) in parts.wanted.iter().enumerate() {
        let data = if want == Wanted::Data {
            let d = &parts.data[data_at..data_at + bs];
            data_at += bs;
            d
        } else {
            &zero[..]
        };
        let have = scanned.get(i).copied().unwrap_or(Scanned::Bad);
        let same = match (want, have) {
            (Wanted::Absent, Scanned::Absent) | (Wanted::Zero, Scanned::Zero) => true,
            (Wanted::Data, Scanned::Data { hash }) => hash == block_hash(data),
            _ => false,
        };
        if dirty[i] || same {
            continue;
        }
        let block = first + i as u64;
        let at = block * BLOCK_SIZE;
        result = match want {
            Wanted::Absent => chunks.clear_in(v, c, layer, at, BLOCK_SIZE),
            Wanted::Zero | Wanted::Data => chunks.write_in(v, c, layer, at, data),
        };
        if result.is_err() {
            break;
        }
        // Dirty only once written, unlike every other entry: marked before a write that
        // fails (a full disk; the entry is retried), the block would be skipped by the
        // retry and never repaired. Safe: the repair writes the majority's state as of the
        // mark, so a scan reading the block before this mark reads the mark's truth anyway
        // (or the block mid-write, failing its checksum: reported bad, never "clean").
        watches.touched(group, v, c, block, 1);
        rewritten += 1;
        tracing::warn!(
            group,
            volume = v,
            chunk = c,
            layer,
            block,
            was = ?have,
            to = ?want,
            "scrub repair rewrote a block"
        );
    }
    watches.repaired(rewritten);
    match result {
        // A full disk stalls the entry (retried); a descriptor shortage waits.
        Err(tessera_engine::Error::DiskFull(_) | tessera_engine::Error::Exhausted(_)) => result,
        // Anything else (EIO reading the checksums around the block, say) leaves the
        // blocks not written yet as they were, not dirty: the next scrub finds them again.
        // A repair is optional work, never a reason to stop the node.
        Err(e) => {
            tracing::warn!(
                group,
                index,
                volume = v,
                chunk = c,
                layer,
                rewritten,
                "repair stopped short: {e}"
            );
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

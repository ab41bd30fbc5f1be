//! The group ops that work through one chunk in pieces of [`FLATTEN_PIECE`] bytes (one
//! bounded log entry each): a flatten's copies ([`flatten_pieces`]) and a reclaim's merges
//! ([`reclaim_ops`]).
//!
//! Pure: no state, no I/O. Must never leave a byte of the chunk uncovered, nor make a
//! piece larger than [`FLATTEN_PIECE`].

use tessera_proto::control::GroupOp;

/// Bytes a flatten copies per [`GroupOp::Flatten`] (and a reclaim merges per
/// [`GroupOp::Merge`]).
pub const FLATTEN_PIECE: u64 = 4 << 20;

/// The flatten ops of one chunk: `Flatten` pieces of [`FLATTEN_PIECE`] bytes covering it.
///
/// They copy into the clone's base layer (sequence 1), where it reads through to its
/// parent: every block that layer lacks. Every read of the clone, live or as of any of its
/// snapshots, falls to that layer where its own layers hold nothing, so it reads the same
/// before the link is cut and after. (Copying into the live layer instead would hide the
/// parent's blocks from the clone's snapshots once the link is cut.)
pub fn flatten_pieces(volume_id: u64, chunk: u64, chunk_size: u64) -> Vec<GroupOp> {
    pieces(chunk_size)
        .map(|(offset, len)| GroupOp::Flatten {
            volume_id,
            chunk,
            offset,
            len,
            seq: 1,
        })
        .collect()
}

/// The ops that merge one chunk's layers of a range, in one group: a fence at the volume's
/// sequence `seq` (N) first, so the group refuses any write of the range's layers after
/// it; then the frozen pass (`Merge` pieces of [`FLATTEN_PIECE`] over `low..=top`, or
/// `low..=N-1` for the live range, then `DropMerged`); then, for the live range, the live
/// pass over `low..=N` (the merged layer's blocks N lacks, copied into N). A frozen range
/// of one layer holds nothing to merge and is left out.
pub fn reclaim_ops(
    volume_id: u64,
    chunk: u64,
    chunk_size: u64,
    low: u64,
    top: Option<u64>,
    seq: u64,
) -> Vec<GroupOp> {
    let mut ops = vec![GroupOp::Fence {
        volume_id,
        epoch: 0,
        seq,
    }];
    let frozen_top = top.unwrap_or(seq.saturating_sub(1));
    if frozen_top > low {
        merge_pass(
            &mut ops, volume_id, chunk, chunk_size, low, frozen_top, false,
        );
    }
    if top.is_none() && seq > low {
        merge_pass(&mut ops, volume_id, chunk, chunk_size, low, seq, true);
    }
    ops
}

/// `Merge` pieces covering the chunk, then `DropMerged`, of `low..=top`.
fn merge_pass(
    ops: &mut Vec<GroupOp>,
    volume_id: u64,
    chunk: u64,
    chunk_size: u64,
    low: u64,
    top: u64,
    live: bool,
) {
    ops.extend(pieces(chunk_size).map(|(offset, len)| GroupOp::Merge {
        volume_id,
        chunk,
        offset,
        len,
        low,
        top,
        live,
    }));
    ops.push(GroupOp::DropMerged {
        volume_id,
        chunk,
        low,
        top,
        live,
    });
}

/// `(offset, len)` of the pieces covering a chunk of `chunk_size` bytes, in order.
fn pieces(chunk_size: u64) -> impl Iterator<Item = (u32, u32)> {
    let piece = FLATTEN_PIECE.min(chunk_size).max(1);
    (0..chunk_size.div_ceil(piece)).map_while(move |i| {
        let offset = i * piece;
        let len = piece.min(chunk_size - offset);
        // Chunk sizes are at most 1 GiB, so both fit in u32.
        Some((u32::try_from(offset).ok()?, u32::try_from(len).ok()?))
    })
}

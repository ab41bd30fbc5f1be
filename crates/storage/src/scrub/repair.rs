//! Repairing a region's fixes: the blocks needing repair, in runs of one layer, each
//! block's wanted state and, for data, its bytes read from a replica holding the truth
//! (this node's files, or a follower's through the data plane's `CatchUpRead`; another
//! holder's when that read fails) and checked against the truth's hash; then a
//! `CmdOp::Repair` entry per run through the group's log.
//!
//! Must never propose bytes that do not hash to the truth (the block changed since the
//! mark: it is left for the next scrub), nor a repair of a block no fix names.

use std::future::Future;

use bytes::Bytes;
use tessera_proto::command::{CmdOp, Command, Wanted};
use tessera_proto::data::{Op, Reply};

use super::compare::{Fix, Held};
use super::plan::Region;
use crate::server::Shared;

const BLOCK: u64 = 4096;
/// Most blocks one Repair entry names.
pub(crate) const MAX_RUN: usize = 256;

/// Maximal runs of consecutive blocks of one layer, at most [`MAX_RUN`] each, of `fixes`
/// (sorted by (layer, block)).
pub(crate) fn runs(fixes: &[Fix]) -> Vec<&[Fix]> {
    let mut out = Vec::new();
    let mut start = 0;
    for i in 1..=fixes.len() {
        let split = i == fixes.len()
            || fixes[i].layer != fixes[i - 1].layer
            || fixes[i].block != fixes[i - 1].block + 1
            || i - start == MAX_RUN;
        if split {
            out.push(&fixes[start..i]);
            start = i;
        }
    }
    out
}

/// The first 8 bytes of a block's BLAKE3, LE (as scans report it).
pub(crate) fn hash_of(block: &[u8]) -> u64 {
    let h = blake3::hash(block);
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// Proposes the repairs of `fixes` (sorted) found under `mark` in region `r`; the blocks
/// of the committed entries.
pub(crate) async fn repair(shared: &Shared, r: &Region, mark: u64, fixes: &[Fix]) -> u64 {
    let mut repaired = 0;
    for run in runs(fixes) {
        let data = read_truths(shared, r, run).await;
        // A block whose bytes could not be had splits the run.
        let mut at = 0;
        while at < run.len() {
            let end = (at..run.len())
                .find(|&i| data[i].is_none())
                .unwrap_or(run.len());
            if end > at {
                repaired += propose(shared, r, mark, &run[at..end], &data[at..end]).await;
            }
            at = end + 1;
        }
    }
    repaired
}

/// Each fix's wanted state and bytes (`None`: its data could not be read, or no longer
/// hashes to the truth).
async fn read_truths(shared: &Shared, r: &Region, run: &[Fix]) -> Vec<Option<(Wanted, Bytes)>> {
    gather(shared.node_id, r, run, |layer, from, first, n| {
        read(shared, r, layer, from, first, n)
    })
    .await
}

/// [`read_truths`] reading with `read(layer, node, first block, blocks)`, this node being
/// `me`: consecutive data blocks of one source (this node if it holds the truth, else the
/// first holder) at once; a read that fails is tried again block by block from the other
/// holders of each block's truth.
async fn gather<F, Fut>(me: u64, r: &Region, run: &[Fix], read: F) -> Vec<Option<(Wanted, Bytes)>>
where
    F: Fn(u64, u64, u64, u64) -> Fut,
    Fut: Future<Output = Result<Bytes, String>>,
{
    let source = |f: &Fix| {
        if f.holders.contains(&me) {
            me
        } else {
            f.holders.first().copied().unwrap_or(me)
        }
    };
    let mut out: Vec<Option<(Wanted, Bytes)>> = run
        .iter()
        .map(|f| match f.truth {
            Held::Absent => Some((Wanted::Absent, Bytes::new())),
            Held::Zero => Some((Wanted::Zero, Bytes::new())),
            Held::Data(_) | Held::Bad => None,
        })
        .collect();
    // Consecutive data blocks of one source are read at once.
    let mut i = 0;
    while i < run.len() {
        if !matches!(run[i].truth, Held::Data(_)) {
            i += 1;
            continue;
        }
        let from = source(&run[i]);
        let mut end = i + 1;
        while end < run.len()
            && matches!(run[end].truth, Held::Data(_))
            && source(&run[end]) == from
        {
            end += 1;
        }
        let (first, n) = (run[i].block, (end - i) as u64);
        let failed = match read(run[i].layer, from, first, n).await {
            Ok(bytes) if bytes.len() as u64 == n * BLOCK => {
                for (k, f) in run[i..end].iter().enumerate() {
                    let b = bytes.slice(k * BLOCK as usize..(k + 1) * BLOCK as usize);
                    out[i + k] = verified(r, f, from, b);
                }
                false
            }
            Ok(bytes) => {
                tracing::warn!(
                    group = r.group,
                    node = from,
                    "scrub: repair read of {n} blocks answered {} bytes",
                    bytes.len()
                );
                true
            }
            Err(e) => {
                tracing::warn!(
                    group = r.group,
                    volume = r.volume,
                    chunk = r.chunk,
                    layer = run[i].layer,
                    block = first,
                    node = from,
                    "scrub: reading the repair data of {n} blocks: {e}"
                );
                true
            }
        };
        if failed {
            // Another holder of the truth may still serve it.
            for (k, f) in run[i..end].iter().enumerate() {
                for &other in f.holders.iter().filter(|&&h| h != from) {
                    match read(f.layer, other, f.block, 1).await {
                        Ok(b) if b.len() as u64 == BLOCK => {
                            out[i + k] = verified(r, f, other, b);
                            break;
                        }
                        Ok(b) => tracing::warn!(
                            group = r.group,
                            node = other,
                            "scrub: repair read of 1 block answered {} bytes",
                            b.len()
                        ),
                        Err(e) => tracing::warn!(
                            group = r.group,
                            volume = r.volume,
                            chunk = r.chunk,
                            layer = f.layer,
                            block = f.block,
                            node = other,
                            "scrub: reading the repair data of 1 block: {e}"
                        ),
                    }
                }
            }
        }
        i = end;
    }
    out
}

/// Block `b` of fix `f` read from node `from`, if it hashes to the truth.
fn verified(r: &Region, f: &Fix, from: u64, b: Bytes) -> Option<(Wanted, Bytes)> {
    match f.truth {
        Held::Data(h) if hash_of(&b) == h => Some((Wanted::Data, b)),
        _ => {
            tracing::info!(
                group = r.group,
                volume = r.volume,
                chunk = r.chunk,
                layer = f.layer,
                block = f.block,
                node = from,
                "scrub: block changed since the mark; its repair waits for the next scrub"
            );
            None
        }
    }
}

/// `n` blocks from `first` of one layer of the region's chunk, from node `from`.
async fn read(
    shared: &Shared,
    r: &Region,
    layer: u64,
    from: u64,
    first: u64,
    n: u64,
) -> Result<Bytes, String> {
    let (v, c) = (r.volume, r.chunk);
    if from == shared.node_id {
        let store = shared
            .chunks
            .existing(r.group)
            .ok_or_else(|| format!("group {} is not hosted here", r.group))?;
        return tokio::task::spawn_blocking(move || {
            store.read_in(v, c, layer, first * BLOCK, n * BLOCK)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string());
    }
    let addr = shared
        .scrub
        .addr_of(from)
        .ok_or_else(|| format!("address of node {from} unknown"))?;
    let offset = u32::try_from(first * BLOCK).map_err(|_| format!("block {first} out of range"))?;
    let len = u32::try_from(n * BLOCK).map_err(|_| format!("{n} blocks too many"))?;
    let mut src = crate::fetch::Source::connect(&shared.security, from, &addr).await?;
    src.ask(crate::fetch::catch_up_req(
        Op::CatchUpRead,
        (r.group, v, c, layer),
        offset,
        len,
    ))
    .await
}

/// Proposes one Repair entry of `run` (consecutive blocks of one layer) with its data;
/// the blocks repaired once it commits (0 if it did not).
async fn propose(
    shared: &Shared,
    r: &Region,
    mark: u64,
    run: &[Fix],
    data: &[Option<(Wanted, Bytes)>],
) -> u64 {
    let layer = run[0].layer;
    let first = run[0].block;
    let n = run.len() as u64;
    let (Ok(offset), Ok(len)) = (u32::try_from(first * BLOCK), u32::try_from(n * BLOCK)) else {
        return 0;
    };
    let wanted: Vec<Wanted> = data.iter().flatten().map(|(w, _)| *w).collect();
    let mut bytes = Vec::with_capacity(run.len() * BLOCK as usize);
    for (_, b) in data.iter().flatten() {
        bytes.extend_from_slice(b);
    }
    let cmd = Command {
        op: CmdOp::Repair,
        volume: r.volume,
        chunk: r.chunk,
        offset,
        len,
        id: 0,
        epoch: 0,
        seq: 0,
        data: Command::repair_data(mark, layer, &wanted, &bytes),
    };
    match super::region::propose(shared, r.group, cmd).await {
        Reply::Ok(_) => {
            for f in run {
                tracing::warn!(
                    group = r.group,
                    volume = r.volume,
                    chunk = r.chunk,
                    layer = f.layer,
                    block = f.block,
                    nodes = ?f.wrong.iter().map(|&(n, _)| n).collect::<Vec<_>>(),
                    truth = ?f.truth,
                    "scrub: block repaired"
                );
            }
            n
        }
        other => {
            tracing::warn!(
                group = r.group,
                volume = r.volume,
                chunk = r.chunk,
                layer,
                block = first,
                "scrub: repair of {n} blocks not committed: {other:?}"
            );
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(layer: u64, block: u64) -> Fix {
        Fix {
            layer,
            block,
            truth: Held::Zero,
            holders: vec![1],
            wrong: vec![(2, Held::Bad)],
        }
    }

    #[test]
    fn runs_are_consecutive_blocks_of_one_layer_at_most_256() {
        let mut fixes = vec![fix(1, 3), fix(1, 4), fix(1, 6), fix(2, 7)];
        let got: Vec<Vec<u64>> = runs(&fixes)
            .iter()
            .map(|r| r.iter().map(|f| f.block).collect())
            .collect();
        assert_eq!(got, vec![vec![3, 4], vec![6], vec![7]]);
        fixes = (0..600).map(|b| fix(1, b)).collect();
        let lens: Vec<usize> = runs(&fixes).iter().map(|r| r.len()).collect();
        assert_eq!(lens, vec![256, 256, 88]);
        assert!(runs(&[]).is_empty());
    }

    #[tokio::test]
    async fn a_failed_read_of_repair_data_falls_back_to_another_holder() {
        let region = Region {
            group: 1,
            volume: 1,
            chunk: 0,
            first: 0,
            count: 8,
        };
        let good = Bytes::from(vec![5u8; BLOCK as usize]);
        let data = |block| Fix {
            layer: 1,
            block,
            truth: Held::Data(hash_of(&good)),
            holders: vec![2, 3],
            wrong: vec![(1, Held::Bad)],
        };
        let run = [data(4), data(5)];
        let asked = std::sync::Mutex::new(Vec::new());
        // Node 2 (the first holder) fails; node 3 serves single blocks.
        let got = gather(1, &region, &run, |_, from, first, n| {
            asked.lock().expect("lock").push((from, first, n));
            let good = good.clone();
            async move {
                if from == 2 {
                    Err("disk failed".to_string())
                } else {
                    Ok(good)
                }
            }
        })
        .await;
        assert_eq!(got, vec![Some((Wanted::Data, good.clone())); 2]);
        assert_eq!(
            *asked.lock().expect("lock"),
            vec![(2, 4, 2), (3, 4, 1), (3, 5, 1)]
        );
    }

    #[test]
    fn the_hash_is_blake3s_first_eight_bytes_little_endian() {
        let block = vec![7u8; 4096];
        let full = blake3::hash(&block);
        let want = u64::from_le_bytes(full.as_bytes()[..8].try_into().expect("8"));
        assert_eq!(hash_of(&block), want);
    }
}

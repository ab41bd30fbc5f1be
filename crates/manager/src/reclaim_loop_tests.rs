//! The reclaim's pure decisions: which chunks to merge at what cost, from the union of
//! every replica's usage; how a chunk's ops are batched per piece; what the check before
//! `ReclaimDone` sends back for a retry.

use super::*;

fn lb(chunk: u64, layer: u64, kib: u64) -> LayerBytes {
    LayerBytes {
        chunk,
        layer,
        bytes: kib << 10,
    }
}

fn job(low: u64, top: Option<u64>, seq: u64, next_chunk: u64) -> ReclaimJob {
    ReclaimJob {
        volume_id: 1,
        low,
        top,
        seq,
        next_chunk,
        chunk_size: 8 << 20,
        groups: Vec::new(),
    }
}

/// A chunk is merged when it has two or more layers in the range and lies at or after
/// the reclaim's progress. Frozen: it costs the range's layers above the lowest (at
/// least a block). Live (N = 6): the frozen pass over `low..=5` costs the same, the live
/// pass (only where layer 6 exists) the layers of `low..=5`, which it copies into 6; layer
/// 6 itself is never copied.
#[test]
fn chunks_with_two_layers_in_the_range_are_merged_at_the_cost_of_what_is_copied() {
    let layers = [
        lb(0, 2, 1),
        lb(0, 3, 1),
        lb(1, 1, 7),
        lb(1, 2, 7),
        lb(2, 2, 100),
        lb(2, 3, 50),
        lb(2, 4, 10),
        lb(2, 5, 999),
        lb(2, 6, 5),
        lb(3, 3, 0),
        lb(3, 4, 0),
        lb(4, 2, 20),
        lb(4, 6, 3000),
        lb(9, 2, 1),
        lb(9, 3, 1),
    ];
    let frozen = job(2, Some(4), 6, 1);
    assert_eq!(
        chunks_to_merge(&frozen, &[0, 1, 2, 3], &layers),
        [(2, 60 << 10), (3, BLOCK_SIZE)]
    );
    let live = job(2, None, 6, 1);
    assert_eq!(
        chunks_to_merge(&live, &[1, 2, 3, 4], &layers),
        [
            (2, (50 + 10 + 999 + 100 + 50 + 10 + 999) << 10),
            (3, BLOCK_SIZE),
            (4, 20 << 10)
        ]
    );
}

/// The plan takes every layer any replica reports: a leader that counted late (or whose
/// merge was skipped elsewhere) does not hide a chunk another replica still holds in two
/// layers. A group none of whose replicas answered has no union.
#[test]
fn a_chunk_any_replica_holds_in_two_layers_is_merged() {
    let replies = vec![
        (1, Ok(vec![lb(0, 2, 4)])),
        (2, Ok(vec![lb(0, 2, 8), lb(0, 3, 1)])),
        (3, Err("down".to_string())),
    ];
    let all = union(&replies).unwrap();
    assert_eq!(all, [lb(0, 2, 8), lb(0, 3, 1)]);
    assert_eq!(
        chunks_to_merge(&job(2, Some(3), 4, 0), &[0], &all),
        [(0, BLOCK_SIZE)]
    );
    assert_eq!(union(&[(1, Err("down".to_string()))]), None);
}

/// Before `ReclaimDone`, every replica must show the work done: the lowest chunk some
/// replica still holds in two layers of the frozen part, or (merged in this pass) of the
/// whole live range, is retried; a chunk written at N after its pass is live data, left
/// alone; a replica that did not answer leaves the reclaim unchecked.
#[test]
fn the_check_before_done_finds_the_lowest_chunk_any_replica_holds_unmerged() {
    let live = job(2, None, 5, 0);
    let merged = BTreeSet::from([1, 3]);
    let clean = vec![lb(1, 5, 4), lb(3, 2, 4), lb(4, 2, 4), lb(4, 5, 4)];
    let answers = BTreeMap::from([
        (7, vec![(1, Ok(clean.clone())), (2, Ok(clean.clone()))]),
        (8, vec![(3, Ok(vec![lb(6, 1, 9), lb(6, 2, 9)]))]),
    ]);
    assert_eq!(leftover(&live, &merged, &answers), Check::Clean);
    let mut lagging = answers.clone();
    lagging.insert(
        8,
        vec![(
            3,
            Ok(vec![lb(9, 2, 1), lb(9, 4, 1), lb(3, 2, 1), lb(3, 5, 1)]),
        )],
    );
    assert_eq!(
        leftover(&live, &merged, &lagging),
        Check::Unmerged {
            chunk: 3,
            group: 8,
            node: 3
        },
        "chunk 3's live pass was skipped on node 3, and is lower than chunk 9"
    );
    let mut silent = answers;
    silent.insert(8, vec![(3, Err("node 3: refused".to_string()))]);
    assert!(matches!(
        leftover(&live, &merged, &silent),
        Check::Unanswered(why) if why.contains("node 3")
    ));
}

/// One batch per merge piece, each behind the fence; a drop goes with the piece before it.
#[test]
fn a_chunks_ops_are_batched_one_piece_at_a_time_behind_the_fence() {
    let ops = reclaim_ops(1, 0, 8 << 20, 1, None, 3);
    let batches = piece_batches(ops.clone());
    assert_eq!(batches.len(), 4);
    for b in &batches {
        assert_eq!(b[0], ops[0], "each batch starts with the fence");
        assert!(matches!(b[1], GroupOp::Merge { .. }));
    }
    assert!(matches!(
        batches[1][2],
        GroupOp::DropMerged { live: false, .. }
    ));
    assert!(matches!(
        batches[3][2],
        GroupOp::DropMerged { live: true, .. }
    ));
    let flat: Vec<GroupOp> = batches.iter().flat_map(|b| b[1..].to_vec()).collect();
    assert_eq!(flat, ops[1..], "every op once, in order");
}

//! The comparison's promises: a majority's valid state is the truth, `Bad` never is, a
//! block changed since the mark anywhere is not compared, without a majority nothing is
//! repaired, and replicas holding different layers are no block difference.

use tessera_proto::control::{BlockCheck, RegionScan, ScannedBlock};

use super::*;

const A: BlockCheck = BlockCheck::Data { hash: 0xaaaa };
const B: BlockCheck = BlockCheck::Data { hash: 0xbbbb };
const V3: [u64; 3] = [1, 2, 3];

/// A replica's scan of a chunk with only layer 1, holding `blocks` of it.
fn scan(blocks: &[(u64, BlockCheck)]) -> RegionScan {
    let blocks: Vec<(u64, u64, BlockCheck)> = blocks.iter().map(|&(b, s)| (1, b, s)).collect();
    layered(&[1], &blocks)
}

/// A replica's scan of a chunk with `layers`, holding `blocks` (layer, block, state).
fn layered(layers: &[u64], blocks: &[(u64, u64, BlockCheck)]) -> RegionScan {
    RegionScan {
        holds_chunk: true,
        link: None,
        blocks: blocks
            .iter()
            .map(|&(layer, block, state)| ScannedBlock {
                layer,
                block,
                state,
            })
            .collect(),
        layers: layers.to_vec(),
        dirty: Vec::new(),
        all_dirty: false,
    }
}

#[test]
fn one_bad_copy_of_three_is_repaired_to_the_other_two() {
    let f = compare(
        &V3,
        &[
            (1, scan(&[(7, A)])),
            (2, scan(&[(7, BlockCheck::Bad)])),
            (3, scan(&[(7, A)])),
        ],
    );
    assert_eq!(f.compared, 1);
    assert_eq!(f.bad, vec![(2, 1, 7)]);
    assert!(f.divergent.is_empty());
    assert!(f.unrepairable.is_empty());
    assert_eq!(
        f.fixes,
        vec![Fix {
            layer: 1,
            block: 7,
            truth: Held::Data(0xaaaa),
            holders: vec![1, 3],
            wrong: vec![(2, Held::Bad)],
        }]
    );
}

#[test]
fn a_divergent_valid_copy_is_repaired_to_the_majority() {
    let f = compare(
        &V3,
        &[
            (1, scan(&[(0, B)])),
            (2, scan(&[(0, A)])),
            (3, scan(&[(0, A)])),
        ],
    );
    assert!(f.bad.is_empty());
    assert_eq!(f.divergent, vec![(1, 0)]);
    assert_eq!(f.fixes.len(), 1);
    assert_eq!(f.fixes[0].truth, Held::Data(0xaaaa));
    assert_eq!(f.fixes[0].holders, vec![2, 3]);
    assert_eq!(f.fixes[0].wrong, vec![(1, Held::Data(0xbbbb))]);
}

#[test]
fn the_same_block_bad_on_two_of_three_is_unrepairable() {
    let f = compare(
        &V3,
        &[
            (1, scan(&[(4, BlockCheck::Bad)])),
            (2, scan(&[(4, A)])),
            (3, scan(&[(4, BlockCheck::Bad)])),
        ],
    );
    assert_eq!(f.bad, vec![(1, 1, 4), (3, 1, 4)]);
    assert!(f.fixes.is_empty());
    assert_eq!(f.unrepairable.len(), 1);
    assert_eq!(
        f.unrepairable[0].states,
        vec![(1, Held::Bad), (2, Held::Data(0xaaaa)), (3, Held::Bad)]
    );
}

#[test]
fn a_block_absent_on_one_replica_is_written_there() {
    let f = compare(
        &V3,
        &[(1, scan(&[(2, A)])), (2, scan(&[])), (3, scan(&[(2, A)]))],
    );
    assert_eq!(f.divergent, vec![(1, 2)]);
    assert_eq!(f.fixes[0].wrong, vec![(2, Held::Absent)]);
}

#[test]
fn a_block_absent_on_a_majority_is_reported_never_cleared_on_its_holder() {
    // The only valid copy is on 3; 1 holds the chunk without the block, 2 not the chunk:
    // 2's absence is no vote, and no absence is a truth against a valid copy.
    let f = compare(
        &V3,
        &[
            (1, scan(&[])),
            (
                2,
                RegionScan {
                    holds_chunk: false,
                    ..scan(&[])
                },
            ),
            (3, scan(&[(2, BlockCheck::Zero)])),
        ],
    );
    assert!(f.fixes.is_empty(), "{f:?}");
    assert_eq!(f.unrepairable.len(), 1);
    // 2 lost the chunk that 1 and 3 hold as a plain chunk: compared as holding layer 1
    // with nothing in it (so that it can be given the majority's blocks), it lacks the
    // block too; still no truth against the valid copy.
    assert!(f.unrepairable[0].absent_on_majority);
    // Two replicas holding the chunk lack a block the third holds as data: reported as
    // absent on a majority, never cleared.
    let f = compare(&V3, &[(1, scan(&[])), (2, scan(&[])), (3, scan(&[(2, A)]))]);
    assert!(f.fixes.is_empty(), "{f:?}");
    assert_eq!(
        f.unrepairable,
        vec![Unrepairable {
            layer: 1,
            block: 2,
            states: vec![
                (1, Held::Absent),
                (2, Held::Absent),
                (3, Held::Data(0xaaaa))
            ],
            absent_on_majority: true,
        }]
    );
    // With a voter silent and no majority either way: incomplete, and nothing cleared.
    let f = compare(&V3, &[(1, scan(&[])), (2, scan(&[(2, A)]))]);
    assert!(
        f.fixes.is_empty() && f.unrepairable.is_empty() && f.incomplete,
        "{f:?}"
    );
}

#[test]
fn a_bad_copy_no_valid_copy_backs_is_cleared_by_the_absent_majority() {
    let f = compare(
        &V3,
        &[
            (1, scan(&[])),
            (2, scan(&[])),
            (3, scan(&[(2, BlockCheck::Bad)])),
        ],
    );
    assert_eq!(f.fixes[0].truth, Held::Absent);
    assert_eq!(f.fixes[0].wrong, vec![(3, Held::Bad)]);
    // But replicas without the chunk are no votes for its absence.
    let gone = RegionScan {
        holds_chunk: false,
        ..scan(&[])
    };
    let f = compare(
        &V3,
        &[
            (1, gone.clone()),
            (2, gone),
            (3, scan(&[(2, BlockCheck::Bad)])),
        ],
    );
    assert!(f.fixes.is_empty(), "{f:?}");
    // Only one voter has the layer: nothing to compare it with; the rot is still found,
    // and the layers the replicas hold differ.
    assert!(f.unrepairable.is_empty() && f.compared == 0, "{f:?}");
    assert_eq!(f.bad, vec![(3, 1, 2)]);
    assert_eq!(f.layers, Some(vec![(1, vec![]), (2, vec![]), (3, vec![1])]));
}

#[test]
fn a_replica_that_lost_a_plain_chunk_is_given_the_majoritys_blocks() {
    // It has none of the chunk (whatever blocks it lists are no state of it); the other two
    // hold it with layer 1 only and no link: it is repaired to their blocks, layer 1
    // being the one layer a repair may create.
    let mut lost = scan(&[(1, B)]);
    lost.holds_chunk = false;
    let f = compare(
        &V3,
        &[
            (1, scan(&[(1, A)])),
            (2, lost.clone()),
            (3, scan(&[(1, A)])),
        ],
    );
    assert_eq!(f.compared, 1);
    assert_eq!(f.layers, None, "{f:?}");
    assert_eq!(f.fixes.len(), 1, "{f:?}");
    assert_eq!(f.fixes[0].wrong, vec![(2, Held::Absent)]);
    assert_eq!(f.fixes[0].truth, Held::Data(0xaaaa));
    // Where the majority's chunk has snapshot layers, it is only reported: a repair never
    // creates a layer above 1, and layer 1 alone would be an older image.
    let f = compare(
        &V3,
        &[
            (1, layered(&[1, 4], &[(1, 1, A), (4, 1, B)])),
            (2, lost),
            (3, layered(&[1, 4], &[(1, 1, A), (4, 1, B)])),
        ],
    );
    assert!(f.fixes.is_empty() && f.divergent.is_empty(), "{f:?}");
    assert_eq!(
        f.layers,
        Some(vec![(1, vec![1, 4]), (2, vec![]), (3, vec![1, 4])])
    );
}

#[test]
fn blocks_dirty_on_any_replica_are_not_compared() {
    let mut moved = scan(&[(3, B), (5, B)]);
    moved.dirty = vec![3];
    let f = compare(
        &V3,
        &[
            (1, moved),
            (2, scan(&[(3, A), (5, A)])),
            (3, scan(&[(3, A), (5, A)])),
        ],
    );
    assert_eq!(f.compared, 1);
    assert_eq!(f.fixes.len(), 1);
    assert_eq!(f.fixes[0].block, 5);
    let mut whole = scan(&[(5, B)]);
    whole.all_dirty = true;
    let f = compare(
        &V3,
        &[(1, whole), (2, scan(&[(5, A)])), (3, scan(&[(5, A)]))],
    );
    assert_eq!(f, Findings::default());
}

#[test]
fn two_answers_of_three_that_disagree_are_incomplete_not_unrepairable() {
    let f = compare(&V3, &[(1, scan(&[(9, A)])), (2, scan(&[(9, B)]))]);
    assert!(f.fixes.is_empty());
    assert!(f.unrepairable.is_empty(), "{f:?}");
    assert!(f.incomplete);
    assert_eq!(f.divergent, vec![(1, 9)]);
    // Two that agree are a majority of three: the third, silent, is not repaired, and
    // nothing is left undecided.
    let f = compare(&V3, &[(1, scan(&[(9, A)])), (2, scan(&[(9, A)]))]);
    assert_eq!(
        f,
        Findings {
            compared: 1,
            ..Findings::default()
        }
    );
}

#[test]
fn a_majority_among_the_answers_that_came_still_repairs() {
    // Five voters, four answers: three agree (a majority of five), one is bad.
    let f = compare(
        &[1, 2, 3, 4, 5],
        &[
            (1, scan(&[(0, A)])),
            (2, scan(&[(0, A)])),
            (3, scan(&[(0, BlockCheck::Bad)])),
            (4, scan(&[(0, A)])),
        ],
    );
    assert_eq!(f.fixes.len(), 1);
    assert_eq!(f.fixes[0].wrong, vec![(3, Held::Bad)]);
    assert!(!f.incomplete && f.unrepairable.is_empty());
}

#[test]
fn a_voter_counts_once_and_only_voters_count() {
    // Node 1 answering twice, and node 9 (no voter), make no majority of {1, 2, 3} for B.
    let f = compare(
        &[1, 2, 3, 3],
        &[
            (1, scan(&[(0, B)])),
            (1, scan(&[(0, B)])),
            (9, scan(&[(0, B)])),
            (2, scan(&[(0, A)])),
        ],
    );
    assert!(f.fixes.is_empty(), "{f:?}");
    assert!(f.incomplete);
}

#[test]
fn three_different_states_are_unrepairable() {
    let f = compare(
        &V3,
        &[
            (1, scan(&[(0, A)])),
            (2, scan(&[(0, B)])),
            (3, scan(&[(0, BlockCheck::Zero)])),
        ],
    );
    assert_eq!(f.unrepairable.len(), 1);
    assert!(f.fixes.is_empty());
}

#[test]
fn a_one_voter_group_finds_rot_but_cannot_repair_it() {
    let f = compare(&[1], &[(1, scan(&[(0, A), (1, BlockCheck::Bad)]))]);
    assert_eq!(f.compared, 2);
    assert_eq!(f.bad, vec![(1, 1, 1)]);
    assert!(f.fixes.is_empty());
    assert_eq!(f.unrepairable.len(), 1);
    assert_eq!(f.unrepairable[0].block, 1);
}

#[test]
fn a_lone_answer_of_three_decides_nothing() {
    // Fewer than a majority of the voters are known to have the layer: not compared.
    let f = compare(&V3, &[(1, scan(&[(0, A)]))]);
    assert_eq!(
        f,
        Findings {
            incomplete: true,
            ..Findings::default()
        }
    );
    // Even with nothing listed: the silent two may hold what it lacks.
    assert!(compare(&V3, &[(1, scan(&[]))]).incomplete);
}

#[test]
fn differing_links_are_reported() {
    let mut linked = scan(&[]);
    linked.link = Some((4, 2));
    let f = compare(&V3, &[(1, scan(&[])), (2, linked), (3, scan(&[]))]);
    assert_eq!(f.links, Some(vec![(1, None), (2, Some((4, 2))), (3, None)]));
}

/// The layers of a merge skipped on a full disk: node 1 kept source layer 5 (holding blocks
/// 3 and 4) and a target layer 9 without them; nodes 2 and 3 merged 5 into 9 and dropped
/// 5. All three hold layer 1 (block 0) and block 7 of layer 9.
fn skipped_merge(rot_on_1: Option<(u64, u64)>) -> Vec<(u64, RegionScan)> {
    let state = |layer, block| {
        if rot_on_1 == Some((layer, block)) {
            BlockCheck::Bad
        } else {
            A
        }
    };
    let merged = layered(&[1, 9], &[(1, 0, A), (9, 3, B), (9, 4, B), (9, 7, A)]);
    vec![
        (
            1,
            layered(
                &[1, 5, 9],
                &[
                    (1, 0, state(1, 0)),
                    (5, 3, B),
                    (5, 4, B),
                    (9, 7, state(9, 7)),
                ],
            ),
        ),
        (2, merged.clone()),
        (3, merged),
    ]
}

#[test]
fn replicas_holding_the_same_data_in_different_layers_are_not_repaired() {
    let f = compare(&V3, &skipped_merge(None));
    // Neither the source layer only node 1 has cleared there, nor the merged blocks
    // written into its target layer: that is a layering difference, not a block one.
    assert!(f.fixes.is_empty(), "{f:?}");
    assert!(f.divergent.is_empty() && f.unrepairable.is_empty() && f.bad.is_empty());
    assert!(!f.incomplete);
    // Compared: (1, 0) and (9, 7), which no layer only some replicas have holds.
    assert_eq!(f.compared, 2);
    assert_eq!(
        f.layers,
        Some(vec![(1, vec![1, 5, 9]), (2, vec![1, 9]), (3, vec![1, 9])])
    );
}

#[test]
fn rot_in_a_layer_all_replicas_have_is_repaired_despite_a_skipped_merge() {
    for rot in [(1, 0), (9, 7)] {
        let f = compare(&V3, &skipped_merge(Some(rot)));
        assert_eq!(
            f.fixes,
            vec![Fix {
                layer: rot.0,
                block: rot.1,
                truth: Held::Data(0xaaaa),
                holders: vec![2, 3],
                wrong: vec![(1, Held::Bad)],
            }],
            "{rot:?}"
        );
        assert_eq!(f.bad, vec![(1, rot.0, rot.1)]);
        assert!(f.layers.is_some());
    }
}

#[test]
fn a_layer_two_of_three_have_is_compared_between_them_alone() {
    let short = layered(&[1], &[(1, 0, A)]);
    // They disagree: no majority of the three voters backs either: unrepairable.
    let f = compare(
        &V3,
        &[
            (1, layered(&[1, 5], &[(1, 0, A), (5, 2, A)])),
            (2, layered(&[1, 5], &[(1, 0, A), (5, 2, B)])),
            (3, short.clone()),
        ],
    );
    assert!(f.fixes.is_empty(), "{f:?}");
    assert_eq!(
        f.unrepairable,
        vec![Unrepairable {
            layer: 5,
            block: 2,
            states: vec![(1, Held::Data(0xaaaa)), (2, Held::Data(0xbbbb))],
            absent_on_majority: false,
        }]
    );
    assert_eq!(f.divergent, vec![(5, 2)]);
    assert!(f.layers.is_some());
    // They agree: nothing to repair, node 3's lack of the layer is no absence to fix.
    let f = compare(
        &V3,
        &[
            (1, layered(&[1, 5], &[(1, 0, A), (5, 2, A)])),
            (2, layered(&[1, 5], &[(1, 0, A), (5, 2, A)])),
            (3, short),
        ],
    );
    assert!(f.fixes.is_empty() && f.unrepairable.is_empty(), "{f:?}");
    assert_eq!(f.compared, 2);
}

#[test]
fn a_scan_without_layers_has_the_layers_it_lists_blocks_of() {
    let old = |blocks: &[(u64, u64, BlockCheck)]| layered(&[], blocks);
    // Node 1 (from before `layers`) lists a block of layer 5, which 2 and 3 lack: not
    // compared, reported; layer 1, which all three list, still is, and its rot repaired.
    let f = compare(
        &V3,
        &[
            (1, old(&[(1, 0, BlockCheck::Bad), (5, 3, B)])),
            (2, layered(&[1], &[(1, 0, A), (1, 3, A)])),
            (3, layered(&[1], &[(1, 0, A), (1, 3, A)])),
        ],
    );
    assert_eq!(f.fixes.len(), 1, "{f:?}");
    assert_eq!((f.fixes[0].layer, f.fixes[0].block), (1, 0));
    assert_eq!(f.fixes[0].wrong, vec![(1, Held::Bad)]);
    assert_eq!(
        f.layers,
        Some(vec![(1, vec![1, 5]), (2, vec![1]), (3, vec![1])])
    );
    // Listing no block of layer 1, it may have the layer or not: no vote for absence, not
    // repaired, and no layer difference claimed.
    let f = compare(
        &V3,
        &[(1, old(&[])), (2, scan(&[(1, A)])), (3, scan(&[(1, A)]))],
    );
    assert!(f.fixes.is_empty() && f.layers.is_none(), "{f:?}");
    assert_eq!(f.compared, 1);
}

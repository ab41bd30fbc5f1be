//! Promises of a chunk linked to RESTORED, on real files: what no layer holds is the
//! backup's (Unfilled, never read from volume `RESTORED`); reads name those blocks; trims
//! over them are markers a hydrate skips; a partial write needing one changes nothing;
//! hydrate fills only while linked; links, unlinks, replays and the catch-up's copy.

use crate::chunk::layer_tests::copies::{copy_layers, files_of};
use crate::chunk::layer_tests::{fill, store};
use crate::chunk::*;
use crate::{Error, Unfilled};

const B: u64 = BLOCK_SIZE;
const BACKUP: u64 = 42;

/// A store holding data under volume `RESTORED` (as if one existed: a read through the
/// link would find it) and chunk 2/0 restored.
fn restored() -> (tempfile::TempDir, Arc<ChunkStore>) {
    let (tmp, s) = store();
    s.write(RESTORED, 0, 0, &fill(0xee, 8)).unwrap();
    s.link(2, 0, RESTORED, BACKUP).unwrap();
    (tmp, s)
}

fn unfilled(got: crate::Result<impl std::fmt::Debug>) -> Unfilled {
    match got {
        Err(Error::Unfilled(u)) => *u,
        other => panic!("expected Unfilled, got {other:?}"),
    }
}

#[test]
fn blocks_no_layer_holds_are_unfilled_and_reads_name_them() {
    let (_tmp, s) = restored();
    assert!(s.restoring(2, 0));
    assert!(!s.restoring(1, 0));
    s.write_seq(2, 0, B, &fill(1, 1), 1).unwrap();
    s.write_seq(2, 0, 3 * B, &fill(3, 1), 2).unwrap();
    use BlockKind::{Data, Unfilled as U};
    assert_eq!(
        s.block_status(2, 0, 0, 5 * B, 0).unwrap(),
        [U, Data, U, Data, U]
    );
    // Whole read: zeroes in place of the unfilled blocks, their indexes ascending.
    let u = unfilled(s.read(2, 0, 0, 5 * B));
    let mut want = fill(0, 5);
    want[B as usize..2 * B as usize].fill(1);
    want[3 * B as usize..4 * B as usize].fill(3);
    assert_eq!(u.data, want);
    assert_eq!(u.blocks, [0, 2, 4]);
    // A read starting inside a block: the data is the read's, the indexes the chunk's.
    let u = unfilled(s.read_as_of(2, 0, B + 100, 2 * B, 0));
    assert_eq!(u.data, want[(B + 100) as usize..(3 * B + 100) as usize]);
    assert_eq!(u.blocks, [2]);
    // As of snapshot 1 the layer-2 block is not there: unfilled too.
    assert_eq!(unfilled(s.read_as_of(2, 0, 3 * B, 10, 1)).blocks, [3]);
    assert_eq!(unfilled(s.read(2, 0, 1000 * B + 7, 1)).blocks, [1000]);
    // Only held blocks: an ordinary read.
    assert_eq!(s.read(2, 0, B, B).unwrap(), fill(1, 1));
    assert_eq!(s.read(2, 0, 3 * B + 5, 10).unwrap(), vec![3u8; 10]);
}

#[test]
fn trims_over_unfilled_blocks_are_markers_a_hydrate_skips() {
    let (tmp, s) = restored();
    s.discard_seq(2, 0, 0, 2 * B, 1).unwrap();
    s.write_zeroes_seq(2, 0, 2 * B, B, 1).unwrap();
    s.discard_seq(2, 0, 3 * B, B, 2).unwrap();
    // Whole-block writes just write.
    s.write_seq(2, 0, 4 * B, &fill(4, 2), 1).unwrap();
    use BlockKind::{Data, Unfilled as U, Zero};
    let kinds = [Zero, Zero, Zero, Zero, Data, Data, U];
    assert_eq!(s.block_status(2, 0, 0, 7 * B, 0).unwrap(), kinds);
    s.sync().unwrap();
    drop(s);
    let s = ChunkStore::open(tmp.path()).unwrap();
    assert_eq!(s.block_status(2, 0, 0, 7 * B, 0).unwrap(), kinds);
    s.hydrate(2, 0, 0, &fill(9, 8)).unwrap();
    let mut want = fill(0, 8);
    want[4 * B as usize..6 * B as usize].fill(4);
    want[6 * B as usize..].fill(9);
    assert_eq!(s.read(2, 0, 0, 8 * B).unwrap(), want);
}

#[test]
fn a_partial_write_needing_an_unfilled_block_changes_nothing() {
    let (tmp, s) = restored();
    s.write_seq(2, 0, 0, &fill(1, 1), 1).unwrap();
    s.hydrate(2, 0, 5 * B, &fill(5, 1)).unwrap();
    let before = |s: &ChunkStore| {
        (
            s.block_status(2, 0, 0, 8 * B, 0).unwrap(),
            files_of(tmp.path()),
        )
    };
    let was = before(&s);
    type Try = Box<dyn Fn(&ChunkStore) -> crate::Result<()>>;
    let cases: Vec<(Try, Vec<u32>)> = vec![
        (Box::new(|s| s.write_seq(2, 0, B + 10, b"abc", 1)), vec![1]),
        // Head and tail both unfilled: both named, the whole block between not written.
        (
            Box::new(|s| s.write_seq(2, 0, B + 10, &vec![7u8; 2 * B as usize], 1)),
            vec![1, 3],
        ),
        (
            Box::new(|s| s.write_zeroes_seq(2, 0, B + 10, 3 * B, 1)),
            vec![1, 4],
        ),
        (
            Box::new(|s| s.discard_seq(2, 0, 2 * B + 1, 2 * B, 1)),
            vec![2, 4],
        ),
        // Only the tail is unfilled (the head is held in layer 1).
        (Box::new(|s| s.discard_seq(2, 0, 100, 2 * B, 2)), vec![2]),
        (
            Box::new(|s| s.write_seq(2, 0, 7 * B - 1, b"xy", 2)),
            vec![6, 7],
        ),
    ];
    for replaying in [false, true] {
        s.set_replaying(replaying);
        for (i, (op, blocks)) in cases.iter().enumerate() {
            let u = unfilled(op(&s));
            assert_eq!((&u.blocks, u.data.len()), (blocks, 0), "case {i}");
            assert_eq!(before(&s), was, "case {i} changed the chunk");
        }
    }
    s.set_replaying(false);
    // Held in the layer written, filled, or held below: partial writes complete.
    s.write_seq(2, 0, 10, b"own", 1).unwrap();
    s.write_seq(2, 0, 5 * B + 10, b"filled", 1).unwrap();
    s.write_seq(2, 0, 20, b"below", 2).unwrap();
    let got = s.read(2, 0, 0, B).unwrap();
    assert_eq!(
        (&got[10..13], &got[20..25], got[30]),
        (&b"own"[..], &b"below"[..], 1)
    );
    let got = s.read(2, 0, 5 * B, B).unwrap();
    assert_eq!((&got[10..16], got[0]), (&b"filled"[..], 5));
}

#[test]
fn hydrate_fills_only_a_chunk_linked_to_restored() {
    let (_tmp, s) = restored();
    // Never restored: nothing written.
    s.hydrate(1, 0, 0, &fill(9, 2)).unwrap();
    assert_eq!(s.chunk_blocks(1, 0).unwrap(), 0);
    // A clone's chunk is linked, but not to RESTORED.
    s.link(3, 0, 2, 0).unwrap();
    s.hydrate(3, 0, 0, &fill(9, 1)).unwrap();
    assert_eq!(s.chunk_blocks_in(3, 0, 1).unwrap(), 0);
    // Filled, unlinked, then trimmed (a plain chunk's trim is a hole again): a late
    // hydrate must not resurrect the backup under the trim.
    s.hydrate(2, 0, 0, &fill(9, 2)).unwrap();
    s.unlink(2, 0).unwrap();
    assert!(!s.restoring(2, 0));
    s.discard_seq(2, 0, 0, B, 1).unwrap();
    assert_eq!(s.block_status(2, 0, 0, B, 0).unwrap(), [BlockKind::Hole]);
    s.hydrate(2, 0, 0, &fill(8, 2)).unwrap();
    let mut want = fill(0, 3);
    want[B as usize..2 * B as usize].fill(9);
    // Unheld blocks of an unlinked restored chunk are zeroes (never volume RESTORED's).
    assert_eq!(s.read(2, 0, 0, 3 * B).unwrap(), want);
}

#[test]
fn restored_links_are_idempotent_on_chunks_with_or_without_blocks() {
    let (tmp, s) = restored();
    s.link(2, 0, RESTORED, BACKUP).unwrap();
    s.write_seq(4, 0, 0, &fill(4, 1), 1).unwrap();
    s.link(4, 0, RESTORED, BACKUP).unwrap();
    s.link(4, 0, RESTORED, BACKUP).unwrap();
    assert!(matches!(
        s.link(4, 0, RESTORED, BACKUP + 1),
        Err(Error::Refused(_))
    ));
    assert_eq!(
        s.block_status(4, 0, 0, 2 * B, 0).unwrap(),
        [BlockKind::Data, BlockKind::Unfilled]
    );
    s.sync().unwrap();
    drop(s);
    let s = ChunkStore::open(tmp.path()).unwrap();
    for v in [2, 4] {
        assert_eq!(s.link_of(v, 0).unwrap(), Some((RESTORED, BACKUP)));
        assert!(s.restoring(v, 0));
    }
    s.unlink(4, 0).unwrap();
    s.unlink(4, 0).unwrap();
    assert!(!s.restoring(4, 0));
    assert_eq!(
        &s.read(4, 0, 0, 2 * B).unwrap()[B as usize..],
        &fill(0, 1)[..]
    );
}

/// An Unlink of a RESTORED link replayed is eager too, keeping no parent: the replay's
/// partial writes complete from layer 1, zeroes elsewhere (every block the backup held was
/// filled, durably, before the Unlink).
#[test]
fn a_restored_link_kept_for_a_replay_reads_as_holes() {
    let (_tmp, s) = restored();
    s.hydrate(2, 0, 0, &fill(5, 1)).unwrap();
    s.set_replaying(true);
    s.unlink(2, 0).unwrap();
    s.write_seq(2, 0, B + 10, b"abc", 1).unwrap();
    s.write_seq(2, 0, 10, b"def", 1).unwrap();
    s.set_replaying(false);
    let mut want = fill(5, 1);
    want[10..13].copy_from_slice(b"def");
    want.extend(fill(0, 1));
    want[(B + 10) as usize..(B + 13) as usize].copy_from_slice(b"abc");
    assert_eq!(s.read(2, 0, 0, 2 * B).unwrap(), want);
}

/// The catch-up copies a RESTORED link like any other, on a chunk with or without blocks.
#[test]
fn the_catch_up_copies_restored_links() {
    let (_a, from) = restored();
    let (_b, to) = store();
    from.link(5, 0, RESTORED, BACKUP).unwrap();
    from.hydrate(2, 0, B, &fill(1, 2)).unwrap();
    from.discard_seq(2, 0, 4 * B, B, 1).unwrap();
    let listed = from.served_list_layers().unwrap();
    for v in [2, 5] {
        let k = LayerKey {
            volume: v,
            chunk: 0,
            layer: 1,
        };
        assert!(listed.contains(&k), "{v}: {listed:?}");
    }
    copy_layers(&from, &to);
    for v in [2, 5] {
        assert_eq!(to.link_of(v, 0).unwrap(), Some((RESTORED, BACKUP)));
        assert!(to.restoring(v, 0));
        assert_eq!(
            from.block_status(v, 0, 0, 6 * B, 0).unwrap(),
            to.block_status(v, 0, 0, 6 * B, 0).unwrap()
        );
        assert_eq!(
            unfilled(from.read(v, 0, 0, 6 * B)),
            unfilled(to.read(v, 0, 0, 6 * B))
        );
    }
}

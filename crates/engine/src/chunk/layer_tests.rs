//! Promises of layers, links, flatten, rollback and the catch-up's raw access, on real
//! files.

use rand::{Rng, SeedableRng};

use super::*;

const B: u64 = BLOCK_SIZE;

pub(super) fn store() -> (tempfile::TempDir, Arc<ChunkStore>) {
    let tmp = tempfile::tempdir().unwrap();
    let s = ChunkStore::open(tmp.path()).unwrap();
    (tmp, s)
}

/// `blocks` blocks of byte `v`.
pub(super) fn fill(v: u8, blocks: u64) -> Vec<u8> {
    vec![v; (blocks * B) as usize]
}

pub(super) fn read(s: &ChunkStore, volume: u64, chunk: u64, blocks: u64, as_of: u64) -> Vec<u8> {
    s.read_as_of(volume, chunk, 0, blocks * B, as_of)
        .unwrap()
        .to_vec()
}

/// `image` with block `i` replaced by `bytes` (a whole block) .
fn with_block(mut image: Vec<u8>, i: u64, bytes: &[u8]) -> Vec<u8> {
    image[(i * B) as usize..((i + 1) * B) as usize].copy_from_slice(bytes);
    image
}

fn reopen(tmp: &tempfile::TempDir, s: Arc<ChunkStore>) -> Arc<ChunkStore> {
    s.sync().unwrap();
    drop(s);
    ChunkStore::open(tmp.path()).unwrap()
}

#[test]
fn a_write_after_a_snapshot_keeps_the_old_version_readable_as_of_it() {
    let (tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(1, 4), 1).unwrap();
    // Snapshot 1 taken: the volume writes with seq 2, then 3.
    s.write_seq(1, 0, B, &fill(2, 2), 2).unwrap();
    s.write_seq(1, 0, 3 * B, &fill(3, 1), 3).unwrap();
    let snap1 = fill(1, 4);
    let mut snap2 = snap1.clone();
    snap2[B as usize..3 * B as usize].fill(2);
    let live = with_block(snap2.clone(), 3, &fill(3, 1));
    for s in [s.clone(), reopen(&tmp, s)] {
        assert_eq!(read(&s, 1, 0, 4, 1), snap1);
        assert_eq!(read(&s, 1, 0, 4, 2), snap2);
        assert_eq!(read(&s, 1, 0, 4, 3), live);
        assert_eq!(read(&s, 1, 0, 4, 0), live);
        assert_eq!(read(&s, 1, 0, 4, 99), live);
        assert_eq!(&s.read(1, 0, 0, 4 * B).unwrap()[..], &live[..]);
        // Layer 1 was never written again, and layer 2 holds only what seq 2 wrote.
        assert_eq!(&s.read_in(1, 0, 1, 0, 4 * B).unwrap()[..], &snap1[..]);
        let mut only2 = vec![0u8; 4 * B as usize];
        only2[B as usize..3 * B as usize].fill(2);
        assert_eq!(&s.read_in(1, 0, 2, 0, 4 * B).unwrap()[..], &only2[..]);
    }
    assert!(
        tmp.path()
            .join("0000000000000001/00000000.L00000002.dat")
            .exists()
    );
}

#[test]
fn a_partial_write_into_a_new_layer_keeps_the_rest_of_the_block_from_below() {
    let (_tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(7, 2), 1).unwrap();
    s.write_seq(1, 0, 100, b"hello", 2).unwrap();
    let mut want = fill(7, 2);
    want[100..105].copy_from_slice(b"hello");
    assert_eq!(read(&s, 1, 0, 2, 0), want);
    assert_eq!(read(&s, 1, 0, 2, 1), fill(7, 2));
    // A second partial write into the same layer keeps the first one's bytes.
    s.write_seq(1, 0, 200, b"world", 2).unwrap();
    want[200..205].copy_from_slice(b"world");
    assert_eq!(read(&s, 1, 0, 2, 0), want);
    // Straddling two blocks: the tail block is completed from below too.
    let snap2 = want.clone();
    s.write_seq(1, 0, B - 2, b"abcd", 3).unwrap();
    want[B as usize - 2..B as usize + 2].copy_from_slice(b"abcd");
    assert_eq!(read(&s, 1, 0, 2, 0), want);
    assert_eq!(read(&s, 1, 0, 2, 2), snap2);
    // Nothing below: zeroes around the bytes written.
    s.write_seq(1, 0, 10 * B + 5, b"x", 2).unwrap();
    let mut block = vec![0u8; B as usize];
    block[5] = b'x';
    assert_eq!(&s.read(1, 0, 10 * B, B).unwrap()[..], &block[..]);
    // Layer 2 holds only the blocks written with seq 2.
    let crcs = s.checksums_in(1, 0, 2, 0, 2).unwrap();
    assert_ne!(layout::stored_crc(&crcs, 0), 0);
    assert_eq!(layout::stored_crc(&crcs, 1), 0);
}

#[test]
fn discards_and_zeroes_above_layer_one_never_re_expose_older_data() {
    let (tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(5, 8), 1).unwrap();
    // Partial block 1 (from byte 100), whole blocks 2..5, partial block 5 (to byte 100).
    s.discard_seq(1, 0, B + 100, 4 * B, 2).unwrap();
    let mut snap2 = fill(5, 8);
    snap2[(B + 100) as usize..(5 * B + 100) as usize].fill(0);
    assert_eq!(read(&s, 1, 0, 8, 0), snap2);
    assert_eq!(read(&s, 1, 0, 8, 1), fill(5, 8));
    s.write_zeroes_seq(1, 0, 6 * B, 2 * B, 3).unwrap();
    // Discarding again what layer 2 zeroed, and a range nothing below ever held.
    s.discard_seq(1, 0, 2 * B, 3 * B, 3).unwrap();
    s.discard_seq(1, 0, 20 * B, 4 * B, 3).unwrap();
    let mut live = snap2.clone();
    live[6 * B as usize..].fill(0);
    use BlockKind::{Data, Hole, Zero};
    for s in [s.clone(), reopen(&tmp, s)] {
        assert_eq!(read(&s, 1, 0, 8, 0), live);
        assert_eq!(read(&s, 1, 0, 8, 2), snap2);
        assert_eq!(read(&s, 1, 0, 8, 1), fill(5, 8));
        assert_eq!(
            s.block_status(1, 0, 0, 8 * B, 0).unwrap(),
            [Data, Data, Zero, Zero, Zero, Data, Zero, Zero]
        );
        assert_eq!(s.block_status(1, 0, 0, 8 * B, 1).unwrap(), [Data; 8]);
        assert_eq!(s.block_status(1, 0, 20 * B, 4 * B, 0).unwrap(), [Hole; 4]);
        // The discard of never-written blocks changed nothing.
        assert_eq!(s.changed_blocks(1, 0, 2, 3).unwrap(), [2, 3, 4, 6, 7]);
    }
}

#[test]
fn a_discard_in_layer_one_of_a_chunk_without_parent_stays_a_true_hole() {
    let (_tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(5, 4), 1).unwrap();
    s.discard_seq(1, 0, B, 2 * B, 1).unwrap();
    assert_eq!(s.checksums_in(1, 0, 1, 0, 4).unwrap()[4..12], [0u8; 8]);
    assert_eq!(
        s.block_status(1, 0, 0, 4 * B, 0).unwrap(),
        [
            BlockKind::Data,
            BlockKind::Hole,
            BlockKind::Hole,
            BlockKind::Data
        ]
    );
}

#[test]
fn a_clone_reads_through_its_parent_as_of_the_snapshot_two_levels_deep() {
    let (tmp, s) = store();
    let a = fill(0xA, 1);
    s.write_seq(1, 0, 0, &fill(0xA, 4), 1).unwrap();
    s.write_seq(1, 0, 0, &fill(0xB, 1), 2).unwrap();
    s.link(2, 0, 1, 1).unwrap();
    assert_eq!(s.link_of(2, 0).unwrap(), Some((1, 1)));
    assert_eq!(read(&s, 2, 0, 4, 0), fill(0xA, 4));
    // The clone's own writes: a partial block is completed from the parent.
    s.write_seq(2, 0, B + 10, b"clone", 1).unwrap();
    let mut b1 = a.clone();
    b1[10..15].copy_from_slice(b"clone");
    // A discard in the clone's layer 1 hides the parent's block.
    s.discard_seq(2, 0, 2 * B, B, 1).unwrap();
    // Volume 3 clones volume 2 as of its snapshot 1; volume 2 then writes on.
    s.link(3, 0, 2, 1).unwrap();
    s.write_seq(2, 0, 3 * B, &fill(0xC, 1), 2).unwrap();
    let parent_live = with_block(fill(0xA, 4), 0, &fill(0xB, 1));
    let clone3 = [a.clone(), b1.clone(), vec![0; B as usize], a.clone()].concat();
    let clone2 = with_block(clone3.clone(), 3, &fill(0xC, 1));
    use BlockKind::{Data, Hole, Zero};
    for s in [s.clone(), reopen(&tmp, s)] {
        assert_eq!(read(&s, 1, 0, 4, 0), parent_live);
        assert_eq!(read(&s, 2, 0, 4, 0), clone2);
        assert_eq!(read(&s, 2, 0, 4, 1), clone3);
        assert_eq!(read(&s, 3, 0, 4, 0), clone3);
        assert_eq!(
            s.block_status(3, 0, 0, 5 * B, 0).unwrap(),
            [Data, Data, Zero, Data, Hole]
        );
        assert_eq!(s.link_of(3, 0).unwrap(), Some((2, 1)));
        // Known without looking: volume 3 has no layer 1 to open, volume 2 has.
        assert_eq!(s.layer_map.get((3, 0)).layers_upto(9).count(), 0);
        assert_eq!(
            s.layer_map.get((2, 0)).layers_upto(9).collect::<Vec<_>>(),
            [2, 1]
        );
        // The parent's blocks are not the clone's changes.
        assert_eq!(s.changed_blocks(3, 0, 0, 0).unwrap(), Vec::<u64>::new());
        assert_eq!(s.changed_blocks(2, 0, 0, 0).unwrap(), [1, 2, 3]);
    }
}

#[test]
fn links_are_checked() {
    let (_tmp, s) = store();
    s.link(3, 0, 2, 1).unwrap();
    s.link(3, 0, 2, 1).unwrap();
    assert!(s.link(3, 0, 1, 1).is_err());
    assert!(s.link(3, 0, 2, 2).is_err());
    assert!(s.link(4, 0, 4, 1).is_err());
    // A cycle is an error when read through, not a hang or a stack overflow.
    s.link(5, 0, 6, 1).unwrap();
    s.link(6, 0, 5, 1).unwrap();
    assert!(matches!(s.read(5, 0, 0, B), Err(Error::Corrupt(_))));
    assert!(matches!(
        s.block_status(6, 0, 0, B, 0),
        Err(Error::Corrupt(_))
    ));
    // A partial write reading through it fails the same: never merged over zeroes and
    // poisoned (that is for a block failing its checksum: every replica has the cycle).
    let w = s.write_seq(5, 0, 10, b"abc", 0);
    assert!(matches!(w, Err(Error::Corrupt(_))), "{w:?}");
    assert_eq!(s.poisoned_blocks(), 0);
    // A damaged link file is refused when the store opens.
    let tmp = tempfile::tempdir().unwrap();
    let s = ChunkStore::open(tmp.path()).unwrap();
    s.link(2, 0, 1, 1).unwrap();
    drop(s);
    let path = tmp.path().join("0000000000000002/00000000.link");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[9] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        ChunkStore::open(tmp.path()),
        Err(Error::Corrupt(_))
    ));
}

#[test]
fn flatten_then_unlink_keeps_what_the_clone_reads() {
    let (tmp, s) = store();
    let data: Vec<u8> = (0..8 * B).map(|i| (i / B) as u8 + 1).collect();
    s.write_seq(1, 0, 0, &data, 1).unwrap();
    s.discard(1, 0, 5 * B, B).unwrap();
    s.discard_seq(1, 0, 3 * B, B, 2).unwrap();
    s.link(2, 0, 1, 2).unwrap();
    s.write_seq(1, 0, 0, &fill(0x99, 8), 3).unwrap();
    s.write_seq(2, 0, B, &fill(0xEE, 1), 1).unwrap();
    let before = read(&s, 2, 0, 10, 0);
    let status = s.block_status(2, 0, 0, 10 * B, 0).unwrap();
    s.flatten(2, 0, 0, 4 * B, 1).unwrap();
    assert_eq!(read(&s, 2, 0, 10, 0), before);
    let crcs = s.checksums_in(2, 0, 1, 0, 10).unwrap();
    s.flatten(2, 0, 0, 4 * B, 1).unwrap();
    assert_eq!(s.checksums_in(2, 0, 1, 0, 10).unwrap(), crcs, "idempotent");
    s.flatten(2, 0, 4 * B, 6 * B, 1).unwrap();
    assert_eq!(read(&s, 2, 0, 10, 0), before);
    // Every block the parent held as of seq 2 is the clone's own now; its hole is not.
    assert_eq!(s.changed_blocks(2, 0, 0, 0).unwrap(), [0, 1, 2, 3, 4, 6, 7]);
    s.unlink(2, 0).unwrap();
    s.unlink(2, 0).unwrap();
    assert_eq!(s.link_of(2, 0).unwrap(), None);
    assert_eq!(read(&s, 2, 0, 10, 0), before);
    assert_eq!(s.block_status(2, 0, 0, 10 * B, 0).unwrap(), status);
    // The link file goes with the next sync.
    let link = tmp.path().join("0000000000000002/00000000.link");
    assert!(link.exists());
    s.sync().unwrap();
    assert!(!link.exists());
    s.drop_chunk(1, 0).unwrap();
    let s = reopen(&tmp, s);
    assert_eq!(read(&s, 2, 0, 10, 0), before);
    assert_eq!(s.link_of(2, 0).unwrap(), None);
}

/// A crash after a flatten's checksums reached the disk but not its data: replaying the
/// flatten must copy those blocks again, not skip them as held.
#[test]
fn a_flatten_torn_by_a_crash_is_completed_by_its_replay() {
    let (tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(4, 3), 1).unwrap();
    s.link(2, 0, 1, 1).unwrap();
    s.write_seq(2, 0, 2 * B, &fill(5, 1), 1).unwrap();
    s.flatten(2, 0, 0, 3 * B, 1).unwrap();
    let want = read(&s, 2, 0, 3, 0);
    drop(s);
    // Block 1's copy lost: a hole again under its checksum.
    let data = tmp.path().join("0000000000000002/00000000.dat");
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    sys::zero_range(&f, B, B, sys::Zeroing::Punch).unwrap();
    let s = ChunkStore::open(tmp.path()).unwrap();
    assert!(matches!(s.read(2, 0, 0, 3 * B), Err(Error::Corrupt(_))));
    s.set_replaying(true);
    s.flatten(2, 0, 0, 3 * B, 1).unwrap();
    s.set_replaying(false);
    assert_eq!(read(&s, 2, 0, 3, 0), want);
}

/// A crash after the first partial write of a block into a new layer reached the disk
/// with its checksum but without its data: its replay completes the block from below
/// again, not from the hole.
#[test]
fn a_partial_write_into_a_new_layer_torn_by_a_crash_is_completed_from_below() {
    let (tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(4, 2), 1).unwrap();
    s.write_seq(1, 0, B + 10, b"new", 2).unwrap();
    s.write_seq(1, 0, 20, b"more", 2).unwrap();
    s.write_seq(1, 0, B + 30, b"again", 2).unwrap();
    let want = read(&s, 1, 0, 2, 0);
    drop(s);
    let data = tmp.path().join("0000000000000001/00000000.L00000002.dat");
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    sys::zero_range(&f, B, B, sys::Zeroing::Punch).unwrap();
    let s = ChunkStore::open(tmp.path()).unwrap();
    s.set_replaying(true);
    s.write_seq(1, 0, B + 10, b"new", 2).unwrap();
    s.write_seq(1, 0, 20, b"more", 2).unwrap();
    s.write_seq(1, 0, B + 30, b"again", 2).unwrap();
    s.set_replaying(false);
    assert!(read(&s, 1, 0, 2, 0) == want);
    assert_eq!(read(&s, 1, 0, 2, 1), fill(4, 2));
}

/// The other torn state: newer data (zeroes, written) under an older checksum. The
/// replay takes those bytes as they are, as in layer 1, not what is below.
#[test]
fn a_partial_write_torn_with_its_zero_data_on_disk_keeps_that_data() {
    let (tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(7, 1), 1).unwrap();
    let mut d = vec![0u8; B as usize];
    d[..512].fill(0xAB);
    s.write_seq(1, 0, 0, &d, 2).unwrap();
    s.sync().unwrap();
    let crc = tmp.path().join("0000000000000001/00000000.L00000002.crc");
    let old = std::fs::read(&crc).unwrap();
    s.write_seq(1, 0, 0, &[0u8; 512], 2).unwrap();
    assert_eq!(read(&s, 1, 0, 1, 0), fill(0, 1));
    drop(s);
    // The data page reached the disk, the checksum page did not.
    std::fs::write(&crc, old).unwrap();
    let s = ChunkStore::open(tmp.path()).unwrap();
    s.set_replaying(true);
    s.write_seq(1, 0, 0, &[0u8; 512], 2).unwrap();
    s.set_replaying(false);
    assert_eq!(read(&s, 1, 0, 1, 0), fill(0, 1));
}

/// A flatten replayed over a block its layer held before the last sync, torn since by a
/// later write (new checksum, old data): not its own copy, so it is left to that write.
#[test]
fn a_flatten_replayed_leaves_a_block_torn_by_a_later_write_to_it() {
    let (tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(4, 1), 1).unwrap();
    s.link(2, 0, 1, 1).unwrap();
    s.write_seq(2, 0, 0, &fill(5, 1), 1).unwrap();
    s.sync().unwrap();
    let data = tmp.path().join("0000000000000002/00000000.dat");
    let synced = std::fs::read(&data).unwrap();
    s.flatten(2, 0, 0, B, 1).unwrap();
    s.write_seq(2, 0, 10, b"abc", 1).unwrap();
    let want = read(&s, 2, 0, 1, 0);
    drop(s);
    std::fs::write(&data, synced).unwrap();
    let s = ChunkStore::open(tmp.path()).unwrap();
    s.set_replaying(true);
    s.flatten(2, 0, 0, B, 1).unwrap();
    s.write_seq(2, 0, 10, b"abc", 1).unwrap();
    s.set_replaying(false);
    assert_eq!(read(&s, 2, 0, 1, 0), want);
}

#[test]
fn an_unlinked_chunk_reads_through_again_after_a_crash_before_the_sync() {
    let (tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(4, 1), 1).unwrap();
    s.link(2, 0, 1, 1).unwrap();
    s.unlink(2, 0).unwrap();
    assert_eq!(read(&s, 2, 0, 1, 0), fill(0, 1));
    // A crash: the Unlink entry is after the last sync and will be applied again.
    drop(s);
    let s = ChunkStore::open(tmp.path()).unwrap();
    assert_eq!(s.link_of(2, 0).unwrap(), Some((1, 1)));
    assert_eq!(read(&s, 2, 0, 1, 0), fill(4, 1));
    // Linked again before the sync: the sync leaves the new link alone.
    s.unlink(2, 0).unwrap();
    s.link(2, 0, 1, 1).unwrap();
    s.sync().unwrap();
    let s = reopen(&tmp, s);
    assert_eq!(s.link_of(2, 0).unwrap(), Some((1, 1)));
}

#[test]
fn rollback_restores_a_snapshot_and_keeps_the_later_ones() {
    let (_tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(1, 4), 1).unwrap();
    s.write_seq(1, 0, B, &fill(2, 2), 2).unwrap();
    s.discard_seq(1, 0, 3 * B, B, 2).unwrap();
    s.write_seq(1, 0, 5 * B, &fill(2, 1), 2).unwrap();
    s.write_seq(1, 0, 0, &fill(3, 1), 3).unwrap();
    let snap1 = read(&s, 1, 0, 6, 1);
    let snap2 = read(&s, 1, 0, 6, 2);
    assert_ne!(snap1, snap2);
    s.rollback(1, 0, 1, 3).unwrap();
    assert_eq!(read(&s, 1, 0, 6, 0), snap1);
    assert_eq!(read(&s, 1, 0, 6, 1), snap1);
    assert_eq!(read(&s, 1, 0, 6, 2), snap2);
    let crcs = s.checksums_in(1, 0, 3, 0, 6).unwrap();
    s.rollback(1, 0, 1, 3).unwrap();
    assert_eq!(s.checksums_in(1, 0, 3, 0, 6).unwrap(), crcs, "idempotent");
    // Block 5, which snapshot 1 did not hold, is written as zero.
    assert_eq!(
        s.block_status(1, 0, 5 * B, B, 0).unwrap(),
        [BlockKind::Zero]
    );
    // Rolling back to snapshot 2 after that, in a later layer.
    s.rollback(1, 0, 2, 4).unwrap();
    assert_eq!(read(&s, 1, 0, 6, 0), snap2);
    assert_eq!(read(&s, 1, 0, 6, 3), snap1);
    assert!(s.rollback(1, 0, 4, 4).is_err());
    assert!(s.rollback(1, 0, 0, 4).is_err());
    // A clone's snapshot reads through to its parent: so does its rollback.
    s.write_seq(10, 0, 0, &fill(9, 2), 1).unwrap();
    s.link(11, 0, 10, 1).unwrap();
    s.write_seq(11, 0, 0, &fill(8, 1), 2).unwrap();
    s.rollback(11, 0, 1, 3).unwrap();
    assert_eq!(read(&s, 11, 0, 2, 0), fill(9, 2));
}

#[test]
fn changed_blocks_are_those_present_in_the_layers_between_two_snapshots() {
    let (_tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(1, 3), 1).unwrap();
    s.write_seq(1, 0, 5 * B, &fill(2, 1), 2).unwrap();
    s.discard_seq(1, 0, 0, B, 2).unwrap();
    s.write_seq(1, 0, 5 * B + 1, b"x", 3).unwrap();
    s.write_seq(1, 0, 9 * B, &fill(3, 1), 3).unwrap();
    s.discard_seq(1, 0, 20 * B, 4 * B, 3).unwrap();
    assert_eq!(s.changed_blocks(1, 0, 0, 1).unwrap(), [0, 1, 2]);
    assert_eq!(s.changed_blocks(1, 0, 1, 2).unwrap(), [0, 5]);
    assert_eq!(s.changed_blocks(1, 0, 2, 3).unwrap(), [5, 9]);
    assert_eq!(s.changed_blocks(1, 0, 1, 3).unwrap(), [0, 5, 9]);
    assert_eq!(s.changed_blocks(1, 0, 0, 0).unwrap(), [0, 1, 2, 5, 9]);
    assert_eq!(s.changed_blocks(1, 0, 3, 3).unwrap(), Vec::<u64>::new());
    assert_eq!(s.changed_blocks(1, 7, 0, 0).unwrap(), Vec::<u64>::new());
}

/// What the catch-up does with the raw access: every layer and link of the source, block
/// by block, into a store that held other things.
pub(super) mod copies;

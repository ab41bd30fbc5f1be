//! A flattened clone's chunk unlinked, then written, then a crash: the replay must complete
//! the partial write from the same bytes the first run did (the parent's, copied by the
//! flatten), not from zeroes.

use super::*;

const B: u64 = BLOCK_SIZE;

/// Flatten, unlink, a partial write into a copied block; the crash leaves the write's
/// checksum on disk over a hole (the copy's data page never reached it). The replayed
/// Unlink keeps the parent for the replay's partial writes, so the replayed write completes
/// from the parent, as its first run completed from the copy.
#[test]
fn a_write_after_an_unlink_replays_over_the_parent_it_completed_from() {
    let tmp = tempfile::tempdir().unwrap();
    let s = ChunkStore::open(tmp.path()).unwrap();
    s.write_seq(1, 0, 0, &vec![9u8; 2 * B as usize], 1).unwrap();
    s.link(2, 0, 1, 1).unwrap();
    s.flatten(2, 0, 0, 2 * B, 1).unwrap();
    s.unlink(2, 0).unwrap();
    s.write_seq(2, 0, 10, b"abc", 1).unwrap();
    let want = s.read(2, 0, 0, 2 * B).unwrap();
    assert_eq!(&want[..10], &[9u8; 10]);
    drop(s);
    // The crash: block 0's data page lost, its checksum (the write's) on disk.
    let (data, _) = layout::layer_paths(&tmp.path().join(format!("{:016x}", 2)), 0, 1);
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    sys::zero_range(&f, 0, B, sys::Zeroing::Punch).unwrap();
    drop(f);
    let s = ChunkStore::open(tmp.path()).unwrap();
    s.set_replaying(true);
    s.flatten(2, 0, 0, 2 * B, 1).unwrap();
    s.unlink(2, 0).unwrap();
    s.write_seq(2, 0, 10, b"abc", 1).unwrap();
    s.set_replaying(false);
    assert_eq!(s.read(2, 0, 0, 2 * B).unwrap(), want);
    assert_eq!(s.link_of(2, 0).unwrap(), None);
}

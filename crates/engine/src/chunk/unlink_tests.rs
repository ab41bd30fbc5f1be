//! A flattened clone's chunk unlinked, then written, then a crash: the replay must complete
//! the partial write from the same bytes the first run did (the parent's, copied by the
//! flatten), not from zeroes. A RESTORED link is unlinked eagerly; a dropped chunk loses its
//! link before its layers.

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

/// A restored chunk: a fill, a partial write W, the Unlink, a plain trim of W's block, then
/// a crash after a sync made the files durable. The Unlink of a RESTORED link is eager:
/// its link file is gone (durably) when it returns, so the replay of W meets a plain chunk
/// and completes (from the trim's hole, which the replayed trim ends as), where a link
/// left for the sync to delete would make W Unfilled and stall the group.
#[test]
fn a_restored_unlink_deletes_its_link_at_once_so_a_replay_never_meets_it() {
    let tmp = tempfile::tempdir().unwrap();
    let s = ChunkStore::open(tmp.path()).unwrap();
    s.link(2, 0, RESTORED, 7).unwrap();
    s.hydrate(2, 0, 0, &[3u8; 2 * B as usize]).unwrap();
    s.write_seq(2, 0, 10, b"abc", 1).unwrap();
    s.unlink(2, 0).unwrap();
    let link = layout::link_path(&tmp.path().join(format!("{:016x}", 2)), 0);
    assert!(!link.exists(), "the link file waits for a sync");
    s.discard_seq(2, 0, 0, B, 1).unwrap();
    s.sync().unwrap();
    let want = s.read(2, 0, 0, 2 * B).unwrap();
    drop(s);
    let s = ChunkStore::open(tmp.path()).unwrap();
    assert!(!s.restoring(2, 0));
    s.set_replaying(true);
    s.write_seq(2, 0, 10, b"abc", 1)
        .expect("the replayed write");
    s.unlink(2, 0).unwrap();
    s.discard_seq(2, 0, 0, B, 1).unwrap();
    s.set_replaying(false);
    assert_eq!(s.read(2, 0, 0, 2 * B).unwrap(), want);
}

/// A drop that stops part way (here a layer file that cannot be deleted) has already
/// deleted the link: a crash never leaves a link without its layers.
#[test]
fn a_dropped_chunk_loses_its_link_before_its_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let s = ChunkStore::open(tmp.path()).unwrap();
    s.write_seq(1, 0, 0, &[9u8; B as usize], 1).unwrap();
    s.link(2, 0, 1, 1).unwrap();
    s.write_seq(2, 0, 0, &[5u8; B as usize], 1).unwrap();
    let vdir = tmp.path().join(format!("{:016x}", 2));
    let (data, _) = layout::layer_paths(&vdir, 0, 1);
    std::fs::remove_file(&data).unwrap();
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("x"), b"x").unwrap();
    assert!(s.drop_chunk(2, 0).is_err(), "the layer cannot be deleted");
    assert!(
        !layout::link_path(&vdir, 0).exists(),
        "a link left without layers"
    );
}

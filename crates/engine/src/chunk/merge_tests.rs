//! Promises of merging a deleted snapshot's layers and dropping the merged ones, on real
//! files: no read as of a retained sequence changes, the dropped layers vanish from every
//! API at once and from the disk at the next sync, a crash before it brings them back.

use super::layer_tests::{fill, read, store};
use super::*;

const B: u64 = BLOCK_SIZE;

fn range(low: u64, top: u64, live: bool) -> MergeRange {
    MergeRange { low, top, live }
}

/// The reads as of each sequence in `seqs` (0: live) and the live block kinds.
fn image(s: &ChunkStore, volume: u64, blocks: u64, seqs: &[u64]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = seqs
        .iter()
        .map(|&q| read(s, volume, 0, blocks, q))
        .collect();
    let kinds = s.block_status(volume, 0, 0, blocks * B, 0).unwrap();
    out.push(kinds.iter().map(|k| *k as u8).collect());
    out
}

fn layer_file(tmp: &tempfile::TempDir, volume: u64, layer: u64) -> std::path::PathBuf {
    let dir = tmp.path().join(format!("{volume:016x}"));
    layout::layer_paths(&dir, 0, layer).0
}

fn layers_of(s: &ChunkStore, volume: u64) -> Vec<u64> {
    s.list_layers()
        .unwrap()
        .into_iter()
        .filter(|k| k.volume == volume)
        .map(|k| k.layer)
        .collect()
}

/// Volume 1, chunk 0: snapshots 1, 2, 3, 4 taken, live layer 5. Layers 2 and 3 (of the
/// deleted snapshots 2 and 3) overwrite, zero and partially rewrite what is below.
fn five_layers(s: &ChunkStore) {
    s.write_seq(1, 0, 0, &fill(1, 10), 1).unwrap();
    s.write_seq(1, 0, 0, &fill(2, 8), 2).unwrap();
    s.write_seq(1, 0, 0, &fill(3, 4), 3).unwrap();
    s.discard_seq(1, 0, 5 * B, B, 3).unwrap();
    s.write_seq(1, 0, 7 * B + 9, b"three", 3).unwrap();
    s.write_seq(1, 0, 2 * B, &fill(4, 4), 4).unwrap();
    s.write_seq(1, 0, 9 * B, &fill(5, 1), 5).unwrap();
}

#[test]
fn a_frozen_merge_keeps_every_retained_read_and_its_drop_frees_the_files_at_the_next_sync() {
    let (tmp, s) = store();
    five_layers(&s);
    s.sync().unwrap();
    // Snapshots 2 and 3 deleted: layers 2..=4 (up to snapshot 4) join into layer 2.
    let seqs = [1, 4, 5, 0];
    let before = image(&s, 1, 12, &seqs);
    let changed = s.changed_blocks(1, 0, 1, 4).unwrap();
    let used = s.used_bytes();
    let r = range(2, 4, false);
    s.merge_layers(1, 0, 0, 12 * B, r).unwrap();
    assert!(image(&s, 1, 12, &seqs) == before);
    s.drop_merged(1, 0, r).unwrap();
    assert!(image(&s, 1, 12, &seqs) == before);
    // Gone from every API at once, still on disk until the sync.
    assert_eq!(layers_of(&s, 1), [1, 2, 5]);
    let bytes: Vec<u64> = s.volume_layer_bytes(1).iter().map(|e| e.1).collect();
    assert_eq!(bytes, [1, 2, 5]);
    let bytes: Vec<u64> = s.layer_bytes(1, 0).iter().map(|e| e.0).collect();
    assert_eq!(bytes, [1, 2, 5]);
    assert_eq!(s.changed_blocks(1, 0, 1, 4).unwrap(), changed);
    assert_eq!(s.changed_blocks(1, 0, 2, 4).unwrap(), Vec::<u64>::new());
    assert_eq!(s.chunk_blocks_in(1, 0, 3).unwrap(), 0);
    assert_eq!(s.checksums_in(1, 0, 4, 0, 4).unwrap(), vec![0u8; 16]);
    assert_eq!(s.read_in(1, 0, 3, 0, B).unwrap(), fill(0, 1));
    // Served to a peer copying the store while their files exist (see `dropped`).
    assert_eq!(s.served_blocks_in(1, 0, 3).unwrap(), 8);
    assert_eq!(
        &s.served_read_in(1, 0, 3, 0, B).unwrap()[..],
        &fill(3, 1)[..]
    );
    assert_eq!(s.list_chunks().unwrap(), [(1, 0)]);
    assert!(layer_file(&tmp, 1, 3).exists() && layer_file(&tmp, 1, 4).exists());
    s.drop_merged(1, 0, r).unwrap();
    s.sync().unwrap();
    assert!(!layer_file(&tmp, 1, 3).exists() && !layer_file(&tmp, 1, 4).exists());
    assert!(s.used_bytes() < used, "{} !< {used}", s.used_bytes());
    assert!(image(&s, 1, 12, &seqs) == before);
    let s = {
        drop(s);
        ChunkStore::open(tmp.path()).unwrap()
    };
    assert!(image(&s, 1, 12, &seqs) == before);
    assert_eq!(layers_of(&s, 1), [1, 2, 5]);
}

#[test]
fn a_live_merge_copies_what_the_live_layer_lacks_and_keeps_what_it_holds() {
    let (tmp, s) = store();
    // Snapshot 1 kept, snapshot 2 deleted, live layer 3.
    s.write_seq(1, 0, 0, &fill(1, 6), 1).unwrap();
    s.write_seq(1, 0, 0, &fill(2, 4), 2).unwrap();
    s.discard_seq(1, 0, 4 * B, B, 2).unwrap();
    s.write_seq(1, 0, B, &fill(3, 1), 3).unwrap();
    s.write_seq(1, 0, 2 * B + 7, b"live", 3).unwrap();
    let seqs = [1, 3, 0];
    let before = image(&s, 1, 7, &seqs);
    let held = s.checksums_in(1, 0, 3, 1, 2).unwrap();
    // The frozen pass over 2..=2 has one layer: nothing to do.
    s.merge_layers(1, 0, 0, 7 * B, range(2, 2, false)).unwrap();
    s.drop_merged(1, 0, range(2, 2, false)).unwrap();
    let r = range(2, 3, true);
    s.merge_layers(1, 0, 0, 7 * B, r).unwrap();
    assert!(image(&s, 1, 7, &seqs) == before);
    // The clients' blocks are untouched; the zero is copied as zero, holes are not.
    assert_eq!(s.checksums_in(1, 0, 3, 1, 2).unwrap(), held);
    let crcs = s.checksums_in(1, 0, 3, 0, 7).unwrap();
    assert_eq!(layout::stored_crc(&crcs, 4), layout::zero_crc());
    assert_eq!(layout::stored_crc(&crcs, 5), 0);
    s.drop_merged(1, 0, r).unwrap();
    assert!(image(&s, 1, 7, &seqs) == before);
    assert_eq!(layers_of(&s, 1), [1, 3]);
    s.sync().unwrap();
    assert!(!layer_file(&tmp, 1, 2).exists());
    // The only snapshot deleted: layer 1 itself joins the live layer and goes.
    let r = range(1, 3, true);
    s.merge_layers(1, 0, 0, 7 * B, range(1, 2, false)).unwrap();
    s.merge_layers(1, 0, 0, 7 * B, r).unwrap();
    s.drop_merged(1, 0, r).unwrap();
    assert!(image(&s, 1, 7, &[3, 0]) == image_of(&before, &[1, 2, 3]));
    assert_eq!(layers_of(&s, 1), [3]);
    assert_eq!(s.list_chunks().unwrap(), [(1, 0)]);
    assert_eq!(s.read_in(1, 0, 1, 0, B).unwrap(), fill(0, 1));
    assert_eq!(
        &s.served_read_in(1, 0, 1, 0, B).unwrap()[..],
        &fill(1, 1)[..]
    );
    s.sync().unwrap();
    assert!(!layer_file(&tmp, 1, 1).exists());
    assert_eq!(s.served_read_in(1, 0, 1, 0, B).unwrap(), fill(0, 1));
    assert_eq!(s.served_blocks_in(1, 0, 1).unwrap(), 0);
    assert!(image(&s, 1, 7, &[3, 0]) == image_of(&before, &[1, 2, 3]));
}

/// The entries `which` of an `image`.
fn image_of(image: &[Vec<u8>], which: &[usize]) -> Vec<Vec<u8>> {
    which.iter().map(|&i| image[i].clone()).collect()
}

#[test]
fn blocks_written_as_zero_keep_hiding_lower_layers_and_the_parent_after_a_merge() {
    let (_tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(9, 6), 1).unwrap();
    // Volume 2 clones volume 1 as of snapshot 1; its snapshots 2 and 3 are deleted later.
    s.link(2, 0, 1, 1).unwrap();
    s.write_seq(2, 0, 0, &fill(2, 1), 2).unwrap();
    s.discard_seq(2, 0, 0, 2 * B, 3).unwrap();
    s.write_seq(2, 0, 3 * B, &fill(3, 1), 3).unwrap();
    s.write_seq(2, 0, 4 * B, &fill(4, 1), 4).unwrap();
    let seqs = [1, 3, 0];
    let before = image(&s, 2, 6, &seqs);
    let mut want = fill(9, 6);
    want[..2 * B as usize].fill(0);
    want[3 * B as usize..4 * B as usize].fill(3);
    assert_eq!(before[1], want);
    let r = range(2, 3, false);
    s.merge_layers(2, 0, 0, 6 * B, r).unwrap();
    s.drop_merged(2, 0, r).unwrap();
    assert!(image(&s, 2, 6, &seqs) == before);
    // The parent's blocks were not copied: layer 2 holds the clone's own blocks only.
    assert_eq!(s.changed_blocks(2, 0, 0, 0).unwrap(), [0, 1, 3, 4]);
    // The same in a live merge of the clone's layers 2..=4.
    let r = range(2, 4, true);
    s.merge_layers(2, 0, 0, 6 * B, r).unwrap();
    s.drop_merged(2, 0, r).unwrap();
    assert!(image(&s, 2, 6, &[1, 0]) == image_of(&before, &[0, 2, 3]));
    assert_eq!(s.changed_blocks(2, 0, 0, 0).unwrap(), [0, 1, 3, 4]);
}

#[test]
fn a_drop_is_refused_while_part_of_the_chunk_was_not_merged() {
    let (_tmp, s) = store();
    five_layers(&s);
    let seqs = [1, 4, 0];
    let before = image(&s, 1, 10, &seqs);
    let r = range(2, 4, false);
    s.merge_layers(1, 0, 0, 4 * B, r).unwrap();
    let refused = s.drop_merged(1, 0, r);
    assert!(
        matches!(&refused, Err(Error::Refused(m)) if m.contains("layer 4 holds block 4")),
        "{refused:?}"
    );
    assert!(image(&s, 1, 10, &seqs) == before);
    assert_eq!(layers_of(&s, 1), [1, 2, 3, 4, 5]);
    // The live layer holds none of layer 2's blocks: a live drop is refused too.
    assert!(matches!(
        s.drop_merged(1, 0, range(2, 5, true)),
        Err(Error::Refused(_))
    ));
    s.merge_layers(1, 0, 4 * B, 6 * B, r).unwrap();
    s.drop_merged(1, 0, r).unwrap();
    assert!(image(&s, 1, 10, &seqs) == before);
    assert_eq!(layers_of(&s, 1), [1, 2, 5]);
}

#[test]
fn layers_dropped_before_a_crash_are_layers_again_and_the_replayed_drop_drops_them() {
    let (tmp, s) = store();
    five_layers(&s);
    s.sync().unwrap();
    let seqs = [1, 2, 3, 4, 0];
    let before = image(&s, 1, 10, &seqs);
    let r = range(2, 4, false);
    s.merge_layers(1, 0, 0, 10 * B, r).unwrap();
    s.drop_merged(1, 0, r).unwrap();
    // A crash before the next sync: the files are there, the log replays from the last sync.
    drop(s);
    let s = ChunkStore::open(tmp.path()).unwrap();
    assert_eq!(layers_of(&s, 1), [1, 2, 3, 4, 5]);
    let after = image(&s, 1, 10, &seqs);
    // Every retained read is the same; the deleted snapshots' are not read by anybody.
    assert!(image_of(&after, &[0, 3, 4, 5]) == image_of(&before, &[0, 3, 4, 5]));
    s.set_replaying(true);
    s.merge_layers(1, 0, 0, 10 * B, r).unwrap();
    s.drop_merged(1, 0, r).unwrap();
    s.set_replaying(false);
    assert_eq!(layers_of(&s, 1), [1, 2, 5]);
    s.sync().unwrap();
    assert!(!layer_file(&tmp, 1, 3).exists());
    let after = image(&s, 1, 10, &seqs);
    assert!(image_of(&after, &[0, 3, 4, 5]) == image_of(&before, &[0, 3, 4, 5]));
}

#[test]
fn a_merge_applied_again_after_a_crash_gives_the_same_reads() {
    for live in [false, true] {
        let (tmp, s) = store();
        five_layers(&s);
        s.sync().unwrap();
        let r = if live {
            range(2, 5, true)
        } else {
            range(2, 4, false)
        };
        let seqs = [1, r.top, 0];
        let before = image(&s, 1, 10, &seqs);
        s.merge_layers(1, 0, 0, 10 * B, r).unwrap();
        let crcs = s.checksums_in(1, 0, 5, 0, 10).unwrap();
        drop(s);
        let s = ChunkStore::open(tmp.path()).unwrap();
        s.set_replaying(true);
        s.merge_layers(1, 0, 0, 10 * B, r).unwrap();
        s.set_replaying(false);
        assert!(image(&s, 1, 10, &seqs) == before, "live {live}");
        assert_eq!(s.checksums_in(1, 0, 5, 0, 10).unwrap(), crcs, "live {live}");
        s.drop_merged(1, 0, r).unwrap();
        assert!(image(&s, 1, 10, &seqs) == before, "live {live}");
    }
}

/// A crash after a live merge's checksums reached the disk but not its data: the replay
/// copies those blocks again rather than take them for the clients'.
#[test]
fn a_live_merge_torn_by_a_crash_is_completed_by_its_replay() {
    let (tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(1, 3), 1).unwrap();
    s.write_seq(1, 0, 0, &fill(2, 3), 2).unwrap();
    s.write_seq(1, 0, 2 * B, &fill(3, 1), 3).unwrap();
    let r = range(2, 3, true);
    s.merge_layers(1, 0, 0, 3 * B, r).unwrap();
    let want = read(&s, 1, 0, 3, 0);
    drop(s);
    let data = layer_file(&tmp, 1, 3);
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    sys::zero_range(&f, B, B, sys::Zeroing::Punch).unwrap();
    let s = ChunkStore::open(tmp.path()).unwrap();
    assert!(matches!(s.read(1, 0, 0, 3 * B), Err(Error::Corrupt(_))));
    s.set_replaying(true);
    s.merge_layers(1, 0, 0, 3 * B, r).unwrap();
    s.set_replaying(false);
    assert_eq!(read(&s, 1, 0, 3, 0), want);
    s.drop_merged(1, 0, r).unwrap();
    assert_eq!(read(&s, 1, 0, 3, 0), want);
}

#[test]
fn a_merge_of_a_plain_chunk_or_a_single_layer_does_nothing() {
    let (tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(1, 2), 1).unwrap();
    for r in [range(0, 5, true), range(1, 5, false), range(2, 2, true)] {
        s.merge_layers(1, 0, 0, 2 * B, r).unwrap();
        s.merge_layers(1, 7, 0, 2 * B, r).unwrap();
        s.drop_merged(1, 0, r).unwrap();
    }
    assert!(!s.holds_layers_or_links());
    assert_eq!(layers_of(&s, 1), [1]);
    assert!(!layer_file(&tmp, 1, 5).exists());
    assert_eq!(read(&s, 1, 0, 2, 0), fill(1, 2));
    // A chunk whose live layer does not exist, with one layer below it in the range.
    s.write_seq(1, 1, 0, &fill(2, 1), 2).unwrap();
    s.merge_layers(1, 1, 0, B, range(2, 3, true)).unwrap();
    assert_eq!(layers_of(&s, 1), [1, 2]);
    assert!(!layer_file(&tmp, 1, 3).exists());
    // Two layers in a live range without its live layer: nothing to merge into either.
    s.write_seq(1, 1, 0, &fill(3, 1), 3).unwrap();
    s.merge_layers(1, 1, 0, B, range(2, 4, true)).unwrap();
    s.drop_merged(1, 1, range(2, 4, true)).unwrap();
    assert_eq!(layers_of(&s, 1), [1, 2, 3]);
    assert!(!layer_file(&tmp, 1, 4).exists());
    assert!(matches!(
        s.merge_layers(1, 0, 0, B, range(3, 2, false)),
        Err(Error::Refused(_))
    ));
    assert!(matches!(
        s.drop_merged(1, 0, range(3, 2, true)),
        Err(Error::Refused(_))
    ));
    assert!(matches!(
        s.merge_layers(1, 0, MAX_CHUNK, B, range(1, 2, false)),
        Err(Error::OutOfRange(_))
    ));
}

#[test]
fn dropped_layers_go_with_their_chunk_and_a_write_into_one_starts_it_anew() {
    let (tmp, s) = store();
    five_layers(&s);
    let r = range(2, 4, false);
    s.merge_layers(1, 0, 0, 10 * B, r).unwrap();
    s.drop_merged(1, 0, r).unwrap();
    let mut live = read(&s, 1, 0, 10, 0);
    live[8 * B as usize..9 * B as usize].fill(7);
    // Never sent (sequences only grow), but handled: layer 3 is created anew.
    s.write_seq(1, 0, 8 * B, &fill(7, 1), 3).unwrap();
    assert_eq!(s.checksums_in(1, 0, 3, 0, 1).unwrap(), vec![0u8; 4]);
    assert_eq!(read(&s, 1, 0, 10, 3)[8 * B as usize], 7);
    assert!(read(&s, 1, 0, 10, 0) == live);
    assert_eq!(layers_of(&s, 1), [1, 2, 3, 5]);
    s.sync().unwrap();
    assert!(layer_file(&tmp, 1, 3).exists());
    assert!(!layer_file(&tmp, 1, 4).exists());
    // drop_chunk deletes the files of layers still waiting for a sync too.
    s.write_seq(2, 0, 0, &fill(1, 1), 1).unwrap();
    s.write_seq(2, 0, 0, &fill(2, 1), 2).unwrap();
    s.merge_layers(2, 0, 0, B, range(1, 2, true)).unwrap();
    s.drop_merged(2, 0, range(1, 2, true)).unwrap();
    s.drop_chunk(2, 0).unwrap();
    assert!(!layer_file(&tmp, 2, 1).exists());
    assert!(!layer_file(&tmp, 2, 2).exists());
    s.sync().unwrap();
    assert_eq!(s.volume_layer_bytes(2), []);
}

/// A crash after a live merge, its drop and a partial write into a copied block left that
/// block's new checksum on disk without any data: the replayed drop keeps the sources, so
/// that the write's replay completes the block from them, not from older layers.
#[test]
fn a_replayed_drop_keeps_the_sources_of_a_block_a_later_write_left_torn() {
    let (tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(1, 2), 1).unwrap();
    s.write_seq(1, 0, 0, &fill(2, 1), 2).unwrap();
    s.write_seq(1, 0, B, &fill(3, 1), 3).unwrap();
    let r = range(2, 3, true);
    s.merge_layers(1, 0, 0, 2 * B, r).unwrap();
    s.drop_merged(1, 0, r).unwrap();
    s.write_seq(1, 0, 10, b"abc", 3).unwrap();
    let want = read(&s, 1, 0, 2, 0);
    drop(s);
    let data = layer_file(&tmp, 1, 3);
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    sys::zero_range(&f, 0, B, sys::Zeroing::Punch).unwrap();
    let s = ChunkStore::open(tmp.path()).unwrap();
    s.set_replaying(true);
    s.merge_layers(1, 0, 0, 2 * B, r).unwrap();
    let dropped = s.drop_merged(1, 0, r);
    assert!(
        matches!(&dropped, Err(Error::Refused(m)) if m.contains("torn by a crash")),
        "{dropped:?}"
    );
    s.write_seq(1, 0, 10, b"abc", 3).unwrap();
    s.set_replaying(false);
    assert_eq!(read(&s, 1, 0, 2, 0), want);
    assert_eq!(read(&s, 1, 0, 2, 1), fill(1, 2));
    // The next merge of the range drops them.
    s.merge_layers(1, 0, 0, 2 * B, r).unwrap();
    s.drop_merged(1, 0, r).unwrap();
    assert_eq!(read(&s, 1, 0, 2, 0), want);
    assert_eq!(layers_of(&s, 1), [1, 3]);
}

/// A catch-up that listed a chunk before a drop must still read the layers it listed:
/// while a pin is held the hidden layers' files stay (served by the raw access, left out
/// of the listings); the first sync after it is released deletes them.
#[test]
fn a_pinned_store_keeps_hidden_layers_readable_by_the_catch_up_until_the_pin_goes() {
    let (tmp, s) = store();
    five_layers(&s);
    s.sync().unwrap();
    let want = s.read_in(1, 0, 3, 0, 8 * B).unwrap();
    let crcs = s.checksums_in(1, 0, 3, 0, 8).unwrap();
    let pin = s.pin_dropped();
    let r = range(2, 4, false);
    s.merge_layers(1, 0, 0, 10 * B, r).unwrap();
    s.drop_merged(1, 0, r).unwrap();
    s.sync().unwrap();
    assert!(layer_file(&tmp, 1, 3).exists() && layer_file(&tmp, 1, 4).exists());
    assert_eq!(layers_of(&s, 1), [1, 2, 5]);
    assert_eq!(s.served_read_in(1, 0, 3, 0, 8 * B).unwrap(), want);
    assert_eq!(s.served_checksums_in(1, 0, 3, 0, 8).unwrap(), crcs);
    assert_eq!(s.served_blocks_in(1, 0, 3).unwrap(), 8);
    // The serving listing names them (a copy paging its listing across the drop must
    // copy the sources its replayed merge reads); the store's own listing does not.
    let listed = |l: Vec<LayerKey>| -> Vec<u64> { l.iter().map(|k| k.layer).collect() };
    assert_eq!(listed(s.served_list_layers().unwrap()), [1, 2, 3, 4, 5]);
    assert_eq!(listed(s.list_layers().unwrap()), [1, 2, 5]);
    // Every other access leaves them out, the copier's local view among them (a copy
    // into this store must not skip blocks of a layer its write would start anew).
    assert_eq!(s.changed_blocks(1, 0, 2, 4).unwrap(), Vec::<u64>::new());
    assert_eq!(s.chunk_blocks_in(1, 0, 3).unwrap(), 0);
    assert_eq!(s.checksums_in(1, 0, 3, 0, 8).unwrap(), vec![0u8; 32]);
    drop(pin);
    assert!(layer_file(&tmp, 1, 3).exists());
    s.sync().unwrap();
    assert!(!layer_file(&tmp, 1, 3).exists() && !layer_file(&tmp, 1, 4).exists());
    assert_eq!(s.served_blocks_in(1, 0, 3).unwrap(), 0);
    assert_eq!(s.served_read_in(1, 0, 3, 0, B).unwrap(), fill(0, 1));
}

/// A replayed partial write below which a later frozen merge left a torn rewrite (its
/// checksum on disk over the old bytes) completes from the old bytes, as its first run did:
/// never from the parent, never stalled on a "corrupt" block.
#[test]
fn a_replayed_write_completes_from_the_old_bytes_under_a_torn_merge_copy() {
    let (tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(7, 2), 1).unwrap();
    s.link(2, 0, 1, 1).unwrap();
    s.write_seq(2, 0, 0, &fill(5, 2), 1).unwrap();
    s.write_seq(2, 0, 10, b"abc", 2).unwrap();
    let want = read(&s, 2, 0, 2, 0);
    assert_eq!(&want[..10], &[5u8; 10]);
    s.merge_layers(2, 0, 0, 2 * B, range(1, 2, false)).unwrap();
    drop(s);
    // The crash: the write's data page in layer 2 lost (a hole under its checksum), the
    // merge's in layer 1 too (the old bytes under the new checksum).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(layer_file(&tmp, 2, 2))
        .unwrap();
    sys::zero_range(&f, 0, B, sys::Zeroing::Punch).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(layer_file(&tmp, 2, 1))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &fill(5, 1), 0).unwrap();
    let s = ChunkStore::open(tmp.path()).unwrap();
    s.set_replaying(true);
    s.write_seq(2, 0, 10, b"abc", 2).unwrap();
    s.merge_layers(2, 0, 0, 2 * B, range(1, 2, false)).unwrap();
    s.set_replaying(false);
    assert_eq!(read(&s, 2, 0, 2, 0), want);
    s.drop_merged(2, 0, range(1, 2, false)).unwrap();
    assert_eq!(read(&s, 2, 0, 2, 0), want);
}

//! Faults injected into the fdatasync of chunk files (run with `--features failpoints`).
//! Each case configures its fail point inside a `FailScenario` and clears it; cases run one
//! at a time (the registry is global).

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_engine::chunk::FileBudget;
use tessera_engine::{ChunkStore, Error};

const B: usize = 4096;

/// After the kernel reported a failed fdatasync, the dirty pages it covered may be gone and
/// marked clean, so a second fdatasync has nothing left to write and succeeds: the store must
/// never report a sync as successful again (Postgres' "fsyncgate").
#[test]
fn a_failed_chunk_fdatasync_fails_every_later_sync() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    store.write(1, 0, 0, &[7u8; B]).unwrap();
    store.sync().expect("a healthy sync");

    store.write(1, 0, B as u64, &[8u8; B]).unwrap();
    fail::cfg("chunk::fdatasync", "return").unwrap();
    let failed = store.sync();
    fail::remove("chunk::fdatasync");
    // The disk looks healthy again, but the store must not pretend it is.
    let retried = store.sync();
    assert!(
        matches!(retried, Err(Error::Fatal(_))),
        "a sync after a failed fdatasync must fail, got {retried:?}"
    );
    assert!(
        matches!(failed, Err(Error::Fatal(_))),
        "a failed fdatasync is fatal, got {failed:?}"
    );
    // Nor after writing something else, to another chunk.
    store.write(1, 1, 0, &[9u8; B]).unwrap();
    let later = store.sync();
    assert!(matches!(later, Err(Error::Fatal(_))), "got {later:?}");
    scenario.teardown();
}

/// A sync that finds a file's fdatasync already running in another thread must wait for it:
/// returning at once would report durable what is still in flight (and may yet fail).
#[test]
fn a_sync_waits_for_a_concurrent_fdatasync_of_the_same_file() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    store.write(1, 0, 0, &[7u8; B]).unwrap();

    // The first fdatasync says it has started, then waits to be released; later ones pass.
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let gate = Arc::new(Mutex::new(Some((entered_tx, release_rx))));
    fail::cfg_callback("chunk::fdatasync", move || {
        let first = gate.lock().unwrap().take();
        if let Some((entered, release)) = first {
            entered.send(()).unwrap();
            let _ = release.recv_timeout(Duration::from_secs(10));
        }
    })
    .unwrap();

    std::thread::scope(|s| {
        let store = &store;
        let first = s.spawn(move || store.sync());
        entered_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the first sync reaches its fdatasync");
        let (done_tx, done_rx) = mpsc::channel();
        let second = s.spawn(move || {
            let r = store.sync();
            let _ = done_tx.send(());
            r
        });
        let early = done_rx.recv_timeout(Duration::from_millis(300));
        release_tx.send(()).unwrap();
        assert!(
            early.is_err(),
            "a sync returned while another thread's fdatasync of the same file was in flight"
        );
        first.join().unwrap().expect("the first sync");
        second.join().unwrap().expect("the second sync");
    });
    scenario.teardown();
}

/// A failed fsync of a directory holding new chunk files is as final as a failed fdatasync:
/// the files' names may be gone while the next fsync finds nothing to write.
#[test]
fn a_failed_directory_fsync_fails_every_later_sync() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    store.write(1, 0, 0, &[7u8; B]).unwrap();
    fail::cfg("chunk::dir_fsync", "return").unwrap();
    let failed = store.sync();
    fail::remove("chunk::dir_fsync");
    assert!(matches!(failed, Err(Error::Fatal(_))), "got {failed:?}");
    let retried = store.sync();
    assert!(
        matches!(retried, Err(Error::Fatal(_))),
        "a sync after a failed directory fsync must fail, got {retried:?}"
    );
    scenario.teardown();
}

/// The disk fills between a write's data and its checksums: the block's bytes are new, its
/// checksum old. Nothing was acknowledged (the entry is applied again once there is room),
/// so the block must neither read as corrupt meanwhile nor stop that second attempt, a
/// read-modify-write that reads the torn block first.
#[test]
fn a_write_torn_by_a_full_disk_is_retried_not_called_corrupt() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    store.write(1, 0, 0, &[7u8; B]).unwrap();

    fail::cfg("chunk::crc_enospc", "return").unwrap();
    let full = store.write(1, 0, 100, &[9u8; 10]);
    fail::remove("chunk::crc_enospc");
    assert!(matches!(full, Err(Error::DiskFull(_))), "got {full:?}");
    let meanwhile = store.read(1, 0, 0, B as u64);
    assert!(
        matches!(meanwhile, Err(Error::Exhausted(_))),
        "a block torn by a full disk reads as 'retry', got {meanwhile:?}"
    );

    store
        .write(1, 0, 100, &[9u8; 10])
        .expect("the same write, applied again once there is room");
    let mut want = vec![7u8; B];
    want[100..110].fill(9);
    assert_eq!(&store.read(1, 0, 0, B as u64).unwrap()[..], &want[..]);

    // A write of whole blocks torn the same way heals the same way.
    fail::cfg("chunk::crc_enospc", "return").unwrap();
    let full = store.write(1, 1, 0, &[5u8; 2 * B]);
    fail::remove("chunk::crc_enospc");
    assert!(matches!(full, Err(Error::DiskFull(_))), "got {full:?}");
    store.write(1, 1, 0, &[5u8; 2 * B]).expect("retried whole");
    assert_eq!(
        &store.read(1, 1, 0, 2 * B as u64).unwrap()[..],
        &[5u8; 2 * B][..]
    );
    scenario.teardown();
}

/// The node's budget takes a dirty chunk out to make room: the thread that needed the room
/// never waits for its fdatasync, but the next sync must make it durable before it returns
/// (and fail as any failed fdatasync does). Otherwise a sync, no longer seeing the closed
/// file, would report durable what is still only in the page cache.
#[test]
fn a_dirty_chunk_closed_for_room_is_made_durable_by_the_next_sync() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let budget = FileBudget::new(16);
    let store = ChunkStore::open_in(dir.path(), &budget).unwrap();
    let syncs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = syncs.clone();
    fail::cfg_callback("chunk::fdatasync", move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    })
    .unwrap();
    for chunk in 0..40 {
        store.write(1, chunk, 0, &[chunk as u8; B]).unwrap();
        store.start_writeback();
    }
    assert_eq!(
        syncs.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "making room waited for an fdatasync"
    );
    assert!(
        budget.stats().open > 16,
        "dirty chunks stay open until synced"
    );
    store.sync().expect("sync");
    assert_eq!(
        syncs.load(std::sync::atomic::Ordering::SeqCst),
        80,
        "every chunk written since the last sync, closed for room or not, is synced (data and checksums)"
    );
    assert!(budget.stats().open <= 16, "{:?}", budget.stats());
    fail::remove("chunk::fdatasync");

    // And a failure to make one of them durable fails the sync, and every later one.
    for chunk in 40..80 {
        store.write(1, chunk, 0, &[chunk as u8; B]).unwrap();
        store.start_writeback();
    }
    fail::cfg("chunk::fdatasync", "return").unwrap();
    let synced = store.sync();
    fail::remove("chunk::fdatasync");
    assert!(matches!(synced, Err(Error::Fatal(_))), "got {synced:?}");
    assert!(matches!(store.sync(), Err(Error::Fatal(_))));
    scenario.teardown();
}

/// A sync running while the budget takes dirty chunks out of the open map (the
/// `chunk::close_idle` fail point, once they are out) finds them handed over to it: it makes
/// them durable before it reports success. Were they handed over later, it would find them
/// nowhere and report their writes durable (and delete the sources of a merge they were
/// the target of).
#[test]
fn a_sync_while_dirty_chunks_are_taken_out_for_room_makes_them_durable() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let budget = FileBudget::new(16);
    let store = ChunkStore::open_in(dir.path(), &budget).unwrap();
    for chunk in 0..16 {
        store.write(1, chunk, 0, &[1u8; B]).unwrap();
    }
    store.sync().unwrap();
    for chunk in 0..16 {
        store.write(1, chunk, 0, &[2u8; B]).unwrap();
    }
    // Written back (no longer queued for it): idle, so the budget may take them out.
    store.start_writeback();
    let syncer = store.clone();
    fail::cfg_callback("chunk::close_idle", move || syncer.sync().unwrap()).unwrap();
    // One chunk past the budget: the least recently used dirty ones are taken out.
    store.write(1, 16, 0, &[3u8; B]).unwrap();
    fail::remove("chunk::close_idle");
    let stats = budget.stats();
    assert_eq!(
        stats.closing, 0,
        "a sync reported done left dirty chunks: {stats:?}"
    );
    assert!(stats.open < 17, "nothing was taken out: {stats:?}");
    scenario.teardown();
}

/// The same above layer 1: a write into a snapshot's layer torn by a full disk reads as
/// "retry", and applied again completes its partial block from what it completed it from
/// the first time (the layer's own block, or the layers below).
#[test]
fn a_write_into_a_layer_torn_by_a_full_disk_is_retried_not_called_corrupt() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    store.write_seq(1, 0, 0, &[7u8; 2 * B], 1).unwrap();
    store.write_seq(1, 0, 0, &[8u8; B], 2).unwrap();

    // Over a block the layer holds (torn: reads as "retry"), then over one it did not hold
    // (its checksum still 0: the layer does not hold it yet, what is below reads).
    for (offset, seq, held) in [(100u64, 2u64, true), (B as u64 + 100, 3, false)] {
        let before = store.read_as_of(1, 0, 0, 2 * B as u64, seq).unwrap();
        fail::cfg("chunk::crc_enospc", "return").unwrap();
        let full = store.write_seq(1, 0, offset, &[9u8; 10], seq);
        fail::remove("chunk::crc_enospc");
        assert!(matches!(full, Err(Error::DiskFull(_))), "got {full:?}");
        let meanwhile = store.read_as_of(1, 0, 0, 2 * B as u64, seq);
        if held {
            assert!(
                matches!(meanwhile, Err(Error::Exhausted(_))),
                "got {meanwhile:?}"
            );
        } else {
            assert!(meanwhile.unwrap() == before);
        }
        store
            .write_seq(1, 0, offset, &[9u8; 10], seq)
            .expect("applied again once there is room");
    }
    let mut want = [vec![8u8; B], vec![7u8; B]].concat();
    want[100..110].fill(9);
    want[B + 100..B + 110].fill(9);
    assert_eq!(&store.read(1, 0, 0, 2 * B as u64).unwrap()[..], &want[..]);
    // Snapshot 1 never saw any of it.
    assert_eq!(
        &store.read_as_of(1, 0, 0, 2 * B as u64, 1).unwrap()[..],
        &[7u8; 2 * B][..]
    );
    scenario.teardown();
}

/// A link is durable when `link` returns: a failed fdatasync of its file, or of its
/// directory, is as fatal for the store as one of a chunk file.
#[test]
fn a_failed_fsync_of_a_link_fails_every_later_sync() {
    for point in ["chunk::fdatasync", "chunk::dir_fsync"] {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        store.write_seq(1, 0, 0, &[7u8; B], 1).unwrap();
        store.sync().unwrap();
        fail::cfg(point, "return").unwrap();
        let linked = store.link(2, 0, 1, 1);
        fail::remove(point);
        assert!(
            matches!(linked, Err(Error::Fatal(_))),
            "{point}: {linked:?}"
        );
        let later = store.sync();
        assert!(matches!(later, Err(Error::Fatal(_))), "{point}: {later:?}");
        let again = store.link(2, 0, 1, 1);
        assert!(matches!(again, Err(Error::Fatal(_))), "{point}: {again:?}");
        scenario.teardown();
    }
}

/// A partial write over a block its layer holds as zero makes its data durable before its
/// checksum (after a crash a checksum over a hole must mean "not held before"), and only
/// that write does: a failed fdatasync there is fatal, elsewhere none is made.
#[test]
fn a_partial_write_over_a_zeroed_block_of_a_layer_syncs_its_data_first() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    store.write_seq(1, 0, 0, &[7u8; 3 * B], 1).unwrap();
    store.discard_seq(1, 0, 0, B as u64, 2).unwrap();
    fail::cfg("chunk::fdatasync", "return").unwrap();
    // No fdatasync for these: over a block below (not held), over data the layer holds.
    store.write_seq(1, 0, B as u64 + 5, b"x", 2).unwrap();
    store.write_seq(1, 0, B as u64 + 9, b"y", 2).unwrap();
    let zeroed = store.write_seq(1, 0, 5, b"z", 2);
    fail::remove("chunk::fdatasync");
    assert!(matches!(zeroed, Err(Error::Fatal(_))), "got {zeroed:?}");
    let later = store.sync();
    assert!(matches!(later, Err(Error::Fatal(_))), "got {later:?}");
    scenario.teardown();
}

/// A merge meeting a full disk fails with it and leaves its copies torn: the drop after it
/// is refused (the sources stay) while any is, and every retained read stays what it was
/// (its torn copies are shadowed by the sources or still absent by their checksums); the
/// merge applied again once there is room heals them, and the drop then goes through.
#[test]
fn a_merge_torn_by_a_full_disk_keeps_its_drop_refused_until_merged_again() {
    use tessera_engine::chunk::MergeRange;
    for live in [false, true] {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        store.write_seq(1, 0, 0, &[1u8; 4 * B], 1).unwrap();
        store.write_seq(1, 0, 0, &[2u8; 2 * B], 2).unwrap();
        store.write_seq(1, 0, 0, &[3u8; B], 3).unwrap();
        store.write_seq(1, 0, 3 * B as u64, &[4u8; B], 4).unwrap();
        // Frozen: snapshot 2 deleted, 2..=3 into layer 2. Live: 2..=4 into layer 4.
        let (top, seqs) = if live {
            (4, [1u64, 4, 0])
        } else {
            (3, [1u64, 3, 0])
        };
        let range = MergeRange { low: 2, top, live };
        let len = 4 * B as u64;
        let before: Vec<_> = seqs
            .iter()
            .map(|&q| store.read_as_of(1, 0, 0, len, q).unwrap())
            .collect();
        fail::cfg("chunk::crc_enospc", "return").unwrap();
        let full = store.merge_layers(1, 0, 0, len, range);
        fail::remove("chunk::crc_enospc");
        assert!(
            matches!(full, Err(Error::DiskFull(_))),
            "live {live}: {full:?}"
        );
        let refused = store.drop_merged(1, 0, range);
        assert!(
            matches!(refused, Err(Error::Refused(_))),
            "live {live}: {refused:?}"
        );
        for (&q, want) in seqs.iter().zip(&before) {
            let got = store.read_as_of(1, 0, 0, len, q).unwrap();
            assert_eq!(&got, want, "live {live} as of {q}");
        }
        store.merge_layers(1, 0, 0, len, range).unwrap();
        store.drop_merged(1, 0, range).unwrap();
        for (&q, want) in seqs.iter().zip(&before) {
            assert_eq!(&store.read_as_of(1, 0, 0, len, q).unwrap(), want);
        }
        scenario.teardown();
    }
}

/// A sync deleting a merge's dropped layers stops part way (a failed unlink, or a crash
/// between two deletions): the log replays the merge and its drop over what is left. Only
/// the oldest sources may be gone (deleted in ascending order, each deletion durable
/// before the next): had a newer one gone first, the replay would copy an older source's
/// block over the newer one the target already holds, and the retained reads would change.
#[test]
fn a_deletion_of_dropped_layers_stopped_part_way_replays_to_the_same_reads() {
    use tessera_engine::chunk::MergeRange;
    // The order of a set is random per set: several runs, each with a new store.
    for run in 0..8 {
        let scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        store.write_seq(1, 0, 0, &[1u8; 3 * B], 1).unwrap();
        store.write_seq(1, 0, 0, &[2u8; 2 * B], 2).unwrap();
        store.write_seq(1, 0, 0, &[3u8; B], 3).unwrap();
        store.write_seq(1, 0, 2 * B as u64, &[4u8; B], 4).unwrap();
        store.sync().unwrap();
        // Snapshots 1 and 2 deleted, 3 kept: layers 1..=3 into layer 1.
        let range = MergeRange {
            low: 1,
            top: 3,
            live: false,
        };
        let len = 3 * B as u64;
        let seqs = [3u64, 4, 0];
        let reads = |s: &ChunkStore| -> Vec<_> {
            seqs.iter()
                .map(|&q| s.read_as_of(1, 0, 0, len, q).unwrap())
                .collect()
        };
        let before = reads(&store);
        store.merge_layers(1, 0, 0, len, range).unwrap();
        store.drop_merged(1, 0, range).unwrap();
        // The first layer's files go, then the deletion fails.
        fail::cfg("chunk::remove_dropped", "1*off->return").unwrap();
        let stopped = store.sync();
        fail::remove("chunk::remove_dropped");
        assert!(
            matches!(stopped, Err(Error::Io(_))),
            "run {run}: {stopped:?}"
        );
        // A crash now: the log replays from the sync before the merge.
        drop(store);
        let store = ChunkStore::open(dir.path()).unwrap();
        store.set_replaying(true);
        store.merge_layers(1, 0, 0, len, range).unwrap();
        store.drop_merged(1, 0, range).unwrap();
        store.set_replaying(false);
        assert!(reads(&store) == before, "run {run}: retained reads changed");
        store.sync().unwrap();
        assert!(reads(&store) == before, "run {run}: retained reads changed");
        let layers: Vec<u64> = store
            .list_layers()
            .unwrap()
            .iter()
            .map(|k| k.layer)
            .collect();
        assert_eq!(layers, [1, 4], "run {run}");
        scenario.teardown();
    }
}

/// A sync that deleted a merge's oldest dropped layer but could not open the directory to
/// make that durable (out of descriptors) fails without deleting the next one; the next
/// sync makes the first deletion durable before it deletes anything.
#[test]
fn a_deletion_whose_directory_fsync_failed_is_made_durable_before_the_next() {
    use tessera_engine::chunk::MergeRange;
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    store.write_seq(1, 0, 0, &[1u8; 2 * B], 1).unwrap();
    store.write_seq(1, 0, 0, &[2u8; B], 2).unwrap();
    store.write_seq(1, 0, B as u64, &[3u8; B], 3).unwrap();
    store.sync().unwrap();
    let range = MergeRange {
        low: 1,
        top: 3,
        live: false,
    };
    store.merge_layers(1, 0, 0, 2 * B as u64, range).unwrap();
    store.drop_merged(1, 0, range).unwrap();
    fail::cfg("chunk::dir_fsync", "return(emfile)").unwrap();
    let short = store.sync();
    assert!(matches!(short, Err(Error::Exhausted(_))), "{short:?}");
    let events = Arc::new(Mutex::new(Vec::new()));
    let (fsyncs, deletions) = (events.clone(), events.clone());
    fail::cfg_callback("chunk::dir_fsync", move || {
        fsyncs.lock().unwrap().push("fsync")
    })
    .unwrap();
    fail::cfg_callback("chunk::remove_dropped", move || {
        deletions.lock().unwrap().push("delete")
    })
    .unwrap();
    store.sync().unwrap();
    fail::remove("chunk::dir_fsync");
    fail::remove("chunk::remove_dropped");
    let events = events.lock().unwrap().clone();
    assert_eq!(events[..2], ["fsync", "delete"], "{events:?}");
    let layers: Vec<u64> = store
        .list_layers()
        .unwrap()
        .iter()
        .map(|k| k.layer)
        .collect();
    assert_eq!(layers, [1]);
    scenario.teardown();
}

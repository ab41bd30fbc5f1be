//! Faults injected into the shared log (run with `--features failpoints`). Each case
//! configures its fail point and clears it; cases run serially (the registry is global).

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use tessera_engine::{ChunkStore, EntryKind, Error, GroupWrite, Log, LogEntry, LogOptions};

fn write(group: u64, index: u64) -> GroupWrite {
    GroupWrite {
        group,
        entries: vec![LogEntry {
            term: 1,
            index,
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"payload"),
        }],
        slots: vec![],
    }
}

/// Appends `writes` without waiting: the receiver gets the batch's answer.
fn submit(log: &Log, writes: Vec<GroupWrite>) -> mpsc::Receiver<Result<(), Error>> {
    let (tx, rx) = mpsc::channel();
    log.append(
        writes,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx
}

fn append(log: &Log, w: GroupWrite) -> Result<(), Error> {
    submit(log, vec![w])
        .recv_timeout(Duration::from_secs(10))
        .expect("the log must answer every append")
}

/// After the kernel reported a failed fdatasync, dirty pages may be gone: the log must
/// fail that batch and every later one, never report success again, and a reopen must not
/// return the batch whose sync failed as if it were durable... unless its bytes did reach
/// the disk, which replay may legitimately find (it was never acknowledged).
#[test]
fn a_failed_fdatasync_is_fatal_for_good() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 1 << 20,
    };
    let (log, _) = Log::open(dir.path(), opts.clone()).unwrap();
    append(&log, write(1, 1)).expect("a healthy append");

    fail::cfg("log::fdatasync", "return").unwrap();
    assert!(matches!(append(&log, write(1, 2)), Err(Error::Fatal(_))));
    fail::remove("log::fdatasync");
    // The disk looks healthy again, but the log must not pretend it is.
    assert!(matches!(append(&log, write(1, 3)), Err(Error::Fatal(_))));
    log.shutdown();
    drop(log);

    // What was acknowledged before the failure is still there.
    let (_, rec) = Log::open(dir.path(), opts).unwrap();
    let g = &rec.groups[&1];
    assert_eq!(g.entries.first().map(|e| e.index), Some(1));
    assert!(
        g.entries.iter().all(|e| e.index != 3),
        "a batch refused after the failure was written"
    );
    scenario.teardown();
}

fn big(group: u64, index: u64) -> GroupWrite {
    let mut w = write(group, index);
    w.entries[0].data = Bytes::from(vec![index as u8; 8 << 10]);
    w
}

fn log_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|d| {
            let p = d.as_ref().unwrap().path();
            p.extension().is_some_and(|e| e == "log")
        })
        .count()
}

/// A full disk stops new segment files, never the work that frees them: while a batch
/// waits for room, compaction notes are still written (into the reserve the current
/// segment keeps for them) and the segments they free are recycled, so the waiting batch
/// goes through and the log runs on recycled files alone, losing nothing.
#[test]
fn a_full_disk_still_writes_marks_and_recycles_segments() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 64 << 10,
    };
    let (log, _) = Log::open(dir.path(), opts.clone()).unwrap();
    for i in 1..=20 {
        append(&log, big(1, i)).expect("append before the disk fills");
    }
    fail::cfg("log::no_space", "return").unwrap();
    // Append until the log needs a segment it cannot create (the spare made before the
    // disk filled is used up first).
    let mut stalled = None;
    for i in 21..=40 {
        let rx = submit(&log, vec![big(1, i)]);
        // Generous: an fsync on a loaded machine can take a second, and an append taken
        // for stalled when it was only slow leaves the test waiting for the wrong one.
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => r.expect("append while the current segment has room"),
            Err(_) => {
                stalled = Some((i, rx));
                break;
            }
        }
    }
    let (waiting, rx) = stalled.expect("the log must run out of segments");
    // What the stalled batch waits for: the groups flush and compact behind it.
    log.compact(1, waiting - 1);
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a compaction while the disk is full must free a segment for the stalled batch");
    r.expect("the stalled batch, written once a segment was recycled");
    let files = log_files(dir.path());
    for i in waiting + 1..waiting + 40 {
        append(&log, big(1, i)).expect("append on recycled segments");
        log.compact(1, i - 1);
    }
    assert!(
        log_files(dir.path()) <= files + 1,
        "the log grew from {files} to {} segment files on a full disk",
        log_files(dir.path())
    );
    fail::remove("log::no_space");
    log.shutdown();
    drop(log);
    let (_, rec) = Log::open(dir.path(), opts).unwrap();
    let last = rec.groups[&1].entries.last().expect("entries survive");
    assert_eq!(last.index, waiting + 39);
    assert_eq!(last.data, Bytes::from(vec![last.index as u8; 8 << 10]));
    scenario.teardown();
}

/// Nobody frees space for a log being shut down: a batch waiting for room is answered
/// with `DiskFull` and the shutdown returns, instead of hanging the node's exit.
#[test]
fn a_shutdown_while_the_disk_is_full_refuses_the_waiting_batch() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 64 << 10,
    };
    let (log, _) = Log::open(dir.path(), opts).unwrap();
    fail::cfg("log::no_space", "return").unwrap();
    let mut waiting = None;
    for i in 1..=40 {
        let rx = submit(&log, vec![big(1, i)]);
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(1)) {
            waiting = Some(rx);
            break;
        }
    }
    let rx = waiting.expect("the log must run out of segments");
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        log.shutdown();
        let _ = done_tx.send(());
    });
    let shut = done_rx.recv_timeout(Duration::from_secs(10));
    fail::remove("log::no_space");
    shut.expect("shutdown must not wait for disk space");
    let r = rx.recv_timeout(Duration::from_secs(1)).expect("answered");
    assert!(matches!(r, Err(Error::DiskFull(_))), "got {r:?}");
    scenario.teardown();
}

/// Appends big entries of `group` from `from` until the log has rolled into its second
/// segment; returns the next index. Called before the disk fills, so that the log holds a
/// segment besides the current one, which compaction can free for a stalled batch to roll
/// into: the current segment is never recycled, so a log of one segment has nothing to
/// free while the disk is full, and only waits for space freed elsewhere.
///
/// Waits for the roll itself, not for a clock: the spare segment is made by a helper
/// thread which, on a loaded machine, may only get to it after the test filled the disk.
fn roll_before_the_disk_fills(log: &Log, group: u64, from: u64) -> u64 {
    let mut i = from;
    while log.stats().segments < 2 {
        append(log, big(group, i)).expect("append before the disk fills");
        i += 1;
        assert!(i < from + 40, "the log must roll into a second segment");
    }
    i
}

/// A log of small segments, with a late preallocation thread, rolled into its second
/// segment by big entries of `group` from index `from`; then the disk is full. Returns the
/// log, its options (to reopen it) and the next index of `group`.
fn full_disk_after_a_roll(dir: &std::path::Path, group: u64, from: u64) -> (Log, LogOptions, u64) {
    let opts = LogOptions {
        segment_size: 64 << 10,
    };
    slow_preallocation();
    let (log, _) = Log::open(dir, opts.clone()).unwrap();
    let next = roll_before_the_disk_fills(&log, group, from);
    fail::cfg("log::no_space", "return").unwrap();
    (log, opts, next)
}

/// Makes the helper thread preparing the spare segment late, as it can be on a loaded
/// machine: it then makes its spare only after the disk filled, so it fails.
fn slow_preallocation() {
    fail::cfg("log::prealloc", "sleep(300)").unwrap();
}

/// Appends big entries of `group` from `from` until one cannot get a segment; returns its
/// index and the receiver of its answer.
fn append_until_stalled(
    log: &Log,
    group: u64,
    from: u64,
) -> (u64, mpsc::Receiver<Result<(), Error>>) {
    for i in from..from + 40 {
        let rx = submit(log, vec![big(group, i)]);
        // Generous: an fsync on a loaded machine can take a second, and an append taken
        // for stalled when it was only slow leaves the test waiting for the wrong one.
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => r.expect("append while the current segment has room"),
            Err(_) => return (i, rx),
        }
    }
    panic!("the log must run out of segments");
}

fn answer(rx: &mpsc::Receiver<Result<(), Error>>, what: &str) -> Result<(), Error> {
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what}: no answer while the disk is full"))
}

/// The compaction that frees a full disk comes from a flush whose applied index is queued
/// behind the stalled batch: a checkpoint (applied value, then mark) is written into the
/// reserve ahead of it, frees the segments, and supersedes the older applied value queued
/// before it, which must not land later and undo it.
#[test]
fn a_checkpoint_queued_behind_a_stalled_batch_relieves_a_full_disk() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (log, opts, next) = full_disk_after_a_roll(dir.path(), 1, 1);
    let (waiting, stalled) = append_until_stalled(&log, 1, next);
    // An older applied value, queued behind the stalled batch.
    let old_rx = submit(
        &log,
        vec![GroupWrite {
            group: 1,
            entries: vec![],
            slots: vec![(2, Bytes::from_static(b"applied old"))],
        }],
    );
    let (tx, rx) = mpsc::channel();
    log.checkpoint(
        1,
        vec![(2, Bytes::from_static(b"applied new"))],
        waiting - 1,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    answer(&rx, "the checkpoint").expect("the checkpoint is written into the reserve");
    answer(&stalled, "the stalled batch").expect("written once a segment was recycled");
    answer(&old_rx, "the older value").expect("superseded, not refused");
    fail::remove("log::no_space");
    log.shutdown();
    drop(log);
    let (_, rec) = Log::open(dir.path(), opts).unwrap();
    let g = &rec.groups[&1];
    assert_eq!(g.slots[&2], Bytes::from_static(b"applied new"));
    assert_eq!(g.entries.last().map(|e| e.index), Some(waiting));
    scenario.teardown();
}

/// A stuck group pins the log; removing it frees a full disk although its tombstone is
/// queued behind the stalled batch. Its records in that batch (and in appends queued
/// before the removal) are dropped: landing after the tombstone, they would bring the
/// group back on replay.
#[test]
fn removing_a_group_relieves_a_full_disk_and_it_stays_removed() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (log, opts, mut i) = full_disk_after_a_roll(dir.path(), 7, 0);
    let stalled = loop {
        let rx = submit(&log, vec![big(7, i), write(1, i)]);
        // Generous: an fsync on a loaded machine can take a second, and an append taken
        // for stalled when it was only slow leaves the test waiting for the wrong one.
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(r) => r.expect("append while the current segment has room"),
            Err(_) => break rx,
        }
        i += 1;
        assert!(i < 40, "the log must run out of segments");
    };
    // Group 1 is compacted; group 7 never is: only removing it frees anything.
    log.compact(1, i);
    let queued_rx = submit(&log, vec![big(7, i + 1), write(1, i + 1)]);
    let (tx, rx) = mpsc::channel();
    log.remove_group(
        7,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    answer(&rx, "the removal").expect("the tombstone is written into the reserve");
    answer(&stalled, "the stalled batch").expect("written once a segment was recycled");
    answer(&queued_rx, "the queued append").expect("written after");
    fail::remove("log::no_space");
    log.shutdown();
    drop(log);
    let (_, rec) = Log::open(dir.path(), opts).unwrap();
    assert!(
        !rec.groups.contains_key(&7),
        "the removed group came back with {:?}",
        rec.groups[&7]
            .entries
            .iter()
            .map(|e| e.index)
            .collect::<Vec<_>>()
    );
    assert_eq!(rec.groups[&1].entries.last().map(|e| e.index), Some(i + 1));
    scenario.teardown();
}

/// Marks taken while the disk is full but not fitting in the reserve are written later,
/// not forgotten once the stalled batch goes through: here 500 groups compact
/// entries living in the segment that was current when the disk filled, and after a
/// reopen none of those entries is back.
#[test]
fn marks_that_do_not_fit_the_reserve_are_written_later() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (log, opts, i) = full_disk_after_a_roll(dir.path(), 0, 1);
    let many: Vec<GroupWrite> = (1..=500).map(|g| write(g, 1)).collect();
    let rx = submit(&log, many);
    answer(&rx, "many groups").unwrap();
    let (waiting, stalled) = append_until_stalled(&log, 0, i);
    log.compact(0, waiting - 1);
    for g in 1..=500 {
        log.compact(g, 1);
    }
    answer(&stalled, "the stalled batch").expect("written once a segment was recycled");
    fail::remove("log::no_space");
    append(&log, big(0, waiting + 1)).unwrap();
    // Every mark written, the segment holding those entries is recycled.
    assert!(
        log_files(dir.path()) <= 2,
        "{} segment files left",
        log_files(dir.path())
    );
    log.shutdown();
    drop(log);
    let (_, rec) = Log::open(dir.path(), opts).unwrap();
    let back: Vec<u64> = (1..=500)
        .filter(|g| rec.groups.get(g).is_some_and(|g| !g.entries.is_empty()))
        .collect();
    assert!(
        back.is_empty(),
        "{} groups lost their compaction: {back:?}",
        back.len()
    );
    scenario.teardown();
}

/// A checkpoint of a group that the waiting batch removes is not written ahead of that
/// batch: it was queued after the tombstone, so it must land after it (a replica hosted
/// anew), not be wiped out by it.
#[test]
fn a_checkpoint_never_overtakes_a_waiting_tombstone_of_its_group() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 64 << 10,
    };
    slow_preallocation();
    let (log, _) = Log::open_stepped(dir.path(), opts.clone()).unwrap();
    // As `roll_before_the_disk_fills`, stepping the log by hand.
    let mut i = 1;
    while log.stats().segments < 2 {
        let (tx, rx) = mpsc::channel();
        log.append(vec![big(1, i)], Box::new(move |r| tx.send(r).unwrap()));
        log.step();
        rx.recv().unwrap().unwrap();
        i += 1;
    }
    fail::cfg("log::no_space", "return").unwrap();
    // Every batch removes group 5; one of them waits for a segment.
    let stepping = loop {
        log.remove_group(5, Box::new(|r| r.unwrap()));
        log.append(vec![big(1, i)], Box::new(|r| r.unwrap()));
        let stepper = log.clone();
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn(move || {
            stepper.step();
            let _ = tx.send(());
        });
        if rx.recv_timeout(Duration::from_secs(1)).is_err() {
            break (t, rx);
        }
        i += 1;
        assert!(i < 40, "the log must run out of segments");
    };
    let (tx, rx) = mpsc::channel();
    log.checkpoint(
        5,
        vec![(2, Bytes::from_static(b"hosted anew"))],
        0,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    log.compact(1, i - 1);
    stepping
        .1
        .recv_timeout(Duration::from_secs(10))
        .expect("the waiting batch, written once a segment was recycled");
    stepping.0.join().unwrap();
    fail::remove("log::no_space");
    log.step();
    rx.recv_timeout(Duration::from_secs(1))
        .expect("the checkpoint is answered")
        .unwrap();
    log.shutdown();
    drop(log);
    let (_, rec) = Log::open(dir.path(), opts).unwrap();
    let g = rec
        .groups
        .get(&5)
        .expect("group 5 was wiped out by an older tombstone");
    assert_eq!(g.slots[&2], Bytes::from_static(b"hosted anew"));
    scenario.teardown();
}

/// A chunk directory that cannot even be opened for its fsync (the process is out of
/// descriptors) postpones the chunk sync with `Exhausted`, and the next sync does it. It used
/// to deadlock: shedding for room synced this very store's waiting chunks under the sync lock
/// the failed sync still held, so the flusher hung and the log was never compacted again.
#[test]
fn a_directory_sync_out_of_descriptors_postpones_the_chunk_sync() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    store.write(1, 0, 0, &[7u8; 4096]).unwrap();
    fail::cfg("chunk::dir_fsync", "1*return(emfile)").unwrap();
    let (tx, rx) = mpsc::channel();
    let s = store.clone();
    std::thread::spawn(move || {
        let _ = tx.send(s.sync());
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the chunk sync answers (it deadlocked)");
    assert!(matches!(first, Err(Error::Exhausted(_))), "{first:?}");
    store.sync().expect("the postponed sync");
    assert_eq!(&store.read(1, 0, 0, 4096).unwrap()[..], &[7u8; 4096][..]);
    scenario.teardown();
}

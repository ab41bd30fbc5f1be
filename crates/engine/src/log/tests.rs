//! Promises of the log, checked against real files in temporary directories.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use bytes::Bytes;

use super::*;

mod damage;

const SMALL: LogOptions = LogOptions {
    segment_size: 64 << 10,
};

fn ent(term: u64, index: u64, data: &str) -> LogEntry {
    LogEntry {
        term,
        index,
        kind: EntryKind::Normal,
        data: Bytes::copy_from_slice(data.as_bytes()),
    }
}

fn entries(group: u64, term: u64, range: std::ops::RangeInclusive<u64>) -> GroupWrite {
    GroupWrite {
        group,
        entries: range
            .map(|i| ent(term, i, &format!("g{group} t{term} i{i}")))
            .collect(),
        slots: vec![],
    }
}

fn slot(group: u64, slot: u8, value: &str) -> GroupWrite {
    GroupWrite {
        group,
        entries: vec![],
        slots: vec![(slot, Bytes::copy_from_slice(value.as_bytes()))],
    }
}

fn append(log: &Log, writes: Vec<GroupWrite>) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    log.append(writes, Box::new(move |r| tx.send(r).unwrap()));
    rx.recv().unwrap()
}

fn remove(log: &Log, group: u64) -> Result<()> {
    let (tx, rx) = mpsc::channel();
    log.remove_group(group, Box::new(move |r| tx.send(r).unwrap()));
    rx.recv().unwrap()
}

fn reopen(dir: &Path, opts: LogOptions) -> (Log, Recovered) {
    Log::open(dir, opts).unwrap()
}

fn indexes(g: &RecoveredGroup) -> Vec<(u64, u64)> {
    g.entries.iter().map(|e| (e.term, e.index)).collect()
}

fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

#[test]
fn entries_and_slots_round_trip_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, rec) = reopen(tmp.path(), SMALL);
    assert!(rec.groups.is_empty());
    let mut w = entries(1, 1, 1..=3);
    w.entries[1].kind = EntryKind::ConfChangeV2;
    w.slots.push((0, Bytes::from_static(b"hard state v1")));
    append(&log, vec![w, entries(2, 5, 10..=11)]).unwrap();
    append(&log, vec![slot(1, 0, "hard state v2"), slot(1, 1, "apply")]).unwrap();
    log.shutdown();
    drop(log);

    let (_log, rec) = reopen(tmp.path(), SMALL);
    let g1 = &rec.groups[&1];
    assert_eq!(indexes(g1), vec![(1, 1), (1, 2), (1, 3)]);
    assert_eq!(g1.entries[1].kind, EntryKind::ConfChangeV2);
    assert_eq!(g1.entries[2].data, "g1 t1 i3");
    assert_eq!(g1.slots[&0], "hard state v2");
    assert_eq!(g1.slots[&1], "apply");
    assert_eq!(indexes(&rec.groups[&2]), vec![(5, 10), (5, 11)]);
}

#[test]
fn later_entries_overwrite_from_their_index() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), SMALL);
    append(&log, vec![entries(1, 1, 1..=10)]).unwrap();
    append(&log, vec![entries(1, 2, 6..=8)]).unwrap();
    drop(log);
    let (_log, rec) = reopen(tmp.path(), SMALL);
    let want: Vec<_> = (1..=5)
        .map(|i| (1, i))
        .chain((6..=8).map(|i| (2, i)))
        .collect();
    assert_eq!(indexes(&rec.groups[&1]), want);
}

#[test]
fn queue_depth_one_costs_one_fdatasync_per_append() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), SMALL);
    for i in 1..=20 {
        append(&log, vec![entries(1, 1, i..=i)]).unwrap();
    }
    assert_eq!(log.stats().syncs, 20);
    assert_eq!(log.stats().batches, 20);
}

#[test]
fn compaction_alone_costs_no_fdatasync() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), SMALL);
    append(&log, vec![entries(1, 1, 1..=10)]).unwrap();
    let before = log.stats().syncs;
    log.compact(1, 5);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        log.stats().syncs,
        before,
        "a compaction note was synced on its own"
    );
    append(&log, vec![entries(1, 1, 11..=11)]).unwrap();
    assert_eq!(log.stats().syncs, before + 1);
    drop(log);
    // The mark rode along with that write.
    let (_, rec) = reopen(tmp.path(), SMALL);
    assert!(rec.groups[&1].entries.iter().all(|e| e.index > 5));
}

#[test]
fn concurrent_appends_share_fdatasyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), LogOptions::default());
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 200;
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (log, tx) = (log.clone(), tx.clone());
            s.spawn(move || {
                for i in 1..=PER_THREAD {
                    let tx = tx.clone();
                    log.append(
                        vec![entries(t, 1, i..=i)],
                        Box::new(move |r| tx.send(r).unwrap()),
                    );
                }
            });
        }
    });
    drop(tx);
    let results: Vec<_> = rx.iter().collect();
    assert_eq!(results.len() as u64, THREADS * PER_THREAD);
    assert!(results.iter().all(|r| r.is_ok()));
    let stats = log.stats();
    assert!(
        stats.syncs * 4 < THREADS * PER_THREAD,
        "{} fdatasyncs for {} appends",
        stats.syncs,
        THREADS * PER_THREAD
    );
    drop(log);
    let (_log, rec) = reopen(tmp.path(), LogOptions::default());
    for t in 0..THREADS {
        assert_eq!(rec.groups[&t].entries.len() as u64, PER_THREAD);
    }
}

#[test]
fn compaction_recycles_segments_and_keeps_live_data_and_old_slots() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 8 << 10,
    };
    let (log, _) = reopen(tmp.path(), opts.clone());
    // Group 9 writes its slot once, into the first segment, then stays idle.
    append(&log, vec![slot(9, 3, "idle group state")]).unwrap();
    append(&log, vec![slot(1, 0, "busy v0")]).unwrap();
    let payload = "x".repeat(900);
    for i in 1..=200u64 {
        let mut w = GroupWrite {
            group: 1,
            entries: vec![ent(1, i, &payload)],
            slots: vec![],
        };
        if i % 50 == 0 {
            w.slots.push((0, Bytes::from(format!("busy v{i}"))));
        }
        append(&log, vec![w]).unwrap();
        if i > 5 {
            log.compact(1, i - 5);
        }
        assert!(log.stats().segments <= 4, "segments: {:?}", log.stats());
    }
    assert!(
        !tmp.path().join(format!("{:016x}.log", 1)).exists(),
        "first segment recycled"
    );
    assert!(log_files(tmp.path()).len() <= 4);
    drop(log);

    let (log, rec) = reopen(tmp.path(), opts.clone());
    assert_eq!(rec.groups[&9].slots[&3], "idle group state");
    let g1 = &rec.groups[&1];
    assert_eq!(g1.slots[&0], "busy v200");
    let idx: Vec<u64> = g1.entries.iter().map(|e| e.index).collect();
    assert!(
        idx.len() < 30,
        "compacted entries mostly gone: {}",
        idx.len()
    );
    assert_eq!(*idx.last().unwrap(), 200);
    assert!(idx.windows(2).all(|w| w[1] == w[0] + 1));
    assert!(*idx.first().unwrap() <= 196, "live entries kept");

    // Appending after the reopen keeps everything consistent through another reopen.
    append(&log, vec![entries(1, 2, 201..=201)]).unwrap();
    drop(log);
    let (_log, rec) = reopen(tmp.path(), opts);
    assert_eq!(rec.groups[&9].slots[&3], "idle group state");
    assert_eq!(rec.groups[&1].entries.last().unwrap().index, 201);
}

#[test]
fn removed_group_stays_removed_after_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), SMALL);
    append(
        &log,
        vec![entries(1, 1, 1..=3), slot(1, 0, "hs"), entries(2, 1, 1..=2)],
    )
    .unwrap();
    remove(&log, 1).unwrap();
    remove(&log, 77).unwrap();
    drop(log);
    let (log, rec) = reopen(tmp.path(), SMALL);
    assert!(!rec.groups.contains_key(&1));
    assert_eq!(rec.groups[&2].entries.len(), 2);
    // The group can come back; only what follows the tombstone is returned.
    append(&log, vec![entries(1, 4, 10..=10)]).unwrap();
    drop(log);
    let (_log, rec) = reopen(tmp.path(), SMALL);
    assert_eq!(indexes(&rec.groups[&1]), vec![(4, 10)]);
    assert!(rec.groups[&1].slots.is_empty());
}

#[test]
fn non_contiguous_entries_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), SMALL);
    let w = GroupWrite {
        group: 1,
        entries: vec![ent(1, 1, "a"), ent(1, 3, "c")],
        slots: vec![],
    };
    assert!(matches!(append(&log, vec![w]), Err(Error::OutOfRange(_))));
    assert_eq!(log.stats().syncs, 0);
}

#[test]
fn appends_after_shutdown_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), SMALL);
    log.shutdown();
    assert!(matches!(
        append(&log, vec![entries(1, 1, 1..=1)]),
        Err(Error::Fatal(_))
    ));
}

#[test]
fn batch_larger_than_a_segment_gets_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size: 4 << 10,
    };
    let (log, _) = reopen(tmp.path(), opts.clone());
    let big = "y".repeat(10 << 10);
    append(&log, vec![entries(1, 1, 1..=1)]).unwrap();
    append(
        &log,
        vec![GroupWrite {
            group: 1,
            entries: vec![ent(1, 2, &big)],
            slots: vec![],
        }],
    )
    .unwrap();
    append(&log, vec![entries(1, 1, 3..=3)]).unwrap();
    drop(log);
    let (_log, rec) = reopen(tmp.path(), opts);
    let g = &rec.groups[&1];
    assert_eq!(g.entries.len(), 3);
    assert_eq!(g.entries[1].data.len(), big.len());
}

/// A stepped log writes nothing until stepped, answers on the stepping thread, and a crash
/// keeps exactly the batches it was told to keep plus the torn prefix of the next.
#[test]
fn a_stepped_log_writes_only_when_stepped_and_crashes_where_told() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = Log::open_stepped(tmp.path(), SMALL).unwrap();
    let answered = Arc::new(AtomicU64::new(0));
    let queue = |log: &Log, w: GroupWrite| {
        let a = answered.clone();
        log.append(
            vec![w],
            Box::new(move |r| {
                if r.is_ok() {
                    a.fetch_add(1, Ordering::SeqCst);
                }
            }),
        );
    };
    queue(&log, entries(1, 1, 1..=2));
    assert_eq!(log.queued(), 1);
    assert_eq!(
        answered.load(Ordering::SeqCst),
        0,
        "nothing written before a step"
    );
    assert_eq!(log.step(), 1);
    assert_eq!(answered.load(Ordering::SeqCst), 1);
    // Three more appends: the first kept, the second torn after one of its two records,
    // the third lost with it.
    queue(&log, entries(1, 1, 3..=3));
    queue(&log, entries(1, 1, 4..=5));
    queue(&log, entries(1, 1, 6..=6));
    log.crash(1, Some(1));
    assert_eq!(
        answered.load(Ordering::SeqCst),
        2,
        "lost work is never answered Ok"
    );
    drop(log);
    let (_, rec) = reopen(tmp.path(), SMALL);
    assert_eq!(
        indexes(&rec.groups[&1]),
        vec![(1, 1), (1, 2), (1, 3), (1, 4)]
    );
}

/// A compaction note alone recycles nothing: a segment becomes obsolete only once the mark
/// that makes it so is durable (applied to the book as written), so a mark that did not fit
/// where it was due never leaves entries dropped behind a compaction replay does not know.
#[test]
fn only_a_written_mark_makes_a_segment_obsolete() {
    use super::record::Record;
    use super::state::{Book, SegmentMeta};
    let mut book = Book::default();
    book.segments
        .insert(1, SegmentMeta::new(PathBuf::from("1.log"), 1 << 20));
    book.segments
        .insert(2, SegmentMeta::new(PathBuf::from("2.log"), 1 << 20));
    book.apply(
        1,
        &Record::Entry {
            group: 9,
            entry: ent(1, 5, "x"),
        },
    );
    assert!(book.compact(9, 5));
    assert!(!book.compact(9, 4), "a lower note is no news");
    assert!(!book.is_obsolete(&book.segments[&1]), "noted, not written");
    assert!(book.entries_obsolete(&book.segments[&1], false));
    book.apply(2, &Record::CompactMark { group: 9, index: 5 });
    assert!(book.is_obsolete(&book.segments[&1]));
}

/// A batch that fits a segment only by filling its reserve gets a longer segment, so the
/// reserve stays free for the marks a full disk needs.
#[test]
fn a_batch_filling_a_segment_still_leaves_its_reserve() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, _) = reopen(tmp.path(), SMALL);
    let reserve = SMALL.segment_size / 8;
    let len = (SMALL.segment_size - reserve / 2) as usize;
    let mut w = entries(1, 1, 1..=1);
    w.entries[0].data = Bytes::from(vec![7u8; len]);
    append(&log, vec![w]).unwrap();
    let newest = log_files(tmp.path()).pop().unwrap();
    let size = std::fs::metadata(&newest).unwrap().len();
    assert!(
        size >= len as u64 + reserve,
        "a {len}-byte batch went into a {size}-byte segment"
    );
    log.shutdown();
    drop(log);
    let (_, rec) = reopen(tmp.path(), SMALL);
    assert_eq!(rec.groups[&1].entries[0].data.len(), len);
}

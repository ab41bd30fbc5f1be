//! Promises of the log, checked against real files in temporary directories.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use bytes::Bytes;

use super::*;

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

/// A log holding entries 1..=3 of group 1, then entry 4 as the very last record (only its
/// batch end follows). Returns the segment path and the byte range of that last record.
fn log_with_last_record(dir: &Path) -> (PathBuf, std::ops::Range<usize>) {
    let (log, _) = reopen(dir, SMALL);
    append(&log, vec![entries(1, 1, 1..=3)]).unwrap();
    let start = log.stats().bytes as usize;
    append(&log, vec![entries(1, 1, 4..=4)]).unwrap();
    let end = log.stats().bytes as usize - record::BATCH_END_LEN;
    drop(log);
    let files = log_files(dir);
    assert_eq!(files.len(), 1);
    (files[0].clone(), start..end)
}

/// Replay must return exactly 1..=3 (the damaged record 4 never), and the log must then
/// take appends and replay them after another reopen.
fn assert_recovers_without_last_record(dir: &Path) {
    let (log, rec) = reopen(dir, SMALL);
    assert_eq!(indexes(&rec.groups[&1]), vec![(1, 1), (1, 2), (1, 3)]);
    append(&log, vec![entries(1, 2, 4..=5)]).unwrap();
    drop(log);
    let (_log, rec) = reopen(dir, SMALL);
    let want = vec![(1, 1), (1, 2), (1, 3), (2, 4), (2, 5)];
    assert_eq!(indexes(&rec.groups[&1]), want);
}

fn copy_dir(from: &Path, to: &Path) {
    for d in std::fs::read_dir(from).unwrap() {
        let p = d.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
}

#[test]
fn torn_last_record_is_dropped_at_every_cut_point() {
    let pristine = tempfile::tempdir().unwrap();
    let (seg, last) = log_with_last_record(pristine.path());
    let name = seg.file_name().unwrap().to_owned();
    for cut in last.clone() {
        for truncate_file in [false, true] {
            let tmp = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), tmp.path());
            let path = tmp.path().join(&name);
            let mut bytes = std::fs::read(&path).unwrap();
            if truncate_file {
                bytes.truncate(cut);
            } else {
                bytes[cut..last.end].fill(0);
            }
            std::fs::write(&path, &bytes).unwrap();
            assert_recovers_without_last_record(tmp.path());
        }
    }
}

#[test]
fn flipped_byte_in_last_record_is_detected() {
    let pristine = tempfile::tempdir().unwrap();
    let (seg, last) = log_with_last_record(pristine.path());
    let name = seg.file_name().unwrap().to_owned();
    // Every payload byte, and the header fields too.
    for pos in last.clone() {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), tmp.path());
        let path = tmp.path().join(&name);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[pos] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        assert_recovers_without_last_record(tmp.path());
    }
}

#[test]
fn garbage_after_the_last_record_is_ignored() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let pristine = tempfile::tempdir().unwrap();
    let (seg, last) = log_with_last_record(pristine.path());
    let name = seg.file_name().unwrap().to_owned();
    let seq_bytes = u64::from_str_radix(&name.to_str().unwrap()[..16], 16)
        .unwrap()
        .to_le_bytes();
    for round in 0..20 {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), tmp.path());
        let path = tmp.path().join(&name);
        let mut bytes = std::fs::read(&path).unwrap();
        let after = last.end + record::BATCH_END_LEN;
        let garbage = &mut bytes[after..after + 300];
        rng.fill(garbage);
        if round % 2 == 0 {
            // Looks like a record of this segment claiming a huge length.
            garbage[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
            garbage[8..16].copy_from_slice(&seq_bytes);
        }
        std::fs::write(&path, &bytes).unwrap();
        let (log, rec) = reopen(tmp.path(), SMALL);
        assert_eq!(rec.groups[&1].entries.len(), 4);
        append(&log, vec![entries(1, 2, 5..=5)]).unwrap();
        drop(log);
        let (_log, rec) = reopen(tmp.path(), SMALL);
        assert_eq!(rec.groups[&1].entries.len(), 5);
    }
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

/// Group 1's entries 1..=60, one per batch, about 1.5 KiB each: two 64 KiB segments, the
/// first ending near entry 34 (before the segment's reserve for marks). Returns, per index, the segment path and where its record
/// starts in that file.
fn two_segments_of_entries(dir: &Path) -> Vec<(PathBuf, usize)> {
    let (log, _) = reopen(dir, SMALL);
    let data = |i: u64| format!("entry {i:05} {}", "z".repeat(1500));
    for i in 1..=60 {
        let w = GroupWrite {
            group: 1,
            entries: vec![ent(1, i, &data(i))],
            slots: vec![],
        };
        append(&log, vec![w]).unwrap();
    }
    drop(log);
    let files = log_files(dir);
    assert_eq!(files.len(), 2);
    let mut at = vec![(PathBuf::new(), 0)];
    for i in 1..=60 {
        let needle = data(i).into_bytes();
        let found = files.iter().find_map(|f| {
            let bytes = std::fs::read(f).unwrap();
            let pos = bytes.windows(needle.len()).position(|w| w == needle)?;
            Some((f.clone(), pos - record::HEADER_LEN))
        });
        at.push(found.expect("every entry is in some segment"));
    }
    at
}

/// Spoils the bytes of one record in place.
type Damage = fn(&mut [u8]);

/// Damage to a record with valid records of its segment after it is not a torn tail (a
/// crash only ever tears the end of what was written): it is bit rot or a lost write, and
/// skipping it would drop acknowledged entries and apply later ones on top. Opening the
/// log must fail, naming the file and offset, whether the damage is in an older segment
/// or in the newest one.
#[test]
fn damage_before_valid_records_refuses_to_open_naming_file_and_offset() {
    let pristine = tempfile::tempdir().unwrap();
    let at = two_segments_of_entries(pristine.path());
    let (newest, oldest) = (&at[60].0, &at[1].0);
    assert_ne!(newest, oldest);
    // Entry 10 in the older segment, entry 50 in the newest: both followed by valid
    // records of the same segment; entry 59 only by the newest batch, which is complete.
    for index in [10, 50, 59] {
        let (seg, start) = &at[index];
        assert_eq!(
            seg,
            &at[index + 1].0,
            "entry {index} is not last in its file"
        );
        let damages: [(&str, Damage); 4] = [
            ("payload bit flip", |r| r[record::HEADER_LEN + 3] ^= 0x01),
            ("checksum bit flip", |r| r[0] ^= 0x80),
            ("sequence number bit flip", |r| r[8] ^= 0x01),
            ("lost write (zeros)", |r| r.fill(0)),
        ];
        for (what, damage) in damages {
            let tmp = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), tmp.path());
            let path = tmp.path().join(seg.file_name().unwrap());
            let mut bytes = std::fs::read(&path).unwrap();
            let len = at[index + 1].1 - start;
            damage(&mut bytes[*start..start + len]);
            std::fs::write(&path, &bytes).unwrap();
            match Log::open(tmp.path(), SMALL) {
                Err(Error::Corrupt(msg)) => {
                    let name = seg.file_name().unwrap().to_str().unwrap();
                    assert!(msg.contains(name), "{what} at entry {index}: {msg}");
                    assert!(
                        msg.contains(&format!("offset {start} ")),
                        "{what} at entry {index}: {msg}"
                    );
                }
                Err(e) => panic!("{what} at entry {index}: expected Corrupt, got {e}"),
                Ok((_, rec)) => panic!(
                    "{what} at entry {index}: expected Corrupt, log opened with entries {:?}",
                    rec.groups.get(&1).map(|g| {
                        let idx: Vec<_> = g.entries.iter().map(|e| e.index).collect();
                        (idx.first().copied(), idx.last().copied(), idx.len())
                    })
                ),
            }
        }
    }
}

/// The torn tail a crash leaves in the newest segment is still cut off silently, and
/// stays harmless once a later process has moved on to a new segment (the writer never
/// appends into a segment of an earlier process, so older segments can end torn too).
#[test]
fn torn_tail_replays_in_the_newest_segment_and_after_it_becomes_older() {
    let tmp = tempfile::tempdir().unwrap();
    let at = two_segments_of_entries(tmp.path());
    let (seg, start) = &at[60];
    let mut bytes = std::fs::read(seg).unwrap();
    let end = start + record::HEADER_LEN + 100;
    bytes[start + 30..end].fill(0);
    std::fs::write(seg, &bytes).unwrap();
    let (log, rec) = reopen(tmp.path(), SMALL);
    let idx: Vec<u64> = rec.groups[&1].entries.iter().map(|e| e.index).collect();
    assert_eq!(idx, (1..=59).collect::<Vec<_>>());
    append(&log, vec![entries(1, 2, 60..=61)]).unwrap();
    drop(log);
    assert_eq!(log_files(tmp.path()).len(), 3);
    let (_log, rec) = reopen(tmp.path(), SMALL);
    let idx: Vec<u64> = rec.groups[&1].entries.iter().map(|e| e.index).collect();
    assert_eq!(idx, (1..=61).collect::<Vec<_>>());
}

/// A log of three batches: group 1's entries 1..=3, group 2's entry 1, then a torn
/// candidate: group 1's entries 4..=7 (about 3 KiB each, so the batch spans pages) and
/// group 2's slot 0. Returns the segment and the byte range of each of the last batch's
/// entry records.
fn log_with_big_last_batch(dir: &Path) -> (PathBuf, Vec<std::ops::Range<usize>>) {
    let (log, _) = reopen(dir, SMALL);
    append(&log, vec![entries(1, 1, 1..=3)]).unwrap();
    append(&log, vec![entries(2, 1, 1..=1)]).unwrap();
    let mut at = log.stats().bytes as usize;
    let big: Vec<LogEntry> = (4..=7)
        .map(|i| ent(1, i, &format!("entry {i} {}", "b".repeat(3000))))
        .collect();
    let ranges = big
        .iter()
        .map(|e| {
            let r = at..at + record::HEADER_LEN + e.data.len();
            at = r.end;
            r
        })
        .collect();
    let last = GroupWrite {
        group: 1,
        entries: big,
        slots: vec![],
    };
    append(&log, vec![last, slot(2, 0, "hs after the torn batch")]).unwrap();
    drop(log);
    let files = log_files(dir);
    assert_eq!(files.len(), 1);
    (files[0].clone(), ranges)
}

/// A power loss during a batch's one pwrite can persist its later pages and lose earlier
/// ones. That batch was never acknowledged (its fdatasync never returned), so replay must
/// open the log without it (not refuse to start after an ordinary power loss) and must not
/// replay the surviving later records on top of what came before.
#[test]
fn torn_batch_whose_later_records_survive_and_first_does_not_is_dropped() {
    let pristine = tempfile::tempdir().unwrap();
    let (seg, records) = log_with_big_last_batch(pristine.path());
    let first = records[0].clone();
    let page = 4096;
    let first_page = first.start..(first.start / page + 1) * page;
    assert!(first_page.end < records[1].end, "a later record survives");
    let damages: [(&str, std::ops::Range<usize>, Damage); 3] = [
        ("first record lost (zeros)", first.clone(), |r| r.fill(0)),
        ("first page lost (zeros)", first_page, |r| r.fill(0)),
        ("first record half written", first, |r| {
            let half = r.len() / 2;
            r[half..].fill(0);
        }),
    ];
    for (what, range, damage) in damages {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), tmp.path());
        let path = tmp.path().join(seg.file_name().unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        damage(&mut bytes[range]);
        std::fs::write(&path, &bytes).unwrap();
        let (log, rec) = match Log::open(tmp.path(), SMALL) {
            Ok(opened) => opened,
            Err(e) => panic!("{what}: a torn batch must not stop the log opening: {e}"),
        };
        assert_eq!(
            indexes(&rec.groups[&1]),
            vec![(1, 1), (1, 2), (1, 3)],
            "{what}"
        );
        assert_eq!(indexes(&rec.groups[&2]), vec![(1, 1)], "{what}");
        assert!(rec.groups[&2].slots.is_empty(), "{what}");
        append(&log, vec![entries(1, 2, 4..=5)]).unwrap();
        drop(log);
        let (_log, rec) = reopen(tmp.path(), SMALL);
        let want = vec![(1, 1), (1, 2), (1, 3), (2, 4), (2, 5)];
        assert_eq!(indexes(&rec.groups[&1]), want, "{what}");
    }
}

/// Records of the damaged batch itself may follow the damage (a torn batch looks like
/// that), but a batch after it proves the damaged one was durable: opening must fail,
/// even if that later batch is itself torn (the node crashed after the damage was done).
#[test]
fn damage_followed_by_the_rest_of_its_batch_and_a_later_batch_refuses_to_open() {
    let pristine = tempfile::tempdir().unwrap();
    let (seg, big_batch) = log_with_big_last_batch(pristine.path());
    // Group 1's entry 1: the first of a three-record batch at offset 0, two complete
    // batches after it.
    let g1_first = 0..record::HEADER_LEN + "g1 t1 i1".len();
    // Group 2's entry 1, alone in its batch, followed by the big batch only.
    let g2_end = big_batch[0].start - record::BATCH_END_LEN;
    let g2 = g2_end - record::HEADER_LEN - "g2 t1 i1".len()..g2_end;
    for (damaged, later_batch_torn) in [(g1_first, false), (g2.clone(), false), (g2, true)] {
        let what = format!("damage at {damaged:?}, later batch torn {later_batch_torn}");
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), tmp.path());
        let path = tmp.path().join(seg.file_name().unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[damaged.clone()].fill(0);
        if later_batch_torn {
            // Its first record and its last page (entry 7, the slot, the batch end) lost.
            bytes[big_batch[0].clone()].fill(0);
            bytes[big_batch[3].start..].fill(0);
        }
        std::fs::write(&path, &bytes).unwrap();
        match Log::open(tmp.path(), SMALL) {
            Err(Error::Corrupt(msg)) => {
                let offset = format!("offset {} ", damaged.start);
                assert!(msg.contains(&offset), "{what}: {msg}");
                let name = seg.file_name().unwrap().to_str().unwrap();
                assert!(msg.contains(name), "{what}: {msg}");
            }
            Err(e) => panic!("{what}: expected Corrupt, got {e}"),
            Ok(_) => panic!("{what}: expected Corrupt, the log opened"),
        }
    }
}

/// A copy of a segment written before batch framing existed (no batch ends, flags zero):
/// group 1 entries 1..=3 with slot 0 and group 2 entries 1..=2 in one batch, then group 1
/// entry 4; group 1 entries 5..=6 (term 2) with group 2 slot 1; group 1 entry 7.
fn unframed_golden(dir: &Path) -> PathBuf {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/unframed");
    copy_dir(&golden, dir);
    dir.join("0000000000000001.log")
}

/// Start offsets of the records of an unframed segment, in order.
fn record_offsets(bytes: &[u8], seq: u64) -> Vec<usize> {
    let (mut off, mut out) = (0, vec![]);
    while let Ok((_, len)) = record::decode(&bytes[off..], seq) {
        out.push(off);
        off += len;
    }
    out
}

/// Logs written before batch framing still open, take new (framed) appends, and keep the
/// rules they had: a torn last record is cut off, damage followed by any valid record is
/// corruption (without framing no batch can be told apart).
#[test]
fn a_log_written_before_batch_framing_still_opens_under_its_old_rules() {
    const GOLDEN: LogOptions = LogOptions { segment_size: 4096 };
    let tmp = tempfile::tempdir().unwrap();
    let seg = unframed_golden(tmp.path());
    let pristine = std::fs::read(&seg).unwrap();
    assert_eq!(
        record::find_next(&pristine, 1).map(|(_, f)| f.framed),
        Some(false)
    );
    let (log, rec) = reopen(tmp.path(), GOLDEN);
    let mut want1 = vec![(1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6), (2, 7)];
    assert_eq!(indexes(&rec.groups[&1]), want1);
    assert_eq!(rec.groups[&1].slots[&0], "hard state v1");
    assert_eq!(indexes(&rec.groups[&2]), vec![(1, 1), (1, 2)]);
    assert_eq!(rec.groups[&2].slots[&1], "applied 2");
    append(&log, vec![entries(1, 3, 8..=9)]).unwrap();
    drop(log);
    let (_log, rec) = reopen(tmp.path(), GOLDEN);
    want1.extend([(3, 8), (3, 9)]);
    assert_eq!(indexes(&rec.groups[&1]), want1);

    let offsets = record_offsets(&pristine, 1);
    assert_eq!(offsets.len(), 11);
    let last = *offsets.last().unwrap();
    for (damaged, opens) in [(last, true), (offsets[0], false), (offsets[8], false)] {
        let tmp = tempfile::tempdir().unwrap();
        let seg = unframed_golden(tmp.path());
        let mut bytes = pristine.clone();
        bytes[damaged + record::HEADER_LEN] ^= 0x01;
        std::fs::write(&seg, &bytes).unwrap();
        match Log::open(tmp.path(), GOLDEN) {
            Ok((_, rec)) if opens => {
                let idx = indexes(&rec.groups[&1]);
                assert_eq!(idx, want1[..6].to_vec(), "damage at {damaged}");
            }
            Err(Error::Corrupt(msg)) if !opens => {
                assert!(msg.contains(&format!("offset {damaged} ")), "{msg}");
            }
            Err(e) => panic!("damage at {damaged}: {e}"),
            Ok(_) => panic!("damage at {damaged}: opened, expected Corrupt"),
        }
    }
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

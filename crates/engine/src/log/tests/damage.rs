//! Promises of replay against damaged segments: a torn tail (what a crash leaves) is cut
//! off silently, any other damage refuses to open naming the file and offset, and logs
//! written before batch framing keep the rules they had.

use std::path::{Path, PathBuf};

use super::*;

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

//! The catch-up's raw copy of every layer and link, replays of random suffixes (also over
//! torn crash states), drops, the descriptor budget with many layers, concurrency.

use super::*;

pub(in crate::chunk) fn copy_layers(from: &ChunkStore, to: &ChunkStore) {
    let listed = from.list_layers().unwrap();
    let keep: std::collections::BTreeSet<_> = listed.iter().copied().collect();
    for k in to.list_layers().unwrap() {
        if !keep.contains(&k) {
            to.drop_layer(k.volume, k.chunk, k.layer).unwrap();
        }
    }
    for k in listed {
        let (v, c, l) = (k.volume, k.chunk, k.layer);
        match from.link_of(v, c).unwrap() {
            Some((p, ps)) => to.link(v, c, p, ps).unwrap(),
            None => to.unlink(v, c).unwrap(),
        }
        let blocks = from.chunk_blocks_in(v, c, l).unwrap();
        let theirs = from.checksums_in(v, c, l, 0, blocks).unwrap();
        let mine = to.checksums_in(v, c, l, 0, blocks).unwrap();
        for b in 0..blocks {
            let i = (b * 4) as usize;
            if theirs[i..i + 4] == mine[i..i + 4] {
                continue;
            }
            if layout::stored_crc(&theirs, b as usize) == 0 {
                to.clear_in(v, c, l, b * B, B).unwrap();
            } else {
                let data = from.read_in(v, c, l, b * B, B).unwrap();
                to.write_in(v, c, l, b * B, &data).unwrap();
            }
        }
        let local = to.chunk_blocks_in(v, c, l).unwrap();
        if local > blocks {
            to.clear_in(v, c, l, blocks * B, (local - blocks) * B)
                .unwrap();
        }
    }
    to.sync().unwrap();
}

#[test]
fn a_raw_copy_of_every_layer_and_link_reads_the_same_at_every_seq() {
    let (_a, from) = store();
    let (_b, to) = store();
    // Parent: layers 1 and 2 with a marker; a clone with layers 1 and 3; a clone of the
    // clone with nothing of its own.
    from.write_seq(1, 0, 0, &fill(1, 6), 1).unwrap();
    from.write_seq(1, 0, 2 * B, &fill(2, 1), 2).unwrap();
    from.discard_seq(1, 0, 4 * B, B, 2).unwrap();
    from.write_seq(1, 0, 7 * B, &vec![0u8; B as usize], 2)
        .unwrap();
    from.link(2, 0, 1, 2).unwrap();
    from.write_seq(2, 0, 100, b"own", 1).unwrap();
    from.discard_seq(2, 0, B, B, 1).unwrap();
    from.write_seq(2, 0, 3 * B, &fill(3, 2), 3).unwrap();
    from.link(3, 0, 2, 1).unwrap();
    // The destination holds stale versions of the same layers and one the source lacks.
    to.write_seq(1, 0, 0, &fill(9, 12), 1).unwrap();
    to.write_seq(2, 0, 0, &fill(9, 3), 3).unwrap();
    to.write_seq(2, 0, 0, &fill(9, 3), 5).unwrap();
    to.link(3, 0, 1, 1).unwrap();
    to.link(3, 0, 1, 1).unwrap();
    to.unlink(3, 0).unwrap();
    to.sync().unwrap();
    copy_layers(&from, &to);
    assert_eq!(from.list_layers().unwrap(), to.list_layers().unwrap());
    assert!(from.list_layers().unwrap().contains(&LayerKey {
        volume: 3,
        chunk: 0,
        layer: 1
    }));
    for v in 1..=3 {
        assert_eq!(from.link_of(v, 0).unwrap(), to.link_of(v, 0).unwrap());
        for as_of in 0..=5 {
            assert_eq!(read(&from, v, 0, 14, as_of), read(&to, v, 0, 14, as_of));
            assert_eq!(
                from.block_status(v, 0, 0, 14 * B, as_of).unwrap(),
                to.block_status(v, 0, 0, 14 * B, as_of).unwrap(),
                "volume {v} as of {as_of}"
            );
            assert_eq!(
                from.changed_blocks(v, 0, as_of, 0).unwrap(),
                to.changed_blocks(v, 0, as_of, 0).unwrap()
            );
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    Write(u64, u64, Vec<u8>, u64),
    Zeroes(u64, u64, u64, u64),
    Discard(u64, u64, u64, u64),
    Link(u64, u64, u64),
    Flatten(u64, u64, u64, u64),
    Rollback(u64, u64, u64),
    Unlink(u64),
}

fn apply(s: &ChunkStore, step: &Step) {
    match step {
        Step::Write(v, off, data, seq) => s.write_seq(*v, 0, *off, data, *seq),
        Step::Zeroes(v, off, len, seq) => s.write_zeroes_seq(*v, 0, *off, *len, *seq),
        Step::Discard(v, off, len, seq) => s.discard_seq(*v, 0, *off, *len, *seq),
        Step::Link(v, p, ps) => s.link(*v, 0, *p, *ps),
        Step::Flatten(v, off, len, seq) => s.flatten(*v, 0, *off, *len, *seq),
        Step::Rollback(v, to, seq) => s.rollback(*v, 0, *to, *seq),
        Step::Unlink(v) => s.unlink(*v, 0),
    }
    .unwrap_or_else(|e| panic!("{step:?}: {e}"));
}

/// Random writes, zeroes and discards of volume `v` with sequence `seq`.
fn random_steps(rng: &mut rand::rngs::StdRng, v: u64, seq: u64, n: usize) -> Vec<Step> {
    const SIZE: u64 = 16 * B;
    (0..n)
        .map(|_| {
            let off = rng.gen_range(0..SIZE - 1);
            let len = rng.gen_range(1..=(SIZE - off).min(3 * B));
            match rng.gen_range(0..6) {
                0 => Step::Zeroes(v, off, len, seq),
                1 => Step::Discard(v, off, len, seq),
                _ => {
                    let byte = rng.r#gen::<u8>() | 1;
                    Step::Write(v, off, vec![byte; len as usize], seq)
                }
            }
        })
        .collect()
}

fn images(s: &ChunkStore) -> Vec<(Vec<u8>, Vec<BlockKind>)> {
    let mut out = Vec::new();
    for v in [1, 2] {
        for as_of in 0..=5 {
            out.push((
                read(s, v, 0, 17, as_of),
                s.block_status(v, 0, 0, 17 * B, as_of).unwrap(),
            ));
        }
    }
    out
}

/// After a crash the log applies again every entry after the last sync, over whatever of
/// the later ones reached the disk: here a sync after entry `from`, every entry up to
/// `upto` reaching the disk, the store reopened (a crash) in replay mode, and every entry
/// from `from` on applied again.
#[test]
fn replaying_a_suffix_over_a_later_state_gives_the_same_result() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let mut steps = Vec::new();
    steps.extend(random_steps(&mut rng, 1, 1, 6));
    steps.extend(random_steps(&mut rng, 1, 2, 6));
    steps.push(Step::Link(2, 1, 2));
    steps.extend(random_steps(&mut rng, 2, 1, 5));
    steps.extend(random_steps(&mut rng, 1, 3, 3));
    steps.push(Step::Flatten(2, 0, 8 * B, 1));
    steps.extend(random_steps(&mut rng, 2, 2, 4));
    steps.push(Step::Flatten(2, 8 * B, 8 * B, 1));
    steps.push(Step::Unlink(2));
    steps.extend(random_steps(&mut rng, 2, 3, 3));
    steps.push(Step::Rollback(2, 1, 3));
    steps.extend(random_steps(&mut rng, 2, 3, 3));
    steps.push(Step::Rollback(1, 2, 4));
    steps.extend(random_steps(&mut rng, 1, 4, 3));

    let (_tmp, reference) = store();
    for step in &steps {
        apply(&reference, step);
    }
    let want = images(&reference);
    let n = steps.len();
    for from in 0..n {
        for upto in [from, (from + 3).min(n), (from + 11).min(n), n] {
            let tmp = tempfile::tempdir().unwrap();
            let s = ChunkStore::open(tmp.path()).unwrap();
            for step in &steps[..from] {
                apply(&s, step);
            }
            // The last sync: the log is replayed from the next entry on.
            s.sync().unwrap();
            for step in &steps[from..upto] {
                apply(&s, step);
            }
            drop(s);
            let s = ChunkStore::open(tmp.path()).unwrap();
            s.set_replaying(true);
            for step in &steps[from..] {
                apply(&s, step);
            }
            s.set_replaying(false);
            assert!(
                images(&s) == want,
                "replayed from step {from} over the state after step {upto}"
            );
        }
    }
}

#[test]
fn dropping_a_chunk_removes_every_layer_and_its_link() {
    let (tmp, s) = store();
    s.write_seq(5, 0, 0, &fill(1, 1), 1).unwrap();
    s.write_seq(2, 3, 0, &fill(1, 4), 1).unwrap();
    s.link(2, 3, 5, 1).unwrap();
    s.write_seq(2, 3, 0, &fill(2, 2), 2).unwrap();
    s.write_seq(2, 3, 0, &fill(3, 1), 3).unwrap();
    s.write_seq(2, 4, 0, &fill(4, 1), 3).unwrap();
    s.sync().unwrap();
    let bytes = s.layer_bytes(2, 3);
    assert_eq!(bytes.iter().map(|b| b.0).collect::<Vec<_>>(), [1, 2, 3]);
    assert!(bytes.iter().all(|&(_, b)| b > 0), "{bytes:?}");
    let used = s.used_bytes();
    s.drop_chunk(2, 3).unwrap();
    s.drop_chunk(2, 3).unwrap();
    assert!(s.used_bytes() < used);
    assert_eq!(s.layer_bytes(2, 3), []);
    assert_eq!(read(&s, 2, 3, 4, 0), fill(0, 4));
    assert_eq!(s.link_of(2, 3).unwrap(), None);
    let mut left: Vec<String> = std::fs::read_dir(tmp.path().join("0000000000000002"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["00000004.L00000003.crc", "00000004.L00000003.dat"]);
    assert_eq!(s.list_chunks().unwrap(), [(2, 4), (5, 0)]);
    let s = reopen(&tmp, s);
    assert_eq!(read(&s, 2, 3, 4, 0), fill(0, 4));
    assert_eq!(
        s.list_layers().unwrap(),
        [
            LayerKey {
                volume: 2,
                chunk: 4,
                layer: 3
            },
            LayerKey {
                volume: 5,
                chunk: 0,
                layer: 1
            }
        ]
    );
}

/// Every layer counts against the node's budget of open files: many layers of many chunks
/// stay within it and still read back at every sequence, also after a restart.
#[test]
fn many_layers_stay_within_the_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = FileBudget::new(16);
    let s = ChunkStore::open_in(tmp.path(), &budget).unwrap();
    for seq in 1..=6u64 {
        for chunk in 0..12u64 {
            s.write_seq(1, chunk, seq * 8, &(chunk * 100 + seq).to_le_bytes(), seq)
                .unwrap();
            s.start_writeback();
            assert!(budget.stats().open <= 16 + 2 + 8, "{:?}", budget.stats());
            if budget.wants_sync() {
                s.sync().unwrap();
            }
        }
    }
    s.sync().unwrap();
    assert!(budget.stats().open <= 16, "{:?}", budget.stats());
    assert!(budget.stats().closed > 0);
    let check = |s: &ChunkStore| {
        for chunk in 0..12u64 {
            for as_of in 1..=6u64 {
                let got = s.read_as_of(1, chunk, 0, 64, as_of).unwrap();
                for seq in 1..=6u64 {
                    let at = (seq * 8) as usize;
                    let want = if seq <= as_of { chunk * 100 + seq } else { 0 };
                    assert_eq!(got[at..at + 8], want.to_le_bytes(), "{chunk} {as_of} {seq}");
                }
                assert!(budget.stats().open <= 16 + 2, "{:?}", budget.stats());
            }
        }
    };
    check(&s);
    drop(s);
    let s = ChunkStore::open_in(tmp.path(), &budget).unwrap();
    check(&s);
}

#[test]
fn reading_a_plain_chunk_opens_only_its_layer_one() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = FileBudget::new(16);
    let s = ChunkStore::open_in(tmp.path(), &budget).unwrap();
    s.write_seq(1, 0, 0, &fill(1, 2), 1).unwrap();
    assert!(s.layer_map.is_plain((1, 0)));
    for as_of in [0, 1, 5] {
        assert_eq!(read(&s, 1, 0, 2, as_of), fill(1, 2));
    }
    assert_eq!(budget.stats().open, 1);
    s.write_seq(1, 0, 0, &fill(2, 1), 2).unwrap();
    assert!(!s.layer_map.is_plain((1, 0)));
    assert_eq!(budget.stats().open, 2);
}

#[test]
fn the_raw_access_checks_its_input_and_verifies_what_it_reads() {
    let (tmp, s) = store();
    assert!(matches!(
        s.write_in(1, 0, 2, 1, &fill(1, 1)),
        Err(Error::OutOfRange(_))
    ));
    assert!(matches!(
        s.clear_in(1, 0, 2, 0, 100),
        Err(Error::OutOfRange(_))
    ));
    assert!(matches!(
        s.read_in(1, 0, 2, MAX_CHUNK, 1),
        Err(Error::OutOfRange(_))
    ));
    s.write_in(1, 0, 2, B, &fill(6, 2)).unwrap();
    assert_eq!(
        &s.read_in(1, 0, 2, 0, 3 * B).unwrap()[..],
        &[fill(0, 1), fill(6, 2)].concat()[..]
    );
    let data = tmp.path().join("0000000000000001/00000000.L00000002.dat");
    let f = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"!", 2 * B + 7).unwrap();
    assert!(matches!(
        s.read_in(1, 0, 2, 0, 3 * B),
        Err(Error::Corrupt(_))
    ));
    assert!(matches!(
        s.read_as_of(1, 0, 0, 3 * B, 0),
        Err(Error::Corrupt(_))
    ));
    assert_eq!(
        s.verify_blocks_in(1, 0, 2, 0, 3).unwrap(),
        [true, true, false]
    );
    // A partial write over a corrupt block of its own layer applies, the block still bad.
    s.write_seq(1, 0, 2 * B + 1, b"x", 2).unwrap();
    assert_eq!(
        s.verify_blocks_in(1, 0, 2, 0, 3).unwrap(),
        [true, true, false]
    );
    s.clear_in(1, 0, 2, 2 * B, B).unwrap();
    assert_eq!(s.verify_blocks_in(1, 0, 2, 0, 3).unwrap(), [true; 3]);
    s.drop_layer(1, 0, 2).unwrap();
    assert!(!data.exists());
    assert_eq!(s.list_layers().unwrap(), []);
}

#[test]
fn concurrent_writers_and_readers_of_a_layer_never_see_torn_blocks() {
    let (_tmp, s) = store();
    s.write_seq(0, 0, 0, &fill(0xFF, 80), 1).unwrap();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let s = &s;
            scope.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                for i in 0..100u64 {
                    // A private 16-block region per thread written with partial blocks over
                    // layer 1's 0xFF, and a shared block everyone overwrites whole.
                    let off = t * 16 * B + rng.gen_range(0..15 * B);
                    s.write_seq(0, 0, off, &[t as u8 + 1; 100], 2).unwrap();
                    s.write_seq(0, 0, 64 * B, &fill((i % 251) as u8, 1), 2)
                        .unwrap();
                    let shared = s.read(0, 0, 64 * B, B).unwrap();
                    assert!(shared.iter().all(|&b| b == shared[0]));
                    let mine = s.read(0, 0, t * 16 * B, 16 * B).unwrap();
                    assert!(mine.iter().all(|&b| b == 0xFF || b == t as u8 + 1));
                    let old = s.read_as_of(0, 0, t * 16 * B, 16 * B, 1).unwrap();
                    assert!(old.iter().all(|&b| b == 0xFF));
                }
            });
        }
        scope.spawn(|| {
            for _ in 0..30 {
                s.sync().unwrap();
            }
        });
    });
}

/// A file's bytes and, per 4 KiB page, whether it is a hole.
pub(in crate::chunk) type FileImage = (Vec<u8>, Vec<bool>);

/// Every file under `dir`, by path relative to it.
pub(in crate::chunk) fn files_of(dir: &Path) -> std::collections::BTreeMap<PathBuf, FileImage> {
    let mut out = std::collections::BTreeMap::new();
    for vol in std::fs::read_dir(dir).unwrap() {
        let vol = vol.unwrap();
        if !vol.file_type().unwrap().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(vol.path()).unwrap() {
            let f = f.unwrap();
            let rel = f.path().strip_prefix(dir).unwrap().to_path_buf();
            let bytes = std::fs::read(f.path()).unwrap();
            let file = std::fs::File::open(f.path()).unwrap();
            let holes = (0..bytes.len().div_ceil(4096))
                .map(|p| sys::is_hole(&file, (p * 4096) as u64).unwrap())
                .collect();
            out.insert(rel, (bytes, holes));
        }
    }
    out
}

/// A file as a crash leaves it: its length and its pages (bytes, whether a hole).
type MixedFile = (usize, Vec<(Vec<u8>, bool)>);

/// Page `p` of a file image: its bytes (4 KiB, zeroes past the end) and whether a hole.
fn page(f: &FileImage, p: usize) -> (Vec<u8>, bool) {
    let mut out = vec![0u8; 4096];
    let at = p * 4096;
    if at < f.0.len() {
        let n = 4096.min(f.0.len() - at);
        out[..n].copy_from_slice(&f.0[at..at + n]);
    }
    (out, f.1.get(p).copied().unwrap_or(true))
}

/// What a crash may leave of unsynced writes: each 4 KiB page of each file as it was at
/// the last sync or as it is now (holes included), files created since there or not
/// (links excepted: they are durable when made), files deleted since gone or not. A block
/// "written as zero" at the last sync whose new checksum reached the disk has its new data
/// there too (the store syncs that data first, see `place`).
pub(in crate::chunk) fn crash_mix(
    dir: &Path,
    synced: &std::collections::BTreeMap<PathBuf, FileImage>,
    rng: &mut rand::rngs::StdRng,
) {
    let now = files_of(dir);
    let paths: std::collections::BTreeSet<_> = synced.keys().chain(now.keys()).cloned().collect();
    let none: FileImage = (Vec::new(), Vec::new());
    let mut mixed: std::collections::BTreeMap<PathBuf, Option<MixedFile>> =
        std::collections::BTreeMap::new();
    for rel in paths {
        let link = rel.to_string_lossy().ends_with(".link");
        let whole = |f: &FileImage| {
            let pages = (0..f.0.len().div_ceil(4096)).map(|p| page(f, p)).collect();
            Some((f.0.len(), pages))
        };
        let result = match (synced.get(&rel), now.get(&rel)) {
            (Some(old), None) => {
                if rng.gen_bool(0.5) {
                    whole(old)
                } else {
                    None
                }
            }
            (old, Some(new)) if old != Some(new) => {
                if link {
                    whole(new)
                } else if old.is_none() && rng.gen_bool(0.25) {
                    None
                } else {
                    let old = old.unwrap_or(&none);
                    let len = if rng.gen_bool(0.5) {
                        new.0.len()
                    } else {
                        old.0.len().max(new.0.len())
                    };
                    let pages = (0..len.div_ceil(4096))
                        .map(|p| page(if rng.gen_bool(0.5) { new } else { old }, p))
                        .collect();
                    Some((len, pages))
                }
            }
            (_, Some(same)) => whole(same),
            (None, None) => None,
        };
        mixed.insert(rel, result);
    }
    let crc_at = |f: &FileImage, i: usize| {
        f.0.get(i * 4..i * 4 + 4)
            .map_or(0, |c| layout::stored_crc(c, 0))
    };
    let crc_files: Vec<PathBuf> = mixed
        .keys()
        .filter(|p| p.to_string_lossy().ends_with(".crc"))
        .cloned()
        .collect();
    for crc in crc_files {
        let dat = crc.with_extension("dat");
        let (Some(old), Some(new), Some(Some(got)), Some(new_dat)) = (
            synced.get(&crc),
            now.get(&crc),
            mixed.get(&crc),
            now.get(&dat),
        ) else {
            continue;
        };
        let got: Vec<u8> = got.1.iter().flat_map(|(b, _)| b.clone()).collect();
        let got_crc = |i: usize| {
            got.get(i * 4..i * 4 + 4)
                .map_or(0, |c| layout::stored_crc(c, 0))
        };
        let forced: Vec<usize> = (0..new.0.len() / 4)
            .filter(|&i| {
                let (o, n) = (crc_at(old, i), crc_at(new, i));
                o == layout::zero_crc() && n != o && got_crc(i) == n
            })
            .collect();
        if let Some(Some((len, pages))) = mixed.get_mut(&dat) {
            for i in forced {
                if i < pages.len() {
                    pages[i] = page(new_dat, i);
                }
            }
            *len = (*len).max(new_dat.0.len().min(pages.len() * 4096));
        }
    }
    for (rel, result) in mixed {
        let path = dir.join(&rel);
        let _ = std::fs::remove_file(&path);
        let Some((len, pages)) = result else { continue };
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(len as u64).unwrap();
        for (p, (bytes, hole)) in pages.iter().enumerate() {
            let at = p * 4096;
            if !hole && at < len {
                let n = 4096.min(len - at);
                std::os::unix::fs::FileExt::write_all_at(&f, &bytes[..n], at as u64).unwrap();
            }
        }
    }
}

/// As above, over what a crash may leave: pages of the unsynced writes lost at random.
#[test]
fn replaying_a_suffix_over_a_torn_later_state_gives_the_same_result() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(41);
    let mut steps = Vec::new();
    steps.extend(random_steps(&mut rng, 1, 1, 6));
    steps.extend(random_steps(&mut rng, 1, 2, 6));
    steps.push(Step::Link(2, 1, 2));
    steps.extend(random_steps(&mut rng, 2, 1, 5));
    steps.extend(random_steps(&mut rng, 1, 3, 3));
    steps.push(Step::Flatten(2, 0, 8 * B, 1));
    steps.extend(random_steps(&mut rng, 2, 2, 4));
    steps.push(Step::Flatten(2, 8 * B, 8 * B, 1));
    steps.push(Step::Unlink(2));
    steps.extend(random_steps(&mut rng, 2, 3, 3));
    steps.push(Step::Rollback(2, 1, 3));
    steps.extend(random_steps(&mut rng, 2, 3, 3));
    steps.push(Step::Rollback(1, 2, 4));
    steps.extend(random_steps(&mut rng, 1, 4, 3));

    let (_tmp, reference) = store();
    for step in &steps {
        apply(&reference, step);
    }
    let want = images(&reference);
    let n = steps.len();
    let mut failures = Vec::new();
    for from in 0..n {
        for round in 0..4 {
            let upto = (from + 1 + round * 4).min(n);
            let tmp = tempfile::tempdir().unwrap();
            let s = ChunkStore::open(tmp.path()).unwrap();
            for step in &steps[..from] {
                apply(&s, step);
            }
            s.sync().unwrap();
            let synced = files_of(tmp.path());
            for step in &steps[from..upto] {
                apply(&s, step);
            }
            drop(s);
            crash_mix(tmp.path(), &synced, &mut rng);
            let s = ChunkStore::open(tmp.path()).unwrap();
            s.set_replaying(true);
            for step in &steps[from..] {
                apply(&s, step);
            }
            s.set_replaying(false);
            if images(&s) != want {
                failures.push((from, upto));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "replays that differ (from, upto): {failures:?}"
    );
}

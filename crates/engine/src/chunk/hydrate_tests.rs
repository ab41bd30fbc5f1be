//! Promises of hydrate, on real files: it fills only what no layer holds of a chunk linked
//! to RESTORED, writes zero blocks as zero, is idempotent, and a replay over a crash
//! state, hydrates interleaved with writes, zeroes and discards (a partial one over an
//! unfilled block preceded by the fill the storage node proposes), ends as the first run
//! did.

use rand::{Rng, SeedableRng};

use crate::chunk::layer_tests::copies::{crash_mix, files_of};
use crate::chunk::layer_tests::{fill, read, store};
use crate::chunk::*;

const B: u64 = BLOCK_SIZE;

/// Blocks `0..n` of a backup: block `i` all `i + 1`, but block 4, which is zeroes.
fn backup(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        out.extend(fill(if i == 4 { 0 } else { i as u8 + 1 }, 1));
    }
    out
}

fn block(image: &[u8], i: u64) -> &[u8] {
    &image[(i * B) as usize..((i + 1) * B) as usize]
}

#[test]
fn hydrate_fills_only_the_blocks_no_layer_holds() {
    let (tmp, s) = store();
    // Block 1 written, block 2 zeroed by a partial write (held as zero), block 3 written
    // after snapshot 1 (layer 2), block 6 written and then discarded.
    s.write_seq(1, 0, B, &fill(0xaa, 1), 1).unwrap();
    s.write_seq(1, 0, 2 * B + 10, &[0u8; 20], 1).unwrap();
    s.write_seq(1, 0, 3 * B, &fill(0xbb, 1), 2).unwrap();
    // Linked after those writes (a chunk holding blocks may be linked).
    s.link(1, 0, RESTORED, 7).unwrap();
    let data = backup(8);
    for _ in 0..2 {
        s.hydrate(1, 0, 0, &data).unwrap();
    }
    let check = |s: &ChunkStore| {
        let live = read(s, 1, 0, 8, 0);
        assert_eq!(block(&live, 0), block(&data, 0));
        assert_eq!(block(&live, 1), &fill(0xaa, 1)[..]);
        assert_eq!(block(&live, 2), &fill(0, 1)[..]);
        assert_eq!(block(&live, 3), &fill(0xbb, 1)[..]);
        for i in 4..8 {
            assert_eq!(block(&live, i), block(&data, i), "block {i}");
        }
        // Layer 2 holds block 3: layer 1 keeps nothing there (no layer's block is hidden).
        assert_eq!(
            s.block_status(1, 0, 3 * B, B, 1).unwrap(),
            [BlockKind::Unfilled]
        );
        let kinds = s.block_status(1, 0, 0, 8 * B, 0).unwrap();
        assert_eq!(
            kinds[4],
            BlockKind::Zero,
            "an all-zero block is written as zero"
        );
        assert!(kinds.iter().all(|k| *k != BlockKind::Hole), "{kinds:?}");
    };
    check(&s);
    s.sync().unwrap();
    drop(s);
    let s = ChunkStore::open(tmp.path()).unwrap();
    check(&s);
    // Writes after the fill win, and a second fill leaves them alone.
    s.write_seq(1, 0, 5 * B + 1, b"x", 2).unwrap();
    s.hydrate(1, 0, 0, &data).unwrap();
    assert_eq!(read(&s, 1, 0, 8, 0)[(5 * B + 1) as usize], b'x');
}

#[test]
fn hydrate_refuses_partial_blocks_and_ranges_past_the_chunk() {
    let (_tmp, s) = store();
    for (off, len) in [(1, B), (0, B - 1), (MAX_CHUNK, B)] {
        let got = s.hydrate(1, 0, off, &vec![1u8; len as usize]);
        assert!(
            matches!(got, Err(Error::OutOfRange(_))),
            "{off}+{len}: {got:?}"
        );
    }
    assert_eq!(s.list_chunks().unwrap(), []);
    s.hydrate(1, 0, 0, &[]).unwrap();
}

/// A crash during a hydrate, after its checksums reached the disk and before its data
/// did: the replay fills those blocks again (they fail their checksum with this entry's).
#[test]
fn a_hydrate_torn_by_a_crash_is_completed_by_its_replay() {
    let (tmp, s) = store();
    s.write_seq(1, 0, 0, &fill(9, 1), 1).unwrap();
    s.link(1, 0, RESTORED, 7).unwrap();
    s.sync().unwrap();
    let data = backup(6);
    s.hydrate(1, 0, 0, &data).unwrap();
    drop(s);
    // The data file as of the sync: only block 0; the checksums as the hydrate left them.
    let dat = tmp.path().join("0000000000000001/00000000.dat");
    let f = std::fs::OpenOptions::new().write(true).open(&dat).unwrap();
    f.set_len(B).unwrap();
    f.set_len(6 * B).unwrap();
    drop(f);
    let s = ChunkStore::open(tmp.path()).unwrap();
    s.set_replaying(true);
    s.hydrate(1, 0, 0, &data).unwrap();
    s.set_replaying(false);
    let mut want = data.clone();
    want[..B as usize].copy_from_slice(&fill(9, 1));
    assert_eq!(read(&s, 1, 0, 6, 0), want);
}

#[derive(Clone, Debug)]
enum Step {
    Hydrate(u64, Vec<u8>),
    Write(u64, Vec<u8>),
    Zeroes(u64, u64),
    Discard(u64, u64),
}

fn try_apply(s: &ChunkStore, step: &Step) -> Result<()> {
    match step {
        Step::Hydrate(off, data) => s.hydrate(3, 0, *off, data),
        Step::Write(off, data) => s.write_seq(3, 0, *off, data, 1),
        Step::Zeroes(off, len) => s.write_zeroes_seq(3, 0, *off, *len, 1),
        Step::Discard(off, len) => s.discard_seq(3, 0, *off, *len, 1),
    }
}

fn apply(s: &ChunkStore, step: &Step) {
    try_apply(s, step).unwrap_or_else(|e| panic!("{step:?}: {e}"));
}

/// A store whose chunk 3/0 is restored (linked before anything writes it).
fn restored() -> (tempfile::TempDir, Arc<ChunkStore>) {
    let (tmp, s) = store();
    s.link(3, 0, RESTORED, 11).unwrap();
    (tmp, s)
}

/// Hydrates of random whole-block ranges of one backup (some blocks zero) interleaved
/// with random writes, zeroes and discards of a restored chunk. A partial one over a block
/// not filled yet is refused, changing nothing: it comes after the fill of its blocks (as
/// the storage node proposes it), which the steps include.
fn steps(rng: &mut rand::rngs::StdRng, n: usize) -> Vec<Step> {
    const SIZE: u64 = 16 * B;
    let image = backup(16);
    let region = |first: u64, blocks: u64| {
        let (s, e) = ((first * B) as usize, ((first + blocks) * B) as usize);
        Step::Hydrate(first * B, image[s..e].to_vec())
    };
    let (_tmp, s) = restored();
    let mut out = Vec::new();
    while out.len() < n {
        let off = rng.gen_range(0..SIZE - 1);
        let len = rng.gen_range(1..=(SIZE - off).min(3 * B));
        let step = match rng.gen_range(0..8) {
            0 => Step::Zeroes(off, len),
            1 | 2 => Step::Discard(off, len.max(2 * B)),
            3 => Step::Write(off, vec![rng.r#gen::<u8>() | 1; len as usize]),
            _ => region(off / B, rng.gen_range(1..=(16 - off / B).min(6))),
        };
        if let Err(Error::Unfilled(u)) = try_apply(&s, &step) {
            assert!(u.data.is_empty(), "{step:?}");
            for b in u.blocks {
                let fill = region(b as u64, 1);
                apply(&s, &fill);
                out.push(fill);
            }
        }
        apply(&s, &step);
        out.push(step);
    }
    out
}

/// The live image (zeroes where not filled) and its kinds.
fn image(s: &ChunkStore) -> (Vec<u8>, Vec<BlockKind>) {
    let data = match s.read(3, 0, 0, 17 * B) {
        Ok(data) => data.to_vec(),
        Err(Error::Unfilled(u)) => u.data.to_vec(),
        Err(e) => panic!("{e}"),
    };
    (data, s.block_status(3, 0, 0, 17 * B, 0).unwrap())
}

/// After a crash the log applies again every entry after the last sync, over what a crash
/// may leave of the later ones (pages lost at random since the last sync, or since the
/// last hydrate that filled a block: it made the chunk durable): the chunk ends as the
/// first run left it, whatever writes, zeroes and discards were torn.
#[test]
fn replaying_hydrates_and_writes_over_a_torn_later_state_gives_the_same_result() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let all = steps(&mut rng, 40);
    let (_tmp, reference) = restored();
    for step in &all {
        apply(&reference, step);
    }
    let want = image(&reference);
    let n = all.len();
    let mut failures = Vec::new();
    for from in 0..n {
        for round in 0..4 {
            let upto = (from + 1 + round * 4).min(n);
            let (tmp, s) = restored();
            for step in &all[..from] {
                apply(&s, step);
            }
            s.sync().unwrap();
            let mut synced = files_of(tmp.path());
            for (i, step) in all.iter().enumerate().take(upto).skip(from) {
                let before = files_of(tmp.path());
                apply(&s, step);
                let after = files_of(tmp.path());
                // A hydrate that filled a block made the chunk (its only files) durable;
                // in odd rounds the crash comes during the last one, before that.
                let during = i + 1 == upto && round % 2 == 1;
                if matches!(step, Step::Hydrate(..)) && after != before && !during {
                    synced = after;
                }
            }
            drop(s);
            if round > 0 {
                crash_mix(tmp.path(), &synced, &mut rng);
            }
            let s = ChunkStore::open(tmp.path()).unwrap();
            s.set_replaying(true);
            for step in &all[from..] {
                apply(&s, step);
            }
            // Replayed twice (a crash during the replay, before any sync).
            if round == 3 {
                for step in &all[from..] {
                    apply(&s, step);
                }
            }
            s.set_replaying(false);
            if image(&s) != want {
                failures.push((from, upto));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "replays that differ (from, upto): {failures:?}"
    );
}

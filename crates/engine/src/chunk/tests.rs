//! Promises of the chunk store, checked against an in-memory model and real files.

use rand::{Rng, SeedableRng};

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use super::*;

#[path = "crc_zero_tests.rs"]
mod crc_zero;

const B: u64 = BLOCK_SIZE;

fn store() -> (tempfile::TempDir, Arc<ChunkStore>) {
    let tmp = tempfile::tempdir().unwrap();
    let s = ChunkStore::open(tmp.path()).unwrap();
    (tmp, s)
}

/// Flips one bit of the byte at `offset` of `path` (rot under the engine).
pub(super) fn flip_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    b[0] ^= 0x40;
    f.write_all_at(&b, offset).unwrap();
}

#[test]
fn unwritten_chunks_and_ranges_read_as_zeroes() {
    let (_tmp, s) = store();
    assert_eq!(s.read(1, 2, 12345, 9000).unwrap(), vec![0u8; 9000]);
    s.write(1, 2, 3 * B + 10, b"hello").unwrap();
    assert_eq!(s.read(1, 2, 0, 3 * B).unwrap(), vec![0u8; 3 * B as usize]);
    assert_eq!(s.read(1, 2, 100 * B, 10).unwrap(), vec![0u8; 10]);
    assert_eq!(&s.read(1, 2, 3 * B + 8, 9).unwrap()[..], b"\0\0hello\0\0");
}

#[test]
fn random_writes_match_a_model_across_reopen() {
    const SIZE: usize = 64 * B as usize;
    let (tmp, s) = store();
    let mut model = vec![0u8; SIZE];
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for round in 0..300 {
        let off = rng.gen_range(0..SIZE);
        let len = rng.gen_range(1..=(SIZE - off).min(5 * B as usize));
        match round % 7 {
            5 => {
                s.write_zeroes(9, 1, off as u64, len as u64).unwrap();
                model[off..off + len].fill(0);
            }
            6 => {
                s.discard(9, 1, off as u64, len as u64).unwrap();
                model[off..off + len].fill(0);
            }
            _ => {
                let data: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
                s.write(9, 1, off as u64, &data).unwrap();
                model[off..off + len].copy_from_slice(&data);
            }
        }
        let roff = rng.gen_range(0..SIZE);
        let rlen = rng.gen_range(0..=(SIZE - roff).min(6 * B as usize));
        let got = s.read(9, 1, roff as u64, rlen as u64).unwrap();
        assert_eq!(&got[..], &model[roff..roff + rlen], "round {round}");
    }
    s.sync().unwrap();
    assert!(s.used_bytes() > 0);
    drop(s);
    let s = ChunkStore::open(tmp.path()).unwrap();
    assert_eq!(&s.read(9, 1, 0, SIZE as u64).unwrap()[..], &model[..]);
}

#[test]
fn flipped_bit_in_data_is_reported_as_corrupt() {
    let (tmp, s) = store();
    s.write(3, 4, 0, &vec![7u8; 4 * B as usize]).unwrap();
    let data = tmp.path().join(format!("{:016x}/{:08x}.dat", 3, 4));
    flip_byte(&data, 2 * B + 17);
    match s.read(3, 4, 0, 4 * B) {
        Err(Error::Corrupt(msg)) => assert!(msg.contains("block 2"), "{msg}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Untouched blocks still read; a partial write into the bad block applies, but the
    // block stays bad (a poisoned checksum).
    assert_eq!(s.read(3, 4, 0, 2 * B).unwrap(), vec![7u8; 2 * B as usize]);
    s.write(3, 4, 2 * B + 1, b"x").unwrap();
    assert!(matches!(s.read(3, 4, 2 * B, 1), Err(Error::Corrupt(_))));
    // A never-written block whose bytes changed is caught too.
    s.write(3, 5, B, b"a").unwrap();
    flip_byte(&data.with_file_name(format!("{:08x}.dat", 5)), 10);
    assert!(matches!(s.read(3, 5, 0, 10), Err(Error::Corrupt(_))));
}

#[test]
fn flipped_checksum_is_reported_as_corrupt() {
    let (tmp, s) = store();
    s.write(3, 4, 0, &vec![1u8; 2 * B as usize]).unwrap();
    flip_byte(&tmp.path().join(format!("{:016x}/{:08x}.crc", 3, 4)), 5);
    assert!(matches!(s.read(3, 4, B, 1), Err(Error::Corrupt(_))));
}

#[test]
fn replaying_mode_lets_rmw_overwrite_torn_blocks_but_reads_still_verify() {
    let (tmp, s) = store();
    s.write(1, 1, 0, &vec![5u8; B as usize]).unwrap();
    flip_byte(&tmp.path().join(format!("{:016x}/{:08x}.dat", 1, 1)), 100);
    s.set_replaying(true);
    assert!(matches!(s.read(1, 1, 0, 10), Err(Error::Corrupt(_))));
    s.write(1, 1, 10, b"abc").unwrap();
    s.set_replaying(false);
    let got = s.read(1, 1, 0, B).unwrap();
    assert_eq!(&got[10..13], b"abc");
    assert_eq!(got[100], 5 ^ 0x40);
    assert_eq!(s.poisoned_blocks(), 0, "a replayed merge is not poisoned");
}

/// A corrupt block never stalls the Raft apply: the partial write applies, and the block
/// keeps failing its checksum until a whole-block write (a repair) replaces it.
#[test]
fn a_partial_write_over_a_corrupt_block_applies_and_the_block_stays_corrupt() {
    let (tmp, s) = store();
    s.write(1, 1, 0, &vec![5u8; 2 * B as usize]).unwrap();
    flip_byte(&tmp.path().join(format!("{:016x}/{:08x}.dat", 1, 1)), 100);
    s.write(1, 1, 10, b"abc").unwrap();
    assert_eq!(s.poisoned_blocks(), 1);
    assert!(matches!(s.read(1, 1, 0, 10), Err(Error::Corrupt(_))));
    assert_eq!(s.scan_in(1, 1, 0, 0, 1).unwrap(), vec![Scanned::Bad]);
    // Its neighbour is untouched; a tail-partial write over the bad block poisons it again.
    assert_eq!(s.read(1, 1, B, B).unwrap(), vec![5u8; B as usize]);
    s.write(1, 1, B - 3, b"xyzw").unwrap();
    assert_eq!(s.poisoned_blocks(), 2);
    assert!(matches!(s.read(1, 1, 0, 10), Err(Error::Corrupt(_))));
    assert_eq!(&s.read(1, 1, B, 1).unwrap()[..], b"w");
    // A whole-block write heals it.
    s.write(1, 1, 0, &vec![6u8; B as usize]).unwrap();
    assert_eq!(s.read(1, 1, 0, B).unwrap(), vec![6u8; B as usize]);
}

#[test]
fn a_partial_write_into_a_layer_over_a_corrupt_block_applies_poisoned() {
    let (tmp, s) = store();
    // Below: layer 1 holds block 0; it rots.
    s.write_seq(2, 0, 0, &vec![1u8; B as usize], 1).unwrap();
    s.write_seq(2, 0, B, &vec![3u8; B as usize], 3).unwrap();
    flip_byte(&tmp.path().join(format!("{:016x}/{:08x}.dat", 2, 0)), 7);
    s.write_seq(2, 0, 20, b"up", 3).unwrap();
    assert_eq!(s.poisoned_blocks(), 1);
    assert!(matches!(
        s.read_as_of(2, 0, 0, B, 0),
        Err(Error::Corrupt(_))
    ));
    assert_eq!(s.scan_in(2, 0, 3, 0, 1).unwrap(), vec![Scanned::Bad]);
    // The layer's own block rots: a partial write over it is poisoned too.
    let upper = format!("{:016x}/{:08x}.L{:08x}.dat", 2, 0, 3);
    flip_byte(&tmp.path().join(upper), B + 9);
    s.write_seq(2, 0, B + 100, b"own", 3).unwrap();
    assert_eq!(s.poisoned_blocks(), 2);
    assert!(matches!(
        s.read_as_of(2, 0, B, B, 0),
        Err(Error::Corrupt(_))
    ));
}

/// A crash after a poisoning partial write: the replay applies it again and must poison the
/// block again, never take the poisoned checksum for a torn block and store a valid one
/// over rotten bytes. In layer 1 and in a layer above it.
#[test]
fn a_replayed_partial_write_over_a_poisoned_block_keeps_it_poisoned() {
    let (tmp, s) = store();
    s.write(1, 1, 0, &vec![5u8; B as usize]).unwrap();
    flip_byte(&tmp.path().join(format!("{:016x}/{:08x}.dat", 1, 1)), 100);
    s.write(1, 1, 10, b"abc").unwrap();
    assert_eq!(s.poisoned_blocks(), 1);
    // Layer 3 holds its own block, which rots; a partial write poisons it.
    s.write_seq(2, 0, 0, &vec![1u8; B as usize], 3).unwrap();
    let upper = format!("{:016x}/{:08x}.L{:08x}.dat", 2, 0, 3);
    flip_byte(&tmp.path().join(upper), 9);
    s.write_seq(2, 0, 100, b"own", 3).unwrap();
    assert_eq!(s.poisoned_blocks(), 2);

    s.set_replaying(true);
    s.write(1, 1, 10, b"abc").unwrap();
    s.write_seq(2, 0, 100, b"own", 3).unwrap();
    s.set_replaying(false);
    assert_eq!(
        s.poisoned_blocks(),
        4,
        "the replayed merges are poisoned again"
    );
    assert!(matches!(s.read(1, 1, 0, 10), Err(Error::Corrupt(_))));
    assert_eq!(s.scan_in(1, 1, 0, 0, 1).unwrap(), vec![Scanned::Bad]);
    assert!(matches!(
        s.read_as_of(2, 0, 0, B, 0),
        Err(Error::Corrupt(_))
    ));
    assert_eq!(s.scan_in(2, 0, 3, 0, 1).unwrap(), vec![Scanned::Bad]);
}

/// A block whose stored checksum is 0 is "never written", whatever its data holds (a write
/// whose checksum never reached the disk): a partial write merges over zeroes with a valid
/// checksum, as a layer's write and every replica do, never poisoned nor over those bytes.
#[test]
fn a_partial_write_over_a_block_with_checksum_zero_merges_over_zeroes() {
    let (tmp, s) = store();
    s.write(1, 1, 0, &vec![5u8; B as usize]).unwrap();
    let crc = tmp.path().join(format!("{:016x}/{:08x}.crc", 1, 1));
    let f = OpenOptions::new().write(true).open(&crc).unwrap();
    f.write_all_at(&[0u8; 4], 0).unwrap();
    for replaying in [false, true] {
        s.set_replaying(replaying);
        s.write(1, 1, 10, b"abc").unwrap();
        s.set_replaying(false);
        let mut want = vec![0u8; B as usize];
        want[10..13].copy_from_slice(b"abc");
        assert_eq!(s.read(1, 1, 0, B).unwrap(), want, "replaying: {replaying}");
        assert_eq!(s.poisoned_blocks(), 0);
        f.write_all_at(&[0u8; 4], 0).unwrap();
        f.sync_all().unwrap();
        OpenOptions::new()
            .write(true)
            .open(tmp.path().join(format!("{:016x}/{:08x}.dat", 1, 1)))
            .unwrap()
            .write_all_at(&[5u8; 13], 0)
            .unwrap();
    }
}

/// A whole-chunk copy (merge, flatten, rollback) meeting a block failing its checksum in
/// what it copies from carries it across poisoned: it applies (never stalls the group), the
/// block keeps failing where it lands, every other block is copied as it is.
#[test]
fn whole_chunk_copies_carry_a_bad_source_block_across_poisoned() {
    let (tmp, s) = store();
    let bs = B as usize;
    let dat = |volume: u64, layer: u64| {
        layout::layer_paths(&tmp.path().join(format!("{volume:016x}")), 0, layer).0
    };
    let data = |v: u8| Scanned::Data {
        hash: block_hash(&vec![v; bs]),
    };
    // A frozen merge of layers 1..=3 into layer 1; layer 3's block 1 rots.
    s.write_seq(1, 0, 0, &vec![1u8; 3 * bs], 1).unwrap();
    s.write_seq(1, 0, 0, &vec![3u8; 2 * bs], 3).unwrap();
    flip_byte(&dat(1, 3), B + 5);
    let range = MergeRange {
        low: 1,
        top: 3,
        live: false,
    };
    s.merge_layers(1, 0, 0, 3 * B, range).unwrap();
    assert_eq!(s.poisoned_blocks(), 1);
    assert_eq!(
        s.scan_in(1, 0, 1, 0, 3).unwrap(),
        vec![data(3), Scanned::Bad, data(1)]
    );
    assert!(
        s.drop_merged(1, 0, range).is_err(),
        "never dropped over a poisoned copy"
    );

    // A flatten of a clone whose parent's block 0 rots.
    s.write_seq(2, 0, 0, &vec![2u8; 2 * bs], 1).unwrap();
    s.link(4, 0, 2, 1).unwrap();
    flip_byte(&dat(2, 1), 7);
    s.flatten(4, 0, 0, 2 * B, 1).unwrap();
    assert_eq!(s.poisoned_blocks(), 2);
    assert_eq!(
        s.scan_in(4, 0, 1, 0, 2).unwrap(),
        vec![Scanned::Bad, data(2)]
    );

    // A rollback to snapshot 1, whose block 0 rots.
    s.write_seq(5, 0, 0, &vec![5u8; 2 * bs], 1).unwrap();
    s.write_seq(5, 0, 0, &vec![6u8; 2 * bs], 2).unwrap();
    flip_byte(&dat(5, 1), 9);
    s.rollback(5, 0, 1, 3).unwrap();
    assert_eq!(s.poisoned_blocks(), 3);
    assert!(matches!(
        s.read_as_of(5, 0, 0, B, 0),
        Err(Error::Corrupt(_))
    ));
    assert_eq!(s.read_as_of(5, 0, B, B, 0).unwrap(), vec![5u8; bs]);
}

#[test]
fn discard_frees_whole_blocks_and_keeps_partial_ones() {
    let (_tmp, s) = store();
    let size = 256 * B;
    s.write(2, 0, 0, &vec![9u8; size as usize]).unwrap();
    s.sync().unwrap();
    let before = s.used_bytes();
    s.discard(2, 0, 100, size - 200).unwrap();
    s.sync().unwrap();
    assert!(
        s.used_bytes() < before,
        "hole punched: {} < {before}",
        s.used_bytes()
    );
    let got = s.read(2, 0, 0, size).unwrap();
    assert!(got[..100].iter().all(|&b| b == 9));
    assert!(got[100..(size - 100) as usize].iter().all(|&b| b == 0));
    assert!(got[(size - 100) as usize..].iter().all(|&b| b == 9));
    // Discarding in a chunk that does not exist is a no-op, and beyond the end too.
    s.discard(2, 77, 0, B).unwrap();
    s.discard(2, 0, size, 10 * B).unwrap();
    assert_eq!(s.read(2, 77, 0, B).unwrap(), vec![0u8; B as usize]);
    assert!(s.list_chunks().unwrap().iter().all(|&(_, c)| c != 77));
}

#[test]
fn write_zeroes_provisions_the_range_even_where_nothing_was_written() {
    let (tmp, s) = store();
    let size = 256 * B;
    let data = tmp.path().join(format!("{:016x}/{:08x}.dat", 6, 3));
    // A chunk never written: its files are created and every whole block allocated.
    s.write_zeroes(6, 3, 100, size).unwrap();
    s.sync().unwrap();
    let allocated = |p: &std::path::Path| std::fs::metadata(p).unwrap().blocks() * 512;
    assert!(
        allocated(&data) >= size - B,
        "allocated {} of {size}",
        allocated(&data)
    );
    assert_eq!(
        s.read(6, 3, 0, size + B).unwrap(),
        vec![0u8; (size + B) as usize]
    );
    // Over written data: it reads as zeroes and stays allocated; a discard frees it.
    s.write(6, 3, 0, &vec![7u8; size as usize]).unwrap();
    s.write_zeroes(6, 3, 0, size).unwrap();
    s.sync().unwrap();
    assert_eq!(s.read(6, 3, 0, size).unwrap(), vec![0u8; size as usize]);
    assert!(allocated(&data) >= size);
    s.discard(6, 3, 0, size + B).unwrap();
    s.sync().unwrap();
    assert!(allocated(&data) < B, "punched: {}", allocated(&data));
    assert_eq!(s.read(6, 3, 0, size).unwrap(), vec![0u8; size as usize]);
}

#[test]
fn dropped_chunk_reads_as_zeroes_and_frees_space() {
    let (tmp, s) = store();
    s.write(4, 1, 0, &vec![1u8; 8 * B as usize]).unwrap();
    s.sync().unwrap();
    assert!(s.used_bytes() >= 8 * B);
    s.drop_chunk(4, 1).unwrap();
    s.drop_chunk(4, 99).unwrap();
    assert_eq!(s.used_bytes(), 0);
    assert!(
        !tmp.path()
            .join(format!("{:016x}/{:08x}.dat", 4, 1))
            .exists()
    );
    assert_eq!(s.read(4, 1, 0, B).unwrap(), vec![0u8; B as usize]);
    s.write(4, 1, 0, b"again").unwrap();
    assert_eq!(&s.read(4, 1, 0, 5).unwrap()[..], b"again");
}

#[test]
fn ranges_beyond_the_chunk_limit_are_refused() {
    let (_tmp, s) = store();
    assert!(matches!(
        s.write(1, 1, MAX_CHUNK - 1, b"ab"),
        Err(Error::OutOfRange(_))
    ));
    assert!(matches!(
        s.read(1, 1, u64::MAX, 2),
        Err(Error::OutOfRange(_))
    ));
    s.write(1, 1, MAX_CHUNK - 2, b"ab").unwrap();
    assert_eq!(&s.read(1, 1, MAX_CHUNK - 2, 2).unwrap()[..], b"ab");
}

#[test]
fn concurrent_writers_and_readers_never_see_torn_blocks() {
    let (_tmp, s) = store();
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let s = &s;
            scope.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                for i in 0..200u64 {
                    // Same chunk for everyone, a private 16-block region per thread, and
                    // a shared block everyone overwrites whole with one byte value.
                    let off = t * 16 * B + rng.gen_range(0..15 * B);
                    s.write(0, 0, off, &[t as u8 + 1; 100]).unwrap();
                    s.write(0, 0, 64 * B, &vec![(i % 251) as u8; B as usize])
                        .unwrap();
                    let shared = s.read(0, 0, 64 * B, B).unwrap();
                    assert!(shared.iter().all(|&b| b == shared[0]));
                    let mine = s.read(0, 0, t * 16 * B, 16 * B).unwrap();
                    assert!(mine.iter().all(|&b| b == 0 || b == t as u8 + 1));
                    s.write(t + 1, i % 3, 0, b"x").unwrap();
                }
            });
        }
        scope.spawn(|| {
            for _ in 0..50 {
                s.sync().unwrap();
            }
        });
    });
}

#[test]
fn verify_blocks_finds_the_blocks_whose_bytes_do_not_match_their_checksum() {
    let (tmp, s) = store();
    // Across a piece boundary of the verification, with a never-written block in between.
    s.write(1, 0, 0, &vec![3u8; 300 * B as usize]).unwrap();
    s.write(1, 0, 301 * B, &vec![4u8; B as usize]).unwrap();
    let data = tmp.path().join(format!("{:016x}/{:08x}.dat", 1, 0));
    flip_byte(&data, 2 * B + 5);
    flip_byte(&data, 280 * B);
    let mut want = vec![true; 310];
    want[2] = false;
    want[280] = false;
    assert_eq!(s.verify_blocks(1, 0, 0, 310).unwrap(), want);
    assert_eq!(s.verify_blocks(1, 0, 280, 2).unwrap(), vec![false, true]);
    // A never-written block whose bytes changed does not verify either.
    flip_byte(&data, 300 * B + 9);
    assert_eq!(
        s.verify_blocks(1, 0, 299, 3).unwrap(),
        vec![true, false, true]
    );
    // A chunk without files holds nothing that could disagree.
    assert_eq!(s.verify_blocks(1, 9, 0, 4).unwrap(), vec![true; 4]);
    assert!(matches!(
        s.verify_blocks(1, 0, MAX_CHUNK / B, 1),
        Err(Error::OutOfRange(_))
    ));
}

/// Chunks of several stores share one node-wide budget: past it, the least recently used
/// idle ones are closed (dirty ones by the next sync, which makes them durable first), and
/// every chunk still reads back, also after a restart.
#[test]
fn many_chunks_stay_within_one_budget_across_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = FileBudget::new(32);
    let stores: Vec<_> = (0..3)
        .map(|i| ChunkStore::open_in(&tmp.path().join(format!("s{i}")), &budget).unwrap())
        .collect();
    const CHUNKS: u64 = 600;
    for chunk in 0..CHUNKS {
        let s = &stores[(chunk % 3) as usize];
        s.write(1, chunk, chunk * 8, &chunk.to_le_bytes()).unwrap();
        if chunk % 10 == 9 {
            // As the apply loop does after each batch: written files are then idle.
            for s in &stores {
                s.start_writeback();
            }
        }
        // Dirty chunks taken out for room stay open until the flusher's next sync.
        let open = budget.stats().open;
        assert!(
            open <= 32 + 10 + 50,
            "{open} chunks open after {chunk} writes"
        );
        if chunk % 50 == 49 {
            for s in &stores {
                s.sync().unwrap();
            }
            let open = budget.stats().open;
            assert!(open <= 32 + 10, "{open} chunks open after a sync");
        }
    }
    assert!(budget.stats().closed >= CHUNKS - 42, "{:?}", budget.stats());
    for s in &stores {
        s.sync().unwrap();
    }
    drop(stores);
    assert_eq!(budget.stats().open, 0, "every handle released");
    let budget = FileBudget::new(32);
    let stores: Vec<_> = (0..3)
        .map(|i| ChunkStore::open_in(&tmp.path().join(format!("s{i}")), &budget).unwrap())
        .collect();
    for chunk in 0..CHUNKS {
        let s = &stores[(chunk % 3) as usize];
        assert_eq!(
            &s.read(1, chunk, chunk * 8, 8).unwrap()[..],
            chunk.to_le_bytes()
        );
        assert!(budget.stats().open <= 32);
    }
}

/// Dirty chunks closed for room wait for a sync, holding their descriptors: once an eighth of
/// the budget waits, the budget asks for that sync, so a caller syncing when asked keeps
/// the open chunks within the budget plus what one eviction pass and one such eighth add.
#[test]
fn a_sync_is_wanted_once_an_eighth_of_the_budget_waits_to_be_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = FileBudget::new(64);
    let store = ChunkStore::open_in(tmp.path(), &budget).unwrap();
    assert_eq!(budget.sync_at(), 8);
    let mut syncs = 0;
    for chunk in 0..500u64 {
        store.write(1, chunk, 0, &chunk.to_le_bytes()).unwrap();
        // As the apply loop does after each batch: written files are then idle.
        store.start_writeback();
        let stats = budget.stats();
        assert_eq!(
            budget.wants_sync(),
            stats.closing >= 8,
            "after {chunk} writes: {stats:?}"
        );
        // At most one eviction pass (down to seven eighths of 64) past the bound.
        assert!(stats.closing < 8 + 9, "after {chunk} writes: {stats:?}");
        assert!(
            stats.open - stats.closing <= 64,
            "after {chunk} writes: {stats:?}"
        );
        if budget.wants_sync() {
            store.sync().unwrap();
            syncs += 1;
            assert_eq!(budget.stats().closing, 0, "{:?}", budget.stats());
            assert!(!budget.wants_sync());
        }
    }
    assert!(syncs > 3, "{syncs} syncs wanted");
    store.sync().unwrap();
    for chunk in (0..500u64).step_by(37) {
        assert_eq!(
            &store.read(1, chunk, 0, 8).unwrap()[..],
            chunk.to_le_bytes()
        );
    }
}

#[test]
fn a_store_dropped_with_chunks_waiting_to_close_leaves_the_budget_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = FileBudget::new(16);
    let store = ChunkStore::open_in(&tmp.path().join("a"), &budget).unwrap();
    for chunk in 0..40u64 {
        store.write(1, chunk, 0, &chunk.to_le_bytes()).unwrap();
        store.start_writeback();
    }
    let waiting = budget.stats();
    assert!(waiting.closing > 0, "{waiting:?}");
    drop(store);
    let after = budget.stats();
    assert_eq!((after.open, after.closing), (0, 0), "{after:?}");
    assert!(!budget.wants_sync(), "{after:?}");
    // The budget still works for the node's other stores.
    let other = ChunkStore::open_in(&tmp.path().join("b"), &budget).unwrap();
    other.write(1, 0, 0, b"still").unwrap();
    other.sync().unwrap();
    assert_eq!(budget.stats().closing, 0);
}

/// Dropping a chunk the store never had (a deleted volume's chunk mapped to this group and
/// never written) leaves the next sync to succeed: no directory of that volume exists to
/// fsync. (The sync failed on the missing directory and stopped the node.)
#[test]
fn dropping_a_chunk_never_written_leaves_the_sync_working() {
    let (_tmp, s) = store();
    s.write(1, 0, 0, &[7u8; 4096]).unwrap();
    s.drop_chunk(2, 5).unwrap();
    s.sync().unwrap();
    s.drop_chunk(1, 0).unwrap();
    s.sync().unwrap();
    assert!(s.list_chunks().unwrap().is_empty());
}

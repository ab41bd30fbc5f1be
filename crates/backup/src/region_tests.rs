use super::*;

fn pattern(blocks: usize, held: impl Fn(usize) -> bool) -> Vec<u8> {
    let mut data = vec![0u8; blocks * BLOCK];
    for (i, block) in data.chunks_exact_mut(BLOCK).enumerate() {
        if held(i) {
            for (j, b) in block.iter_mut().enumerate() {
                *b = (i * 31 + j * 7 + 1) as u8;
            }
            block[0] = 1; // never all zero
        }
    }
    data
}

fn corrupt_why(r: Result<Region>) -> String {
    match r {
        Err(Error::Corrupt { store, key, why }) => {
            assert_eq!(store, "s");
            assert!(key.starts_with("objects/"), "{key}");
            why
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn all_zero_regions_have_no_object() {
    assert_eq!(encode(&vec![0u8; MAX_BLOCKS * BLOCK]), None);
    assert_eq!(encode(&vec![0u8; 3 * BLOCK]), None);
    assert_eq!(encode(&[]), None);
}

#[test]
fn a_sparse_region_reads_back_block_for_block() {
    let data = pattern(MAX_BLOCKS, |i| i % 3 == 0 || (100..140).contains(&i));
    let e = encode(&data).expect("has data");
    let held = (0..MAX_BLOCKS)
        .filter(|i| i % 3 == 0 || (100..140).contains(i))
        .count();
    assert_eq!(e.logical, (held * BLOCK) as u64);
    assert!(e.bytes.len() < data.len());
    let r = decode("s", &e.hash, &e.bytes).expect("verifies");
    assert_eq!(r.blocks, 256);
    assert!(r.holds(0) && !r.holds(1) && r.holds(101));
    assert_eq!(r.to_bytes(), data);
    let runs = r.runs();
    assert_eq!(runs[0], (0, Bytes::copy_from_slice(&data[..BLOCK])));
    for (first, bytes) in &runs {
        let at = usize::from(*first) * BLOCK;
        assert_eq!(&data[at..at + bytes.len()], &bytes[..]);
    }
    // 0, 3, .., 99: one block each; 100..140 one run (99 is held: 99..140); then 141, ...
    assert!(runs.iter().any(|(f, b)| *f == 99 && b.len() == 41 * BLOCK));
    assert!(runs.windows(2).all(|w| w[0].0 < w[1].0));
}

#[test]
fn a_short_last_region_keeps_its_length() {
    let data = pattern(5, |i| i == 4);
    let e = encode(&data).expect("has data");
    let r = decode("s", &e.hash, &e.bytes).expect("verifies");
    assert_eq!(r.blocks, 5);
    assert_eq!(r.to_bytes(), data);
    assert_eq!(r.runs().len(), 1);
    // The same blocks over a longer span are another region.
    let mut longer = data.clone();
    longer.extend_from_slice(&[0u8; BLOCK]);
    assert_ne!(encode(&longer).expect("has data").hash, e.hash);
}

#[test]
fn the_same_content_has_the_same_name() {
    let a = encode(&pattern(256, |i| i % 2 == 0)).expect("has data");
    let b = encode(&pattern(256, |i| i % 2 == 0)).expect("has data");
    assert_eq!(a, b);
    let c = encode(&pattern(256, |i| i % 2 == 1)).expect("has data");
    assert_ne!(a.hash, c.hash);
}

#[test]
fn a_name_is_of_the_logical_content_not_the_compressed_bytes() {
    let data = pattern(8, |i| i != 2);
    let e = encode(&data).expect("has data");
    // Recompress at another level: another object, the same name, still verifies.
    let present: Vec<u8> = data
        .chunks_exact(BLOCK)
        .enumerate()
        .filter(|(i, _)| *i != 2)
        .flat_map(|(_, b)| b.to_vec())
        .collect();
    let mut other = e.bytes[..HEADER].to_vec();
    other.extend_from_slice(&zstd::bulk::compress(&present, 19).expect("compresses"));
    let r = decode("s", &e.hash, &other).expect("verifies");
    assert_eq!(r.to_bytes(), data);
}

#[test]
fn corrupt_objects_are_refused_never_served() {
    let e = encode(&pattern(256, |i| i < 200)).expect("has data");
    let ok = e.bytes.to_vec();

    // A flipped byte in the compressed data, in the bitmap, in the header.
    for at in [ok.len() - 10, HEADER + 3, 8, 6, 4, 0] {
        let mut bad = ok.clone();
        bad[at] ^= 0x40;
        corrupt_why(decode("s", &e.hash, &bad));
    }
    // Another name.
    let why = corrupt_why(decode("s", &Hash([7; 32]), &ok));
    assert!(why.contains("hashes to"), "{why}");
    // Truncated anywhere.
    for len in [
        0,
        3,
        HEADER - 1,
        HEADER,
        HEADER + 1,
        ok.len() / 2,
        ok.len() - 1,
    ] {
        corrupt_why(decode("s", &e.hash, &ok[..len]));
    }
    // Garbage after the frame.
    let mut longer = ok.clone();
    longer.extend_from_slice(b"junk");
    corrupt_why(decode("s", &e.hash, &longer));
    // A newer format says so.
    let mut newer = ok.clone();
    newer[4] = 2;
    let why = corrupt_why(decode("s", &e.hash, &newer));
    assert!(why.contains("newer"), "{why}");
}

#[test]
fn a_huge_claimed_size_allocates_no_more_than_a_region() {
    // A valid header holding one block, then a zstd frame of 64 MiB of zeroes: the
    // decompression stops at the bitmap's bound instead of inflating it.
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&1u16.to_le_bytes());
    bytes.extend_from_slice(&256u16.to_le_bytes());
    let mut bitmap = [0u8; 32];
    bitmap[0] = 1;
    bytes.extend_from_slice(&bitmap);
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).expect("compresses");
    assert!(bomb.len() < 64 << 10);
    bytes.extend_from_slice(&bomb);
    corrupt_why(decode("s", &Hash([1; 32]), &bytes));

    // Too many blocks, bits past the span, no block at all.
    let e = encode(&pattern(4, |_| true)).expect("has data");
    let mut bad = e.bytes.to_vec();
    bad[6..8].copy_from_slice(&300u16.to_le_bytes());
    corrupt_why(decode("s", &e.hash, &bad));
    let mut bad = e.bytes.to_vec();
    bad[8] |= 0x10; // block 4 of a 4-block region
    corrupt_why(decode("s", &e.hash, &bad));
    let mut bad = e.bytes.to_vec();
    bad[8] = 0;
    corrupt_why(decode("s", &e.hash, &bad));
}

#[test]
fn a_hand_built_region_never_panics() {
    let r = Region {
        blocks: 9999,
        bitmap: [0xff; 32],
        data: Bytes::from(vec![1u8; BLOCK * 3 + 5]),
    };
    assert_eq!(r.runs(), vec![(0, Bytes::from(vec![1u8; BLOCK * 3]))]);
    assert_eq!(r.to_bytes().len(), MAX_BLOCKS * BLOCK);
}

#[test]
fn every_object_fits_the_bound_readers_allocate() {
    assert!(
        MAX_OBJECT_BYTES as usize >= HEADER + zstd::zstd_safe::compress_bound(MAX_BLOCKS * BLOCK)
    );
    // Incompressible blocks, the worst case.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..MAX_BLOCKS * BLOCK)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let e = encode(&data).expect("has data");
    assert!(e.bytes.len() as u64 <= MAX_OBJECT_BYTES);
}

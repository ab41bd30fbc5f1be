//! Data whose CRC32C happens to be 0: stored with a 0 checksum, it verifies (`block_ok`)
//! and is data like any other block, never "never written".

use super::*;

/// A block of data whose CRC32C is 0 (the last 4 bytes solved for it: CRC32C is affine
/// over GF(2), so the 32 bits' effects on it are combined to cancel the rest's).
fn block_with_crc_zero() -> Vec<u8> {
    let mut block: Vec<u8> = (0..B as usize).map(|i| (i * 7 + 3) as u8).collect();
    block[B as usize - 4..].fill(0);
    let base = crc32c::crc32c(&block);
    // Each free bit's effect on the checksum (the affine constant cancels in the xor).
    let mut rows: Vec<(u32, u32)> = (0..32)
        .map(|bit| {
            let mut b = block.clone();
            b[B as usize - 4 + bit / 8] ^= 1 << (bit % 8);
            (crc32c::crc32c(&b) ^ base, 1u32 << bit)
        })
        .collect();
    // Gaussian elimination: find free bits whose effects xor to `base`.
    let (mut want, mut pick) = (base, 0u32);
    for col in 0..32 {
        let Some(p) = (col..32).find(|&r| rows[r].0 >> col & 1 == 1) else {
            continue;
        };
        rows.swap(col, p);
        for r in 0..32 {
            if r != col && rows[r].0 >> col & 1 == 1 {
                rows[r] = (rows[r].0 ^ rows[col].0, rows[r].1 ^ rows[col].1);
            }
        }
    }
    for (effect, bits) in &rows {
        let col = effect.trailing_zeros();
        if col < 32 && want >> col & 1 == 1 {
            want ^= effect;
            pick ^= bits;
        }
    }
    assert_eq!(want, 0, "the free bits span every checksum");
    for bit in 0..32 {
        if pick >> bit & 1 == 1 {
            block[B as usize - 4 + bit / 8] ^= 1 << (bit % 8);
        }
    }
    assert_eq!(crc32c::crc32c(&block), 0);
    block
}

/// Data whose CRC32C happens to be 0 is stored with a 0 checksum and verifies: a partial
/// write keeps its other bytes (never "never written" zeroes) and a scan finds it data.
#[test]
fn a_block_of_data_whose_checksum_is_zero_is_kept_by_a_partial_write() {
    let (_tmp, s) = store();
    let block = block_with_crc_zero();
    s.write(1, 1, 0, &block).unwrap();
    assert!(matches!(
        s.scan_in(1, 1, 1, 0, 1).unwrap()[..],
        [Scanned::Data { .. }]
    ));
    s.write(1, 1, 10, b"abc").unwrap();
    let mut want = block.clone();
    want[10..13].copy_from_slice(b"abc");
    assert_eq!(s.read(1, 1, 0, B).unwrap(), want);
}

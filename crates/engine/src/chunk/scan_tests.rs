//! Promises of the scrubber's view: each block of a layer classified from one read, a
//! flipped byte found as `Bad` without failing the scan, equal data hashing equal across
//! stores, and the layers listed as the layer map knows them.

use super::super::layer_tests::{fill, store};
use super::super::tests::flip_byte as flip;
use super::super::*;
use super::block_hash;

const B: u64 = BLOCK_SIZE;

#[test]
fn a_scan_classifies_data_zero_absent_and_a_flipped_byte_as_bad() {
    let (tmp, s) = store();
    // Blocks 0..3 data, 3 written as zero (a whole-block zero write), 4 never written,
    // 5 data, then the files end.
    s.write(1, 2, 0, &fill(7, 3)).unwrap();
    s.write_in(1, 2, 1, 3 * B, &vec![0u8; B as usize]).unwrap();
    s.write(1, 2, 5 * B, &fill(9, 1)).unwrap();
    flip(
        &tmp.path().join(format!("{:016x}/{:08x}.dat", 1, 2)),
        B + 17,
    );

    let got = s.scan_in(1, 2, 0, 0, 8).unwrap();
    let h7 = block_hash(&fill(7, 1));
    assert_eq!(got[0], Scanned::Data { hash: h7 });
    assert_eq!(got[1], Scanned::Bad);
    assert_eq!(got[2], Scanned::Data { hash: h7 });
    assert_eq!(got[3], Scanned::Zero);
    assert_eq!(got[4], Scanned::Absent);
    assert_eq!(
        got[5],
        Scanned::Data {
            hash: block_hash(&fill(9, 1))
        }
    );
    assert_eq!(&got[6..], &[Scanned::Absent, Scanned::Absent]);
    // A read of the same range fails; the scan does not.
    assert!(matches!(s.read(1, 2, 0, 2 * B), Err(Error::Corrupt(_))));
    // A chunk without files: every block absent.
    assert_eq!(s.scan_in(9, 9, 0, 10, 2).unwrap(), vec![Scanned::Absent; 2]);
    // Outside the chunk: an error, not a panic.
    assert!(s.scan_in(1, 2, 0, u64::MAX / 2, 4).is_err());
}

#[test]
fn a_flipped_checksum_is_bad_and_equal_data_hashes_equal_across_stores() {
    let (tmp_a, a) = store();
    let (_tmp_b, b) = store();
    let data: Vec<u8> = (0..4 * B).map(|i| (i * 31 % 251) as u8).collect();
    a.write(3, 0, 0, &data).unwrap();
    b.write(3, 0, 0, &data).unwrap();
    assert_eq!(
        a.scan_in(3, 0, 0, 0, 4).unwrap(),
        b.scan_in(3, 0, 0, 0, 4).unwrap()
    );
    flip(
        &tmp_a.path().join(format!("{:016x}/{:08x}.crc", 3, 0)),
        2 * 4 + 1,
    );
    let got = a.scan_in(3, 0, 0, 0, 4).unwrap();
    assert_eq!(got[2], Scanned::Bad);
    assert_ne!(got[0], got[1], "different data hashes differently");
    assert_eq!(got[3], b.scan_in(3, 0, 0, 3, 1).unwrap()[0]);
}

#[test]
fn a_scan_of_an_upper_layer_sees_only_that_layer() {
    let (_tmp, s) = store();
    s.write_seq(4, 0, 0, &fill(1, 4), 1).unwrap();
    s.write_seq(4, 0, B, &fill(2, 1), 3).unwrap();
    assert_eq!(
        s.chunk_layers(4, 0).unwrap(),
        ChunkLayers {
            layers: vec![1, 3],
            link: None
        }
    );
    let upper = s.scan_in(4, 0, 3, 0, 3).unwrap();
    assert_eq!(upper[0], Scanned::Absent);
    assert_eq!(
        upper[1],
        Scanned::Data {
            hash: block_hash(&fill(2, 1))
        }
    );
    assert_eq!(upper[2], Scanned::Absent);
    // Layer 0 names layer 1.
    assert_eq!(
        s.scan_in(4, 0, 0, 1, 1).unwrap(),
        s.scan_in(4, 0, 1, 1, 1).unwrap()
    );
}

#[test]
fn chunk_layers_lists_a_plain_chunk_a_linked_one_and_nothing_for_an_unknown_one() {
    let (_tmp, s) = store();
    assert_eq!(s.chunk_layers(5, 0).unwrap(), ChunkLayers::default());
    s.write(5, 0, 0, &fill(1, 1)).unwrap();
    assert_eq!(s.chunk_layers(5, 0).unwrap().layers, vec![1]);
    s.link(6, 0, 5, 0).unwrap();
    let linked = s.chunk_layers(6, 0).unwrap();
    assert_eq!(linked.layers, Vec::<u64>::new());
    assert_eq!(linked.link, Some((5, 0)));
}

#[test]
fn a_failing_stat_of_the_base_fails_the_listing_instead_of_saying_not_held() {
    let (tmp, s) = store();
    // The volume's directory is a file: every stat below it fails with ENOTDIR (an I/O
    // error, not "not found"), as a failing disk's would.
    std::fs::write(tmp.path().join(format!("{:016x}", 6)), b"x").unwrap();
    assert!(s.chunk_layers(6, 0).is_err());
}

/// A latent sector error (EIO reading block 2, through the fail point) does not fail the
/// scan of its region: the region is read again block by block, the unreadable block is
/// `Bad` (for a repair to rewrite), every other block classified as stored.
#[cfg(feature = "failpoints")]
#[test]
fn an_unreadable_block_is_bad_and_its_region_still_scans() {
    let (_tmp, s) = store();
    s.write(1, 2, 0, &fill(7, 4)).unwrap();
    let whole = s.scan_in(1, 2, 0, 0, 4).unwrap();
    let scenario = fail::FailScenario::setup();
    fail::cfg("chunk::scan_eio", "return(2)").unwrap();
    let got = s.scan_in(1, 2, 0, 0, 4);
    let apart = s.scan_in(1, 2, 0, 3, 1);
    fail::remove("chunk::scan_eio");
    scenario.teardown();
    let mut want = whole.clone();
    want[2] = Scanned::Bad;
    assert_eq!(got.expect("the region scans"), want);
    // A region without the block reads at once.
    assert_eq!(apart.expect("scans"), whole[3..]);
}

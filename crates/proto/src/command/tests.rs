use super::*;

#[test]
fn commands_round_trip_and_truncation_fails() {
    let c = Command {
        op: CmdOp::Write,
        volume: 1,
        chunk: 2,
        offset: 3,
        len: 4,
        id: 0,
        epoch: 0,
        seq: 0,
        data: Bytes::from_static(b"abcd"),
    };
    for id in [0, 0xfeed_beef, u128::MAX - 3] {
        for epoch in [0, 7, u64::MAX] {
            let c = Command {
                id,
                epoch,
                ..c.clone()
            };
            let enc = c.encode();
            assert_eq!(Command::decode(&enc).unwrap(), c);
            assert_eq!(Command::peek_id(&enc), id);
            let peeked = (epoch != 0).then_some((1, epoch));
            assert_eq!(Command::peek_epoch(&enc), peeked);
            for n in 0..enc.len() {
                assert!(Command::decode(&enc.slice(..n)).is_err());
            }
        }
    }
    let fence = Command {
        op: CmdOp::Fence,
        len: 0,
        epoch: 3,
        data: Bytes::new(),
        ..c
    };
    assert_eq!(Command::decode(&fence.encode()).unwrap(), fence);
}

fn command(op: CmdOp, id: u128, epoch: u64) -> Command {
    let (len, data) = match op {
        CmdOp::Write => (5, Bytes::from_static(b"hello")),
        CmdOp::Hydrate => (4096, Bytes::from(vec![7u8; 4096])),
        CmdOp::WriteZeroes | CmdOp::Discard => (4096, Bytes::new()),
        CmdOp::Link => (0, Command::link_data(2, 5)),
        CmdOp::Rollback => (0, Bytes::copy_from_slice(&4u64.to_le_bytes())),
        CmdOp::DropMerged => (0, Command::merge_data(2, 5, true)),
        CmdOp::Flatten => (1 << 20, Bytes::new()),
        CmdOp::Merge => (1 << 20, Command::merge_data(1, 4, false)),
        CmdOp::DropChunk | CmdOp::Fence | CmdOp::Unlink => (0, Bytes::new()),
        CmdOp::ScrubMark => (4 << 20, Command::scrub_mark_data(7)),
        CmdOp::Repair => (
            4096,
            Command::repair_data(7, 1, &[Wanted::Data], &[1u8; 4096]),
        ),
    };
    Command {
        op,
        volume: 3,
        chunk: 9,
        offset: if len == 0 { 0 } else { 512 },
        len,
        id,
        epoch,
        seq: epoch / 2,
        data,
    }
}

const OPS: [CmdOp; 12] = [
    CmdOp::Write,
    CmdOp::WriteZeroes,
    CmdOp::Discard,
    CmdOp::DropChunk,
    CmdOp::Fence,
    CmdOp::Link,
    CmdOp::Flatten,
    CmdOp::Unlink,
    CmdOp::Rollback,
    CmdOp::Merge,
    CmdOp::DropMerged,
    CmdOp::Hydrate,
];

/// Every op, with and without the optional id and epoch, is read back from the log as
/// written; a truncated entry is an error.
#[test]
fn every_op_round_trips_with_and_without_id_and_epoch() {
    for op in OPS {
        for (id, epoch) in [(0, 0), (7, 0), (0, 7), (u128::MAX, u64::MAX)] {
            let c = command(op, id, epoch);
            let enc = c.encode();
            assert_eq!(Command::decode(&enc).unwrap(), c);
            let fence = (c.epoch != 0 || c.seq != 0).then_some((3, c.epoch, c.seq));
            assert_eq!(Command::peek_fence(&enc), fence);
            if matches!(
                op,
                CmdOp::Write
                    | CmdOp::Hydrate
                    | CmdOp::Link
                    | CmdOp::Rollback
                    | CmdOp::Merge
                    | CmdOp::DropMerged
            ) {
                for n in 0..enc.len() {
                    assert!(Command::decode(&enc.slice(..n)).is_err());
                }
            }
        }
    }
}

#[test]
fn links_and_rollbacks_carry_their_parent_and_target() {
    let link = command(CmdOp::Link, 0, 0);
    assert_eq!(
        Command::decode(&link.encode()).unwrap().link_parent(),
        Some((2, 5))
    );
    assert_eq!(link.rollback_to(), None);
    let back = command(CmdOp::Rollback, 0, 8);
    assert_eq!(
        Command::decode(&back.encode()).unwrap().rollback_to(),
        Some(4)
    );
    assert_eq!(back.link_parent(), None);
    // A link or rollback whose data is cut short is refused, never read as another.
    let mut short = link.encode().to_vec();
    short.pop();
    assert!(Command::decode(&Bytes::from(short)).is_err());
}

/// An entry written before sequences existed reads as sequence 0, and trailing bytes
/// after an op that carries no data are ignored as they always were.
#[test]
fn entries_from_before_sequences_still_decode() {
    let mut old = command(CmdOp::Discard, 7, 3);
    old.seq = 0;
    let mut enc = old.encode().to_vec();
    assert_eq!(enc[0] & HAS_SEQ, 0);
    assert_eq!(Command::decode(&Bytes::from(enc.clone())).unwrap(), old);
    enc.extend_from_slice(b"xy");
    assert_eq!(Command::decode(&Bytes::from(enc)).unwrap(), old);
}

#[test]
fn unknown_ops_and_overflowing_ranges_are_refused() {
    for op in [0, 10, 0x1f] {
        let mut enc = command(CmdOp::Discard, 0, 0).encode().to_vec();
        enc[0] = op;
        assert!(Command::decode(&Bytes::from(enc)).is_err(), "op {op}");
    }
    let c = Command {
        offset: u32::MAX,
        len: 1,
        ..command(CmdOp::WriteZeroes, 0, 0)
    };
    assert!(Command::decode(&c.encode()).is_err());
}

/// Log entries are re-read at recovery: whatever a corrupted one holds, decoding and
/// peeking return, never panic.
#[test]
fn no_corrupted_entry_panics_the_decoder_or_the_peeks() {
    let enc = command(CmdOp::Write, 7, 9).encode();
    for i in 0..enc.len() {
        for b in [0, 0x40, 0x80, 0xc1, 0xff] {
            let mut bad = enc.to_vec();
            bad[i] = b;
            let _ = Command::peek_id(&bad);
            let _ = Command::peek_epoch(&bad);
            let _ = Command::peek_fence(&bad);
            let _ = Command::decode(&Bytes::from(bad));
        }
    }
    for n in 0..enc.len() {
        let _ = Command::peek_id(&enc[..n]);
        let _ = Command::peek_epoch(&enc[..n]);
    }
    assert_eq!(Command::peek_id(&[]), 0);
    assert_eq!(Command::peek_epoch(&[]), None);
}

/// A merge's range reads back as written; another op, or a live flag that is neither
/// 0 nor 1, has none.
#[test]
fn merge_ranges_read_back() {
    let mut c = command(CmdOp::Merge, 0, 0);
    assert_eq!(c.merge_range(), Some((1, 4, false)));
    c.data = Command::merge_data(3, 9, true);
    assert_eq!(c.merge_range(), Some((3, 9, true)));
    let mut bad = c.data.to_vec();
    bad[16] = 2;
    c.data = Bytes::from(bad);
    assert_eq!(c.merge_range(), None);
    assert_eq!(command(CmdOp::Link, 0, 0).merge_range(), None);
}

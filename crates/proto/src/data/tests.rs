//! Round trips and refusals of the data-plane layout.

use super::*;

const ADDR: ChunkAddr = ChunkAddr {
    group: 7,
    volume: 3,
    chunk: 9,
};

#[test]
fn requests_round_trip() {
    let reqs = [
        Request::write(ADDR, 512, Bytes::from(vec![7u8; 1000])),
        Request::other(Op::Read, ADDR, 4096, 8192),
        Request::other(Op::WriteZeroes, ADDR, 0, 1 << 20),
        Request::other(Op::Discard, ADDR, 1, 2),
        Request {
            epoch: 9,
            seq: 4,
            ..Request::other(Op::Fence, ADDR, 0, 0)
        },
        Request {
            seq: u64::MAX,
            ..Request::other(Op::Read, ADDR, 0, 4096)
        },
        Request {
            epoch: 4,
            id: u128::MAX - 1,
            deadline_ms: 1_700_000_000_123,
            ..Request::write(ADDR, 0, Bytes::from_static(b"x"))
        },
    ];
    for req in reqs {
        let body = req.encode();
        assert_eq!(Request::decode(req.kind(), &body).unwrap(), req);
    }
}

/// A body from a client before snapshot sequences (the 64-byte header) still decodes, as
/// sequence 0, whether or not it carries data.
#[test]
fn requests_without_a_sequence_decode_as_sequence_zero() {
    for req in [
        Request {
            epoch: 4,
            id: 77,
            ..Request::write(ADDR, 4096, Bytes::from(vec![5u8; 4096]))
        },
        Request::other(Op::Read, ADDR, 0, 4096),
        Request::other(Op::Discard, ADDR, 0, 8192),
        Request::write(ADDR, 0, Bytes::from(vec![1u8; 8])),
    ] {
        // Sequence 0 is sent in the old layout: exactly what an old client sent.
        let old = req.encode();
        assert_eq!(old.len(), 64 + req.data.len());
        let got = Request::decode(req.kind(), &old).unwrap();
        assert_eq!(got, req);
        // With a sequence, the same request is 8 bytes longer and keeps it.
        let seq = Request { seq: 3, ..req };
        assert_eq!(seq.encode().len(), 72 + seq.data.len());
        assert_eq!(Request::decode(seq.kind(), &seq.encode()).unwrap().seq, 3);
    }
}

/// A request whose sequence says nothing more than its absence (a write of sequence 0 or
/// 1, a live read) is sent in the layout nodes from before sequences take.
#[test]
fn requests_of_volumes_without_snapshots_keep_the_old_layout() {
    let write = Request {
        seq: 1,
        ..Request::write(ADDR, 0, Bytes::from(vec![1u8; 4096]))
    };
    assert_eq!(write.encode().len(), 64 + 4096);
    assert_eq!(
        Request::decode(Kind::Write, &write.encode()).unwrap().seq,
        0
    );
    assert_eq!(Request::other(Op::Read, ADDR, 0, 4096).encode().len(), 64);
    let as_of_1 = Request {
        seq: 1,
        ..Request::other(Op::Read, ADDR, 0, 4096)
    };
    assert_eq!(
        as_of_1.encode().len(),
        72,
        "a read as of snapshot 1 keeps its seq"
    );
    let layer_2 = Request {
        seq: 2,
        ..Request::write(ADDR, 0, Bytes::from(vec![1u8; 4096]))
    };
    assert_eq!(
        Request::decode(Kind::Write, &layer_2.encode()).unwrap().seq,
        2
    );
}

#[test]
fn a_request_expires_after_its_deadline_and_never_without_one() {
    let mut req = Request::write(ADDR, 0, Bytes::from_static(b"x"));
    assert!(!req.expired(), "no deadline");
    req.deadline_ms = Request::deadline_in(std::time::Duration::from_secs(60));
    assert!(!req.expired());
    req.deadline_ms = 1;
    assert!(req.expired());
}

#[test]
fn parts_are_the_body_split_in_two() {
    let req = Request::write(ADDR, 512, Bytes::from(vec![7u8; 100]));
    let (head, data) = req.encode_parts();
    assert_eq!([head, data].concat(), req.encode().to_vec());
    let r = Reply::Ok(Bytes::from_static(b"data"));
    let (head, data) = r.encode_parts();
    assert_eq!([head, data].concat(), r.encode().to_vec());
    let r = Reply::NotLeader { hint: 3 };
    assert_eq!(r.encode_parts().0, r.encode());
}

#[test]
fn write_length_must_match_payload() {
    let mut req = Request::write(ADDR, 0, Bytes::from(vec![1u8; 10]));
    req.len = 11;
    assert!(Request::decode(Kind::Write, &req.encode()).is_err());
}

#[test]
fn truncated_requests_are_errors() {
    let body = Request::other(Op::Read, ADDR, 0, 4096).encode();
    for n in 0..body.len() {
        // 64 bytes is a whole body from before sequences (see above).
        if n != 64 {
            assert!(
                Request::decode(Kind::Read, &body.slice(..n)).is_err(),
                "{n}"
            );
        }
    }
}

#[test]
fn replies_round_trip() {
    let replies = [
        Reply::Ok(Bytes::from_static(b"data")),
        Reply::NotLeader { hint: 5 },
        Reply::GroupNotFound,
        Reply::OutOfRange("x".into()),
        Reply::DiskFull("full".into()),
        Reply::Corrupt("crc".into()),
        Reply::Io("eio".into()),
        Reply::BadRequest("bad".into()),
        Reply::Unavailable("later".into()),
        Reply::Expired("too late".into()),
        Reply::Fenced("epoch 3 < 4".into()),
        Reply::Resequence { seq: 9 },
    ];
    for r in replies {
        assert_eq!(Reply::decode(&r.encode()).unwrap(), r);
    }
}

#[test]
fn raft_batch_round_trips_and_rejects_lies() {
    let b = RaftBatch {
        from_node: 2,
        msgs: vec![(1, Bytes::from_static(b"abc")), (9, Bytes::new())],
    };
    let enc = b.encode();
    assert_eq!(RaftBatch::decode(&enc).unwrap(), b);
    let mut lie = BytesMut::from(&enc[..]);
    lie[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(RaftBatch::decode(&lie.freeze()).is_err());
    for n in 0..enc.len() {
        assert!(RaftBatch::decode(&enc.slice(..n)).is_err());
    }
}

const OPS: [Op; 9] = [
    Op::Write,
    Op::Read,
    Op::WriteZeroes,
    Op::Discard,
    Op::CatchUpList,
    Op::CatchUpChecksums,
    Op::CatchUpRead,
    Op::Fence,
    Op::BlockStatus,
];

fn request(op: Op) -> Request {
    let req = match op {
        Op::Write => Request::write(ADDR, 4096, Bytes::from(vec![3u8; 4096])),
        other => Request::other(other, ADDR, 8, 4096),
    };
    Request {
        epoch: 2,
        id: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        deadline_ms: 1_700_000_000_000,
        ..req
    }
}

/// Each op travels as its own frame kind and comes back as itself, every header field
/// intact.
#[test]
fn every_op_round_trips_under_its_kind() {
    for op in OPS {
        let req = request(op);
        assert_eq!(Request::decode(req.kind(), &req.encode()).unwrap(), req);
    }
}

#[test]
fn a_request_under_a_kind_that_is_no_request_is_refused() {
    let body = request(Op::Read).encode();
    for kind in [Kind::Reply, Kind::RaftBatch, Kind::ManagerRaft, Kind::Rpc] {
        assert_eq!(
            Request::decode(kind, &body),
            Err(DecodeError::UnknownKind(kind as u8))
        );
    }
}

#[test]
fn lengths_past_the_limits_are_refused() {
    let too_long = Request::other(Op::Read, ADDR, 0, MAX_IO + 1).encode();
    assert!(matches!(
        Request::decode(Kind::Read, &too_long),
        Err(DecodeError::TooLarge { .. })
    ));
    let overflowing = Request::other(Op::Read, ADDR, u32::MAX, 1).encode();
    assert!(Request::decode(Kind::Read, &overflowing).is_err());
    let mut trailing = request(Op::Read).encode().to_vec();
    trailing.push(0);
    assert!(Request::decode(Kind::Read, &Bytes::from(trailing)).is_err());
}

/// A corrupted body (which a frame's checksum would have caught) decodes to something
/// or is refused: it never panics the decoder.
#[test]
fn no_corrupted_request_or_reply_panics_the_decoder() {
    for op in OPS {
        let body = request(op).encode();
        for i in 0..body.len() {
            for b in [0, 0x80, 0xff] {
                let mut bad = body.to_vec();
                bad[i] = b;
                let _ = Request::decode(Kind::Write, &Bytes::from(bad.clone()));
                let _ = Request::decode(Kind::Read, &Bytes::from(bad));
            }
        }
    }
    for b in 0..=u8::MAX {
        let _ = Reply::decode(&Bytes::from(vec![b, 0xff, 0xfe]));
    }
}

#[test]
fn short_or_unknown_replies_are_errors() {
    assert!(Reply::decode(&Bytes::new()).is_err());
    let hint = Reply::NotLeader { hint: 5 }.encode();
    for n in 0..hint.len() {
        assert!(Reply::decode(&hint.slice(..n)).is_err());
    }
    assert!(Reply::decode(&Bytes::from_static(&[11])).is_err());
    assert!(Reply::decode(&Bytes::from_static(&[0xff, b'x'])).is_err());
}

/// A message that is not UTF-8 is kept, its bad bytes replaced: the outcome is what
/// matters, never the text.
#[test]
fn a_reply_message_that_is_not_utf8_keeps_its_status() {
    let got = Reply::decode(&Bytes::from_static(&[4, b'n', 0xff, b'o'])).unwrap();
    assert_eq!(got, Reply::DiskFull("n\u{fffd}o".into()));
}

#[test]
fn an_empty_raft_batch_round_trips_and_trailing_bytes_are_refused() {
    let empty = RaftBatch {
        from_node: 4,
        msgs: Vec::new(),
    };
    let enc = empty.encode();
    assert_eq!(RaftBatch::decode(&enc).unwrap(), empty);
    let mut trailing = enc.to_vec();
    trailing.push(1);
    assert!(RaftBatch::decode(&Bytes::from(trailing)).is_err());
}

#[test]
fn block_states_are_one_byte_each() {
    for s in [BlockState::Hole, BlockState::Zero, BlockState::Data] {
        assert_eq!(BlockState::from_byte(s as u8), Some(s));
    }
    assert_eq!(BlockState::from_byte(3), None);
}

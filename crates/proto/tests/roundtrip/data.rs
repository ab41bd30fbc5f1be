//! The data plane: every request decodes under its frame kind to itself, every reply to
//! itself, every Raft batch to itself; and a body of any frame kind, whatever it holds,
//! never makes a decoder panic nor yields a value that breaks the layout's limits.

use bytes::Bytes;
use proptest::prelude::*;
use tessera_proto::DecodeError;
use tessera_proto::data::{ChunkAddr, MAX_IO, Op, RaftBatch, Reply, Request};
use tessera_proto::frame::Kind;

use crate::frame::kind;
use crate::mutate::untrusted;
use crate::{assert_yields_every_variant, bytes, fuzz, round_trips, u64s, u128s};

/// Every request op, in [`op_index`] order.
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

/// The guard: an op added to the crate does not compile here until it is in [`OPS`].
fn op_index(op: &Op) -> usize {
    match op {
        Op::Write => 0,
        Op::Read => 1,
        Op::WriteZeroes => 2,
        Op::Discard => 3,
        Op::CatchUpList => 4,
        Op::CatchUpChecksums => 5,
        Op::CatchUpRead => 6,
        Op::Fence => 7,
        Op::BlockStatus => 8,
    }
}

/// Whether `seq` names a layer for `op`, where 0 and 1 name the same one (layer 1), as
/// `Request::seq` documents: such a request of `seq` 1 reads back as 0.
fn seq_names_a_layer(op: Op) -> bool {
    match op {
        Op::Write
        | Op::WriteZeroes
        | Op::Discard
        | Op::Fence
        | Op::CatchUpChecksums
        | Op::CatchUpRead => true,
        Op::Read | Op::BlockStatus | Op::CatchUpList => false,
    }
}

/// Whether frames of `kind` carry a [`Request`] (the guard: a kind added to the crate does
/// not compile here until it is sorted).
fn carries_request(kind: Kind) -> bool {
    match kind {
        Kind::Write
        | Kind::Read
        | Kind::WriteZeroes
        | Kind::Discard
        | Kind::CatchUpList
        | Kind::CatchUpChecksums
        | Kind::CatchUpRead
        | Kind::Fence
        | Kind::BlockStatus => true,
        Kind::Capability
        | Kind::Reply
        | Kind::RaftBatch
        | Kind::ManagerRaft
        | Kind::Rpc
        | Kind::RpcReply => false,
    }
}

fn addr() -> impl Strategy<Value = ChunkAddr> + Clone {
    (u64s(), u64s(), u64s()).prop_map(|(group, volume, chunk)| ChunkAddr {
        group,
        volume,
        chunk,
    })
}

/// `(len, data)`: for a write, its data (usually small, sometimes [`MAX_IO`]); for any
/// other op, a length up to [`MAX_IO`] and no data.
fn len_and_data(op: Op) -> BoxedStrategy<(u32, Bytes)> {
    if op == Op::Write {
        prop_oneof![
            30 => bytes(600),
            1 => any::<u8>().prop_map(|b| Bytes::from(vec![b; MAX_IO as usize])),
        ]
        .prop_map(|data| (data.len() as u32, data))
        .boxed()
    } else {
        prop_oneof![Just(0u32), Just(MAX_IO), 0..=MAX_IO, 0..=8192u32]
            .prop_map(|len| (len, Bytes::new()))
            .boxed()
    }
}

/// An offset the range `len` bytes long can start at without passing `u32::MAX`.
fn offset(len: u32) -> impl Strategy<Value = u32> {
    let max = u32::MAX - len;
    prop_oneof![Just(0u32), Just(max), 0..=max]
}

/// A request of `op` as senders build them: `len` and `data` agree, the range does not
/// overflow, and `seq` is anything but 1 where 1 and 0 name the same layer.
fn request_of(op: Op) -> impl Strategy<Value = Request> {
    let seq = if seq_names_a_layer(op) {
        prop_oneof![Just(0u64), 2..=u64::MAX, Just(u64::MAX)].boxed()
    } else {
        u64s().boxed()
    };
    (len_and_data(op), addr(), u64s(), u128s(), u64s(), seq).prop_flat_map(
        move |((len, data), addr, epoch, id, deadline_ms, seq)| {
            offset(len).prop_map(move |offset| Request {
                op,
                addr,
                epoch,
                id,
                deadline_ms,
                offset,
                len,
                seq,
                data: data.clone(),
            })
        },
    )
}

fn request() -> impl Strategy<Value = Request> + Clone {
    prop::sample::select(OPS.to_vec())
        .prop_flat_map(request_of)
        .boxed()
}

/// A request of an op whose `seq` names a layer.
fn layer_request() -> impl Strategy<Value = Request> {
    let ops: Vec<Op> = OPS
        .into_iter()
        .filter(|&op| seq_names_a_layer(op))
        .collect();
    prop::sample::select(ops).prop_flat_map(request_of)
}

/// A message of a reply: any text, quotes, control characters and all.
fn message() -> impl Strategy<Value = String> + Clone {
    prop::collection::vec(any::<char>(), 0..24).prop_map(String::from_iter)
}

/// The guard: a reply added to the crate does not compile here until it is numbered.
fn reply_index(r: &Reply) -> usize {
    match r {
        Reply::Ok(_) => 0,
        Reply::NotLeader { .. } => 1,
        Reply::GroupNotFound => 2,
        Reply::OutOfRange(_) => 3,
        Reply::DiskFull(_) => 4,
        Reply::Corrupt(_) => 5,
        Reply::Io(_) => 6,
        Reply::BadRequest(_) => 7,
        Reply::Unavailable(_) => 8,
        Reply::Expired(_) => 9,
        Reply::Fenced(_) => 10,
        Reply::Resequence { .. } => 11,
        Reply::Unauthorized(_) => 12,
        Reply::Unfilled { .. } => 13,
    }
}

/// Any reply that travels ([`Reply::Unfilled`] never does: it goes as `Unavailable`).
fn reply() -> impl Strategy<Value = Reply> + Clone {
    prop_oneof![
        bytes(600).prop_map(Reply::Ok),
        u64s().prop_map(|hint| Reply::NotLeader { hint }),
        Just(Reply::GroupNotFound),
        message().prop_map(Reply::OutOfRange),
        message().prop_map(Reply::DiskFull),
        message().prop_map(Reply::Corrupt),
        message().prop_map(Reply::Io),
        message().prop_map(Reply::BadRequest),
        message().prop_map(Reply::Unavailable),
        message().prop_map(Reply::Expired),
        message().prop_map(Reply::Fenced),
        u64s().prop_map(|seq| Reply::Resequence { seq }),
        message().prop_map(Reply::Unauthorized),
    ]
}

fn raft_batch() -> impl Strategy<Value = RaftBatch> + Clone {
    (u64s(), prop::collection::vec((u64s(), bytes(64)), 0..8))
        .prop_map(|(from_node, msgs)| RaftBatch { from_node, msgs })
}

/// A body to decode under some kind: mostly a request's own body, damaged or not, under
/// its own kind; sometimes under any kind.
fn kind_and_body() -> impl Strategy<Value = (Kind, Vec<u8>)> {
    prop_oneof![
        4 => request().prop_flat_map(|r| {
            let body = r.encode();
            (Just(r.kind()), untrusted(Just(body)))
        }),
        1 => (kind(), untrusted(request().prop_map(|r| r.encode()))),
    ]
}

#[test]
fn the_strategies_yield_every_op_and_every_reply_that_travels() {
    assert_yields_every_variant(request(), 0..OPS.len(), |r| op_index(&r.op));
    assert_yields_every_variant(reply(), 0..13, reply_index);
}

proptest! {
    #![proptest_config(round_trips())]

    /// A request decodes under its frame kind to itself; sent in two parts it is the same
    /// body; the body is the 64-byte header, `seq` when it says something, and the data.
    #[test]
    fn a_request_decodes_to_itself(req in request()) {
        let body = req.encode();
        prop_assert_eq!(Request::decode(req.kind(), &body), Ok(req.clone()));
        let (head, data) = req.encode_parts();
        prop_assert_eq!(&[head, data].concat()[..], &body[..]);
        let header = body.len() - req.data.len();
        prop_assert!(header == 64 || header == 72, "a header of {} bytes", header);
        if req.seq > 1 {
            prop_assert_eq!(header, 72);
        }
    }

    /// Where `seq` 0 and 1 name the same layer, a request of `seq` 1 reads back as 0 and
    /// is otherwise itself (its body is the one of nodes from before sequences).
    #[test]
    fn sequence_one_of_a_layer_reads_back_as_zero(req in layer_request()) {
        let one = Request { seq: 1, ..req.clone() };
        let zero = Request { seq: 0, ..req };
        prop_assert_eq!(Request::decode(one.kind(), &one.encode()), Ok(zero.clone()));
        prop_assert_eq!(one.encode(), zero.encode());
    }

    /// A reply that travels decodes to itself, sent in one part or two.
    #[test]
    fn a_reply_decodes_to_itself(reply in reply()) {
        let body = reply.encode();
        prop_assert_eq!(Reply::decode(&body), Ok(reply.clone()));
        let (head, data) = reply.encode_parts();
        prop_assert_eq!(&[head, data].concat()[..], &body[..]);
    }

    /// An unfilled read, which never travels, goes as `Unavailable` (the client retries).
    #[test]
    fn an_unfilled_read_travels_as_unavailable(
        data in bytes(64),
        blocks in prop::collection::vec(any::<u32>(), 0..4),
    ) {
        let reply = Reply::Unfilled { data, blocks };
        prop_assert!(matches!(Reply::decode(&reply.encode()), Ok(Reply::Unavailable(_))));
        let (head, tail) = reply.encode_parts();
        prop_assert_eq!(&[head, tail].concat()[..], &reply.encode()[..]);
    }

    /// A Raft batch decodes to itself.
    #[test]
    fn a_raft_batch_decodes_to_itself(batch in raft_batch()) {
        prop_assert_eq!(RaftBatch::decode(&batch.encode()), Ok(batch));
    }
}

proptest! {
    #![proptest_config(fuzz())]

    /// Whatever a body holds and whatever its frame kind, decoding it as a request never
    /// panics; a kind that carries no request is refused as such; and a request decoded
    /// keeps the layout's limits and encodes to a body that decodes to it again (up to
    /// the layer `seq` 1 and 0 both name).
    #[test]
    fn request_bodies_of_any_kind_never_panic((kind, body) in kind_and_body()) {
        let body = Bytes::from(body);
        match Request::decode(kind, &body) {
            Ok(req) => {
                prop_assert!(carries_request(kind));
                prop_assert_eq!(req.kind(), kind);
                prop_assert!(req.len <= MAX_IO);
                prop_assert!(req.offset.checked_add(req.len).is_some());
                if req.op == Op::Write {
                    prop_assert_eq!(req.data.len(), req.len as usize);
                } else {
                    prop_assert!(req.data.is_empty());
                }
                // Sent again it is itself, but for a `seq` of 1 where 1 and 0 are the same
                // layer: that goes as 0 (a body without it).
                let mut again = req.clone();
                if seq_names_a_layer(req.op) && req.seq == 1 {
                    again.seq = 0;
                }
                prop_assert_eq!(Request::decode(kind, &req.encode()), Ok(again));
            }
            Err(e) => {
                if !carries_request(kind) {
                    prop_assert_eq!(e, DecodeError::UnknownKind(kind as u8));
                }
            }
        }
    }

    /// Whatever a reply body holds, decoding never panics, never yields the in-process
    /// `Unfilled`, and a reply decoded encodes to a body that decodes to it again.
    #[test]
    fn reply_bodies_never_panic(body in untrusted(reply().prop_map(|r| r.encode()))) {
        if let Ok(reply) = Reply::decode(&Bytes::from(body)) {
            let unfilled = matches!(reply, Reply::Unfilled { .. });
            prop_assert!(!unfilled, "decoded an in-process reply: {:?}", reply);
            prop_assert_eq!(Reply::decode(&reply.encode()), Ok(reply.clone()));
        }
    }

    /// Whatever a Raft batch body holds, decoding never panics, and a batch decoded is
    /// exactly the body it came from (no trailing bytes, no count that lies).
    #[test]
    fn raft_batch_bodies_never_panic(body in untrusted(raft_batch().prop_map(|b| b.encode()))) {
        if let Ok(batch) = RaftBatch::decode(&Bytes::from(body.clone())) {
            prop_assert_eq!(&batch.encode()[..], &body[..]);
        }
    }
}

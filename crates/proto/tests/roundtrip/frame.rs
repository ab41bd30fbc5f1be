//! The frame: every frame decodes to itself (its two body parts joined), arriving whole or
//! in pieces; and bytes off a stream never make the decoder panic nor hand out a frame
//! whose header or body checksum does not hold.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use tessera_proto::frame::{self, Frame, HEADER_LEN, Kind, MAGIC, MAX_BODY, VERSION};

use crate::mutate::damaged;
use crate::{assert_yields_every_variant, bytes, fuzz, round_trips};

/// Every frame kind, in [`kind_index`] order.
pub const KINDS: [Kind; 15] = [
    Kind::Write,
    Kind::Read,
    Kind::WriteZeroes,
    Kind::Discard,
    Kind::CatchUpList,
    Kind::CatchUpChecksums,
    Kind::CatchUpRead,
    Kind::Fence,
    Kind::BlockStatus,
    Kind::Capability,
    Kind::Reply,
    Kind::RaftBatch,
    Kind::ManagerRaft,
    Kind::Rpc,
    Kind::RpcReply,
];

/// The guard: a kind added to the crate does not compile here until it is in [`KINDS`].
fn kind_index(k: &Kind) -> usize {
    match k {
        Kind::Write => 0,
        Kind::Read => 1,
        Kind::WriteZeroes => 2,
        Kind::Discard => 3,
        Kind::CatchUpList => 4,
        Kind::CatchUpChecksums => 5,
        Kind::CatchUpRead => 6,
        Kind::Fence => 7,
        Kind::BlockStatus => 8,
        Kind::Capability => 9,
        Kind::Reply => 10,
        Kind::RaftBatch => 11,
        Kind::ManagerRaft => 12,
        Kind::Rpc => 13,
        Kind::RpcReply => 14,
    }
}

/// Any frame kind.
pub fn kind() -> impl Strategy<Value = Kind> + Clone {
    prop::sample::select(KINDS.to_vec())
}

/// A frame to send: any kind and id, its body in one or two parts.
fn frame() -> impl Strategy<Value = Frame> + Clone {
    (kind(), any::<u64>(), bytes(300), bytes(300))
        .prop_map(|(kind, id, body, tail)| Frame::with_tail(kind, id, body, tail))
}

/// The frame the receiver gets for `sent`: the same kind, id and body, in one part.
fn received(sent: &Frame) -> Frame {
    let body: Vec<u8> = [&sent.body[..], &sent.tail[..]].concat();
    Frame::new(sent.kind, sent.request_id, Bytes::from(body))
}

/// Recomputes the header checksum of a (damaged) frame at the front of `b`, so that the
/// damage reaches the checks after it.
fn fix_header_crc(b: &mut [u8]) {
    if b.len() >= HEADER_LEN {
        let crc = crc32c::crc32c(&b[..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Recomputes the body checksum (of the body bytes present) and then the header's.
fn fix_both_crcs(b: &mut [u8]) {
    if b.len() >= HEADER_LEN {
        let len = u32::from_le_bytes([b[16], b[17], b[18], b[19]]) as usize;
        let end = HEADER_LEN.saturating_add(len).min(b.len());
        let crc = crc32c::crc32c(&b[HEADER_LEN..end]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        fix_header_crc(b);
    }
}

/// Stream bytes: arbitrary ones, or frames back to back damaged, with (often) their
/// checksums made to match again so the damage reaches the version, kind and length checks.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let frames = prop::collection::vec(frame(), 1..3).prop_map(|fs| {
        let wire: Vec<u8> = fs.iter().flat_map(|f| f.to_bytes().to_vec()).collect();
        Bytes::from(wire)
    });
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..128),
        1 => (Just(MAGIC.to_le_bytes().to_vec()), prop::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(m, rest)| [m, rest].concat()),
        2 => damaged(frames.clone()),
        2 => damaged(frames.clone()).prop_map(|mut b| { fix_header_crc(&mut b); b }),
        2 => damaged(frames).prop_map(|mut b| { fix_both_crcs(&mut b); b }),
    ]
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[test]
fn the_frame_strategy_yields_every_kind() {
    assert_yields_every_variant(kind(), 0..KINDS.len(), kind_index);
}

proptest! {
    #![proptest_config(round_trips())]

    /// A frame's header, body and tail on the wire decode to one frame of the same kind,
    /// id and body, and nothing of the buffer is left; its header alone peeks as such.
    #[test]
    fn a_frame_decodes_to_itself_with_its_body_in_one_part(sent in frame()) {
        let wire = sent.to_bytes();
        prop_assert_eq!(
            &wire[..],
            &[&sent.header()[..], &sent.body[..], &sent.tail[..]].concat()[..]
        );
        prop_assert_eq!(wire.len(), HEADER_LEN + sent.body_len());
        let h = frame::peek_header(&wire[..HEADER_LEN]).unwrap().unwrap();
        prop_assert_eq!(
            (h.kind, h.request_id, h.body_len as usize),
            (sent.kind, sent.request_id, sent.body_len())
        );
        let mut buf = BytesMut::from(&wire[..]);
        prop_assert_eq!(frame::decode(&mut buf), Ok(Some(received(&sent))));
        prop_assert!(buf.is_empty());
    }

    /// Frames arriving in two pieces cut anywhere: the decoder waits for the rest, then
    /// gives them back in order.
    #[test]
    fn frames_cut_anywhere_decode_once_complete(
        first in frame(),
        second in frame(),
        cut in any::<prop::sample::Index>(),
    ) {
        let wire = [first.to_bytes(), second.to_bytes()].concat();
        let cut = cut.index(first.to_bytes().len());
        let mut buf = BytesMut::from(&wire[..cut]);
        prop_assert_eq!(frame::decode(&mut buf), Ok(None));
        buf.extend_from_slice(&wire[cut..]);
        prop_assert_eq!(frame::decode(&mut buf), Ok(Some(received(&first))));
        prop_assert_eq!(frame::decode(&mut buf), Ok(Some(received(&second))));
        prop_assert_eq!(frame::decode(&mut buf), Ok(None));
        prop_assert!(buf.is_empty());
    }

    /// A one-bit flip anywhere in a frame is refused.
    #[test]
    fn a_flipped_bit_anywhere_is_refused(
        sent in frame(),
        at in any::<prop::sample::Index>(),
        bit in 0..8u8,
    ) {
        let mut wire = sent.to_bytes().to_vec();
        let at = at.index(wire.len());
        wire[at] ^= 1 << bit;
        let mut buf = BytesMut::from(&wire[..]);
        prop_assert!(frame::decode(&mut buf).is_err());
    }
}

proptest! {
    #![proptest_config(fuzz())]

    /// Whatever a stream holds, decoding never panics, and every frame it hands out is
    /// exactly the bytes it took: the magic, the version, a known kind, a length within
    /// the limit, a header checksum and a body checksum that hold.
    #[test]
    fn stream_bytes_never_yield_a_frame_with_a_wrong_checksum(input in stream()) {
        if let Ok(Some(h)) = frame::peek_header(&input) {
            prop_assert_eq!(h.kind as u8, input[5]);
            prop_assert!(h.body_len <= MAX_BODY);
        }
        let mut buf = BytesMut::from(&input[..]);
        let mut at = 0;
        while let Ok(Some(f)) = frame::decode(&mut buf) {
            prop_assert!(input.len() >= at + HEADER_LEN + f.body.len());
            let h = &input[at..at + HEADER_LEN];
            let body = &input[at + HEADER_LEN..at + HEADER_LEN + f.body.len()];
            prop_assert_eq!(u32_at(h, 0), MAGIC);
            prop_assert_eq!(h[4], VERSION);
            prop_assert_eq!(h[5], f.kind as u8);
            prop_assert_eq!(&h[8..16], &f.request_id.to_le_bytes()[..]);
            prop_assert_eq!(u32_at(h, 16) as usize, f.body.len());
            prop_assert!(f.body.len() <= MAX_BODY as usize);
            prop_assert_eq!(u32_at(h, 24), crc32c::crc32c(&h[..24]));
            prop_assert_eq!(u32_at(h, 20), crc32c::crc32c(&f.body));
            prop_assert_eq!(&f.body[..], body);
            prop_assert!(f.tail.is_empty());
            at += HEADER_LEN + f.body.len();
            prop_assert_eq!(buf.len(), input.len() - at);
        }
    }
}

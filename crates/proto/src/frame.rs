//! The frame: the unit every Tessera connection carries.
//!
//! ```text
//! 0   magic      u32  "TSRA" (0x4152_5354 little-endian bytes 'T','S','R','A')
//! 4   version    u8   1
//! 5   kind       u8   see [`Kind`]
//! 6   flags      u16  reserved, 0
//! 8   request_id u64  chosen by the requester, echoed in the reply
//! 16  body_len   u32  at most [`MAX_BODY`]
//! 20  body_crc   u32  CRC32C of the body
//! 24  header_crc u32  CRC32C of bytes 0..24
//! 28  body
//! ```
//! All integers are little-endian. A receiver checks magic, version, length and both
//! checksums before it looks at the body; any failure means the connection is not speaking
//! Tessera (or is corrupt) and must be dropped.

use bytes::{Buf, Bytes, BytesMut};

use crate::DecodeError;

/// The first four bytes of every frame: `TSRA`. Anything else is not Tessera.
pub const MAGIC: u32 = u32::from_le_bytes(*b"TSRA");
/// The one protocol version spoken; a frame of another is refused.
pub const VERSION: u8 = 1;
/// Bytes of the fixed header before every body.
pub const HEADER_LEN: usize = 28;
/// Largest body a frame may carry: a 4 MiB write plus its request header, with room to spare.
pub const MAX_BODY: u32 = 8 << 20;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Data plane: [`crate::data::Request`] bodies, one kind per operation. This one:
    /// [`crate::data::Op::Write`].
    Write = 1,
    /// Data plane: [`crate::data::Op::Read`].
    Read = 2,
    /// Data plane: [`crate::data::Op::WriteZeroes`].
    WriteZeroes = 3,
    /// Data plane: [`crate::data::Op::Discard`].
    Discard = 4,
    /// Node to node, copying a replica ([`crate::data::Request`] bodies too): the chunks of
    /// a group ([`crate::data::Op::CatchUpList`]).
    CatchUpList = 5,
    /// Node to node: a chunk's block checksums ([`crate::data::Op::CatchUpChecksums`]).
    CatchUpChecksums = 6,
    /// Node to node: a chunk's raw data ([`crate::data::Op::CatchUpRead`]).
    CatchUpRead = 7,
    /// Data plane: a new writer fences a group ([`crate::data::Op::Fence`]).
    Fence = 8,
    /// Data plane: which blocks of a range hold data ([`crate::data::Op::BlockStatus`]).
    BlockStatus = 9,
    /// Data plane: a client presents a signed capability ([`crate::capability::Signed`]
    /// bytes) for a volume's I/O on this connection; answered with a [`crate::data::Reply`].
    Capability = 10,
    /// Data plane reply to any of the above: a [`crate::data::Reply`].
    Reply = 0x80,
    /// Node to node: a batch of Raft messages of many groups ([`crate::data::RaftBatch`]).
    RaftBatch = 16,
    /// Manager to manager: raft-rs messages of the managers' own Raft group, each a `u32`
    /// little-endian length then its protobuf encoding. Never answered.
    ManagerRaft = 17,
    /// Control plane request: a JSON body.
    Rpc = 32,
    /// Control plane reply: a JSON body.
    RpcReply = 0xA0,
}

impl TryFrom<u8> for Kind {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => Kind::Write,
            2 => Kind::Read,
            3 => Kind::WriteZeroes,
            4 => Kind::Discard,
            5 => Kind::CatchUpList,
            6 => Kind::CatchUpChecksums,
            7 => Kind::CatchUpRead,
            8 => Kind::Fence,
            9 => Kind::BlockStatus,
            10 => Kind::Capability,
            0x80 => Kind::Reply,
            16 => Kind::RaftBatch,
            17 => Kind::ManagerRaft,
            32 => Kind::Rpc,
            0xA0 => Kind::RpcReply,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// One frame. A decoded frame's body is a zero-copy slice of the receive buffer. A frame
/// being sent may carry its body in two parts, `body` then `tail`, so that a payload (the
/// data of a write or of a read reply) goes out without being copied behind its small
/// header; on the wire the two are one body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the body holds.
    pub kind: Kind,
    /// Chosen by the requester, unique among its requests in flight on the connection;
    /// the reply carries the same id, so replies may come back in any order.
    pub request_id: u64,
    /// The body (its first part, when sent in two).
    pub body: Bytes,
    /// The rest of the body (empty for every decoded frame).
    pub tail: Bytes,
}

impl Frame {
    /// A frame whose body is in one part.
    pub fn new(kind: Kind, request_id: u64, body: Bytes) -> Self {
        Frame::with_tail(kind, request_id, body, Bytes::new())
    }

    /// A frame whose body is `body` followed by `tail`.
    pub fn with_tail(kind: Kind, request_id: u64, body: Bytes, tail: Bytes) -> Self {
        Frame {
            kind,
            request_id,
            body,
            tail,
        }
    }

    /// Length of the body on the wire.
    pub fn body_len(&self) -> usize {
        self.body.len() + self.tail.len()
    }

    /// The header to send before `body` and `tail` (send all three as they are, so the
    /// body is never copied).
    pub fn header(&self) -> [u8; HEADER_LEN] {
        encode_header_parts(self.kind, self.request_id, &[&self.body, &self.tail])
    }

    /// Header and body in one buffer (one copy of the body: fine for small frames).
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(HEADER_LEN + self.body_len());
        out.extend_from_slice(&self.header());
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&self.tail);
        out.freeze()
    }
}

/// Encodes a header for `body`. Panics only if the caller builds a body over [`MAX_BODY`],
/// which is a programming error on the sending side, never input from the network.
pub fn encode_header(kind: Kind, request_id: u64, body: &[u8]) -> [u8; HEADER_LEN] {
    encode_header_parts(kind, request_id, &[body])
}

/// Encodes a header for a body sent as consecutive `parts`.
pub fn encode_header_parts(kind: Kind, request_id: u64, parts: &[&[u8]]) -> [u8; HEADER_LEN] {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    assert!(len <= MAX_BODY as usize, "frame body over MAX_BODY");
    let crc = parts.iter().fold(0, |crc, p| crc32c::crc32c_append(crc, p));
    let mut h = [0u8; HEADER_LEN];
    h[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4] = VERSION;
    h[5] = kind as u8;
    h[8..16].copy_from_slice(&request_id.to_le_bytes());
    h[16..20].copy_from_slice(&(len as u32).to_le_bytes());
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    let hc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&hc.to_le_bytes());
    h
}

/// A frame's header, validated: what the body must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame's kind.
    pub kind: Kind,
    /// The request it belongs to.
    pub request_id: u64,
    /// Body bytes to follow (at most [`MAX_BODY`]).
    pub body_len: u32,
    body_crc: u32,
}

/// The header at the front of `buf`, validated, once it has arrived (`Ok(None)` before).
/// Nothing is taken off `buf` and nothing is allocated: a reader may decide whether to
/// buffer the body (its memory) before it reads on.
pub fn peek_header(buf: &[u8]) -> Result<Option<Header>, DecodeError> {
    // Check the magic as soon as it has arrived, so a peer speaking another protocol is
    // refused at once rather than left waiting for a header that never completes.
    let have = buf.len().min(4);
    if buf[..have] != MAGIC.to_le_bytes()[..have] {
        let mut m = [0u8; 4];
        m[..have].copy_from_slice(&buf[..have]);
        return Err(DecodeError::BadMagic(u32::from_le_bytes(m)));
    }
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let h = &buf[..HEADER_LEN];
    let stored_hc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if crc32c::crc32c(&h[0..24]) != stored_hc {
        return Err(DecodeError::HeaderChecksum);
    }
    if h[4] != VERSION {
        return Err(DecodeError::BadVersion(h[4]));
    }
    let kind = Kind::try_from(h[5])?;
    let mut id = [0u8; 8];
    id.copy_from_slice(&h[8..16]);
    let body_len = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
    if body_len > MAX_BODY {
        return Err(DecodeError::TooLarge {
            len: body_len as u64,
            max: MAX_BODY as u64,
        });
    }
    Ok(Some(Header {
        kind,
        request_id: u64::from_le_bytes(id),
        body_len,
        body_crc: u32::from_le_bytes([h[20], h[21], h[22], h[23]]),
    }))
}

/// Takes one whole frame off the front of `buf`, if one is there.
///
/// `Ok(None)` means more bytes are needed (room for the rest of the frame is then reserved
/// in `buf`). An error means the stream is unusable: the caller drops the connection. The
/// header is validated as soon as it has arrived, so an oversized length is refused before
/// any of its body is buffered.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
    let Some(h) = peek_header(buf)? else {
        return Ok(None);
    };
    let total = HEADER_LEN + h.body_len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let body = buf.split_to(h.body_len as usize).freeze();
    if crc32c::crc32c(&body) != h.body_crc {
        return Err(DecodeError::BodyChecksum);
    }
    Ok(Some(Frame::new(h.kind, h.request_id, body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Frame {
        Frame::new(Kind::Write, 42, Bytes::from_static(b"hello tessera"))
    }

    #[test]
    fn round_trips_byte_by_byte() {
        let wire = sample().to_bytes();
        let mut buf = BytesMut::new();
        for (i, b) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = decode(&mut buf).unwrap();
            if i + 1 < wire.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(got.unwrap(), sample());
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn rejects_every_single_bit_flip() {
        let wire = sample().to_bytes();
        for bit in 0..wire.len() * 8 {
            let mut bad = BytesMut::from(&wire[..]);
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&mut bad).is_err(), "bit {bit} flip accepted");
        }
    }

    #[test]
    fn refuses_oversized_length_before_buffering_body() {
        let mut h = encode_header(Kind::Write, 1, b"");
        h[16..20].copy_from_slice(&(MAX_BODY + 1).to_le_bytes());
        let hc = crc32c::crc32c(&h[0..24]);
        h[24..28].copy_from_slice(&hc.to_le_bytes());
        let mut buf = BytesMut::from(&h[..]);
        assert!(matches!(
            decode(&mut buf),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_body_sent_in_two_parts_decodes_as_one() {
        let f = Frame::with_tail(
            Kind::Reply,
            7,
            Bytes::from_static(b"\x00"),
            Bytes::from_static(b"read data"),
        );
        let mut buf = BytesMut::from(&f.to_bytes()[..]);
        let got = decode(&mut buf).unwrap().unwrap();
        assert_eq!(&got.body[..], b"\x00read data");
        assert!(got.tail.is_empty());
    }

    #[test]
    fn garbage_is_bad_magic() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
        assert!(matches!(decode(&mut buf), Err(DecodeError::BadMagic(_))));
    }

    const KINDS: [Kind; 15] = [
        Kind::Capability,
        Kind::Write,
        Kind::Read,
        Kind::WriteZeroes,
        Kind::Discard,
        Kind::CatchUpList,
        Kind::CatchUpChecksums,
        Kind::CatchUpRead,
        Kind::Fence,
        Kind::BlockStatus,
        Kind::Reply,
        Kind::RaftBatch,
        Kind::ManagerRaft,
        Kind::Rpc,
        Kind::RpcReply,
    ];

    /// Every kind survives the wire, with its request id and body; every other kind byte
    /// is refused.
    #[test]
    fn frames_of_every_kind_round_trip() {
        for (i, kind) in KINDS.into_iter().enumerate() {
            assert_eq!(Kind::try_from(kind as u8), Ok(kind));
            let f = Frame::new(kind, u64::MAX - i as u64, Bytes::from(vec![i as u8; i * 7]));
            let mut buf = BytesMut::from(&f.to_bytes()[..]);
            assert_eq!(decode(&mut buf).unwrap(), Some(f));
        }
        for b in 0..=u8::MAX {
            if !KINDS.iter().any(|k| *k as u8 == b) {
                assert_eq!(Kind::try_from(b), Err(DecodeError::UnknownKind(b)));
            }
        }
    }

    /// Two frames back to back come off the stream one at a time, the second intact.
    #[test]
    fn frames_back_to_back_decode_in_order() {
        let second = Frame::new(Kind::Rpc, 43, Bytes::from_static(b"{}"));
        let mut buf = BytesMut::from(&sample().to_bytes()[..]);
        buf.extend_from_slice(&second.to_bytes());
        assert_eq!(decode(&mut buf).unwrap(), Some(sample()));
        assert_eq!(decode(&mut buf).unwrap(), Some(second));
        assert!(buf.is_empty());
    }

    #[test]
    fn another_version_is_refused() {
        let mut h = encode_header(Kind::Rpc, 1, b"");
        h[4] = VERSION + 1;
        let hc = crc32c::crc32c(&h[0..24]);
        h[24..28].copy_from_slice(&hc.to_le_bytes());
        let mut buf = BytesMut::from(&h[..]);
        assert_eq!(decode(&mut buf), Err(DecodeError::BadVersion(VERSION + 1)));
    }
}

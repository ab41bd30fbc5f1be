//! The body of a [`crate::frame::Kind::ManagerRaft`] frame: the managers' own Raft messages,
//! one manager to another, never answered. Messages travel as their protobuf encoding
//! (raft-rs `eraftpb::Message`), opaque here: this module frames them, the manager parses
//! them.
//!
//! A body is either a batch or one part of a message too large for a frame (little-endian):
//!
//! ```text
//! batch: count × (len u32 | len bytes of a message)
//! part:  PART u32 (= u32::MAX) | index u32 | count u32 | a slice of one message
//! ```
//!
//! No message is [`PART`] bytes long, so the first word tells the two apart (a body shorter
//! than a part header is a batch). A large message (a snapshot of the managers' state) goes
//! alone, in `count` consecutive parts of [`PART_BYTES`], index 0 first; the receiver joins
//! the parts of one connection ([`Parts`]), up to [`MAX_MESSAGE`] bytes.

use bytes::{BufMut, Bytes, BytesMut};

use crate::DecodeError;
use crate::frame::MAX_BODY;

/// The length marking a body as one part of a message sent in parts.
pub const PART: u32 = u32::MAX;
/// Bytes of a message per part; a message longer than this, less its length word, goes in
/// parts.
pub const PART_BYTES: usize = 4 << 20;
/// The largest message sent (and accepted) in parts.
pub const MAX_MESSAGE: usize = 1 << 30;
const PART_HEADER: usize = 12;

/// The bodies carrying `msgs` (encoded messages), in order: batches of the small ones,
/// each under the frame limit, and the parts of each large one. A message over
/// [`MAX_MESSAGE`] cannot be sent: it is returned in the error list, the rest still go.
pub fn encode(msgs: &[Bytes]) -> (Vec<Bytes>, Vec<usize>) {
    let mut out = Vec::new();
    let mut too_large = Vec::new();
    let mut batch = BytesMut::new();
    for (i, m) in msgs.iter().enumerate() {
        if m.len() + 4 <= PART_BYTES {
            if batch.len() + 4 + m.len() > MAX_BODY as usize {
                out.push(batch.split().freeze());
            }
            batch.put_u32_le(m.len() as u32);
            batch.put_slice(m);
            continue;
        }
        if m.len() > MAX_MESSAGE {
            too_large.push(i);
            continue;
        }
        if !batch.is_empty() {
            out.push(batch.split().freeze());
        }
        let count = m.len().div_ceil(PART_BYTES) as u32;
        for (index, part) in m.chunks(PART_BYTES).enumerate() {
            let mut body = BytesMut::with_capacity(PART_HEADER + part.len());
            body.put_u32_le(PART);
            body.put_u32_le(index as u32);
            body.put_u32_le(count);
            body.put_slice(part);
            out.push(body.freeze());
        }
    }
    if !batch.is_empty() {
        out.push(batch.freeze());
    }
    (out, too_large)
}

/// Parts of a message received so far on one connection.
#[derive(Debug, Default)]
pub struct Parts {
    buf: Vec<u8>,
    next: u32,
    count: u32,
}

/// What one body held.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// The encoded messages of a batch, borrowed from the body.
    Batch(Vec<&'a [u8]>),
    /// A part of a large message; more parts follow.
    Partial,
    /// The last part of a large message: the whole encoded message.
    Whole(Vec<u8>),
}

/// Decodes an untrusted body: a batch, or a part of a large message, joined in `parts`
/// with the earlier parts of the same connection.
pub fn decode<'a>(body: &'a [u8], parts: &mut Parts) -> Result<Received<'a>, DecodeError> {
    let Some((head, rest)) = body.split_first_chunk::<PART_HEADER>() else {
        return decode_batch(body).map(Received::Batch);
    };
    let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    if word(0) != PART {
        return decode_batch(body).map(Received::Batch);
    }
    let (index, count) = (word(4), word(8));
    if count as usize > MAX_MESSAGE / PART_BYTES + 1 || count == 0 {
        return Err(DecodeError::Invalid(format!(
            "raft message in {count} parts"
        )));
    }
    if index == 0 {
        *parts = Parts {
            buf: Vec::new(),
            next: 0,
            count,
        };
    }
    if index != parts.next || count != parts.count {
        return Err(DecodeError::Invalid(format!(
            "raft message part {index} of {count}, expected {} of {}",
            parts.next, parts.count
        )));
    }
    if parts.buf.len() + rest.len() > MAX_MESSAGE {
        return Err(DecodeError::Invalid(format!(
            "raft message over {MAX_MESSAGE} bytes"
        )));
    }
    parts.buf.extend_from_slice(rest);
    parts.next += 1;
    if parts.next < count {
        return Ok(Received::Partial);
    }
    Ok(Received::Whole(std::mem::take(parts).buf))
}

/// Decodes an untrusted batch body into its messages' encodings.
pub fn decode_batch(mut body: &[u8]) -> Result<Vec<&[u8]>, DecodeError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let Some((len, rest)) = body.split_first_chunk::<4>() else {
            return Err(DecodeError::Invalid("raft batch: truncated length".into()));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return Err(DecodeError::Invalid(format!(
                "raft batch: message of {len} bytes, {} left",
                rest.len()
            )));
        }
        let (msg, rest) = rest.split_at(len);
        out.push(msg);
        body = rest;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(byte: u8, len: usize) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    /// Every message comes back once, in order, whatever mix of batches and parts.
    fn round_trip(msgs: &[Bytes]) -> Vec<Bytes> {
        let (bodies, too_large) = encode(msgs);
        assert!(too_large.is_empty());
        let mut parts = Parts::default();
        let mut got = Vec::new();
        for b in &bodies {
            assert!(b.len() <= MAX_BODY as usize, "a body of {} bytes", b.len());
            match decode(b, &mut parts).expect("decode") {
                Received::Batch(ms) => got.extend(ms.iter().map(|m| Bytes::copy_from_slice(m))),
                Received::Partial => {}
                Received::Whole(m) => got.push(Bytes::from(m)),
            }
        }
        got
    }

    #[test]
    fn batches_round_trip_and_garbage_is_refused() {
        let msgs = vec![msg(1, 30), msg(2, 0), msg(3, 7)];
        assert_eq!(round_trip(&msgs), msgs);
        let (bodies, _) = encode(&msgs);
        assert_eq!(bodies.len(), 1);
        let body = &bodies[0];
        assert!(decode_batch(&body[..body.len() - 1]).is_err());
        assert!(decode_batch(&[1, 2]).is_err());
        assert_eq!(decode_batch(&[]).expect("empty"), Vec::<&[u8]>::new());
    }

    #[test]
    fn a_message_larger_than_a_part_goes_alone_in_parts() {
        let msgs = vec![msg(1, 10), msg(2, 3 * PART_BYTES + 17), msg(3, 10)];
        let (bodies, _) = encode(&msgs);
        assert_eq!(bodies.len(), 1 + 4 + 1);
        assert_eq!(round_trip(&msgs), msgs);
        // Parts out of order, or a part count out of range, are refused.
        assert!(decode(&bodies[2], &mut Parts::default()).is_err());
        let mut forged = bodies[1].to_vec();
        forged[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&forged, &mut Parts::default()).is_err());
    }

    /// Small messages that together outgrow a frame start a new batch.
    #[test]
    fn batches_stay_under_the_frame_limit() {
        let msgs: Vec<Bytes> = (0..5).map(|i| msg(i, PART_BYTES - 4)).collect();
        let (bodies, _) = encode(&msgs);
        assert_eq!(bodies.len(), 3);
        assert_eq!(round_trip(&msgs), msgs);
    }
}

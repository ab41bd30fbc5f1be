//! `frame`: the frame decoder over an arbitrary byte stream.
//!
//! Input: one mode byte, then the stream. Mode bit 0 repairs both checksums of every
//! frame-shaped stretch of the stream before decoding ([`fix_checksums`]), so that the
//! fuzzer reaches what lies behind them (kinds, versions, lengths) instead of stopping
//! at a CRC it cannot forge; the other bits choose the size of the pieces the stream
//! arrives in (1 to 127 bytes).
//!
//! Checked: decoding never panics; the stream decodes to the same frames (and the same
//! kind of error) whole and in pieces; every decoded frame re-encodes to the bytes it
//! came from (but for the reserved flags, which the decoder ignores and an encoder writes
//! as zero) and decodes back to itself.

use bytes::BytesMut;
use tessera_proto::DecodeError;
use tessera_proto::frame::{self, Frame, HEADER_LEN};

/// Runs the target on one input.
pub fn run(data: &[u8]) {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let mut stream = stream.to_vec();
    if mode & 1 != 0 {
        fix_checksums(&mut stream);
    }
    let piece = usize::from(mode >> 1).max(1);
    let whole = decode_stream(&stream, stream.len().max(1));
    let pieces = decode_stream(&stream, piece);
    assert_eq!(
        whole.frames, pieces.frames,
        "whole and in pieces of {piece}"
    );
    assert_eq!(
        whole.error.as_ref().map(std::mem::discriminant),
        pieces.error.as_ref().map(std::mem::discriminant),
        "whole: {:?}, in pieces of {piece}: {:?}",
        whole.error,
        pieces.error
    );

    let mut at = 0;
    for f in &whole.frames {
        let wire = f.to_bytes();
        let original = &stream[at..at + wire.len()];
        assert_eq!(wire[..6], original[..6], "magic, version, kind");
        assert_eq!(
            wire[8..24],
            original[8..24],
            "request id, length, body checksum"
        );
        assert_eq!(wire[HEADER_LEN..], original[HEADER_LEN..], "body");
        let again = frame::decode(&mut BytesMut::from(&wire[..]));
        assert_eq!(again.as_ref(), Ok(&Some(f.clone())), "re-encoded frame");
        at += wire.len();
    }
}

/// What a stream decoded to: its frames in order, then the error that ended it, if any.
struct Decoded {
    frames: Vec<Frame>,
    error: Option<DecodeError>,
}

/// Feeds `stream` to the decoder `piece` bytes at a time, as a connection would.
fn decode_stream(stream: &[u8], piece: usize) -> Decoded {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut chunks = stream.chunks(piece);
    loop {
        match frame::decode(&mut buf) {
            Ok(Some(f)) => {
                assert!(f.tail.is_empty(), "a decoded frame has no tail");
                frames.push(f);
            }
            Ok(None) => match chunks.next() {
                Some(c) => buf.extend_from_slice(c),
                None => {
                    return Decoded {
                        frames,
                        error: None,
                    };
                }
            },
            Err(e) => {
                return Decoded {
                    frames,
                    error: Some(e),
                };
            }
        }
    }
}

/// Writes the right body and header checksums into every frame-shaped stretch: walks the
/// stream header by header, trusting each header's length (cut to what is left).
pub fn fix_checksums(stream: &mut [u8]) {
    let mut at = 0;
    while stream.len() - at >= HEADER_LEN {
        let h = at;
        let len = u32::from_le_bytes([
            stream[h + 16],
            stream[h + 17],
            stream[h + 18],
            stream[h + 19],
        ]);
        let body_end = (h + HEADER_LEN)
            .saturating_add(len as usize)
            .min(stream.len());
        let body_crc = crc32c::crc32c(&stream[h + HEADER_LEN..body_end]);
        stream[h + 20..h + 24].copy_from_slice(&body_crc.to_le_bytes());
        let header_crc = crc32c::crc32c(&stream[h..h + 24]);
        stream[h + 24..h + 28].copy_from_slice(&header_crc.to_le_bytes());
        at = body_end;
    }
}

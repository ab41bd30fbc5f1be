//! The JSON encoding of control-plane frame bodies.
//!
//! Owns the one place control messages become bytes and back; decoding returns `Result`
//! and never panics, whatever the body holds.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::DecodeError;

/// Encodes a control message as a frame body.
pub fn encode<T: Serialize>(msg: &T) -> Bytes {
    // Serializing these plain data types to JSON cannot fail.
    Bytes::from(serde_json::to_vec(msg).unwrap_or_default())
}

/// Decodes a control message from an untrusted frame body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(body).map_err(|e| DecodeError::Invalid(e.to_string()))
}

/// Asserts the promises every control message keeps: it decodes to itself; every
/// truncation of it is an error; and no corrupted byte makes the decoder panic (it may
/// decode to another value: the frame's checksum, not JSON, catches corruption).
#[cfg(test)]
pub(crate) fn assert_round_trips<T>(msg: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let body = encode(msg);
    assert_eq!(decode::<T>(&body).as_ref(), Ok(msg));
    for n in 0..body.len() {
        assert!(
            decode::<T>(&body[..n]).is_err(),
            "{n} of {} bytes decoded",
            body.len()
        );
    }
    for i in 0..body.len() {
        for b in [0, b'"', b'}', b'9', 0xff] {
            let mut bad = body.to_vec();
            bad[i] = b;
            let _ = decode::<T>(&bad);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{ManagerRequest, StorageReply};

    #[test]
    fn bodies_that_are_not_a_message_are_errors() {
        let nested = "[".repeat(100_000);
        for body in [
            &b""[..],
            b"{nonsense",
            b"\xff\xfe",
            b"null",
            b"42",
            br#"{"NoSuchRequest":{}}"#,
            br#"{"CreateVolume":{"name":"v"}}"#,
            br#"{"CreateVolume":{"name":"v","size":-1,"chunk_size":null}}"#,
            nested.as_bytes(),
        ] {
            assert!(decode::<ManagerRequest>(body).is_err(), "{body:?}");
        }
        // A message of the other conversation is not mistaken for one of this.
        assert!(decode::<StorageReply>(br#""ListVolumes""#).is_err());
    }
}

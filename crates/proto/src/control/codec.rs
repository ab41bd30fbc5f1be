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

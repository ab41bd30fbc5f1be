//! A storage node's identity file, `node.json` in its data directory: the id the manager
//! gave the node when it first registered, so that it comes back as the same node.
//!
//! ```text
//! {"node_id":7}
//! ```
//!
//! JSON, as written since the first version; unknown fields are ignored on reading. Read
//! back from disk, so untrusted: [`NodeIdentity::decode`] returns an error, never panics.

use serde::{Deserialize, Serialize};

use crate::DecodeError;

/// Who a storage node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The id the manager gave the node.
    pub node_id: u64,
}

impl NodeIdentity {
    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        format!("{{\"node_id\":{}}}", self.node_id).into_bytes()
    }

    /// Reads the file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<NodeIdentity, DecodeError> {
        serde_json::from_slice(bytes)
            .map_err(|e| DecodeError::Invalid(format!("node identity: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_in_the_layout_written_so_far() {
        for node_id in [0, 7, u64::MAX] {
            let id = NodeIdentity { node_id };
            assert_eq!(NodeIdentity::decode(&id.encode()), Ok(id));
            assert_eq!(id.encode(), serde_json::to_vec(&id).unwrap());
        }
        assert_eq!(
            NodeIdentity::decode(br#"{ "node_id": 12 }"#),
            Ok(NodeIdentity { node_id: 12 })
        );
    }

    #[test]
    fn a_damaged_identity_file_is_an_error() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"node_id\":-1}",
            b"{\"node\":3}",
            b"\xff\xfe",
        ] {
            assert!(NodeIdentity::decode(bad).is_err(), "{bad:?}");
        }
    }
}

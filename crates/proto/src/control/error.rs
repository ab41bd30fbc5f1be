//! How a control-plane request fails, in terms of what the caller can do about it.
//!
//! Crosses the wire as the `Err` side of every reply body, so its variants are part of the
//! protocol: add, never rename.

use serde::{Deserialize, Serialize};

/// A control-plane failure, named after what the caller can do about it. Messages name the
/// thing and the value: `volume "db1" not found`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControlError {
    /// What the request names does not exist: a volume, a node the manager does not know
    /// (a node then registers again), a group the asked node does not host.
    #[error("{0}")]
    NotFound(String),
    /// A volume of that name exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is malformed or asks for what is never allowed (a bad name or size, a
    /// shrink, a chunk past the volume's end): the same request fails again.
    #[error("{0}")]
    Invalid(String),
    /// Retry later: e.g. not enough racks to place a group yet.
    #[error("{0}")]
    Unavailable(String),
    /// Another client holds what was asked for (a volume's read-write attachment), or the
    /// caller's attachment was ended: the message names the holder.
    #[error("{0}")]
    Conflict(String),
    /// The server failed in a way the caller cannot fix (an unexpected answer, a handler
    /// that failed, an answer over the frame limit).
    #[error("{0}")]
    Internal(String),
    /// The caller's certificate does not allow the request (a volume user deleting a
    /// volume, a client sending what only a manager may): refused, and counted.
    #[error("not allowed: {0}")]
    Unauthorized(String),
    /// This manager is not the leader of the managers' Raft group: ask the leader, whose
    /// client address is given when known.
    #[error("not the manager leader (leader: {})", .0.as_deref().unwrap_or("unknown"))]
    NotLeader(Option<String>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::codec::{assert_round_trips, encode};

    fn all() -> Vec<ControlError> {
        vec![
            ControlError::NotFound("volume \"db1\" not found".into()),
            ControlError::AlreadyExists("volume \"db1\" already exists".into()),
            ControlError::Invalid("bad".into()),
            ControlError::Unavailable("need 3 racks, have 2".into()),
            ControlError::Conflict("held by c".into()),
            ControlError::Internal("oops".into()),
            ControlError::NotLeader(Some("m2:7400".into())),
            ControlError::NotLeader(None),
        ]
    }

    #[test]
    fn every_error_round_trips() {
        for e in all() {
            assert_round_trips(&e);
        }
    }

    /// Variants are named on the wire: renaming one breaks every older peer.
    #[test]
    fn errors_keep_their_wire_names() {
        let wire: Vec<String> = all()
            .iter()
            .map(|e| String::from_utf8(encode(e).to_vec()).unwrap())
            .collect();
        assert_eq!(
            wire,
            [
                r#"{"NotFound":"volume \"db1\" not found"}"#,
                r#"{"AlreadyExists":"volume \"db1\" already exists"}"#,
                r#"{"Invalid":"bad"}"#,
                r#"{"Unavailable":"need 3 racks, have 2"}"#,
                r#"{"Conflict":"held by c"}"#,
                r#"{"Internal":"oops"}"#,
                r#"{"NotLeader":"m2:7400"}"#,
                r#"{"NotLeader":null}"#,
            ]
        );
    }
}

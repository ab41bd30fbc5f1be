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
    /// This manager is not the leader of the managers' Raft group: ask the leader, whose
    /// client address is given when known.
    #[error("not the manager leader (leader: {})", .0.as_deref().unwrap_or("unknown"))]
    NotLeader(Option<String>),
}

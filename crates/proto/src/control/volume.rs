//! A volume as the managers report it: its identity, its geometry and who writes it.
//!
//! Owns the records only; the rules (valid names, sizes, chunk sizes) are the manager's.

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::ManagerRequest;

/// Default chunk size of a volume: 64 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;

/// A volume, as the managers report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    /// Its id, given by the manager at creation: every data-plane request names the
    /// volume by it ([`crate::data::ChunkAddr::volume`]).
    pub id: u64,
    /// Its name (unique).
    pub name: String,
    /// Its size in bytes (a multiple of [`crate::BLOCK_SIZE`]).
    pub size: u64,
    /// Its chunk size in bytes: each chunk is stored in one replica group.
    pub chunk_size: u64,
    /// Chunks mapped to a group so far (written or provisioned); the others read as
    /// zeroes and take no space.
    pub mapped_chunks: u64,
    /// When it was created, in Unix seconds.
    pub created_unix: u64,
    /// The read-write attachment, if a client holds one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachment: Option<AttachmentInfo>,
}

/// Who writes a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentInfo {
    /// The holder, as named in its [`ManagerRequest::AttachVolume`].
    pub client: String,
    /// The holder's writer epoch.
    pub epoch: u64,
    /// When it attached, in Unix seconds.
    pub since_unix: u64,
    /// Time left on the holder's lease as the manager leader sees it (`None`: this leader
    /// has not heard from the holder yet, so it counts a whole lease from its election).
    #[serde(default)]
    pub lease_left_ms: Option<u64>,
}

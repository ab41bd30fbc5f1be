//! A volume as the managers report it: its identity, its geometry and who writes it.
//!
//! Owns the records only; the rules (valid names, sizes, chunk sizes) are the manager's.

use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::ManagerRequest;
use super::{ParentInfo, ReclaimInfo, RestoreInfo, SnapshotInfo};

/// Default chunk size of a volume: 64 MiB.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;

/// A volume, as the managers report it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// The volume's snapshot sequence: every write carries it ([`crate::data::Request::seq`]);
    /// taking a snapshot records the current one and moves to the next. 0 from managers
    /// before snapshots (read as 1).
    #[serde(default)]
    pub seq: u64,
    /// The snapshot this volume was cloned from, until it is flattened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<ParentInfo>,
    /// Its snapshots, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotInfo>,
    /// Deleted snapshots whose space is still being reclaimed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reclaims: Vec<ReclaimInfo>,
    /// Created from a backup and still being filled from the store (attachable only once
    /// it is filled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<Box<RestoreInfo>>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::codec::{assert_round_trips, decode, encode};

    fn volume(attachment: Option<AttachmentInfo>) -> VolumeInfo {
        VolumeInfo {
            id: 1,
            name: "db1".into(),
            size: 4 << 30,
            chunk_size: DEFAULT_CHUNK_SIZE,
            mapped_chunks: 7,
            created_unix: 1_700_000_000,
            attachment,
            seq: 0,
            parent: None,
            snapshots: Vec::new(),
            reclaims: Vec::new(),
            restore: None,
        }
    }

    fn attachment(lease_left_ms: Option<u64>) -> AttachmentInfo {
        AttachmentInfo {
            client: "nbd on h (pid 7, 0000beef)".into(),
            epoch: 2,
            since_unix: 1_700_000_100,
            lease_left_ms,
        }
    }

    #[test]
    fn volumes_round_trip() {
        assert_round_trips(&volume(None));
        assert_round_trips(&volume(Some(attachment(Some(9_000)))));
        assert_round_trips(&volume(Some(attachment(None))));
    }

    /// An unattached volume is sent without `attachment`, as before attachments existed;
    /// an attachment from a manager from before leases were reported has no lease left.
    #[test]
    fn fields_added_later_are_optional_on_the_wire() {
        let wire = encode(&volume(None));
        assert!(!String::from_utf8_lossy(&wire).contains("attachment"));
        let old = br#"{"id":1,"name":"db1","size":4096,"chunk_size":4096,"mapped_chunks":0,
            "created_unix":0,"attachment":{"client":"c","epoch":2,"since_unix":6}}"#;
        let got: VolumeInfo = decode(old).unwrap();
        assert_eq!(got.attachment.map(|a| a.lease_left_ms), Some(None));
    }
}

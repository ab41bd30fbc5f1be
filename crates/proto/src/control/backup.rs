//! Backups in object storage, as the control plane speaks of them: the stores the managers
//! know ([`StoreSpec`], [`StoreInfo`]), a backup's record ([`BackupInfo`]), a restore's
//! progress ([`RestoreInfo`]), and what a manager asks the leader of a replica group to
//! move between the group and a store ([`BackupChunkRequest`], [`HydrateChunkRequest`]).
//!
//! Owns these records only. The objects' formats and the store clients are the
//! `tessera-backup` crate's; when and where data moves is the manager's.
//!
//! A volume's chunk is backed up as *regions* of [`REGION_BYTES`] (the chunk's bytes
//! `region * REGION_BYTES ..`): one object per region that holds any non-zero block, named
//! by the BLAKE3 of its content ([`Hash`]), so identical regions are stored once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes of a region: the unit of upload, of hydration and of deduplication.
pub const REGION_BYTES: u64 = 1 << 20;
/// Blocks (4 KiB) of a region.
pub const REGION_BLOCKS: u64 = REGION_BYTES / 4096;
/// Regions one [`BackupChunkRequest`] or [`HydrateChunkRequest`] may name.
pub const MAX_CHUNK_REGIONS: usize = 4096;

/// A BLAKE3 digest, written as 64 lowercase hex digits (in JSON and in object keys).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        crate::hex::encode(&self.0)
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_hex()[..16])
    }
}

/// Not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a BLAKE3 hash (64 hex digits): {0:?}")]
pub struct BadHash(pub String);

impl FromStr for Hash {
    type Err = BadHash;
    fn from_str(s: &str) -> Result<Hash, BadHash> {
        let bad = || BadHash(s.chars().take(80).collect());
        let bytes = crate::hex::decode(s).ok_or_else(bad)?;
        Ok(Hash(bytes.try_into().map_err(|_| bad())?))
    }
}

impl Serialize for Hash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Hash, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A credential: carried like a string, never printed.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// An object store as `manager.toml` names it: where its objects live and in which zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreSpec {
    /// `[a-z0-9_-]`, at most 63 characters.
    pub name: String,
    /// The availability zone the store is in (a restore prefers a store of its own zone).
    #[serde(default)]
    pub zone: String,
    /// Where its objects live.
    pub kind: StoreKind,
}

/// The kind of store and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    /// A local directory (the embedded default; on several hosts only if it is shared).
    /// Created if missing; objects are written atomically and fsynced.
    Dir {
        /// The directory (absolute).
        path: String,
    },
    /// An S3-compatible service. Path-style requests; never relies on conditional writes.
    S3 {
        /// `http(s)://host:port` (empty: AWS's endpoint for `region`).
        #[serde(default)]
        endpoint: String,
        /// The bucket (must exist).
        bucket: String,
        /// The region to sign for (empty: `us-east-1`).
        #[serde(default)]
        region: String,
        /// The credentials.
        access_key_id: String,
        /// The secret of `access_key_id`.
        secret_access_key: Secret,
        /// Key prefix inside the bucket ("" or ending without a slash: `prefix/objects/..`).
        #[serde(default)]
        prefix: String,
    },
}

/// A leader of a replica group uploads the regions of one chunk of a volume as of a
/// snapshot ([`crate::control::StorageRequest::BackupChunk`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupChunkRequest {
    /// The group (the request goes to its leader).
    pub group_id: u64,
    /// The volume's id.
    pub volume_id: u64,
    /// The chunk's index in the volume.
    pub chunk: u64,
    /// Bytes of the chunk inside the volume (the last chunk may be short).
    pub chunk_bytes: u64,
    /// The snapshot's sequence: the chunk is read as of it.
    pub seq: u64,
    /// The sequence of the snapshot the last backup in this store was taken of, still
    /// kept (0: none, a full backup). Only regions holding a block written by a sequence
    /// in `after + 1..=seq` are read and answered (see `ChunkStore::changed_blocks`); a
    /// chunk reading through to a parent is read whole.
    pub after: u64,
    /// The store to put the objects in.
    pub store: StoreSpec,
    /// Uploads in flight at once (at least 1).
    pub window: u32,
    /// Upload every object even where the store already has one by that name (a HEAD
    /// skips it otherwise): the manager asks it after its collector deleted objects.
    #[serde(default)]
    pub force: bool,
}

/// One region of a chunk as a backup saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRef {
    /// The region's index in its chunk.
    pub region: u32,
    /// Its object (`None`: every block of the region reads as zeroes; no object).
    pub object: Option<Hash>,
}

/// What a [`BackupChunkRequest`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkUpload {
    /// Every region read, ascending (a full backup: every region of the chunk).
    pub regions: Vec<RegionRef>,
    /// Bytes read from the group (whole regions).
    pub read_bytes: u64,
    /// Bytes put to the store (compressed objects), and how many objects.
    pub uploaded_bytes: u64,
    /// Objects put.
    pub uploaded_objects: u64,
    /// Objects the store already had (not uploaded again).
    pub present_objects: u64,
    /// Client reads of the chunk the leader served (since it started leading), the access
    /// record a restore's pre-warm orders chunks by (most read first).
    #[serde(default)]
    pub reads: u64,
}

/// A leader of a replica group fills blocks of a restored chunk from a store
/// ([`crate::control::StorageRequest::HydrateChunk`]): each region's object is fetched and
/// verified against its name, and its blocks are written through the group's log into the
/// chunk's base layer where no layer holds the block (a client's writes and trims win).
/// Answered once every entry is committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HydrateChunkRequest {
    /// The group (the request goes to its leader).
    pub group_id: u64,
    /// The restored volume's id.
    pub volume_id: u64,
    /// The chunk's index in the volume.
    pub chunk: u64,
    /// The store to fetch the objects from.
    pub store: StoreSpec,
    /// The regions to fill, each with `object: Some` (regions without are zeroes).
    pub regions: Vec<RegionRef>,
    /// Fetches in flight at once (at least 1).
    pub window: u32,
}

/// The parent volume id a restored chunk's link names (`GroupOp::Link` with this
/// `parent_volume`, and the backup's id as `parent_seq`): the chunk reads the blocks it does
/// not hold from the backup it was restored from, fetched by its group's leader (a lazy
/// restore), until the manager unlinks it once it is filled. No volume has this id.
pub const RESTORED_PARENT: u64 = u64::MAX;

/// Where a restored chunk's unfilled blocks are read from (the answer to
/// `ManagerRequest::RestoreSource`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSource {
    /// The backup restored.
    pub backup: u64,
    /// The chunk's segment (its region map, named by its BLAKE3); `None`: the backup holds
    /// nothing of this chunk (every block reads as zeroes).
    pub segment: Option<Hash>,
    /// The stores holding a ready copy of the backup, the one to read first (the
    /// restore's) first: a region object that cannot be fetched, or fails its hash, from
    /// one is fetched from the next.
    pub stores: Vec<StoreSpec>,
}

/// Where a backup is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupState {
    /// Objects are being put; not restorable yet. Resumed by whichever manager leads.
    Uploading,
    /// Its root is in the store and recorded: restorable.
    Ready,
    /// Given up (the error says why); its objects stay referenced until it is deleted.
    Failed,
}

/// A backup as the managers report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// The backup's id (never reused).
    pub id: u64,
    /// The volume it was taken of (its name then).
    pub volume: String,
    /// The snapshot it holds.
    pub snapshot: String,
    /// The store it is in, and that store's zone.
    pub store: String,
    /// The store's zone.
    #[serde(default)]
    pub zone: String,
    /// Uploading, ready or failed.
    pub state: BackupState,
    /// The backup this one is incremental to (only its changed regions were read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
    /// The backup this one was copied from (`backup copy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<u64>,
    /// The manifest's root object, once `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Hash>,
    /// The volume's size and chunk size when the snapshot was taken.
    pub size: u64,
    /// The volume's chunk size.
    pub chunk_size: u64,
    /// When it was asked for (Unix seconds).
    pub created_unix: u64,
    /// When it became ready or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix: Option<u64>,
    /// Chunks of the volume, and chunks whose segment is recorded.
    pub chunks_total: u64,
    /// Chunks whose segment is recorded.
    pub chunks_done: u64,
    /// Bytes read from the groups.
    #[serde(default)]
    pub read_bytes: u64,
    /// Bytes put to the store (compressed objects, segments and root).
    #[serde(default)]
    pub uploaded_bytes: u64,
    /// Objects put.
    #[serde(default)]
    pub uploaded_objects: u64,
    /// Objects found already stored (not put again).
    #[serde(default)]
    pub present_objects: u64,
    /// Regions holding data in the backup (objects it references, shared ones included).
    #[serde(default)]
    pub objects: u64,
    /// Why it failed, or the last error it is retrying after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A store as the managers report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    /// The store's name.
    pub name: String,
    /// Its zone.
    pub zone: String,
    /// `dir` or `s3`.
    pub kind: String,
    /// The directory, or `endpoint/bucket/prefix` (never a credential).
    pub location: String,
    /// Backups go here when none is named.
    pub default: bool,
    /// Backups recorded in it (any state).
    pub backups: u64,
    /// Objects referenced by its backups.
    pub objects: u64,
    /// Objects no backup references, waiting for the collector.
    pub garbage: u64,
}

/// A volume created from a backup, while its blocks are being filled from the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreInfo {
    /// The backup it is restored from.
    pub backup: u64,
    /// The store it is filled from.
    pub store: String,
    /// Chunks of the volume, and chunks filled.
    pub chunks_total: u64,
    /// Chunks filled.
    pub chunks_done: u64,
    /// Bytes of regions filled so far by this manager, and the rate it sees.
    #[serde(default)]
    pub hydrated_bytes: u64,
    /// Seconds left at that rate (absent: not known yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_secs: Option<u64>,
    /// Why the fill is not moving: the error of a chunk that has kept failing for a while
    /// (it is still retried, backed off). Absent while the fill goes well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Every chunk is linked to the backup: the volume can be attached and used; blocks not
    /// filled yet are read from the store by its groups. False: not usable yet.
    #[serde(default)]
    pub linked: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::codec::{assert_round_trips, encode};

    #[test]
    fn hashes_read_back_from_hex_and_refuse_anything_else() {
        let h = Hash([0xab; 32]);
        assert_eq!(h.to_hex().parse::<Hash>(), Ok(h));
        assert!("ab".parse::<Hash>().is_err());
        assert!("zz".repeat(32).parse::<Hash>().is_err());
        // A sign is not a digit: one hash has one text.
        assert!(format!("+a{}", &h.to_hex()[2..]).parse::<Hash>().is_err());
        assert_round_trips(&RegionRef {
            region: 3,
            object: Some(h),
        });
    }

    #[test]
    fn secrets_travel_but_are_never_printed() {
        let spec = StoreSpec {
            name: "s3a".into(),
            zone: "z1".into(),
            kind: StoreKind::S3 {
                endpoint: "http://127.0.0.1:9000".into(),
                bucket: "b".into(),
                region: "us-east-1".into(),
                access_key_id: "AK".into(),
                secret_access_key: Secret("topsecret".into()),
                prefix: String::new(),
            },
        };
        assert_round_trips(&spec);
        assert!(String::from_utf8_lossy(&encode(&spec)).contains("topsecret"));
        assert!(!format!("{spec:?}").contains("topsecret"));
    }
}

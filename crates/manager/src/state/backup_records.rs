//! The records of backups the manager persists: [`BackupRecord`] (one per backup, copies
//! included), its [`BackupStats`], the [`ChunkSegment`]s a job records, the
//! [`RestoreRecord`] of a volume being filled from a backup, and the [`GcKey`]s of a
//! store's objects the collector deals with.
//!
//! Plain data. Their serde form is the database's, the Raft log's and the snapshot's
//! format: fields added later are `#[serde(default)]`, and none is renamed or retyped
//! without a format change.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tessera_proto::control::{BackupState, Hash};

/// A backup (or a copy of one in another store), as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// Its id (from [`super::NextIds::backup`]; never reused).
    pub id: u64,
    /// The volume's name and id when it was taken (the volume may be gone or renamed).
    pub volume: String,
    pub volume_id: u64,
    /// The snapshot it holds, and its sequence.
    pub snapshot: String,
    pub seq: u64,
    /// The store it is in.
    pub store: String,
    /// The backup this one is incremental to: only regions changed after `base_seq` are
    /// read; the other regions keep the base's objects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<u64>,
    /// The base's snapshot sequence (0: none, a full backup).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub base_seq: u64,
    /// The backup this one is a copy of (`backup copy`): its segments are copied, not read
    /// from the groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copied_from: Option<u64>,
    pub size: u64,
    pub chunk_size: u64,
    /// Chunks the job visits (the volume's mapped chunks when it was asked for): progress
    /// only; chunks without data are never recorded.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub chunks_total: u64,
    pub created_unix: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_unix: Option<u64>,
    pub state: BackupState,
    /// The manifest's root, once `Ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Hash>,
    /// Why it failed, or the last error it is retrying after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub stats: BackupStats,
    /// The access record: chunk → client reads its group's leader had served when the job
    /// read it (`ChunkUpload.reads`; only non-zero counts). A restore pre-warms the most
    /// read chunks first. A copy keeps its source's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reads: BTreeMap<u64, u64>,
}

/// What a backup's job moved; [`super::Mutation::BackupChunks`] adds its increments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStats {
    /// Bytes read from the groups.
    #[serde(default)]
    pub read_bytes: u64,
    /// Bytes put to the store (objects, segments, root).
    #[serde(default)]
    pub uploaded_bytes: u64,
    /// Objects put.
    #[serde(default)]
    pub uploaded_objects: u64,
    /// Objects found already stored.
    #[serde(default)]
    pub present_objects: u64,
    /// Regions with data in the recorded segments (shared objects included), as the job
    /// counts them.
    #[serde(default)]
    pub objects: u64,
}

impl BackupStats {
    /// `self + d`, saturating.
    pub fn plus(self, d: &BackupStats) -> BackupStats {
        BackupStats {
            read_bytes: self.read_bytes.saturating_add(d.read_bytes),
            uploaded_bytes: self.uploaded_bytes.saturating_add(d.uploaded_bytes),
            uploaded_objects: self.uploaded_objects.saturating_add(d.uploaded_objects),
            present_objects: self.present_objects.saturating_add(d.present_objects),
            objects: self.objects.saturating_add(d.objects),
        }
    }
}

/// One chunk of a backup, stored: its segment, and the segment's objects when the job
/// knows them (it built or copied the segment). `None` is only recorded for a segment the
/// store already counts (an unchanged chunk keeping its base's segment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkSegment {
    pub chunk: u64,
    pub segment: Hash,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<Vec<Hash>>,
    /// Client reads of the chunk its group's leader reported (the access record; 0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reads: u64,
}

/// A volume created from a backup whose blocks are still being filled from a store.
///
/// Its chunks are filled in the restore's order ([`super::State::restore_order`]: most
/// read first, then by index), a function of the backup record alone, so a position in it
/// means the same chunk to every manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// The backup record read (in `store`: the backup or a copy of it).
    pub backup: u64,
    /// The store filled from.
    pub store: String,
    /// Legacy (restores made before the fill followed the access record): every chunk
    /// below this one was filled. No longer moved nor read: such a restore is filled again
    /// from its first position, which is harmless (a hydrate never overwrites a held block).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_chunk: u64,
    /// Every placed chunk is linked to the backup (`RESTORED_PARENT`) in its group: the
    /// volume may be attached, its unfilled blocks read from the store by the groups.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub linked: bool,
    /// Every chunk at a position below this one in the restore's order is filled and
    /// unlinked (never moves back).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_position: u64,
}

/// A key of a store the collector tracks: an object, a segment or a root. Written as the
/// store's key (`objects/<hh>/<hash>`, `segments/<hash>`, `roots/<hash>`; see
/// `tessera_backup::keys`), in the database and in mutations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GcKey {
    Object(Hash),
    Segment(Hash),
    Root(Hash),
}

impl GcKey {
    /// The key in the store.
    pub fn path(&self) -> String {
        match self {
            GcKey::Object(h) => tessera_backup::keys::object(h),
            GcKey::Segment(h) => tessera_backup::keys::segment(h),
            GcKey::Root(h) => tessera_backup::keys::root(h),
        }
    }
}

impl fmt::Display for GcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

/// Not a key of an object, a segment or a root.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a backup key: {0:?}")]
pub struct BadKey(pub String);

impl FromStr for GcKey {
    type Err = BadKey;
    fn from_str(s: &str) -> Result<GcKey, BadKey> {
        let bad = || BadKey(s.chars().take(100).collect());
        let hash = |h: &str| h.parse::<Hash>().map_err(|_| bad());
        let key = if let Some(rest) = s.strip_prefix("objects/") {
            let (_, h) = rest.split_once('/').ok_or_else(bad)?;
            GcKey::Object(hash(h)?)
        } else if let Some(h) = s.strip_prefix("segments/") {
            GcKey::Segment(hash(h)?)
        } else if let Some(h) = s.strip_prefix("roots/") {
            GcKey::Root(hash(h)?)
        } else {
            return Err(bad());
        };
        // Only the canonical spelling: a key read back names exactly what was written.
        if key.path() != s {
            return Err(bad());
        }
        Ok(key)
    }
}

impl Serialize for GcKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.path())
    }
}

impl<'de> Deserialize<'de> for GcKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GcKey, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

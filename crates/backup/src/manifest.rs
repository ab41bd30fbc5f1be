//! A backup's manifest: one segment per chunk (region → object), then a root naming
//! every segment. Both are JSON with a `format` field (1), named by the BLAKE3 of their
//! bytes, verified when read. Segments are written before the root; a segment unchanged
//! since an earlier backup is the same object (same bytes, same name) and is not written
//! again.

use serde::{Deserialize, Serialize};
use tessera_proto::control::Hash;

use crate::Result;

/// The format this build writes (and the newest it reads).
pub const FORMAT: u32 = 1;

/// One chunk of a backup: the object of each region holding data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// The format (see [`FORMAT`]).
    pub format: u32,
    /// The chunk's index in its volume.
    pub chunk: u64,
    /// `(region, object)`, ascending by region; regions not named are zeroes.
    pub regions: Vec<(u32, Hash)>,
}

/// One backup: what it is of, and the segment of each chunk holding data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    /// The format (see [`FORMAT`]).
    pub format: u32,
    /// The manager's id of the backup (unique per cluster, so two roots never share a
    /// name).
    pub backup_id: u64,
    /// The volume's name and id when it was taken.
    pub volume: String,
    /// The volume's id.
    pub volume_id: u64,
    /// The snapshot it holds, and its sequence.
    pub snapshot: String,
    /// The snapshot's sequence.
    pub seq: u64,
    /// The volume's size and chunk size.
    pub size: u64,
    /// The volume's chunk size.
    pub chunk_size: u64,
    /// Bytes of a region (`REGION_BYTES`).
    pub region_bytes: u64,
    /// When the backup was asked for (Unix seconds).
    pub created_unix: u64,
    /// `(chunk, segment)`, ascending by chunk; chunks not named are zeroes.
    pub segments: Vec<(u64, Hash)>,
}

impl Segment {
    /// Its bytes and name.
    pub fn encode(&self) -> (Hash, bytes::Bytes) {
        todo!("the backup branch implements it")
    }

    /// The segment named `hash`, verified (see [`crate::region::decode`] for errors).
    pub fn decode(store: &str, hash: &Hash, bytes: &[u8]) -> Result<Segment> {
        let _ = (store, hash, bytes);
        todo!("the backup branch implements it")
    }
}

impl Root {
    /// Its bytes and name.
    pub fn encode(&self) -> (Hash, bytes::Bytes) {
        todo!("the backup branch implements it")
    }

    /// The root named `hash`, verified.
    pub fn decode(store: &str, hash: &Hash, bytes: &[u8]) -> Result<Root> {
        let _ = (store, hash, bytes);
        todo!("the backup branch implements it")
    }
}

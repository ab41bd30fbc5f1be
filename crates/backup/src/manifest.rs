//! A backup's manifest: one segment per chunk (region → object), then a root naming
//! every segment. Both are JSON with a `format` field (1), named by the BLAKE3 of their
//! bytes (serde_json of the struct: deterministic), verified when read: a mismatch, a
//! parse error, a newer format or entries out of order are [`crate::Error::Corrupt`],
//! never a panic. Segments are written before the root; a segment unchanged since an
//! earlier backup is the same object (same bytes, same name) and is not written again.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tessera_proto::control::{Hash, REGION_BYTES};

use crate::{Error, Result, keys};

/// The format this build writes (and the newest it reads).
pub const FORMAT: u32 = 1;
/// Bytes of a segment or a root read at most (`Store::get_bounded`): generous (a segment
/// of a 4 GiB chunk is about 0.4 MiB, a root of a million chunks about 90 MiB... of
/// chunks holding data), so only a store's garbage is refused.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

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
        encode(self)
    }

    /// The segment named `hash`, verified: [`crate::Error::Corrupt`] (naming its key) if
    /// its bytes are not what its name says, do not parse, are of a newer format, or name
    /// regions out of order.
    pub fn decode(store: &str, hash: &Hash, bytes: &[u8]) -> Result<Segment> {
        let corrupt = corrupt(store, keys::segment(hash));
        let segment: Segment = decode(hash, bytes).map_err(&corrupt)?;
        if !ascending(segment.regions.iter().map(|(r, _)| *r)) {
            return Err(corrupt("its regions are not ascending".into()));
        }
        Ok(segment)
    }
}

impl Root {
    /// Its bytes and name.
    pub fn encode(&self) -> (Hash, bytes::Bytes) {
        encode(self)
    }

    /// The root named `hash`, verified (see [`Segment::decode`]); its region size must be
    /// this build's.
    pub fn decode(store: &str, hash: &Hash, bytes: &[u8]) -> Result<Root> {
        let corrupt = corrupt(store, keys::root(hash));
        let root: Root = decode(hash, bytes).map_err(&corrupt)?;
        if !ascending(root.segments.iter().map(|(c, _)| *c)) {
            return Err(corrupt("its chunks are not ascending".into()));
        }
        if root.region_bytes != REGION_BYTES {
            return Err(corrupt(format!(
                "regions of {} bytes (this build reads {REGION_BYTES})",
                root.region_bytes
            )));
        }
        Ok(root)
    }
}

/// A manifest's bytes are serde_json of the struct: field order is the declaration's, so
/// the same manifest always has the same bytes and name.
fn encode<T: Serialize>(value: &T) -> (Hash, bytes::Bytes) {
    let bytes = serde_json::to_vec(value).expect("a manifest always serializes");
    (Hash(*blake3::hash(&bytes).as_bytes()), bytes.into())
}

fn decode<T: DeserializeOwned>(hash: &Hash, bytes: &[u8]) -> std::result::Result<T, String> {
    let actual = Hash(*blake3::hash(bytes).as_bytes());
    if actual != *hash {
        return Err(format!("its bytes hash to {actual}"));
    }
    // The format first: a newer one may not parse as this build's struct.
    #[derive(Deserialize)]
    struct Versioned {
        format: u32,
    }
    let v: Versioned =
        serde_json::from_slice(bytes).map_err(|e| format!("no format field: {e}"))?;
    if v.format > FORMAT {
        return Err(format!(
            "format {} is newer than this build reads ({FORMAT})",
            v.format
        ));
    }
    if v.format != FORMAT {
        return Err(format!("unknown format {}", v.format));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("does not parse: {e}"))
}

fn corrupt(store: &str, key: String) -> impl Fn(String) -> Error {
    let store = store.to_string();
    move |why| Error::Corrupt {
        store: store.clone(),
        key: key.clone(),
        why,
    }
}

fn ascending(mut items: impl Iterator<Item = impl Ord>) -> bool {
    let Some(mut prev) = items.next() else {
        return true;
    };
    for item in items {
        if item <= prev {
            return false;
        }
        prev = item;
    }
    true
}

#[cfg(test)]
#[path = "manifest_tests.rs"]
mod tests;

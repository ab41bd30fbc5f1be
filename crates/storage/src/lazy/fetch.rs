//! Fetching a region of a restored chunk's backup: its object read bounded
//! (`region::MAX_OBJECT_BYTES`) from the first store that serves it, decoded and verified
//! against its name (`region::decode`) off the runtime's threads; a store that fails or
//! holds a corrupt copy is logged and the next one asked. A region that failed its hash is
//! never returned. A failure says whether the source is worth asking for again
//! ([`Failure`]): a store unreachable is not a reason to forget it.

use bytes::Bytes;
use tessera_backup::{keys, region};
use tessera_metrics::LazyCounter;
use tessera_proto::control::{Hash, StoreSpec};

use crate::backup::StoreCache;

static FETCHES: LazyCounter = LazyCounter::new(
    "tessera_storage_lazy_fetches",
    "Region objects fetched and verified for reads and writes of restored chunks not filled yet",
);
static FETCH_BYTES: LazyCounter = LazyCounter::new(
    "tessera_storage_lazy_fetch_bytes",
    "Bytes of region objects (compressed) fetched for restored chunks not filled yet",
);
static FETCH_ERRORS: LazyCounter = LazyCounter::new(
    "tessera_storage_lazy_fetch_errors",
    "Failed fetches of a region object from one store (unreachable, missing or corrupt); \
     the next store is asked",
);

/// Regions decoded and kept at most (1 MiB each).
pub(crate) const MAX_REGIONS: usize = 32;

/// Region fetches in the air on this node at most (each up to a few MiB in memory).
pub(crate) const MAX_FETCHES: usize = 64;

/// Why a source look-up or a fetch failed, and what it means for the cached source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) msg: String,
    pub(crate) why: Why,
}

/// The kind of a [`Failure`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Why {
    /// The managers know no restore of the chunk (the volume is gone, or no longer
    /// restoring).
    Gone,
    /// A store's copy is missing or corrupt: the managers may name another by now, so the
    /// source is forgotten.
    Bad,
    /// Stores or managers unreachable (an outage): the source is kept, a retry repeats only
    /// the fetch.
    Transport,
}

impl Failure {
    pub(crate) fn new(why: Why, msg: impl Into<String>) -> Failure {
        Failure {
            msg: msg.into(),
            why,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

/// Whether a store's error says its copy is missing or corrupt (not unreachable).
pub(crate) fn is_bad(e: &tessera_backup::Error) -> bool {
    matches!(
        e,
        tessera_backup::Error::NotFound { .. } | tessera_backup::Error::Corrupt { .. }
    )
}

/// The bytes of region `region` of `chunk` (object `hash`), from the first of `specs` that
/// serves it verified. `Err` names every store's failure; it is [`Why::Bad`] if any store
/// answered its copy missing or corrupt, else [`Why::Transport`].
pub(crate) async fn fetch_region(
    stores: &StoreCache,
    node: u64,
    specs: &[StoreSpec],
    hash: Hash,
    chunk: u64,
    region: u32,
) -> Result<Bytes, Failure> {
    let mut errors = Vec::new();
    let mut why = Why::Transport;
    for spec in specs {
        match fetch_from(stores, node, spec, hash).await {
            Ok(bytes) => return Ok(bytes),
            Err((e, bad)) => {
                if bad {
                    why = Why::Bad;
                }
                FETCH_ERRORS.add(1);
                tracing::warn!(
                    chunk,
                    region,
                    store = %spec.name,
                    "restore: fetching object {hash}: {e}; trying the next store"
                );
                errors.push(format!(
                    "restore: fetching region {region} of chunk {chunk} from store {}: {e}",
                    spec.name
                ));
            }
        }
    }
    if errors.is_empty() {
        why = Why::Bad;
        errors.push(format!(
            "restore: fetching region {region} of chunk {chunk}: no store holds the backup"
        ));
    }
    Err(Failure::new(why, errors.join("; ")))
}

async fn fetch_from(
    stores: &StoreCache,
    node: u64,
    spec: &StoreSpec,
    hash: Hash,
) -> Result<Bytes, (String, bool)> {
    let err = |e: tessera_backup::Error| (e.to_string(), is_bad(&e));
    let store = stores
        .open(spec, node)
        .await
        .map_err(|e| (e.to_string(), false))?;
    let got = store
        .get_bounded(&keys::object(&hash), region::MAX_OBJECT_BYTES)
        .await
        .map_err(err)?;
    FETCH_BYTES.add(got.len() as u64);
    let name = store.name().to_string();
    let decoded = tokio::task::spawn_blocking(move || {
        region::decode(&name, &hash, &got).map(|r| r.to_bytes())
    })
    .await
    .map_err(|e| (format!("decoding: {e}"), false))?
    .map_err(err)?;
    FETCHES.add(1);
    Ok(Bytes::from(decoded))
}

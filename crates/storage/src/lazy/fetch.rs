//! Fetching a region of a restored chunk's backup: its object read bounded
//! (`region::MAX_OBJECT_BYTES`) from the first store that serves it, decoded and verified
//! against its name (`region::decode`) off the runtime's threads; a store that fails or
//! holds a corrupt copy is logged and the next one asked. A region that failed its hash is
//! never returned.

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

/// The bytes of region `region` of `chunk` (object `hash`), from the first of `specs` that
/// serves it verified. `Err` names every store's failure.
pub(crate) async fn fetch_region(
    stores: &StoreCache,
    node: u64,
    specs: &[StoreSpec],
    hash: Hash,
    chunk: u64,
    region: u32,
) -> Result<Bytes, String> {
    let mut errors = Vec::new();
    for spec in specs {
        match fetch_from(stores, node, spec, hash).await {
            Ok(bytes) => return Ok(bytes),
            Err(e) => {
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
        errors.push(format!(
            "restore: fetching region {region} of chunk {chunk}: no store holds the backup"
        ));
    }
    Err(errors.join("; "))
}

async fn fetch_from(
    stores: &StoreCache,
    node: u64,
    spec: &StoreSpec,
    hash: Hash,
) -> Result<Bytes, String> {
    let store = stores.open(spec, node).await.map_err(|e| e.to_string())?;
    let got = store
        .get_bounded(&keys::object(&hash), region::MAX_OBJECT_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    FETCH_BYTES.add(got.len() as u64);
    let name = store.name().to_string();
    let decoded = tokio::task::spawn_blocking(move || {
        region::decode(&name, &hash, &got).map(|r| r.to_bytes())
    })
    .await
    .map_err(|e| format!("decoding: {e}"))?
    .map_err(|e| e.to_string())?;
    FETCHES.add(1);
    Ok(Bytes::from(decoded))
}

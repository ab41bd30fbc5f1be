//! Where a restored chunk's unfilled blocks come from: its [`Source`], the backup's region
//! map of the chunk and the stores holding the backup, from the managers'
//! `RestoreSource` answer and the chunk's segment.
//!
//! The segment is read bounded (`manifest::MAX_MANIFEST_BYTES`) and verified against its
//! name before it is trusted, from the first store that has it whole (the next one after
//! any failure, logged). Sources are cached ([`MAX_SOURCES`] chunks), never a failure: a
//! chunk the managers know no restore of is asked again next time, and so is one whose
//! fetch failed in every store its source names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tessera_backup::{keys, manifest};
use tessera_proto::control::{Hash, RestoreSource, StoreSpec};

use super::cache::Bounded;
use super::flight::Flights;
use crate::backup::StoreCache;

/// Chunks whose source is cached at most.
pub(crate) const MAX_SOURCES: usize = 4096;

/// A restored chunk's backup: which object holds each region (a region not named reads
/// as zeroes), and the stores to fetch objects from, in order.
#[derive(Debug)]
pub(crate) struct Source {
    /// The backup restored.
    pub(crate) backup: u64,
    /// The stores holding a ready copy of it, the restore's first.
    pub(crate) stores: Vec<StoreSpec>,
    objects: HashMap<u32, Hash>,
}

impl Source {
    /// The source of a chunk the backup holds nothing of, in no store.
    #[cfg(test)]
    pub(crate) fn zeroes(backup: u64) -> Source {
        Source {
            backup,
            stores: Vec::new(),
            objects: HashMap::new(),
        }
    }

    /// The object of `region` (`None`: the region reads as zeroes).
    pub(crate) fn object(&self, region: u32) -> Option<Hash> {
        self.objects.get(&region).copied()
    }
}

/// The cache of sources, and the look-ups in the air (one per chunk).
pub(crate) struct Sources {
    cache: Mutex<Bounded<(u64, u64), Arc<Source>>>,
    flights: Flights<(u64, u64), Result<Arc<Source>, String>>,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            cache: Mutex::new(Bounded::new(MAX_SOURCES)),
            flights: Flights::default(),
        }
    }
}

impl Sources {
    /// The source of (`volume`, `chunk`): cached, or from `lookup` (one at a time per
    /// chunk, shared by every caller asking meanwhile), cached if found.
    pub(crate) async fn get<F>(
        &self,
        volume: u64,
        chunk: u64,
        lookup: impl FnOnce() -> F,
    ) -> Result<Arc<Source>, String>
    where
        F: Future<Output = Result<Source, String>> + Send + 'static,
    {
        let key = (volume, chunk);
        if let Some(s) = self.lock().get(&key) {
            return Ok(s);
        }
        let flight = self.flights.join(
            key,
            || {
                let fut = lookup();
                Box::pin(async move { fut.await.map(Arc::new) })
            },
            |e| Err(format!("restore: a source look-up task failed: {e}")),
        );
        let source = flight.await?;
        self.lock().insert(key, source.clone());
        Ok(source)
    }

    /// Forgets the chunk's source: a fetch failed in every store it names, and the
    /// managers may know another by the next read (a copy made ready since).
    pub(crate) fn forget(&self, volume: u64, chunk: u64) {
        self.lock().remove(&(volume, chunk));
    }

    /// Sources cached now.
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bounded<(u64, u64), Arc<Source>>> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The source the managers answered for `chunk`, its segment read from the first of its
/// stores that serves it whole and verified.
pub(crate) async fn source_of(
    stores: &StoreCache,
    node: u64,
    chunk: u64,
    answer: RestoreSource,
) -> Result<Source, String> {
    let RestoreSource {
        backup,
        segment,
        stores: specs,
    } = answer;
    let Some(segment) = segment else {
        // The backup holds nothing of the chunk: every block reads as zeroes.
        return Ok(Source {
            backup,
            stores: specs,
            objects: HashMap::new(),
        });
    };
    let mut errors = Vec::new();
    for spec in &specs {
        match read_segment(stores, node, spec, &segment, chunk).await {
            Ok(objects) => {
                return Ok(Source {
                    backup,
                    stores: specs,
                    objects,
                });
            }
            Err(e) => {
                tracing::warn!(
                    backup,
                    chunk,
                    store = %spec.name,
                    "restore: reading segment {segment}: {e}; trying the next store"
                );
                errors.push(format!("from store {}: {e}", spec.name));
            }
        }
    }
    if errors.is_empty() {
        errors.push("no store holds the backup".into());
    }
    Err(format!(
        "restore: reading segment {segment} of chunk {chunk} (backup {backup}) {}",
        errors.join("; ")
    ))
}

/// The segment `hash` of `chunk` in the store of `spec`: region → object.
async fn read_segment(
    stores: &StoreCache,
    node: u64,
    spec: &StoreSpec,
    hash: &Hash,
    chunk: u64,
) -> Result<HashMap<u32, Hash>, String> {
    let store = stores.open(spec, node).await.map_err(|e| e.to_string())?;
    let bytes = store
        .get_bounded(&keys::segment(hash), manifest::MAX_MANIFEST_BYTES)
        .await
        .map_err(|e| e.to_string())?;
    let (name, hash) = (store.name().to_string(), *hash);
    // Hashing and parsing up to a few MiB: off the runtime's threads.
    let segment =
        tokio::task::spawn_blocking(move || manifest::Segment::decode(&name, &hash, &bytes))
            .await
            .map_err(|e| format!("decoding the segment: {e}"))?
            .map_err(|e| e.to_string())?;
    if segment.chunk != chunk {
        return Err(format!(
            "the segment is of chunk {}, not {chunk}",
            segment.chunk
        ));
    }
    Ok(segment.regions.into_iter().collect())
}

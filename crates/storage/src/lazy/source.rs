//! Where a restored chunk's unfilled blocks come from: its [`Source`], the backup's region
//! map of the chunk and the stores holding the backup, from the managers'
//! `RestoreSource` answer and the chunk's segment.
//!
//! The segment is read bounded (`manifest::MAX_MANIFEST_BYTES`) and verified against its
//! name before it is trusted, from the first store that has it whole (the next one after
//! any failure, logged). Sources are cached (bounded by the regions they name,
//! [`MAX_CACHED_REGIONS`]; their store list shared with the previous source's when equal),
//! never a failure: a chunk the managers know no restore of is asked again next time, and
//! so is one whose copy was missing or corrupt in every store its source names. A source is
//! cached once, by its look-up: a caller that waited for it never puts it back after a
//! [`Sources::forget`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tessera_backup::{keys, manifest};
use tessera_proto::control::{Hash, RestoreSource, StoreSpec};

use super::cache::Bounded;
use super::fetch::{Failure, Why, is_bad};
use super::flight::Flights;
use crate::backup::StoreCache;

/// Regions named by the sources cached at most (about 40 bytes each; a source counts at
/// least one).
pub(crate) const MAX_CACHED_REGIONS: usize = 1 << 20;

/// A restored chunk's backup: which object holds each region (a region not named reads
/// as zeroes), and the stores to fetch objects from, in order.
#[derive(Debug)]
pub(crate) struct Source {
    /// The backup restored.
    pub(crate) backup: u64,
    /// The stores holding a ready copy of it, the restore's first (shared by the sources
    /// of one restore).
    pub(crate) stores: Arc<Vec<StoreSpec>>,
    objects: HashMap<u32, Hash>,
}

impl Source {
    /// The source of a chunk the backup holds nothing of, in no store.
    #[cfg(test)]
    pub(crate) fn zeroes(backup: u64) -> Source {
        Source {
            backup,
            stores: Arc::default(),
            objects: HashMap::new(),
        }
    }

    /// The source of a chunk whose regions are `objects`, in the stores `stores`.
    #[cfg(test)]
    pub(crate) fn with_objects(
        backup: u64,
        stores: Vec<StoreSpec>,
        objects: &[(u32, Hash)],
    ) -> Source {
        Source {
            backup,
            stores: Arc::new(stores),
            objects: objects.iter().copied().collect(),
        }
    }

    /// The object of `region` (`None`: the region reads as zeroes).
    pub(crate) fn object(&self, region: u32) -> Option<Hash> {
        self.objects.get(&region).copied()
    }
}

type Cache = Arc<Mutex<Bounded<(u64, u64), Arc<Source>>>>;

/// The cache of sources, and the look-ups in the air (one per chunk).
pub(crate) struct Sources {
    cache: Cache,
    // The store list of the last source cached: the next one of the same restore shares it.
    last: Arc<Mutex<Arc<Vec<StoreSpec>>>>,
    flights: Flights<(u64, u64), Result<Arc<Source>, Failure>>,
}

impl Default for Sources {
    fn default() -> Self {
        Sources::with_max(MAX_CACHED_REGIONS)
    }
}

impl Sources {
    /// A cache of sources naming at most `max` regions.
    pub(crate) fn with_max(max: usize) -> Self {
        Sources {
            cache: Arc::new(Mutex::new(Bounded::new(max))),
            last: Arc::default(),
            flights: Flights::default(),
        }
    }

    /// The source of (`volume`, `chunk`): cached, or from `lookup` (one at a time per
    /// chunk, shared by every caller asking meanwhile), cached by the look-up if found.
    pub(crate) async fn get<F>(
        &self,
        volume: u64,
        chunk: u64,
        lookup: impl FnOnce() -> F,
    ) -> Result<Arc<Source>, Failure>
    where
        F: Future<Output = Result<Source, Failure>> + Send + 'static,
    {
        let key = (volume, chunk);
        if let Some(s) = lock(&self.cache).get(&key) {
            return Ok(s);
        }
        let (cache, last) = (self.cache.clone(), self.last.clone());
        let flight = self.flights.join(
            key,
            || {
                let fut = lookup();
                Box::pin(async move {
                    let mut source = fut.await?;
                    {
                        let mut last = lock(&last);
                        if *last == source.stores {
                            source.stores = last.clone();
                        } else {
                            *last = source.stores.clone();
                        }
                    }
                    let source = Arc::new(source);
                    let weight = source.objects.len().max(1);
                    lock(&cache).insert_weighted(key, source.clone(), weight);
                    Ok(source)
                })
            },
            |e| {
                Err(Failure::new(
                    Why::Transport,
                    format!("restore: a source look-up task failed: {e}"),
                ))
            },
        );
        flight.await
    }

    /// Forgets the chunk's source: a copy was missing or corrupt in every store it names,
    /// and the managers may know another by the next read (a copy made ready since).
    pub(crate) fn forget(&self, volume: u64, chunk: u64) {
        lock(&self.cache).remove(&(volume, chunk));
    }

    /// Sources cached now.
    #[cfg(test)]
    pub(crate) fn cached(&self) -> usize {
        lock(&self.cache).len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The source the managers answered for `chunk`, its segment read from the first of its
/// stores that serves it whole and verified.
pub(crate) async fn source_of(
    stores: &StoreCache,
    node: u64,
    chunk: u64,
    answer: RestoreSource,
) -> Result<Source, Failure> {
    let RestoreSource {
        backup,
        segment,
        stores: specs,
    } = answer;
    let specs = Arc::new(specs);
    let Some(segment) = segment else {
        // The backup holds nothing of the chunk: every block reads as zeroes.
        return Ok(Source {
            backup,
            stores: specs,
            objects: HashMap::new(),
        });
    };
    let mut errors = Vec::new();
    let mut why = Why::Transport;
    for spec in specs.iter() {
        match read_segment(stores, node, spec, &segment, chunk).await {
            Ok(objects) => {
                return Ok(Source {
                    backup,
                    stores: specs,
                    objects,
                });
            }
            Err((e, bad)) => {
                if bad {
                    why = Why::Bad;
                }
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
        why = Why::Bad;
        errors.push("no store holds the backup".into());
    }
    Err(Failure::new(
        why,
        format!(
            "restore: reading segment {segment} of chunk {chunk} (backup {backup}) {}",
            errors.join("; ")
        ),
    ))
}

/// The segment `hash` of `chunk` in the store of `spec`: region → object. `Err` says
/// whether the store's copy is missing or corrupt (`true`) rather than unreachable.
async fn read_segment(
    stores: &StoreCache,
    node: u64,
    spec: &StoreSpec,
    hash: &Hash,
    chunk: u64,
) -> Result<HashMap<u32, Hash>, (String, bool)> {
    let err = |e: tessera_backup::Error| (e.to_string(), is_bad(&e));
    let store = stores
        .open(spec, node)
        .await
        .map_err(|e| (e.to_string(), false))?;
    let bytes = store
        .get_bounded(&keys::segment(hash), manifest::MAX_MANIFEST_BYTES)
        .await
        .map_err(err)?;
    let (name, hash) = (store.name().to_string(), *hash);
    // Hashing and parsing up to a few MiB: off the runtime's threads.
    let segment =
        tokio::task::spawn_blocking(move || manifest::Segment::decode(&name, &hash, &bytes))
            .await
            .map_err(|e| (format!("decoding the segment: {e}"), false))?
            .map_err(err)?;
    if segment.chunk != chunk {
        return Err((
            format!("the segment is of chunk {}, not {chunk}", segment.chunk),
            true,
        ));
    }
    Ok(segment.regions.into_iter().collect())
}

//! Single flight: concurrent callers asking for the same key share one piece of work (a
//! manager look-up, an object fetch, a hydrate entry) rather than each starting their own.
//!
//! The work runs as its own tokio task, so it finishes (and leaves the map) even if every
//! caller waiting for it went away, or if it panics (a drop guard lands it); the map only holds work in the air, never results
//! (callers keep their own caches). The lock is held for map look-ups only, never across
//! an await.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::future::{BoxFuture, FutureExt, Shared};

/// The shared outcome of one flight: every caller awaiting it gets a clone.
pub(crate) type Flight<V> = Shared<BoxFuture<'static, V>>;

/// Work in the air, by key: at most one flight per key at a time.
pub(crate) struct Flights<K, V: Clone> {
    inner: Arc<Mutex<InAir<K, V>>>,
}

struct InAir<K, V: Clone> {
    next: u64,
    // Each flight with its number: a finished flight removes its own entry only, never a
    // later one of the same key.
    map: HashMap<K, (u64, Flight<V>)>,
}

impl<K, V: Clone> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            inner: Arc::new(Mutex::new(InAir {
                next: 0,
                map: HashMap::new(),
            })),
        }
    }
}

impl<K, V> Flights<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Joins the flight of `key` in the air, or starts `work()` as one (a task of the
    /// current runtime). `lost` turns a task that panicked or was cancelled into a value.
    pub(crate) fn join(
        &self,
        key: K,
        work: impl FnOnce() -> BoxFuture<'static, V>,
        lost: fn(String) -> V,
    ) -> Flight<V> {
        let mut air = lock(&self.inner);
        if let Some((_, f)) = air.map.get(&key) {
            return f.clone();
        }
        let id = air.next;
        air.next += 1;
        let (inner, mine, fut) = (self.inner.clone(), key.clone(), work());
        let task = tokio::spawn(async move {
            // Lands the flight however the work ends: returned, panicked or cancelled (a
            // key left in the air would hand every later caller the lost flight for good).
            let _landed = Landed {
                inner,
                key: Some(mine),
                id,
            };
            fut.await
        });
        let flight = async move { task.await.unwrap_or_else(|e| lost(e.to_string())) }
            .boxed()
            .shared();
        air.map.insert(key, (id, flight.clone()));
        flight
    }

    /// Flights in the air now.
    #[cfg(test)]
    pub(crate) fn in_air(&self) -> usize {
        lock(&self.inner).map.len()
    }
}

/// Removes its flight's entry from the map when dropped (the entry of this flight only,
/// never a later one of the same key).
struct Landed<K: Hash + Eq, V: Clone> {
    inner: Arc<Mutex<InAir<K, V>>>,
    key: Option<K>,
    id: u64,
}

impl<K: Hash + Eq, V: Clone> Drop for Landed<K, V> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut air = lock(&self.inner);
        if air.map.get(&key).is_some_and(|(n, _)| *n == self.id) {
            air.map.remove(&key);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

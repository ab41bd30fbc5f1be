//! A bounded map that forgets its oldest entry first: the lazy fill's caches of chunk
//! sources and decoded regions. Entries never change once inserted (a source or a region
//! named by its hash), so first-in first-out is enough: a sequential reader of a region
//! meets it again long before it is the oldest.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub(crate) struct Bounded<K, V> {
    max: usize,
    map: HashMap<K, V>,
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone, V: Clone> Bounded<K, V> {
    /// An empty map of at most `max` entries (at least one).
    pub(crate) fn new(max: usize) -> Self {
        Bounded {
            max: max.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn get(&self, k: &K) -> Option<V> {
        self.map.get(k).cloned()
    }

    /// Inserts `v` unless `k` is there already; forgets the oldest entries past the bound.
    pub(crate) fn insert(&mut self, k: K, v: V) {
        if self.map.contains_key(&k) {
            return;
        }
        self.map.insert(k.clone(), v);
        self.order.push_back(k);
        while self.map.len() > self.max {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Forgets `k` (rare: a scan of the order).
    pub(crate) fn remove(&mut self, k: &K) {
        if self.map.remove(k).is_some() {
            self.order.retain(|o| o != k);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

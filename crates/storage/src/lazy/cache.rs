//! A bounded map that forgets its oldest entry first: the lazy fill's caches of chunk
//! sources and decoded regions. Entries never change once inserted (a source or a region
//! named by its hash), so first-in first-out is enough: a sequential reader of a region
//! meets it again long before it is the oldest. Each entry weighs 1 unless inserted with
//! its own weight (a source: the regions it names), and the bound is on the total weight.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub(crate) struct Bounded<K, V> {
    max: usize,
    total: usize,
    map: HashMap<K, (V, usize)>,
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Clone, V: Clone> Bounded<K, V> {
    /// An empty map of at most `max` entries, or total weight (at least one).
    pub(crate) fn new(max: usize) -> Self {
        Bounded {
            max: max.max(1),
            total: 0,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn get(&self, k: &K) -> Option<V> {
        self.map.get(k).map(|(v, _)| v.clone())
    }

    /// Inserts `v` unless `k` is there already; forgets the oldest entries past the bound.
    pub(crate) fn insert(&mut self, k: K, v: V) {
        self.insert_weighted(k, v, 1);
    }

    /// Inserts `v` weighing `weight` unless `k` is there already; forgets the oldest
    /// entries while the total weight is past the bound (the newest always stays).
    pub(crate) fn insert_weighted(&mut self, k: K, v: V, weight: usize) {
        if self.map.contains_key(&k) {
            return;
        }
        self.map.insert(k.clone(), (v, weight));
        self.total += weight;
        self.order.push_back(k);
        while self.total > self.max && self.order.len() > 1 {
            match self.order.pop_front() {
                Some(old) => {
                    if let Some((_, w)) = self.map.remove(&old) {
                        self.total -= w;
                    }
                }
                None => break,
            }
        }
    }

    /// Forgets `k` (rare: a scan of the order).
    pub(crate) fn remove(&mut self, k: &K) {
        if let Some((_, w)) = self.map.remove(k) {
            self.total -= w;
            self.order.retain(|o| o != k);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

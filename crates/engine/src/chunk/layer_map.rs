//! [`LayerMap`]: which chunks of a store have layers above 1 or a parent, kept in memory so
//! that reading a chunk never probes the directory for layers.
//!
//! A chunk absent from the map is *plain*: only layer 1, no parent; reading it costs what
//! it cost before layers existed (one map lookup, no system call). Filled from the
//! directory listing when the store opens, then kept up to date by the store as it creates
//! or deletes layer files and link files. Owns only the map; never opens, reads or writes a
//! file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::layout::Key;

/// What a chunk holds beyond a plain layer 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Shape {
    /// Its layers above 1 that have files, ascending.
    pub(super) upper: Vec<u64>,
    /// The chunk it reads through to, and that chunk's sequence: `(parent volume, seq)`.
    pub(super) link: Option<(u64, u64)>,
    /// Whether layer 1 may have files: false when known not to (a clone's chunk never
    /// written with seq 1), so that reads through it do not try to open them each time.
    pub(super) base: bool,
}

/// A plain chunk's: layer 1 is opened (or found missing) as it always was.
impl Default for Shape {
    fn default() -> Shape {
        Shape {
            upper: Vec::new(),
            link: None,
            base: true,
        }
    }
}

impl Shape {
    /// The layers to look in, newest first, up to `cap` (inclusive), layer 1 included when
    /// `cap >= 1`.
    pub(super) fn layers_upto(&self, cap: u64) -> impl Iterator<Item = u64> + '_ {
        self.upper
            .iter()
            .rev()
            .copied()
            .filter(move |&l| l <= cap)
            .chain((cap >= 1 && self.base).then_some(1))
    }
}

/// The non-plain chunks of one store.
#[derive(Default)]
pub(super) struct LayerMap {
    map: RwLock<HashMap<Key, Shape>>,
    /// How many chunks the map holds, published under its write lock: while 0 (a store
    /// whose volumes never had a snapshot or clone), lookups answer without the lock.
    count: AtomicUsize,
}

impl LayerMap {
    /// The chunk's shape (a plain chunk's is the default one).
    pub(super) fn get(&self, key: Key) -> Shape {
        if self.empty() {
            return Shape::default();
        }
        self.read().get(&key).cloned().unwrap_or_default()
    }

    /// Whether the chunk has only layer 1 and no parent.
    pub(super) fn is_plain(&self, key: Key) -> bool {
        self.empty() || !self.read().contains_key(&key)
    }

    /// Whether the chunk reads through to a parent.
    pub(super) fn is_linked(&self, key: Key) -> bool {
        !self.empty() && self.read().get(&key).is_some_and(|s| s.link.is_some())
    }

    /// Whether no chunk of the store has layers above 1 or a parent.
    pub(super) fn empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Layer `layer` of the chunk now has files. `base` says whether layer 1 has files,
    /// asked (under the map's lock) only if the chunk was plain.
    pub(super) fn add_layer(&self, key: Key, layer: u64, base: impl FnOnce() -> bool) {
        let mut map = self.write();
        if layer <= 1 {
            if let Some(shape) = map.get_mut(&key) {
                shape.base = true;
            }
            return;
        }
        let shape = map.entry(key).or_insert_with(|| Shape {
            base: base(),
            ..Shape::default()
        });
        if let Err(at) = shape.upper.binary_search(&layer) {
            shape.upper.insert(at, layer);
        }
        self.count.store(map.len(), Ordering::Release);
    }

    /// Layer `layer` of the chunk no longer has files.
    pub(super) fn remove_layer(&self, key: Key, layer: u64) {
        if layer <= 1 {
            self.update(key, |s| s.base = false);
        } else {
            self.update(key, |s| s.upper.retain(|&l| l != layer));
        }
    }

    /// Layers `layers` of the chunk no longer have files, all in one step: a reader sees
    /// either all of them or none.
    pub(super) fn remove_layers(&self, key: Key, layers: &[u64]) {
        self.update(key, |s| {
            s.base &= !layers.iter().any(|&l| l <= 1);
            s.upper.retain(|l| !layers.contains(l));
        });
    }

    /// The chunk's parent is now `link`; `base` as for [`LayerMap::add_layer`].
    pub(super) fn set_link(&self, key: Key, link: Option<(u64, u64)>, base: impl FnOnce() -> bool) {
        if link.is_some() {
            let mut map = self.write();
            map.entry(key)
                .or_insert_with(|| Shape {
                    base: base(),
                    ..Shape::default()
                })
                .link = link;
            self.count.store(map.len(), Ordering::Release);
        } else {
            self.update(key, |s| s.link = None);
        }
    }

    /// The chunk is gone, every layer and its link.
    pub(super) fn forget(&self, key: Key) {
        let mut map = self.write();
        map.remove(&key);
        self.count.store(map.len(), Ordering::Release);
    }

    fn update(&self, key: Key, f: impl FnOnce(&mut Shape)) {
        let mut map = self.write();
        if let Some(shape) = map.get_mut(&key) {
            f(shape);
            if shape.upper.is_empty() && shape.link.is_none() {
                map.remove(&key);
            }
        }
        self.count.store(map.len(), Ordering::Release);
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<Key, Shape>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Key, Shape>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }
}

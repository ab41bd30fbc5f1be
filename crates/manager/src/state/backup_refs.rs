//! The reference counts of backups' keys in each store, and what a backup mutation changes
//! in them: the rules that decide which objects, segments and roots the collector may
//! delete, and when.
//!
//! Per store: segment refs (recordings of the segment by backups' chunks; a segment at 0
//! is queued for release, its objects still counted), object refs (distinct recorded
//! segments naming the object; never 0: an object at 0 is forgotten and becomes garbage),
//! garbage (keys no one references, since when), claimed keys (being deleted) and `gc_gen`,
//! moved by every claim and every finished deletion.
//!
//! A mutation's effect is computed once, as a [`BackupDelta`] of rows decided against the
//! state before it ([`State::backup_delta`]): [`State::apply`](super::State::apply) applies
//! it to memory and the database writes the same rows, so they agree by construction.
//!
//! Must never: revive a claimed key (its deletion may already have happened), record a
//! new segment stamped with a `gc_gen` other than the store's (a claim or a deletion came
//! after the stamp; a segment the store counts is safe whatever the `gc_gen`: its objects
//! were counted all along; the leader stamps an upload across a collection with the
//! current `gc_gen` only if none of its keys was collected, see `service::collected`), make
//! an object garbage while a recorded segment names it, or a root while a record of the
//! store names it (a copy keeps its source's root, so two records may name one root).

use std::collections::{BTreeMap, BTreeSet};

use tessera_proto::control::{BackupState, Hash};

use super::backup_records::{BackupRecord, ChunkSegment, GcKey};
use super::{Mutation, State};

/// The keys of one store the collector tracks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct StoreRefs {
    pub gc_gen: u64,
    pub segs: BTreeMap<Hash, u64>,
    pub objects: BTreeMap<Hash, u64>,
    pub garbage: BTreeMap<GcKey, u64>,
    /// `(since, key)` of every garbage key (derived): the due ones without a scan.
    pub by_since: BTreeSet<(u64, GcKey)>,
    pub release: BTreeSet<Hash>,
    pub claimed: BTreeSet<GcKey>,
}

impl StoreRefs {
    fn is_empty(&self) -> bool {
        self.gc_gen == 0
            && self.segs.is_empty()
            && self.objects.is_empty()
            && self.garbage.is_empty()
            && self.release.is_empty()
            && self.claimed.is_empty()
    }
}

/// Every backup record, each backup's chunk → segment map, and each store's refs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Backups {
    pub records: BTreeMap<u64, BackupRecord>,
    pub chunks: BTreeMap<u64, BTreeMap<u64, Hash>>,
    pub stores: BTreeMap<String, StoreRefs>,
}

/// The rows one backup mutation changes, each with its value afterwards (`None`: the row
/// is removed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupDelta {
    pub records: BTreeMap<u64, Option<BackupRecord>>,
    /// `(backup id, chunk)` → segment.
    pub chunks: BTreeMap<(u64, u64), Option<Hash>>,
    /// `(store, segment)` → refs (0: queued for release).
    pub seg_refs: BTreeMap<(String, Hash), Option<u64>>,
    /// `(store, object)` → refs (≥ 1).
    pub obj_refs: BTreeMap<(String, Hash), Option<u64>>,
    /// `(store, key)` → garbage since (Unix seconds).
    pub garbage: BTreeMap<(String, GcKey), Option<u64>>,
    /// `(store, segment)` queued for release.
    pub release: BTreeMap<(String, Hash), bool>,
    /// `(store, key)` claimed by the collector.
    pub claimed: BTreeMap<(String, GcKey), bool>,
    /// store → `gc_gen`.
    pub gc_gen: BTreeMap<String, u64>,
}

/// A delta being decided: reads see the changes made so far, then the state.
struct Draft<'a> {
    b: &'a Backups,
    d: BackupDelta,
}

fn key(store: &str, k: Hash) -> (String, Hash) {
    (store.to_string(), k)
}

fn gkey(store: &str, k: GcKey) -> (String, GcKey) {
    (store.to_string(), k)
}

impl Draft<'_> {
    fn store(&self, store: &str) -> Option<&StoreRefs> {
        self.b.stores.get(store)
    }
    fn record(&self, id: u64) -> Option<BackupRecord> {
        match self.d.records.get(&id) {
            Some(r) => r.clone(),
            None => self.b.records.get(&id).cloned(),
        }
    }
    fn chunk(&self, id: u64, chunk: u64) -> Option<Hash> {
        match self.d.chunks.get(&(id, chunk)) {
            Some(h) => *h,
            None => self.b.chunks.get(&id).and_then(|c| c.get(&chunk)).copied(),
        }
    }
    fn seg(&self, store: &str, h: Hash) -> Option<u64> {
        match self.d.seg_refs.get(&key(store, h)) {
            Some(n) => *n,
            None => self.store(store).and_then(|s| s.segs.get(&h)).copied(),
        }
    }
    fn obj(&self, store: &str, h: Hash) -> u64 {
        match self.d.obj_refs.get(&key(store, h)) {
            Some(n) => n.unwrap_or(0),
            None => self
                .store(store)
                .and_then(|s| s.objects.get(&h))
                .copied()
                .unwrap_or(0),
        }
    }
    fn garbage(&self, store: &str, k: GcKey) -> Option<u64> {
        match self.d.garbage.get(&gkey(store, k)) {
            Some(since) => *since,
            None => self.store(store).and_then(|s| s.garbage.get(&k)).copied(),
        }
    }
    fn released(&self, store: &str, h: Hash) -> bool {
        match self.d.release.get(&key(store, h)) {
            Some(q) => *q,
            None => self.store(store).is_some_and(|s| s.release.contains(&h)),
        }
    }
    fn claimed(&self, store: &str, k: GcKey) -> bool {
        match self.d.claimed.get(&gkey(store, k)) {
            Some(c) => *c,
            None => self.store(store).is_some_and(|s| s.claimed.contains(&k)),
        }
    }
    fn gc_gen(&self, store: &str) -> u64 {
        match self.d.gc_gen.get(store) {
            Some(g) => *g,
            None => self.store(store).map_or(0, |s| s.gc_gen),
        }
    }

    fn set_obj(&mut self, store: &str, h: Hash, n: u64) {
        self.d.obj_refs.insert(key(store, h), (n > 0).then_some(n));
    }
    fn set_garbage(&mut self, store: &str, k: GcKey, since: Option<u64>) {
        if self.garbage(store, k) != since {
            self.d.garbage.insert(gkey(store, k), since);
        }
    }
    fn bump_gen(&mut self, store: &str) {
        let g = self.gc_gen(store).saturating_add(1);
        self.d.gc_gen.insert(store.to_string(), g);
    }

    /// One entry of [`Mutation::BackupChunks`]; false: skipped.
    fn record_chunk(&mut self, id: u64, store: &str, c: &ChunkSegment) -> bool {
        if self.chunk(id, c.chunk).is_some() {
            return true;
        }
        let seg = c.segment;
        if self.claimed(store, GcKey::Segment(seg)) {
            return false;
        }
        let known = self.seg(store, seg);
        let objects: BTreeSet<Hash> = match (known, &c.objects) {
            (Some(_), _) => BTreeSet::new(),
            (None, Some(objects)) => objects.iter().copied().collect(),
            (None, None) => return false,
        };
        if objects
            .iter()
            .any(|o| self.claimed(store, GcKey::Object(*o)))
        {
            return false;
        }
        self.d.chunks.insert((id, c.chunk), Some(seg));
        let refs = known.unwrap_or(0).saturating_add(1);
        self.d.seg_refs.insert(key(store, seg), Some(refs));
        if self.released(store, seg) {
            self.d.release.insert(key(store, seg), false);
        }
        self.set_garbage(store, GcKey::Segment(seg), None);
        for o in objects {
            let n = self.obj(store, o).saturating_add(1);
            self.set_obj(store, o, n);
            self.set_garbage(store, GcKey::Object(o), None);
        }
        true
    }

    fn delete_backup(&mut self, id: u64, now_unix: u64) {
        let Some(rec) = self.record(id) else {
            return;
        };
        let store = rec.store.as_str();
        self.d.records.insert(id, None);
        let chunks: Vec<(u64, Hash)> = self
            .b
            .chunks
            .get(&id)
            .map(|c| c.iter().map(|(c, h)| (*c, *h)).collect())
            .unwrap_or_default();
        for (chunk, seg) in chunks {
            self.d.chunks.insert((id, chunk), None);
            let Some(n) = self.seg(store, seg) else {
                continue;
            };
            let n = n.saturating_sub(1);
            self.d.seg_refs.insert(key(store, seg), Some(n));
            if n == 0 {
                self.d.release.insert(key(store, seg), true);
            }
        }
        // A copy keeps its source's root: another record of this store may name it.
        if let Some(root) = rec.root
            && !self.root_named(store, root, Some(id))
        {
            self.set_garbage(store, GcKey::Root(root), Some(now_unix));
        }
    }

    /// Whether a record of `store` other than `except` names `root`: as its root, or, for
    /// a copy still uploading, as its source's root (the one it will put).
    fn root_named(&self, store: &str, root: Hash, except: Option<u64>) -> bool {
        let names = |r: &BackupRecord| {
            r.root == Some(root)
                || (r.state == BackupState::Uploading
                    && r.copied_from
                        .and_then(|from| self.b.records.get(&from))
                        .is_some_and(|from| from.root == Some(root)))
        };
        self.b
            .records
            .values()
            .any(|r| Some(r.id) != except && r.store == store && names(r))
    }

    fn release(&mut self, store: &str, seg: Hash, objects: &[Hash], now_unix: u64) {
        if self.seg(store, seg) != Some(0) || !self.released(store, seg) {
            return;
        }
        self.d.seg_refs.insert(key(store, seg), None);
        self.d.release.insert(key(store, seg), false);
        let objects: BTreeSet<Hash> = objects.iter().copied().collect();
        for o in objects {
            let n = self.obj(store, o);
            if n == 0 {
                continue;
            }
            self.set_obj(store, o, n - 1);
            if n == 1 {
                self.set_garbage(store, GcKey::Object(o), Some(now_unix));
            }
        }
        self.set_garbage(store, GcKey::Segment(seg), Some(now_unix));
    }

    /// Moves the keys still garbage and unreferenced to claimed; `gc_gen` moves only if
    /// one was.
    fn claim(&mut self, store: &str, keys: &[GcKey]) {
        let mut any = false;
        for k in keys {
            let unreferenced = match k {
                GcKey::Object(h) => self.obj(store, *h) == 0,
                GcKey::Segment(h) => self.seg(store, *h).is_none(),
                GcKey::Root(h) => !self.root_named(store, *h, None),
            };
            if self.garbage(store, *k).is_some() && unreferenced {
                self.set_garbage(store, *k, None);
                self.d.claimed.insert(gkey(store, *k), true);
                any = true;
            }
        }
        if any {
            self.bump_gen(store);
        }
    }

    /// Forgets the claimed keys; `gc_gen` moves only if one was.
    fn deleted(&mut self, store: &str, keys: &[GcKey]) {
        let mut any = false;
        for k in keys {
            if self.claimed(store, *k) {
                self.d.claimed.insert(gkey(store, *k), false);
                any = true;
            }
        }
        if any {
            self.bump_gen(store);
        }
    }
}

impl State {
    /// The rows `m` changes if it is a backup mutation (`None` for any other): decided
    /// against this state, before `m` is applied.
    pub fn backup_delta(&self, m: &Mutation) -> Option<BackupDelta> {
        let mut w = Draft {
            b: &self.backups,
            d: BackupDelta::default(),
        };
        match m {
            Mutation::CreateBackup(rec) => {
                if w.record(rec.id).is_none() {
                    w.d.records.insert(rec.id, Some(rec.clone()));
                }
            }
            Mutation::BackupChunks {
                id,
                gc_gen,
                chunks,
                stats,
            } => {
                let Some(mut rec) = w.record(*id) else {
                    return Some(w.d);
                };
                if rec.state != BackupState::Uploading {
                    return Some(w.d);
                }
                // Across a claim or a deletion only segments the store counts are
                // recorded: their objects were counted throughout, so never deleted.
                let same_gen = w.gc_gen(&rec.store) == *gc_gen;
                let store = rec.store.clone();
                for c in chunks {
                    let recorded = (same_gen || w.seg(&store, c.segment).is_some())
                        && w.record_chunk(*id, &store, c);
                    // The access record follows the chunks recorded (a skipped one is
                    // sent again, with its count).
                    if recorded && c.reads > 0 {
                        rec.reads.insert(c.chunk, c.reads);
                    }
                }
                rec.stats = rec.stats.plus(stats);
                w.d.records.insert(*id, Some(rec));
            }
            Mutation::BackupReady {
                id,
                root,
                finished_unix,
            } => {
                // A root being deleted is not named: the job puts it again (forced) once
                // the deletion is recorded, and retries.
                if let Some(mut rec) = w.record(*id)
                    && rec.state == BackupState::Uploading
                    && !w.claimed(&rec.store, GcKey::Root(*root))
                {
                    w.set_garbage(&rec.store, GcKey::Root(*root), None);
                    rec.state = BackupState::Ready;
                    rec.root = Some(*root);
                    rec.finished_unix = Some(*finished_unix);
                    rec.error = None;
                    w.d.records.insert(*id, Some(rec));
                }
            }
            Mutation::BackupFailed {
                id,
                error,
                finished_unix,
            } => {
                if let Some(mut rec) = w.record(*id)
                    && rec.state == BackupState::Uploading
                {
                    rec.state = BackupState::Failed;
                    rec.finished_unix = Some(*finished_unix);
                    rec.error = Some(error.clone());
                    w.d.records.insert(*id, Some(rec));
                }
            }
            Mutation::BackupError { id, error } => {
                if let Some(mut rec) = w.record(*id)
                    && rec.state == BackupState::Uploading
                {
                    rec.error = Some(error.clone());
                    w.d.records.insert(*id, Some(rec));
                }
            }
            Mutation::DeleteBackup { id, now_unix } => w.delete_backup(*id, *now_unix),
            Mutation::SegmentsReleased {
                store,
                segs,
                now_unix,
            } => {
                for (seg, objects) in segs {
                    w.release(store, *seg, objects, *now_unix);
                }
            }
            Mutation::GcClaim { store, keys } => w.claim(store, keys),
            Mutation::GcDeleted { store, keys } => w.deleted(store, keys),
            _ => return None,
        }
        Some(w.d)
    }

    /// Applies a delta from [`State::backup_delta`] to memory.
    pub(super) fn apply_backup_delta(&mut self, d: &BackupDelta) {
        let b = &mut self.backups;
        for (id, rec) in &d.records {
            match rec {
                Some(r) => {
                    b.records.insert(*id, r.clone());
                }
                None => {
                    b.records.remove(id);
                }
            }
        }
        for ((id, chunk), seg) in &d.chunks {
            match seg {
                Some(s) => {
                    b.chunks.entry(*id).or_default().insert(*chunk, *s);
                }
                None => {
                    if let Some(c) = b.chunks.get_mut(id) {
                        c.remove(chunk);
                        if c.is_empty() {
                            b.chunks.remove(id);
                        }
                    }
                }
            }
        }
        let mut touched = BTreeSet::new();
        let stores = &mut b.stores;
        for ((store, h), n) in &d.seg_refs {
            put(&mut refs(stores, &mut touched, store).segs, *h, *n);
        }
        for ((store, h), n) in &d.obj_refs {
            put(&mut refs(stores, &mut touched, store).objects, *h, *n);
        }
        for ((store, k), since) in &d.garbage {
            let s = refs(stores, &mut touched, store);
            if let Some(old) = s.garbage.remove(k) {
                s.by_since.remove(&(old, *k));
            }
            if let Some(since) = since {
                s.garbage.insert(*k, *since);
                s.by_since.insert((*since, *k));
            }
        }
        for ((store, h), queued) in &d.release {
            set(&mut refs(stores, &mut touched, store).release, *h, *queued);
        }
        for ((store, k), claimed) in &d.claimed {
            set(&mut refs(stores, &mut touched, store).claimed, *k, *claimed);
        }
        for (store, g) in &d.gc_gen {
            refs(stores, &mut touched, store).gc_gen = *g;
        }
        for store in touched {
            if b.stores.get(&store).is_some_and(StoreRefs::is_empty) {
                b.stores.remove(&store);
            }
        }
    }
}

/// The refs of `store`, created if missing; noted as touched.
fn refs<'a>(
    stores: &'a mut BTreeMap<String, StoreRefs>,
    touched: &mut BTreeSet<String>,
    store: &str,
) -> &'a mut StoreRefs {
    if !touched.contains(store) {
        touched.insert(store.to_string());
    }
    stores.entry(store.to_string()).or_default()
}

fn put<K: Ord, V>(map: &mut BTreeMap<K, V>, k: K, v: Option<V>) {
    match v {
        Some(v) => {
            map.insert(k, v);
        }
        None => {
            map.remove(&k);
        }
    }
}

fn set<K: Ord>(s: &mut BTreeSet<K>, k: K, on: bool) {
    if on {
        s.insert(k);
    } else {
        s.remove(&k);
    }
}

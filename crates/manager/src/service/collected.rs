//! Recording backup chunks uploaded across a collection: what the collector deleted lately,
//! per store, kept in this manager's memory from the entries it applies ([`Collected`]), and
//! [`Service::record_backup_chunks`], which the upload and copy jobs record through.
//!
//! The state records a new segment only if the store's `gc_gen` did not move since its
//! upload started: any claim or deletion meanwhile may have removed a key the upload relied
//! on (an object its node found in the store, so did not put). That rule alone costs
//! liveness: deleting a large backup is hundreds of batches, each a claim and a deletion, so
//! `gc_gen` moves about every second for minutes, every upload to that store in the meantime
//! was skipped and redone, and its backup gave up after `GIVE_UP`. Here a chunk whose upload
//! read an older `gc_gen` is stamped with the current one when none of its keys can have
//! gone: none is claimed now (a claim still being deleted), and none was forgotten by a
//! `GcDeleted` applied since (a deletion finished). A claimed key can only be deleted, never
//! referenced again, so those two cover every key the collector touched since.
//!
//! Must never vouch for an upload that read a `gc_gen` this memory does not cover (each
//! store's floor: one past its `gc_gen` when this manager started or installed a snapshot,
//! raised past the deletions dropped beyond [`KEEP_KEYS`]). The state checks `gc_gen` again
//! when the entry applies, so a claim committed in between still skips the chunk.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tessera_proto::control::ControlError;

use super::Service;
use crate::state::{BackupStats, ChunkSegment, GcKey, Mutation, State};

/// Deleted keys remembered per store at most: 64 of the collector's full batches, a few MiB.
/// That is about a minute of a long collection on a slow store, some seconds on a fast one
/// (16 batches a pass); an upload that began before the oldest one kept is redone (a cost
/// in speed only). The oldest batches go first.
pub(crate) const KEEP_KEYS: usize = 64 * 1000;

/// What the collector deleted lately (leader or not: every manager applies the same log).
#[derive(Debug, Default)]
pub(crate) struct Collected {
    stores: BTreeMap<String, Deleted>,
    /// The stores' `gc_gen` when this memory started (a store not named was at 0).
    started: BTreeMap<String, u64>,
}

/// One store's deletions since this memory started.
#[derive(Debug, Default)]
struct Deleted {
    /// Every deletion applied since this memory started with a `gc_gen` from this one on is
    /// remembered; only a read of `gc_gen` at or above it is vouched for.
    floor: u64,
    /// Each deleted key, with the `gc_gen` the store was at once its (last) deletion was
    /// applied.
    keys: HashMap<GcKey, u64>,
    /// The deletions in order, to drop the oldest: the `gc_gen` and the keys.
    order: VecDeque<(u64, Vec<GcKey>)>,
    /// Keys in `order` (a key deleted twice counts twice).
    held: usize,
}

impl Collected {
    /// Empty, remembering from `state` on (a start, a snapshot installed).
    pub(crate) fn from(state: &State) -> Self {
        Collected {
            stores: BTreeMap::new(),
            started: state.gc_gens(),
        }
    }

    /// Nothing is vouched for below this: a read of the `gc_gen` the store had when this
    /// memory started may have come before it (a job that outlived a snapshot install), and
    /// a deletion recorded then at that same `gc_gen` (one that forgot nothing new) after it.
    fn first_floor(&self, store: &str) -> u64 {
        self.started
            .get(store)
            .copied()
            .unwrap_or(0)
            .saturating_add(1)
    }

    /// A `GcDeleted` of `keys` applied, which left the store at `gc_gen`.
    pub(crate) fn deleted(&mut self, store: &str, gc_gen: u64, keys: &[GcKey]) {
        let floor = self.first_floor(store);
        let d = self.stores.entry(store.to_string()).or_insert(Deleted {
            floor,
            ..Deleted::default()
        });
        for k in keys {
            d.keys.insert(*k, gc_gen);
        }
        d.order.push_back((gc_gen, keys.to_vec()));
        d.held += keys.len();
        while d.held > KEEP_KEYS {
            let Some((g, gone)) = d.order.pop_front() else {
                break;
            };
            d.held -= gone.len();
            for k in gone {
                if d.keys.get(&k) == Some(&g) {
                    d.keys.remove(&k);
                }
            }
            d.floor = d.floor.max(g.saturating_add(1));
        }
    }

    /// Whether none of `keys` can have been deleted from `store` after a read of its
    /// `gc_gen` gave `since` (`false` if that is older than this memory). A deletion applied
    /// at `since` itself counts: one that forgot nothing new leaves `gc_gen` unchanged, so
    /// it may have come after the read.
    pub(crate) fn none_deleted_since(&self, store: &str, since: u64, keys: &[GcKey]) -> bool {
        match self.stores.get(store) {
            Some(d) => {
                d.floor <= since
                    && keys
                        .iter()
                        .all(|k| d.keys.get(k).is_none_or(|g| *g < since))
            }
            None => self.first_floor(store) <= since,
        }
    }
}

/// The keys a recorded chunk makes the store count: its segment and the objects it names.
fn chunk_keys(c: &ChunkSegment) -> Vec<GcKey> {
    let objects = c.objects.iter().flatten().map(|o| GcKey::Object(*o));
    std::iter::once(GcKey::Segment(c.segment))
        .chain(objects)
        .collect()
}

impl Service {
    /// Whether none of `keys` can have left `store` since its `gc_gen` was `since`: it has
    /// not moved, or none of them is claimed now nor was deleted since (as far as this
    /// manager remembers).
    pub(crate) fn untouched_since(&self, store: &str, since: u64, keys: &[GcKey]) -> bool {
        self.state.gc_gen(store) == since
            || (keys.iter().all(|k| !self.state.is_claimed(store, k))
                && self.collected.none_deleted_since(store, since, keys))
    }

    /// Records `chunks`, uploaded (or copied) into `store` for backup `id` after its
    /// `gc_gen` was read as `gc_gen`, with the job's `stats` (`BackupChunks`). A segment the
    /// store already counts is named without its objects. Chunks none of whose keys the
    /// collector touched since are recorded as of the current `gc_gen` (see the module doc);
    /// the others keep `gc_gen`, and the state skips them unless their segment is known.
    /// The caller checked that the backup is still uploading, on the leader.
    pub(crate) fn record_backup_chunks(
        &mut self,
        id: u64,
        store: &str,
        gc_gen: u64,
        chunks: Vec<ChunkSegment>,
        stats: BackupStats,
    ) -> Result<(), ControlError> {
        let state = &self.state;
        let now = state.gc_gen(store);
        let (mut fresh, mut stale) = (Vec::new(), Vec::new());
        for c in chunks {
            let untouched = gc_gen == now || self.untouched_since(store, gc_gen, &chunk_keys(&c));
            let c = ChunkSegment {
                objects: c
                    .objects
                    .clone()
                    .filter(|_| !state.segment_known(store, &c.segment)),
                ..c
            };
            if untouched {
                fresh.push(c)
            } else {
                stale.push(c)
            }
        }
        let mut stats = Some(stats);
        for (gc_gen, chunks) in [(now, fresh), (gc_gen, stale)] {
            if chunks.is_empty() {
                continue;
            }
            self.commit_led(Mutation::BackupChunks {
                id,
                gc_gen,
                chunks,
                stats: stats.take().unwrap_or_default(),
            })?;
        }
        match stats {
            // Nothing to record but what the job counted.
            Some(stats) if stats != BackupStats::default() => {
                self.commit_led(Mutation::BackupChunks {
                    id,
                    gc_gen: now,
                    chunks: Vec::new(),
                    stats,
                })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use tessera_proto::control::Hash;

    use tessera_proto::control::BackupState;

    use super::{Collected, KEEP_KEYS};
    use crate::backup_loop::tests::backup_record;
    use crate::state::{BackupRecord, GcKey, Mutation, State};

    fn obj(i: u64) -> GcKey {
        let mut h = [0; 32];
        h[..8].copy_from_slice(&i.to_le_bytes());
        GcKey::Object(Hash(h))
    }

    /// Memory started with store "a" at `gc_gen` 5.
    fn started_at_5() -> Collected {
        Collected {
            started: BTreeMap::from([("a".to_string(), 5)]),
            ..Collected::default()
        }
    }

    #[test]
    fn a_key_deleted_at_or_after_the_gc_gen_an_upload_read_is_reported_and_others_not() {
        let mut c = started_at_5();
        c.deleted("a", 7, &[obj(1)]);
        assert!(!c.none_deleted_since("a", 6, &[obj(2), obj(1)]));
        assert!(
            !c.none_deleted_since("a", 7, &[obj(1)]),
            "a deletion at the gc_gen read may have forgotten nothing new, so come after it"
        );
        assert!(
            c.none_deleted_since("a", 8, &[obj(1)]),
            "deleted before the read"
        );
        assert!(c.none_deleted_since("a", 6, &[obj(2), obj(3)]));
        assert!(c.none_deleted_since("b", 1, &[obj(1)]), "another store");
    }

    #[test]
    fn nothing_is_vouched_for_from_before_the_memory_started() {
        let mut c = started_at_5();
        assert!(!c.none_deleted_since("a", 4, &[obj(1)]));
        assert!(
            !c.none_deleted_since("a", 5, &[obj(1)]),
            "read at the gc_gen of the start: maybe before it"
        );
        assert!(c.none_deleted_since("a", 6, &[obj(1)]));
        c.deleted("a", 7, &[obj(1)]);
        assert!(!c.none_deleted_since("a", 5, &[obj(2)]), "the floor stays");
        // A store unknown when the memory started was at 0: every deletion since is seen.
        assert!(!c.none_deleted_since("b", 0, &[obj(1)]));
        c.deleted("b", 2, &[obj(1)]);
        assert!(c.none_deleted_since("b", 1, &[obj(2)]));
        assert!(!c.none_deleted_since("b", 1, &[obj(1)]));
        assert!(c.none_deleted_since("b", 3, &[obj(1)]));
    }

    /// What a manager starts with (`Service::new`, a snapshot installed): the floor of a
    /// store the state has collected in is one past its `gc_gen`.
    #[test]
    fn a_memory_from_a_state_starts_past_each_stores_gc_gen() {
        let mut state = State::default();
        let root = Hash([7; 32]);
        let keys = vec![GcKey::Root(root)];
        let store = "local".to_string();
        for m in [
            Mutation::CreateBackup(BackupRecord {
                state: BackupState::Ready,
                root: Some(root),
                ..backup_record(1, 1, None)
            }),
            Mutation::DeleteBackup { id: 1, now_unix: 0 },
            Mutation::GcClaim {
                store: store.clone(),
                keys: keys.clone(),
            },
            Mutation::GcDeleted { store, keys },
        ] {
            state.apply(&m);
        }
        assert_eq!(state.gc_gen("local"), 2);
        let c = Collected::from(&state);
        assert!(!c.none_deleted_since("local", 2, &[obj(1)]));
        assert!(c.none_deleted_since("local", 3, &[obj(1)]));
        assert!(c.none_deleted_since("other", 1, &[obj(1)]));
    }

    #[test]
    fn dropping_old_deletions_raises_the_floor_past_them() {
        let mut c = started_at_5();
        let batch = 1000;
        let batches = (KEEP_KEYS / batch) as u64 + 3;
        for b in 0..batches {
            let keys: Vec<GcKey> = (0..batch as u64).map(|i| obj(b * 10_000 + i)).collect();
            c.deleted("a", 10 + b, &keys);
        }
        let d = &c.stores["a"];
        assert!(d.keys.len() <= KEEP_KEYS, "{} keys kept", d.keys.len());
        // Batches 0 to 2 (at gc_gen 10 to 12) were dropped.
        assert_eq!(d.floor, 13);
        assert!(
            !c.none_deleted_since("a", 12, &[obj(999_999)]),
            "below the floor"
        );
        assert!(
            c.none_deleted_since("a", 13, &[obj(0)]),
            "dropped, and before 13"
        );
        let last = batches - 1;
        assert!(!c.none_deleted_since("a", 13, &[obj(last * 10_000)]));
    }

    #[test]
    fn a_key_deleted_twice_is_remembered_by_its_last_deletion_after_the_first_is_dropped() {
        let mut c = started_at_5();
        c.deleted("a", 6, &[obj(1)]);
        c.deleted("a", 8, &[obj(1)]);
        assert!(!c.none_deleted_since("a", 7, &[obj(1)]));
        let filler: Vec<GcKey> = (100..100 + KEEP_KEYS as u64 - 1).map(obj).collect();
        c.deleted("a", 9, &filler);
        assert_eq!(
            c.stores["a"].floor, 7,
            "the first deletion of key 1 was dropped"
        );
        assert!(
            !c.none_deleted_since("a", 7, &[obj(1)]),
            "its second one is kept"
        );
    }

    #[test]
    fn the_same_keys_deleted_again_and_again_hold_bounded_memory() {
        let mut c = started_at_5();
        for g in 0..KEEP_KEYS as u64 + 10 {
            c.deleted("a", 6 + g, &[obj(1)]);
        }
        let d = &c.stores["a"];
        assert!(
            d.order.len() <= KEEP_KEYS,
            "{} deletions held",
            d.order.len()
        );
        assert_eq!(d.keys.len(), 1);
    }
}

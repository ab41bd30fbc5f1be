//! The backup jobs as [`Solo`] plays them: uploads of a backup's chunks (or a copy's
//! segments), its root put and the backup made ready, the collector's passes over a store
//! (segments released, garbage claimed and deleted), and a restore's progress. Each
//! commits what its production job commits, behind the same checks, in the same order
//! (`backup_jobs`, `backup_loop`, `copy_loop`, `gc_loop`, `restore_loop`); what the store
//! holds is made up: a segment's content is its chunk and one byte of the input, and its
//! objects follow from the byte. The store's keys are kept (`Solo::stored`): whatever the
//! state counts must be there ([`Solo::check_store`]), which is what `gc_gen`, claims and
//! the collector's settling time protect.

use tessera_proto::control::{BackupState, Hash};

use crate::backup_jobs::still_uploading;
use crate::gc_loop::{BATCH, SETTLE};
use crate::state::{BackupStats, ChunkSegment, GcKey, Mutation};

use super::{Held, Ops, Solo};

/// A made-up hash: `kind`, then `value`'s bytes.
fn hash(kind: u8, value: u64) -> Hash {
    let mut h = [0u8; 32];
    h[0] = kind;
    h[1..9].copy_from_slice(&value.to_le_bytes());
    Hash(h)
}

/// The segment of `chunk` holding `content` (a segment names its chunk: two chunks never
/// share one).
fn segment(chunk: u64, content: u8) -> Hash {
    hash(1, (chunk << 8) | u64::from(content))
}

/// The objects a segment names: two, one of them shared with the segment of half its
/// content, so segments share objects.
fn objects(segment: &Hash) -> Vec<Hash> {
    let content = segment.0[1];
    let mut o = vec![hash(2, u64::from(content)), hash(2, u64::from(content / 2))];
    o.dedup();
    o
}

impl Solo {
    /// One upload of the uploading backup `pick` (modulo how many there are): of `chunks`
    /// (chunk, content) those inside the backup's volume, or for a copy its source's
    /// segments of those chunks not recorded yet. The upload reads the store's `gc_gen`
    /// first, puts its keys, and is recorded now (`Apply`), never (`Fail`), or later
    /// (`Hold`). A chunk's reads (the access record) follow from its content.
    pub fn backup_upload(&mut self, pick: usize, chunks: &[(u64, u8)], ops: Ops) {
        let state = self.state();
        let uploading = state.backups_uploading();
        let Some(b) = uploading.get(pick % uploading.len().max(1)) else {
            return;
        };
        let gc_gen = state.gc_gen(&b.store);
        let recorded = state.backup_segments(b.id);
        let segments: Vec<(u64, Hash)> = match b.copied_from {
            Some(source) => state
                .backup_segments(source)
                .into_iter()
                .filter(|(c, _)| {
                    !recorded.contains_key(c) && chunks.iter().any(|(pick, _)| pick == c)
                })
                .collect(),
            None => {
                let count = b.size.div_ceil(b.chunk_size.max(1));
                let mapped = state.volume_chunk_groups(b.volume_id);
                chunks
                    .iter()
                    .filter(|(c, _)| *c < count && mapped.contains_key(c))
                    .map(|(c, content)| (*c, segment(*c, *content)))
                    .collect()
            }
        };
        let store = b.store.clone();
        let upload = Held::Upload {
            id: b.id,
            of_volume: b.copied_from.is_none(),
            gc_gen,
            chunks: segments
                .into_iter()
                .map(|(chunk, segment)| ChunkSegment {
                    chunk,
                    segment,
                    objects: Some(objects(&segment)),
                    reads: u64::from(segment.0[1] % 4),
                })
                .collect(),
        };
        if let Held::Upload { chunks, .. } = &upload {
            for c in chunks {
                let keys = objects(&c.segment).into_iter().map(GcKey::Object);
                for k in keys.chain([GcKey::Segment(c.segment)]) {
                    self.stored.insert((store.clone(), k));
                }
            }
        }
        match ops {
            Ops::Apply => self.deliver_now(upload, true),
            Ops::Fail => {}
            Ops::Hold => self.hold(upload),
        }
    }

    /// Records uploaded chunks, as `backup_jobs::record_chunks` does.
    pub(super) fn record_upload(
        &mut self,
        id: u64,
        of_volume: bool,
        gc_gen: u64,
        chunks: Vec<ChunkSegment>,
    ) {
        let s = self.service();
        if !still_uploading(s, id, of_volume).unwrap_or(false) {
            return;
        }
        let Some(store) = s.state().backup(id).map(|b| b.store.clone()) else {
            return;
        };
        let _ = s.record_backup_chunks(id, &store, gc_gen, chunks, BackupStats::default());
    }

    /// The uploading backup `pick` is finished (a backup's chunks not uploaded held no
    /// data; a copy must hold all its source's segments): its root put and the backup
    /// recorded ready, as `backup_jobs::put_root_ready` does (a root the collector claimed
    /// makes it wait, with an error reported). A copy keeps its source's root.
    ///
    /// With `give_up`, the job gives up instead (a chunk failing too long, a corrupt
    /// source): the backup is recorded failed, as `backup_jobs::fail` does.
    pub fn backup_ready(&mut self, pick: usize, give_up: bool) {
        let now = self.now().unix;
        let s = self.service();
        let uploading = s.state().backups_uploading();
        let Some(b) = uploading.get(pick % uploading.len().max(1)) else {
            return;
        };
        if give_up {
            let _ = s.commit_led(Mutation::BackupFailed {
                id: b.id,
                error: "gave up".into(),
                finished_unix: now,
            });
            return;
        }
        let root = match b.copied_from {
            // A copy is finished once it holds every segment of its source.
            Some(source) => match s.state().backup(source).and_then(|r| r.root) {
                Some(root)
                    if s.state().backup_segments(source).len()
                        == s.state().backup_segments(b.id).len() =>
                {
                    root
                }
                _ => return,
            },
            None => hash(3, b.id),
        };
        let (id, of_volume) = (b.id, b.copied_from.is_none());
        if !still_uploading(s, id, of_volume).unwrap_or(false) {
            return;
        }
        if s.state().is_claimed(&b.store, &GcKey::Root(root)) {
            let error = format!("collector deleting root {root}; put again once it is gone");
            let _ = s.commit_led(Mutation::BackupError { id, error });
            return;
        }
        let store = b.store.clone();
        self.stored.insert((store, GcKey::Root(root)));
        let _ = self.service().commit_led(Mutation::BackupReady {
            id,
            root,
            finished_unix: now,
        });
    }

    /// One pass of the collector over store `pick` of those with work, as `gc_loop`
    /// does: segments queued for release are released (with their objects, or with none
    /// if `ops` is `Fail`: the store lost them); keys claimed before are deleted once this
    /// manager has led for a minute; garbage older than `grace_secs` is claimed; the
    /// deletion is recorded now (`Apply`), never (`Fail`), or later (`Hold`).
    pub fn collect(&mut self, pick: usize, grace_secs: u64, ops: Ops) {
        let now = self.now().unix;
        let led_for = self.clock.saturating_sub(self.led_since).as_secs();
        let s = self.service();
        let stores = s.state().stores_with_gc_work();
        let Some(store) = stores.get(pick % stores.len().max(1)).cloned() else {
            return;
        };
        let segs: Vec<(Hash, Vec<Hash>)> = s
            .state()
            .segments_to_release(&store, BATCH)
            .into_iter()
            .map(|h| {
                (
                    h,
                    if ops == Ops::Fail {
                        Vec::new()
                    } else {
                        objects(&h)
                    },
                )
            })
            .collect();
        if !segs.is_empty() {
            let _ = s.commit_led(Mutation::SegmentsReleased {
                store: store.clone(),
                segs,
                now_unix: now,
            });
        }
        let mut deleting = Vec::new();
        let leftover = s.state().claimed(&store);
        if led_for >= SETTLE.as_secs() {
            deleting.extend(leftover);
        }
        let due = s
            .state()
            .garbage_due(&store, now.saturating_sub(grace_secs), BATCH);
        if !due.is_empty() {
            if s.commit_led(Mutation::GcClaim {
                store: store.clone(),
                keys: due.clone(),
            })
            .is_err()
            {
                return;
            }
            let claimed = s.state().claimed(&store);
            deleting.extend(due.into_iter().filter(|k| claimed.contains(k)));
        }
        if deleting.is_empty() {
            return;
        }
        // The store deletes them now (unless the deletion fails); recording it may wait.
        if ops != Ops::Fail {
            for k in &deleting {
                self.stored.remove(&(store.clone(), *k));
            }
        }
        let deleted = Held::Deleted {
            store,
            keys: deleting,
        };
        match ops {
            Ops::Apply => self.deliver_now(deleted, true),
            Ops::Fail => {}
            Ops::Hold => self.hold(deleted),
        }
    }

    /// One step of the restore of restoring volume `pick` (linked ones only, as
    /// `restore_loop`): `done`, or its chunks filled up to `steps` positions further.
    pub fn restore_step(&mut self, pick: usize, steps: u64, done: bool) {
        let s = self.service();
        let restoring: Vec<_> = s
            .state()
            .restoring_volumes()
            .into_iter()
            .filter(|(_, r)| r.linked)
            .collect();
        let Some((volume_id, r)) = restoring.get(pick % restoring.len().max(1)).cloned() else {
            return;
        };
        let ready = s
            .state()
            .backup(r.backup)
            .is_some_and(|b| b.state == BackupState::Ready);
        let total = s.state().restore_order(r.backup).len() as u64;
        let m = if done {
            Mutation::RestoreDone { volume_id }
        } else {
            // Recorded only while chunks are left to fill (`restore_loop`).
            let next = (r.next_position + steps).min(total.saturating_sub(1));
            if next <= r.next_position || !ready {
                return;
            }
            Mutation::RestoreProgress {
                volume_id,
                next_chunk: 0,
                next_position: next,
            }
        };
        let _ = s.commit_led(m);
    }

    /// Every key the state counts is in its store: each segment a backup records and
    /// the objects it names, and the root of each ready backup. Panics if not.
    pub(super) fn check_store(&self) {
        let state = self.state();
        for b in state.backup_records() {
            let mut keys: Vec<GcKey> = Vec::new();
            for seg in state.backup_segments(b.id).values() {
                keys.push(GcKey::Segment(*seg));
                keys.extend(objects(seg).into_iter().map(GcKey::Object));
            }
            if b.state == BackupState::Ready {
                keys.extend(b.root.map(GcKey::Root));
            }
            for k in keys {
                let there = self.stored.contains(&(b.store.clone(), k));
                assert!(
                    there,
                    "backup {} counts {k:?}, gone from store {}",
                    b.id, b.store
                );
            }
        }
    }
}

//! Backups in the state: the plans of the backup requests (create, delete, copy; restores
//! are `restores`'),
//! the queries the background jobs and the answers read, and the refusals that keep what
//! a job reads in place (a snapshot an uploading backup reads, a backup a restore or a
//! copy reads). The reference counts and what each mutation changes in them are in
//! `backup_refs`.
//!
//! Plans return a [`Mutation`] and change nothing. The stores themselves (names, zones,
//! which is the default) are the configuration's: a plan takes a store name already
//! checked against it.

use std::collections::{BTreeMap, BTreeSet};

use tessera_proto::control::{BackupInfo, BackupState, ControlError, Hash, SnapshotState};

use crate::volume;

use super::backup_records::{BackupRecord, BackupStats, GcKey};
use super::{Mutation, State};

/// What [`State::plan_copy_backup`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyPlan {
    /// The store already has a copy (or the original): this record.
    Existing(u64),
    /// A new copy record to create.
    New(Box<Mutation>),
}

/// Counts of one store, for `ListStores`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreCounts {
    /// Backup records in it (any state).
    pub backups: u64,
    /// Objects referenced.
    pub objects: u64,
    /// Garbage keys not yet claimed (objects, segments, roots).
    pub garbage: u64,
}

#[allow(
    dead_code,
    reason = "the backup jobs (backup_loop, copy_loop, gc_loop, restore_loop) use these"
)]
impl State {
    /// A backup's record.
    pub fn backup(&self, id: u64) -> Option<&BackupRecord> {
        self.backups.records.get(&id)
    }

    /// Every backup record, by id.
    pub fn backup_records(&self) -> impl Iterator<Item = &BackupRecord> {
        self.backups.records.values()
    }

    /// Backups (and copies: `copied_from` set) still uploading, by id.
    pub fn backups_uploading(&self) -> Vec<BackupRecord> {
        self.backups
            .records
            .values()
            .filter(|r| r.state == BackupState::Uploading)
            .cloned()
            .collect()
    }

    /// The chunk → segment map of a backup as recorded so far.
    pub fn backup_segments(&self, id: u64) -> BTreeMap<u64, Hash> {
        self.backups.chunks.get(&id).cloned().unwrap_or_default()
    }

    /// The segment recorded for one chunk of a backup.
    pub fn backup_segment(&self, id: u64, chunk: u64) -> Option<Hash> {
        self.backups.chunks.get(&id)?.get(&chunk).copied()
    }

    /// Chunks of a backup with a segment recorded.
    pub fn backup_chunks_done(&self, id: u64) -> u64 {
        self.backups.chunks.get(&id).map_or(0, |c| c.len() as u64)
    }

    /// Ready records holding the same backup as `id` (itself, the backup it was copied
    /// from, and every copy of either), by id: where a restore may read it.
    pub fn backup_replicas(&self, id: u64) -> Vec<&BackupRecord> {
        self.same_backup(id)
            .filter(|r| r.state == BackupState::Ready)
            .collect()
    }

    /// Every record holding the same backup as `id`, in any state: itself, the backup it
    /// was copied from, and every copy of either.
    fn same_backup(&self, id: u64) -> impl Iterator<Item = &BackupRecord> {
        let mut origin = id;
        let mut seen = BTreeSet::new();
        while let Some(from) = self.backup(origin).and_then(|r| r.copied_from) {
            if !seen.insert(origin) {
                break;
            }
            origin = from;
        }
        let of_origin = move |r: &&BackupRecord| {
            let mut at = r.id;
            let mut hops = 0;
            loop {
                if at == origin {
                    return true;
                }
                match self.backup(at).and_then(|r| r.copied_from) {
                    Some(from) if hops < 64 => {
                        at = from;
                        hops += 1;
                    }
                    _ => return false,
                }
            }
        };
        self.backups.records.values().filter(of_origin)
    }

    /// Whether what uploading backup `id` reads is still there: its volume (the same one,
    /// by id and name), and its snapshot, ready, at the backup's sequence. The upload job
    /// asks before recording chunks and before the root; an error says what is gone.
    pub fn backup_still_valid(&self, id: u64) -> Result<(), String> {
        let r = self
            .backup(id)
            .ok_or_else(|| format!("backup {id} is gone"))?;
        if r.copied_from.is_some() {
            return Ok(());
        }
        let v = self
            .volumes
            .get(&r.volume_id)
            .ok_or_else(|| format!("volume {:?} was deleted", r.volume))?;
        v.rec
            .snapshot(&r.snapshot)
            .filter(|s| s.seq == r.seq && s.state == SnapshotState::Ready)
            .ok_or_else(|| format!("snapshot {}@{} was deleted", r.volume, r.snapshot))?;
        // An incremental one reads the blocks changed since its base's snapshot.
        if r.base.is_some() && !v.rec.snapshots.iter().any(|s| s.seq == r.base_seq) {
            return Err(format!(
                "the snapshot of backup {id}'s base (sequence {}) was deleted",
                r.base_seq
            ));
        }
        Ok(())
    }

    /// The store's `gc_gen`: moved by every claim and finished deletion of the collector.
    /// A job records chunks with the `gc_gen` read before it uploaded them, or the current
    /// one if none of their keys was collected since (`service::collected`).
    pub fn gc_gen(&self, store: &str) -> u64 {
        self.backups.stores.get(store).map_or(0, |s| s.gc_gen)
    }

    /// Every store's `gc_gen` (stores the state never touched are at 0).
    pub fn gc_gens(&self) -> BTreeMap<String, u64> {
        self.backups
            .stores
            .iter()
            .map(|(name, s)| (name.clone(), s.gc_gen))
            .collect()
    }

    /// Whether the store counts this segment (referenced, or at 0 awaiting release): a
    /// chunk may then be recorded with it and no objects.
    pub fn segment_known(&self, store: &str, seg: &Hash) -> bool {
        self.backups
            .stores
            .get(store)
            .is_some_and(|s| s.segs.contains_key(seg))
    }

    /// Distinct recorded segments naming the object (0: none).
    pub fn object_refs(&self, store: &str, obj: &Hash) -> u64 {
        self.backups
            .stores
            .get(store)
            .and_then(|s| s.objects.get(obj))
            .copied()
            .unwrap_or(0)
    }

    /// Garbage keys of the store unreferenced since `cutoff_unix` or earlier, oldest
    /// first, at most `limit`: what the collector may claim.
    pub fn garbage_due(&self, store: &str, cutoff_unix: u64, limit: usize) -> Vec<GcKey> {
        let Some(s) = self.backups.stores.get(store) else {
            return Vec::new();
        };
        s.by_since
            .iter()
            .take_while(|(since, _)| *since <= cutoff_unix)
            .take(limit)
            .map(|(_, k)| *k)
            .collect()
    }

    /// Keys claimed (being deleted) in the store: a collector taking over deletes them
    /// again, then records [`Mutation::GcDeleted`].
    pub fn claimed(&self, store: &str) -> Vec<GcKey> {
        self.backups
            .stores
            .get(store)
            .map(|s| s.claimed.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether `key` of the store is claimed (being deleted). A `BackupReady` naming a
    /// claimed root is skipped: the job waits until the deletion is recorded (no longer
    /// claimed), puts the root again with `force`, and commits `BackupReady` again.
    pub fn is_claimed(&self, store: &str, key: &GcKey) -> bool {
        self.backups
            .stores
            .get(store)
            .is_some_and(|s| s.claimed.contains(key))
    }

    /// Segments at 0 refs queued for release, at most `limit`: the collector reads each
    /// from the store and records [`Mutation::SegmentsReleased`] with their objects.
    pub fn segments_to_release(&self, store: &str, limit: usize) -> Vec<Hash> {
        self.backups
            .stores
            .get(store)
            .map(|s| s.release.iter().take(limit).copied().collect())
            .unwrap_or_default()
    }

    /// Stores with garbage, claimed keys or segments to release.
    pub fn stores_with_gc_work(&self) -> Vec<String> {
        self.backups
            .stores
            .iter()
            .filter(|(_, s)| {
                !s.garbage.is_empty() || !s.claimed.is_empty() || !s.release.is_empty()
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Backups, referenced objects and garbage of one store.
    pub fn store_counts(&self, store: &str) -> StoreCounts {
        let s = self.backups.stores.get(store);
        StoreCounts {
            backups: self
                .backups
                .records
                .values()
                .filter(|r| r.store == store)
                .count() as u64,
            objects: s.map_or(0, |s| s.objects.len() as u64),
            garbage: s.map_or(0, |s| s.garbage.len() as u64),
        }
    }

    /// A backup as reported; the zone is the configuration's to fill in.
    pub fn backup_info(&self, id: u64) -> Result<BackupInfo, ControlError> {
        let r = self
            .backup(id)
            .ok_or_else(|| ControlError::NotFound(format!("backup {id} not found")))?;
        let done = self.backup_chunks_done(id);
        let total = if r.state == BackupState::Ready {
            done.max(r.chunks_total)
        } else {
            r.chunks_total.max(done)
        };
        Ok(BackupInfo {
            id: r.id,
            volume: r.volume.clone(),
            snapshot: r.snapshot.clone(),
            store: r.store.clone(),
            zone: String::new(),
            state: r.state,
            base: r.base,
            copied_from: r.copied_from,
            root: r.root,
            size: r.size,
            chunk_size: r.chunk_size,
            created_unix: r.created_unix,
            finished_unix: r.finished_unix,
            chunks_total: total,
            chunks_done: if r.state == BackupState::Ready {
                total
            } else {
                done
            },
            read_bytes: r.stats.read_bytes,
            uploaded_bytes: r.stats.uploaded_bytes,
            uploaded_objects: r.stats.uploaded_objects,
            present_objects: r.stats.present_objects,
            objects: r.stats.objects,
            error: r.error.clone(),
        })
    }

    /// Backups newest first, of the volume named (as it is named now, or as the backups
    /// recorded it if it is gone) or of all.
    pub fn list_backups(&self, volume: Option<&str>) -> Result<Vec<BackupInfo>, ControlError> {
        let id = volume.and_then(|n| self.by_name.get(n).copied());
        let recs: Vec<&BackupRecord> = self
            .backups
            .records
            .values()
            .rev()
            .filter(|r| match (volume, id) {
                (None, _) => true,
                (Some(_), Some(id)) => r.volume_id == id,
                (Some(name), None) => r.volume == name,
            })
            .collect();
        if let (Some(name), None, true) = (volume, id, recs.is_empty()) {
            return Err(ControlError::NotFound(format!(
                "volume {name:?} not found, nor any backup of it"
            )));
        }
        recs.iter().map(|r| self.backup_info(r.id)).collect()
    }
}

impl State {
    /// A backup of `volume@snapshot` in `store` (a name the configuration knows), with the
    /// id `NextIds::backup`. Its base: the newest ready backup of the volume in that store
    /// whose snapshot is still kept, at or below this snapshot. Refused while a backup of
    /// the volume uploads to that store (naming it), or if the snapshot is not ready.
    pub fn plan_create_backup(
        &self,
        volume: &str,
        snapshot: &str,
        store: &str,
        now_unix: u64,
    ) -> Result<Mutation, ControlError> {
        let id = self.id_of(volume)?;
        let v = &self.volumes[&id];
        let snap = v.rec.snapshot(snapshot).ok_or_else(|| {
            ControlError::NotFound(format!("snapshot {volume}@{snapshot} not found"))
        })?;
        if snap.state != SnapshotState::Ready {
            return Err(ControlError::Invalid(format!(
                "snapshot {volume}@{snapshot} is not ready yet; retry shortly"
            )));
        }
        if let Some(e) = self.restoring_error(&v.rec) {
            return Err(e);
        }
        let mine = || {
            self.backups
                .records
                .values()
                .filter(move |r| r.volume_id == id && r.store == store)
        };
        if let Some(busy) = mine().find(|r| r.state == BackupState::Uploading) {
            return Err(ControlError::Conflict(format!(
                "backup {} of volume {volume:?} ({volume}@{}) is still uploading to store \
                 {store:?}; wait until it is ready, or cancel it with `tessera backup delete \
                 {}`",
                busy.id, busy.snapshot, busy.id
            )));
        }
        let base = mine()
            .filter(|r| r.state == BackupState::Ready && r.seq <= snap.seq)
            .filter(|r| {
                v.rec
                    .snapshot(&r.snapshot)
                    .is_some_and(|s| s.seq == r.seq && s.state == SnapshotState::Ready)
            })
            .max_by_key(|r| (r.seq, r.id));
        let size = if snap.size > 0 { snap.size } else { v.rec.size };
        Ok(Mutation::CreateBackup(BackupRecord {
            id: self.next.backup,
            volume: volume.to_string(),
            volume_id: id,
            snapshot: snapshot.to_string(),
            seq: snap.seq,
            store: store.to_string(),
            base: base.map(|b| b.id),
            base_seq: base.map_or(0, |b| b.seq),
            copied_from: None,
            size,
            chunk_size: v.rec.chunk_size,
            chunks_total: v
                .chunks
                .range(..volume::chunk_count(size, v.rec.chunk_size))
                .count() as u64,
            created_unix: now_unix,
            finished_unix: None,
            state: BackupState::Uploading,
            root: None,
            error: None,
            stats: BackupStats::default(),
            reads: Default::default(),
        }))
    }

    /// Who reads backup `id` now: restoring volumes, uploading copies of it, uploading
    /// backups based on it (named, for a refusal).
    pub fn backup_readers(&self, id: u64) -> Vec<String> {
        let mut out: Vec<String> = self
            .volumes
            .values()
            .filter(|v| v.rec.restore.as_ref().is_some_and(|r| r.backup == id))
            .map(|v| format!("volume {:?} restoring from it", v.rec.name))
            .collect();
        for r in self.backups.records.values() {
            if r.state != BackupState::Uploading {
                continue;
            }
            if r.copied_from == Some(id) {
                out.push(format!("copy {} to store {:?}", r.id, r.store));
            }
            if r.base == Some(id) {
                out.push(format!("backup {} based on it", r.id));
            }
        }
        out
    }

    /// Forget a backup no one reads. An uploading one is cancelled: its job finds the
    /// record gone and stops; what it recorded is released like any deleted backup's.
    pub fn plan_delete_backup(&self, id: u64, now_unix: u64) -> Result<Mutation, ControlError> {
        self.backup(id)
            .ok_or_else(|| ControlError::NotFound(format!("backup {id} not found")))?;
        let readers = self.backup_readers(id);
        if !readers.is_empty() {
            return Err(ControlError::Conflict(format!(
                "backup {id} is in use ({}); retry once they finish",
                readers.join(", ")
            )));
        }
        Ok(Mutation::DeleteBackup { id, now_unix })
    }

    /// A copy of ready backup `id` in `to_store` (a configured store): the existing record
    /// there if any (the backup itself or a copy of it, not failed), else a new one.
    pub fn plan_copy_backup(
        &self,
        id: u64,
        to_store: &str,
        now_unix: u64,
    ) -> Result<CopyPlan, ControlError> {
        let r = self
            .backup(id)
            .ok_or_else(|| ControlError::NotFound(format!("backup {id} not found")))?;
        if r.state != BackupState::Ready {
            return Err(ControlError::Invalid(format!(
                "backup {id} is not ready ({:?}); only a ready backup is copied",
                r.state
            )));
        }
        if r.store == to_store {
            return Err(ControlError::Invalid(format!(
                "backup {id} is already in store {to_store:?}"
            )));
        }
        // The same backup in that store (a copy of it, its source, a copy of its source):
        // copying again would name the same root twice.
        if let Some(c) = self
            .same_backup(id)
            .find(|c| c.store == to_store && c.state != BackupState::Failed)
        {
            return Ok(CopyPlan::Existing(c.id));
        }
        Ok(CopyPlan::New(Box::new(Mutation::CreateBackup(
            BackupRecord {
                id: self.next.backup,
                store: to_store.to_string(),
                base: None,
                base_seq: 0,
                copied_from: Some(id),
                chunks_total: self.backup_chunks_done(id),
                created_unix: now_unix,
                finished_unix: None,
                state: BackupState::Uploading,
                root: None,
                error: None,
                stats: BackupStats::default(),
                ..r.clone()
            },
        ))))
    }

    /// The uploading backup (not a copy) of volume `volume_id`, if any: the volume is not
    /// deleted under it.
    pub fn backup_reading_volume(&self, volume_id: u64) -> Option<u64> {
        self.backups
            .records
            .values()
            .find(|r| {
                r.state == BackupState::Uploading
                    && r.volume_id == volume_id
                    && r.copied_from.is_none()
            })
            .map(|r| r.id)
    }

    /// The uploading backup reading snapshot `name` of volume `volume_id` (as its own
    /// snapshot or as its base's), if any: such a snapshot is not deleted.
    pub fn backup_reading_snapshot(&self, volume_id: u64, name: &str) -> Option<u64> {
        let seq = self.volumes.get(&volume_id)?.rec.snapshot(name)?.seq;
        self.backups
            .records
            .values()
            .filter(|r| {
                r.state == BackupState::Uploading
                    && r.volume_id == volume_id
                    && r.copied_from.is_none()
            })
            .find(|r| {
                (r.snapshot == name && r.seq == seq) || (r.base.is_some() && r.base_seq == seq)
            })
            .map(|r| r.id)
    }
}

//! Restores in the state: the plan of `volume create --from-backup`, the links that make a
//! restored volume usable at once, the order its chunks are filled in, its progress, where
//! its groups read unfilled blocks from, and the refusals while it is under way.
//!
//! A restore goes: created unlinked ([`Mutation::RestoreVolume`]); every placed chunk
//! linked to its backup in its group (`GroupOp::Link` with parent `RESTORED_PARENT` and
//! the restore's backup record id as sequence), then [`Mutation::RestoreLinked`]: the
//! volume may be attached and opened, its groups fetch unfilled blocks from the store;
//! the pre-warm fills and unlinks chunk after chunk in [`State::restore_order`], recording
//! the position reached ([`Mutation::RestoreProgress`]); then [`Mutation::RestoreDone`].
//!
//! Progress is a position in the restore's order, not a set of chunks: the order is a
//! function of the backup record alone (its segments and its access record, both fixed
//! once it is ready), so every manager maps a position to the same chunk, and a record is
//! one number however large the volume.
//!
//! Plans return a [`Mutation`] (or the group ops to send) and change nothing. Must never
//! let a restore be attached before it is linked (a trim there would be undone by a later
//! fill), nor take a snapshot, clone, rollback or backup of a volume still restoring (they
//! would read blocks no layer holds yet).

use std::cmp::Reverse;
use std::collections::BTreeMap;

use tessera_proto::control::{
    BackupState, ControlError, GroupOp, Hash, RESTORED_PARENT, RestoreInfo,
};

use crate::volume;

use super::backup_records::RestoreRecord;
use super::{GroupRecord, Mutation, State, VolumeRecord};

/// The error for a volume being restored: `until` says what waits for what; `kind` is
/// its class (`Conflict`, in use, for what waits for the end of the fill, which may take
/// hours; `Unavailable`, retry shortly, for what waits only for the links).
fn restoring(
    rec: &VolumeRecord,
    done: u64,
    total: u64,
    until: &str,
    kind: fn(String) -> ControlError,
) -> ControlError {
    let backup = rec.restore.as_ref().map_or(0, |r| r.backup);
    kind(format!(
        "volume {:?} is being restored from backup {backup} ({done} of {total} chunks \
         filled); {until}",
        rec.name
    ))
}

impl State {
    /// Volumes being restored, by id, with their restore.
    pub fn restoring_volumes(&self) -> Vec<(u64, RestoreRecord)> {
        self.volumes
            .values()
            .filter_map(|v| v.rec.restore.clone().map(|r| (v.rec.id, r)))
            .collect()
    }

    /// Restores not linked yet (made before a failover, or whose links failed): to link.
    pub fn unlinked_restores(&self) -> Vec<u64> {
        self.volumes
            .values()
            .filter(|v| v.rec.restore.as_ref().is_some_and(|r| !r.linked))
            .map(|v| v.rec.id)
            .collect()
    }

    /// A volume's chunk map: chunk → group id (empty for an unknown volume).
    pub fn volume_chunk_groups(&self, volume_id: u64) -> BTreeMap<u64, u64> {
        self.volumes
            .get(&volume_id)
            .map(|v| v.chunks.clone())
            .unwrap_or_default()
    }

    /// The order a restore of backup record `backup` fills its chunks in: every chunk with
    /// a segment, most read first (its access record), then by index. A function of the
    /// record alone: a position means the same chunk to every manager.
    pub fn restore_order(&self, backup: u64) -> Vec<(u64, Hash)> {
        let reads = self.backup(backup).map(|r| &r.reads);
        let mut order: Vec<(u64, Hash)> = self.backup_segments(backup).into_iter().collect();
        order.sort_by_key(|(c, _)| {
            let n = reads.and_then(|r| r.get(c)).copied().unwrap_or(0);
            (Reverse(n), *c)
        });
        order
    }

    /// `(chunks filled, chunks to fill)` of a restore: the positions below
    /// `next_position`, and every chunk of the backup with a segment.
    pub fn restore_progress(&self, r: &RestoreRecord) -> (u64, u64) {
        let total = self.backups.chunks.get(&r.backup).map_or(0, |c| c.len()) as u64;
        (r.next_position.min(total), total)
    }

    /// What `VolumeInfo.restore` says of a restoring volume (the rate and ETA are the
    /// leading manager's to add).
    pub fn restore_info(&self, rec: &VolumeRecord) -> Option<RestoreInfo> {
        let r = rec.restore.as_ref()?;
        let (done, total) = self.restore_progress(r);
        Some(RestoreInfo {
            backup: r.backup,
            store: r.store.clone(),
            chunks_total: total,
            chunks_done: done,
            hydrated_bytes: 0,
            eta_secs: None,
            error: None,
            linked: r.linked,
        })
    }

    /// The refusal of a snapshot, clone, rollback or backup of a volume being restored
    /// (`None`: not restoring): they wait until every chunk is filled. `Conflict` (the
    /// volume is in use by its restore), not `Unavailable`: a restore may last hours, so
    /// "retry later" would mislead a script.
    pub fn restoring_error(&self, rec: &VolumeRecord) -> Option<ControlError> {
        let r = rec.restore.as_ref()?;
        let (done, total) = self.restore_progress(r);
        Some(restoring(
            rec,
            done,
            total,
            &format!(
                "snapshots, clones, rollbacks and backups of it are refused until the restore \
                 is done (`tessera volume prewarm {}` resumes the fill)",
                rec.name
            ),
            ControlError::Conflict,
        ))
    }

    /// The refusal to attach or open a restoring volume not linked to its backup yet
    /// (`None`: not restoring, or linked: usable).
    pub fn unlinked_error(&self, rec: &VolumeRecord) -> Option<ControlError> {
        let r = rec.restore.as_ref().filter(|r| !r.linked)?;
        let (done, total) = self.restore_progress(r);
        Some(restoring(
            rec,
            done,
            total,
            "it can be attached once its chunks are linked to the backup (the request that \
             created it, or the leading manager in the background, links them; retry shortly)",
            ControlError::Unavailable,
        ))
    }

    /// The links that make a restore usable, by group: `Link` to `RESTORED_PARENT` (the
    /// restore's backup record id as sequence) for every mapped chunk the backup holds a
    /// segment of. Empty for a volume not restoring.
    pub fn restore_link_ops(
        &self,
        volume_id: u64,
    ) -> Result<BTreeMap<u64, Vec<GroupOp>>, ControlError> {
        self.restore_chunk_ops(volume_id, |chunk, backup| GroupOp::Link {
            volume_id,
            chunk,
            parent_volume: RESTORED_PARENT,
            parent_seq: backup,
        })
    }

    /// The unlinks of every chunk [`State::restore_link_ops`] links, by group: sent once
    /// more before a restore is recorded done, so that a `Link` that landed late (after
    /// its chunk's own unlink) is undone. Idempotent. Empty for a volume not restoring.
    pub fn restore_unlink_ops(
        &self,
        volume_id: u64,
    ) -> Result<BTreeMap<u64, Vec<GroupOp>>, ControlError> {
        self.restore_chunk_ops(volume_id, |chunk, _| GroupOp::Unlink { volume_id, chunk })
    }

    /// `op(chunk, backup record)` for every mapped chunk of restoring volume `volume_id`
    /// the backup holds a segment of, by group.
    fn restore_chunk_ops(
        &self,
        volume_id: u64,
        op: impl Fn(u64, u64) -> GroupOp,
    ) -> Result<BTreeMap<u64, Vec<GroupOp>>, ControlError> {
        let v = self.volume(volume_id)?;
        let mut ops: BTreeMap<u64, Vec<GroupOp>> = BTreeMap::new();
        let Some(r) = &v.rec.restore else {
            return Ok(ops);
        };
        let segs = self.backups.chunks.get(&r.backup);
        for (chunk, g) in &v.chunks {
            if segs.is_some_and(|s| s.contains_key(chunk)) {
                ops.entry(*g).or_default().push(op(*chunk, r.backup));
            }
        }
        Ok(ops)
    }

    /// A restore of `backup` named `name` that exists and is still unlinked (a request
    /// asked again after its links failed): its id, to link again.
    pub fn restore_to_link(&self, name: &str, backup: u64) -> Option<u64> {
        let v = &self.volumes.get(self.by_name.get(name)?)?.rec;
        v.restore
            .as_ref()
            .is_some_and(|r| r.backup == backup && !r.linked)
            .then_some(v.id)
    }

    /// Where the groups of restoring volume `volume_id` read chunk `chunk`'s unfilled
    /// blocks: the restore's backup record, the chunk's segment (`None`: the backup holds
    /// nothing of it), and the stores holding a ready copy of the backup, the restore's
    /// store first. `NotFound` for a volume that does not exist or is not restoring.
    pub fn restore_source(
        &self,
        volume_id: u64,
        chunk: u64,
    ) -> Result<(u64, Option<Hash>, Vec<String>), ControlError> {
        let rec = &self
            .volumes
            .get(&volume_id)
            .ok_or_else(|| ControlError::NotFound(format!("volume {volume_id} not found")))?
            .rec;
        let r = rec.restore.as_ref().ok_or_else(|| {
            ControlError::NotFound(format!(
                "volume {:?} (id {volume_id}) is not being restored",
                rec.name
            ))
        })?;
        let mut stores = vec![r.store.clone()];
        for copy in self.backup_replicas(r.backup) {
            if !stores.contains(&copy.store) {
                stores.push(copy.store.clone());
            }
        }
        Ok((r.backup, self.backup_segment(r.backup, chunk), stores))
    }

    /// Volume `name` from ready backup record `backup` (in the store to read, chosen by the
    /// caller): its record with the backup's size and chunk size and a restore, unlinked,
    /// and every chunk the backup holds data of placed as provisioning would (least-loaded
    /// usable group), in one mutation.
    pub fn plan_restore_volume(
        &self,
        name: &str,
        backup: u64,
        now_unix: u64,
        usable: impl Fn(&GroupRecord) -> bool,
    ) -> Result<Mutation, ControlError> {
        volume::validate_name(name)?;
        let r = self
            .backup(backup)
            .ok_or_else(|| ControlError::NotFound(format!("backup {backup} not found")))?;
        if r.state != BackupState::Ready {
            return Err(ControlError::Invalid(format!(
                "backup {backup} is not ready ({:?}); only a ready backup is restored",
                r.state
            )));
        }
        if self.by_name.contains_key(name) {
            return Err(ControlError::AlreadyExists(format!(
                "volume {name:?} already exists"
            )));
        }
        let chunks = self.place_chunks(self.backup_segments(backup).into_keys(), usable)?;
        let mut volume = VolumeRecord::new(self.next.volume, name, r.size, r.chunk_size, now_unix);
        volume.restore = Some(RestoreRecord {
            backup,
            store: r.store.clone(),
            next_chunk: 0,
            linked: false,
            next_position: 0,
        });
        Ok(Mutation::RestoreVolume { volume, chunks })
    }
}

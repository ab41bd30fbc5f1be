//! Volumes: creating, resizing, deleting and listing them, and reading their records.
//!
//! Plans return a [`Mutation`] and change nothing: only [`State::apply`] does. Must never
//! reuse a volume id, nor let a name stand for two volumes.

use std::collections::BTreeMap;

use tessera_proto::control::{AttachmentInfo, ControlError, DEFAULT_CHUNK_SIZE, VolumeInfo};

use crate::volume;

use super::{DroppedChunks, Mutation, State, Volume, VolumeRecord};

impl State {
    pub fn volume_count(&self) -> u64 {
        self.volumes.len() as u64
    }

    pub fn volume_by_name(&self, name: &str) -> Result<VolumeInfo, ControlError> {
        let id = self.id_of(name)?;
        Ok(self.info(&self.volumes[&id]))
    }

    /// Every volume, sorted by name.
    pub fn list_volumes(&self) -> Vec<VolumeInfo> {
        self.by_name
            .values()
            .map(|id| self.info(&self.volumes[id]))
            .collect()
    }

    pub fn plan_create_volume(
        &self,
        name: &str,
        size: u64,
        chunk_size: Option<u64>,
        now_unix: u64,
    ) -> Result<Mutation, ControlError> {
        volume::validate_name(name)?;
        volume::validate_size(name, size)?;
        let chunk_size = chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
        volume::validate_chunk_size(chunk_size)?;
        if self.by_name.contains_key(name) {
            return Err(ControlError::AlreadyExists(format!(
                "volume {name:?} already exists"
            )));
        }
        Ok(Mutation::PutVolume(VolumeRecord::new(
            self.next.volume,
            name,
            size,
            chunk_size,
            now_unix,
        )))
    }

    /// Growing a volume; `None` when it already has this size.
    pub fn plan_resize_volume(
        &self,
        name: &str,
        size: u64,
    ) -> Result<Option<Mutation>, ControlError> {
        let id = self.id_of(name)?;
        volume::validate_size(name, size)?;
        let rec = &self.volumes[&id].rec;
        if size < rec.size {
            return Err(ControlError::Invalid(format!(
                "volume {name:?} is {} bytes; shrinking to {size} bytes is not supported",
                rec.size
            )));
        }
        if size == rec.size {
            return Ok(None);
        }
        if let Some(e) = self.restoring_error(rec) {
            return Err(e);
        }
        Ok(Some(Mutation::PutVolume(VolumeRecord {
            size,
            ..rec.clone()
        })))
    }

    /// The delete and the chunks the storage nodes may drop once it is durable (every
    /// layer and link of them: its snapshots go with it). Refused while a snapshot of it
    /// has clones, naming them.
    pub fn plan_delete_volume(
        &self,
        name: &str,
    ) -> Result<(Mutation, DroppedChunks), ControlError> {
        let id = self.id_of(name)?;
        let clones = self.clones_of_volume(id);
        if !clones.is_empty() {
            return Err(ControlError::Conflict(format!(
                "volume {name:?} has snapshots with clones ({}); delete or flatten them first",
                clones.join(", ")
            )));
        }
        if let Some(b) = self.backup_reading_volume(id) {
            return Err(ControlError::Conflict(format!(
                "volume {name:?} is read by backup {b}, still uploading; delete the volume \
                 once the backup is ready or failed (or cancel it: `tessera backup delete {b}`)"
            )));
        }
        let mut by_group: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (chunk, group) in &self.volumes[&id].chunks {
            by_group.entry(*group).or_default().push(*chunk);
        }
        Ok((
            Mutation::DeleteVolume { id },
            DroppedChunks {
                volume_id: id,
                by_group,
            },
        ))
    }

    pub(super) fn volume(&self, volume_id: u64) -> Result<&Volume, ControlError> {
        self.volumes
            .get(&volume_id)
            .ok_or_else(|| ControlError::NotFound(format!("volume with id {volume_id} not found")))
    }

    /// A volume's record by name.
    pub fn volume_record(&self, name: &str) -> Result<&VolumeRecord, ControlError> {
        Ok(&self.volumes[&self.id_of(name)?].rec)
    }

    /// A volume's record by id.
    pub fn volume_record_by_id(&self, id: u64) -> Result<&VolumeRecord, ControlError> {
        self.volumes
            .get(&id)
            .map(|v| &v.rec)
            .ok_or_else(|| ControlError::NotFound(format!("volume with id {id} not found")))
    }

    pub(super) fn id_of(&self, name: &str) -> Result<u64, ControlError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| ControlError::NotFound(format!("volume {name:?} not found")))
    }

    pub(super) fn info(&self, v: &Volume) -> VolumeInfo {
        VolumeInfo {
            id: v.rec.id,
            name: v.rec.name.clone(),
            size: v.rec.size,
            chunk_size: v.rec.chunk_size,
            mapped_chunks: v.chunks.len() as u64,
            created_unix: v.rec.created_unix,
            attachment: v.rec.attachment.as_ref().map(|a| AttachmentInfo {
                client: a.client.clone(),
                epoch: a.epoch,
                since_unix: a.since_unix,
                lease_left_ms: None,
            }),
            seq: v.rec.seq(),
            parent: v.rec.parent.as_ref().map(|p| self.parent_info(p)),
            snapshots: v
                .rec
                .snapshots
                .iter()
                .map(|s| self.snapshot_info_of(v, s))
                .collect(),
            reclaims: super::reclaims::infos(&v.rec),
            restore: self.restore_info(&v.rec).map(Box::new),
        }
    }
}

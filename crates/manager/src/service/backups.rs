//! Backup requests: create, list, info, delete, copy, restore a volume from a backup,
//! prewarm, a restored chunk's source, list stores. The rules are `state::backups`' and
//! `state::restores`' plans; this file resolves store names against the configured
//! [`Stores`], picks the store a restore reads, commits, and answers with the zones and
//! the restore meters (the leading manager's memory) filled in.
//!
//! A restore is answered once linked: the request commits the volume unlinked, leaves the
//! links of its chunks to the server ([`Pending`], as a clone's), then
//! [`Finish::RestoreLinked`] commits it linked and wakes the pre-warm. A restore left
//! unlinked (a failover, a group unreachable) is linked by the background (`clones`).
//!
//! The uploads, copies, fills and collection themselves are the background jobs'; a
//! request only records what they are to do. Must never answer for a change that is not
//! committed, nor answer a restore usable before it is linked.
//!
//! [`Stores`]: crate::stores::Stores

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tessera_proto::control::{
    BackupInfo, ControlError, ManagerReply, RestoreSource, StoreInfo, StoreSpec, VolumeInfo,
};
use tracing::info;

use crate::state::{CopyPlan, Mutation, State};
use crate::stores::Stores;

use super::{Finish, Now, Pending, Reply, Service};

/// What the restore job measured of one restoring volume (leader memory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreMeter {
    /// Bytes of regions filled by this manager so far.
    pub hydrated_bytes: u64,
    /// Seconds left at the rate it sees (`None`: not known yet).
    pub eta_secs: Option<u64>,
    /// The error of a chunk failing for a while (still retried).
    pub error: Option<String>,
}

/// Restoring volume id → its meter: written by the restore job, read by `VolumeInfo`.
pub type RestoreMeters = Arc<Mutex<BTreeMap<u64, RestoreMeter>>>;

fn created_id(m: &Mutation) -> u64 {
    match m {
        Mutation::CreateBackup(r) => r.id,
        _ => 0,
    }
}

#[allow(
    dead_code,
    reason = "the backup jobs (backup_loop, copy_loop, gc_loop, restore_loop) use these"
)]
impl Service {
    /// The restore meters the restore job updates.
    pub fn restore_meters(&self) -> RestoreMeters {
        self.restore_meters.clone()
    }

    /// Woken by `PrewarmVolume`: the restore job retries its volumes now.
    pub fn restore_kick(&self) -> Arc<tokio::sync::Notify> {
        self.restore_kick.clone()
    }

    /// Adds the restore job's meter to a restoring volume's info.
    pub(super) fn add_restore_meter(&self, v: &mut VolumeInfo) {
        let Some(r) = &mut v.restore else {
            return;
        };
        let meters = self
            .restore_meters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(m) = meters.get(&v.id) {
            r.hydrated_bytes = m.hydrated_bytes;
            r.eta_secs = m.eta_secs;
            r.error = m.error.clone();
        }
    }

    fn backup_reply(&self, id: u64) -> Result<ManagerReply, ControlError> {
        Ok(ManagerReply::Backup(Box::new(self.backup_info(id)?)))
    }

    fn backup_info(&self, id: u64) -> Result<BackupInfo, ControlError> {
        let mut info = self.state.backup_info(id)?;
        info.zone = self.stores.zone_of(&info.store).to_string();
        Ok(info)
    }

    pub(super) fn create_backup(
        &mut self,
        volume: &str,
        snapshot: &str,
        store: Option<&str>,
        now: Now,
    ) -> Result<ManagerReply, ControlError> {
        let store = self.stores.resolve(store)?.name.clone();
        let m = self
            .state
            .plan_create_backup(volume, snapshot, &store, now.unix)?;
        let id = created_id(&m);
        self.commit(m)?;
        tracing::info!(backup = id, volume, snapshot, store, "backup requested");
        self.backup_reply(id)
    }

    pub(super) fn list_backups(&self, volume: Option<&str>) -> Result<ManagerReply, ControlError> {
        let mut list = self.state.list_backups(volume)?;
        for b in &mut list {
            b.zone = self.stores.zone_of(&b.store).to_string();
        }
        Ok(ManagerReply::Backups(list))
    }

    pub(super) fn backup_info_reply(&self, id: u64) -> Result<ManagerReply, ControlError> {
        self.backup_reply(id)
    }

    pub(super) fn delete_backup(
        &mut self,
        id: u64,
        now: Now,
    ) -> Result<ManagerReply, ControlError> {
        let m = self.state.plan_delete_backup(id, now.unix)?;
        self.commit(m)?;
        tracing::info!(
            backup = id,
            "backup deleted; the collector frees what only it held"
        );
        Ok(ManagerReply::Deleted)
    }

    pub(super) fn copy_backup(
        &mut self,
        id: u64,
        to_store: &str,
        now: Now,
    ) -> Result<ManagerReply, ControlError> {
        let to = self.stores.resolve(Some(to_store))?.name.clone();
        match self.state.plan_copy_backup(id, &to, now.unix)? {
            CopyPlan::Existing(c) => self.backup_reply(c),
            CopyPlan::New(m) => {
                let c = created_id(&m);
                self.commit(*m)?;
                tracing::info!(backup = id, copy = c, store = to, "backup copy requested");
                self.backup_reply(c)
            }
        }
    }

    /// `volume create --from-backup`: the volume committed unlinked, then answered once
    /// every chunk is linked ([`Reply::After`]). Asked again for a restore of the same
    /// backup record still unlinked, links it again.
    pub(super) fn restore_volume(
        &mut self,
        name: &str,
        backup: u64,
        store: Option<&str>,
        now: Now,
    ) -> Reply {
        match self.plan_restore(name, backup, store, now) {
            Ok(p) => Reply::After(p),
            Err(e) => Reply::Done(Err(e)),
        }
    }

    fn plan_restore(
        &mut self,
        name: &str,
        backup: u64,
        store: Option<&str>,
        now: Now,
    ) -> Result<Pending, ControlError> {
        let source = restore_source(&self.state, &self.stores, backup, store)?;
        let id = match self.state.restore_to_link(name, source) {
            Some(id) => id,
            None => {
                let live = &self.live;
                let m = self
                    .state
                    .plan_restore_volume(name, source, now.unix, |g| {
                        live.has_quorum(g, now.instant)
                    })?;
                self.commit(m)?;
                info!(
                    volume = name,
                    backup, source, "volume created from a backup; linking its chunks"
                );
                self.state.volume_record(name)?.id
            }
        };
        self.restore_pending(id, now)
    }

    /// The links of restoring volume `volume_id`'s chunks, and their finish.
    pub(super) fn restore_pending(
        &self,
        volume_id: u64,
        now: Now,
    ) -> Result<Pending, ControlError> {
        let ops = self.state.restore_link_ops(volume_id)?;
        Ok(Pending {
            jobs: self.all_group_jobs(ops, now)?,
            finish: Finish::RestoreLinked { volume_id },
        })
    }

    /// Every chunk of the restore is linked: committed (if still unlinked), the pre-warm
    /// woken, the volume answered.
    pub(super) fn restore_linked(&mut self, volume_id: u64) -> Result<ManagerReply, ControlError> {
        let rec = self.state.volume_record_by_id(volume_id)?;
        let name = rec.name.clone();
        if rec.restore.as_ref().is_some_and(|r| !r.linked) {
            self.commit(Mutation::RestoreLinked { volume_id })?;
            info!(volume = %name, "restored volume linked to its backup: usable; pre-warming");
        }
        self.restore_kick.notify_one();
        let mut v = self.state.volume_by_name(&name)?;
        self.add_restore_meter(&mut v);
        Ok(ManagerReply::Volume(v))
    }

    /// Fill a restoring volume now; answers its info (a volume already filled is answered
    /// as it is).
    pub(super) fn prewarm(&mut self, name: &str) -> Result<ManagerReply, ControlError> {
        let mut v = self.state.volume_by_name(name)?;
        if v.restore.is_some() {
            self.restore_kick.notify_one();
        }
        self.add_restore_meter(&mut v);
        Ok(ManagerReply::Volume(v))
    }

    /// Where a storage node reads restored chunk `chunk` of volume `volume_id` from (see
    /// [`chunk_source`]). Read-only: answered by the leader like any request.
    pub(super) fn restore_source(
        &self,
        volume_id: u64,
        chunk: u64,
    ) -> Result<ManagerReply, ControlError> {
        chunk_source(&self.state, &self.stores, volume_id, chunk)
            .map(|r| ManagerReply::RestoreSource(Box::new(r)))
    }

    pub(super) fn list_stores(&self) -> ManagerReply {
        ManagerReply::Stores(store_infos(&self.state, &self.stores))
    }
}

/// The backup record a restore of `backup` reads: in `store` if named (the backup or
/// a ready copy there), else a ready copy in a store of this manager's zone, else the
/// backup itself. Every candidate's store must be configured.
pub(super) fn restore_source(
    state: &State,
    stores: &Stores,
    backup: u64,
    store: Option<&str>,
) -> Result<u64, ControlError> {
    let rec = state
        .backup(backup)
        .ok_or_else(|| ControlError::NotFound(format!("backup {backup} not found")))?;
    let replicas = state.backup_replicas(backup);
    let configured = |name: &str| stores.spec(name).is_some();
    if let Some(name) = store {
        let name = &stores.resolve(Some(name))?.name;
        return replicas
            .iter()
            .find(|r| &r.store == name)
            .map(|r| r.id)
            .ok_or_else(|| {
                ControlError::NotFound(format!(
                    "backup {backup} has no ready copy in store {name:?}"
                ))
            });
    }
    let zone = stores.zone();
    let own_zone = stores.zone_of(&rec.store);
    if !zone.is_empty() && own_zone != zone {
        let local = replicas
            .iter()
            .find(|r| configured(&r.store) && stores.zone_of(&r.store) == zone);
        if let Some(r) = local {
            return Ok(r.id);
        }
    }
    if !configured(&rec.store) {
        // The backup's own store left the configuration: any configured copy will do.
        return replicas
            .iter()
            .find(|r| configured(&r.store))
            .map(|r| r.id)
            .ok_or_else(|| {
                ControlError::NotFound(format!(
                    "store {:?} of backup {backup} is not configured",
                    rec.store
                ))
            });
    }
    Ok(backup)
}

/// Where restored chunk `chunk` of volume `volume_id` is read from: the restore's backup
/// record, the chunk's segment and the stores holding a ready copy of the backup, the
/// restore's first, as configured here (credentials included; a store not configured
/// here is left out). `NotFound` for a volume not restoring; `Unavailable` if the chunk
/// has a segment and no store of the backup is configured.
pub(super) fn chunk_source(
    state: &State,
    stores: &Stores,
    volume_id: u64,
    chunk: u64,
) -> Result<RestoreSource, ControlError> {
    let (backup, segment, names) = state.restore_source(volume_id, chunk)?;
    let specs: Vec<StoreSpec> = names
        .iter()
        .filter_map(|n| stores.spec(n).cloned())
        .collect();
    if specs.is_empty() && segment.is_some() {
        return Err(ControlError::Unavailable(format!(
            "no store holding backup {backup} is configured on the managers ({})",
            names.join(", ")
        )));
    }
    Ok(RestoreSource {
        backup,
        segment,
        stores: specs,
    })
}

/// Every configured store with its counts.
pub(super) fn store_infos(state: &State, stores: &Stores) -> Vec<StoreInfo> {
    stores
        .specs()
        .iter()
        .map(|spec| {
            let mut info = stores.info(spec);
            let c = state.store_counts(&spec.name);
            (info.backups, info.objects, info.garbage) = (c.backups, c.objects, c.garbage);
            info
        })
        .collect()
}

#[cfg(test)]
#[path = "restore_tests.rs"]
mod restore_tests;
#[cfg(test)]
#[path = "backup_tests.rs"]
mod tests;

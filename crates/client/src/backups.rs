//! Typed calls for backups in object storage: back up a snapshot, list, inspect, delete
//! and copy backups, create a volume from one and fill it now, and list the stores. What
//! the CLI's `backup`, `store` and `volume create --from-backup` commands send, one method
//! each.
//!
//! Must never: ignore a reply of the wrong kind (it is [`Error::UnexpectedReply`]); wait
//! for a backup or a restore to finish (the manager answers at once and works in the
//! background; a caller polls [`Client::backup_info`] or [`Client::volume_info`]).

use tessera_proto::control::{BackupInfo, ManagerReply, ManagerRequest, StoreInfo, VolumeInfo};

use crate::error::{backup_error, unexpected, volume_error};
use crate::{Client, Result};

impl Client {
    /// Backs up ready snapshot `volume@snapshot` to `store` (`None`: the default store):
    /// the regions changed since the volume's newest ready backup there whose snapshot is
    /// still kept, else every region. Answered at once with the record, `Uploading`; the
    /// leading manager uploads in the background. [`Error::NotFound`](crate::Error) for
    /// an unknown volume, snapshot or store.
    pub async fn create_backup(
        &self,
        volume: &str,
        snapshot: &str,
        store: Option<&str>,
    ) -> Result<BackupInfo> {
        let req = ManagerRequest::CreateBackup {
            volume: volume.into(),
            snapshot: snapshot.into(),
            store: store.map(str::to_string),
        };
        self.backup_call("CreateBackup", &req).await
    }

    /// The backups of `volume`, or of every volume (`None`, deleted volumes' included),
    /// newest first.
    pub async fn list_backups(&self, volume: Option<&str>) -> Result<Vec<BackupInfo>> {
        let req = ManagerRequest::ListBackups {
            volume: volume.map(str::to_string),
        };
        match self.call(&req).await {
            Ok(ManagerReply::Backups(b)) => Ok(b),
            Ok(other) => Err(unexpected("ListBackups", &other)),
            Err(e) => Err(backup_error(e)),
        }
    }

    /// One backup: its state, progress and counts.
    pub async fn backup_info(&self, id: u64) -> Result<BackupInfo> {
        self.backup_call("BackupInfo", &ManagerRequest::BackupInfo { id })
            .await
    }

    /// Forgets backup `id`; the objects no other backup references are deleted by the
    /// manager's collector after its grace period. Refused while it uploads, or while a
    /// restoring volume or a running copy reads it (the message names them).
    pub async fn delete_backup(&self, id: u64) -> Result<()> {
        match self.call(&ManagerRequest::DeleteBackup { id }).await {
            Ok(ManagerReply::Deleted) => Ok(()),
            Ok(other) => Err(unexpected("DeleteBackup", &other)),
            Err(e) => Err(backup_error(e)),
        }
    }

    /// Copies ready backup `id` to store `to_store` (the objects it lacks, then the
    /// manifest, root last): a new backup record there, answered at once (`Uploading`).
    /// Asking again for the same backup and store answers the existing copy.
    pub async fn copy_backup(&self, id: u64, to_store: &str) -> Result<BackupInfo> {
        let req = ManagerRequest::CopyBackup {
            id,
            to_store: to_store.into(),
        };
        self.backup_call("CopyBackup", &req).await
    }

    /// Creates volume `name` from ready backup `backup`, with the backup's size and chunk
    /// size, read from `store` (`None`: a ready copy in the manager's zone, else the
    /// backup's own store). Answered once its chunks are placed; its blocks are filled in
    /// the background ([`VolumeInfo::restore`] shows how far, and is `None` once done).
    /// [`Error::AlreadyExists`](crate::Error) if the name is taken.
    pub async fn restore_volume(
        &self,
        name: &str,
        backup: u64,
        store: Option<&str>,
    ) -> Result<VolumeInfo> {
        let req = ManagerRequest::RestoreVolume {
            name: name.into(),
            backup,
            store: store.map(str::to_string),
        };
        match self.call(&req).await {
            Ok(ManagerReply::Volume(v)) => Ok(v),
            Ok(other) => Err(unexpected("RestoreVolume", &other)),
            Err(e) => Err(backup_error(e)),
        }
    }

    /// Fills restored volume `name` from its store now (resumes a restore that stopped on
    /// errors). The volume as the manager then sees it.
    pub async fn prewarm_volume(&self, name: &str) -> Result<VolumeInfo> {
        let req = ManagerRequest::PrewarmVolume { name: name.into() };
        match self.call(&req).await {
            Ok(ManagerReply::Volume(v)) => Ok(v),
            Ok(other) => Err(unexpected("PrewarmVolume", &other)),
            Err(e) => Err(volume_error(name, e)),
        }
    }

    /// The object stores the managers are configured with, and what each holds.
    pub async fn list_stores(&self) -> Result<Vec<StoreInfo>> {
        match self.call(&ManagerRequest::ListStores).await? {
            ManagerReply::Stores(s) => Ok(s),
            other => Err(unexpected("ListStores", &other)),
        }
    }

    /// A backup request answered with one backup.
    async fn backup_call(&self, kind: &'static str, req: &ManagerRequest) -> Result<BackupInfo> {
        match self.call(req).await {
            Ok(ManagerReply::Backup(b)) => Ok(*b),
            Ok(other) => Err(unexpected(kind, &other)),
            Err(e) => Err(backup_error(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_proto::control::{BackupState, ControlError, RestoreInfo};

    use super::*;
    use crate::testing::{Answer, fake_manager};
    use crate::{Error, ErrorClass};

    fn backup(id: u64, store: &str) -> BackupInfo {
        BackupInfo {
            id,
            volume: "db1".into(),
            snapshot: "monday".into(),
            store: store.into(),
            zone: "zone1".into(),
            state: BackupState::Uploading,
            base: None,
            copied_from: None,
            root: None,
            size: 1 << 30,
            chunk_size: 64 << 20,
            created_unix: 1_700_000_000,
            finished_unix: None,
            chunks_total: 16,
            chunks_done: 0,
            read_bytes: 0,
            uploaded_bytes: 0,
            uploaded_objects: 0,
            present_objects: 0,
            objects: 0,
            error: None,
        }
    }

    fn volume(name: &str, restore: Option<RestoreInfo>) -> VolumeInfo {
        VolumeInfo {
            id: 2,
            name: name.into(),
            size: 1 << 30,
            chunk_size: 64 << 20,
            mapped_chunks: 16,
            created_unix: 0,
            attachment: None,
            seq: 1,
            parent: None,
            snapshots: Vec::new(),
            reclaims: Vec::new(),
            restore: restore.map(Box::new),
        }
    }

    /// A manager with backup 7 of `db1@monday` in store `local` (the default) and store
    /// `s3a`; what each request names shows in its answer.
    fn backups(req: ManagerRequest) -> Answer {
        let one = |b| Ok(ManagerReply::Backup(Box::new(b)));
        match req {
            ManagerRequest::ListVolumes => Ok(ManagerReply::Volumes(vec![])),
            ManagerRequest::CreateBackup {
                volume,
                snapshot,
                store,
            } if volume == "db1" && snapshot == "monday" => {
                one(backup(8, store.as_deref().unwrap_or("local")))
            }
            ManagerRequest::CreateBackup { snapshot, .. } => Err(ControlError::NotFound(format!(
                "snapshot \"db1@{snapshot}\" not found"
            ))),
            ManagerRequest::BackupInfo { id: 7 } => one(backup(7, "local")),
            ManagerRequest::ListBackups { volume: None } => Ok(ManagerReply::Backups(vec![
                backup(8, "s3a"),
                backup(7, "local"),
            ])),
            ManagerRequest::ListBackups { volume: Some(_) } => Ok(ManagerReply::Backups(vec![])),
            ManagerRequest::DeleteBackup { id: 7 } => Err(ControlError::Conflict(
                "backup 7 is read by restoring volume \"db2\"".into(),
            )),
            ManagerRequest::DeleteBackup { .. } => Ok(ManagerReply::Deleted),
            ManagerRequest::CopyBackup { id, to_store } if to_store != "local" => {
                let mut b = backup(9, &to_store);
                b.copied_from = Some(id);
                one(b)
            }
            ManagerRequest::CopyBackup { .. } => Err(ControlError::Invalid(
                "backup 7 is in store \"local\" already".into(),
            )),
            ManagerRequest::RestoreVolume { name, .. } if name == "db1" => Err(
                ControlError::AlreadyExists("volume \"db1\" already exists".into()),
            ),
            ManagerRequest::RestoreVolume {
                name,
                backup,
                store,
            } => Ok(ManagerReply::Volume(volume(
                &name,
                Some(RestoreInfo {
                    backup,
                    store: store.unwrap_or_else(|| "local".into()),
                    chunks_total: 16,
                    chunks_done: 0,
                    hydrated_bytes: 0,
                    eta_secs: None,
                    error: None,
                    linked: true,
                }),
            ))),
            ManagerRequest::PrewarmVolume { name } if name == "db2" => {
                Ok(ManagerReply::Volume(volume(&name, None)))
            }
            ManagerRequest::ListStores => Ok(ManagerReply::Stores(vec![StoreInfo {
                name: "local".into(),
                zone: "zone1".into(),
                kind: "dir".into(),
                location: "/var/lib/tessera/backups".into(),
                default: true,
                backups: 1,
                objects: 12,
                garbage: 0,
            }])),
            _ => Err(ControlError::NotFound("backup 99 not found".into())),
        }
    }

    /// Each call sends what it names and returns the manager's record typed.
    #[tokio::test]
    async fn backup_calls_send_what_they_name_and_answer_typed() {
        let client = Client::connect(vec![fake_manager(backups).await])
            .await
            .expect("connect");
        let b = client.create_backup("db1", "monday", None).await.unwrap();
        assert_eq!((b.id, b.store.as_str()), (8, "local"));
        let b = client
            .create_backup("db1", "monday", Some("s3a"))
            .await
            .unwrap();
        assert_eq!((b.store.as_str(), b.state), ("s3a", BackupState::Uploading));
        assert_eq!(client.backup_info(7).await.unwrap().id, 7);
        let all = client.list_backups(None).await.unwrap();
        assert_eq!(all.iter().map(|b| b.id).collect::<Vec<_>>(), [8, 7]);
        assert!(client.list_backups(Some("db9")).await.unwrap().is_empty());
        client.delete_backup(8).await.expect("deleted");
        let c = client.copy_backup(7, "s3a").await.unwrap();
        assert_eq!((c.store.as_str(), c.copied_from), ("s3a", Some(7)));
        let v = client.restore_volume("db2", 7, Some("s3a")).await.unwrap();
        let r = v.restore.expect("restoring");
        assert_eq!((r.backup, r.store.as_str()), (7, "s3a"));
        assert!(
            client
                .prewarm_volume("db2")
                .await
                .unwrap()
                .restore
                .is_none()
        );
        let s = client.list_stores().await.unwrap();
        assert_eq!((s[0].name.as_str(), s[0].default), ("local", true));
    }

    /// Refusals keep the manager's message and arrive in the class a caller acts on.
    #[tokio::test]
    async fn backup_refusals_arrive_classed() {
        let client = Client::connect(vec![fake_manager(backups).await])
            .await
            .expect("connect");
        let e = client.backup_info(99).await.expect_err("missing");
        assert!(
            matches!(&e, Error::NotFound(m) if m == "backup 99 not found"),
            "{e:?}"
        );
        let e = client.create_backup("db1", "s9", None).await.unwrap_err();
        assert_eq!(e.to_string(), "snapshot \"db1@s9\" not found");
        assert_eq!(e.class(), ErrorClass::NotFound);
        let e = client.delete_backup(7).await.expect_err("in use");
        assert_eq!(e.class(), ErrorClass::Refused);
        assert!(e.to_string().contains("db2"), "{e}");
        let e = client
            .copy_backup(7, "local")
            .await
            .expect_err("same store");
        assert_eq!(e.class(), ErrorClass::Invalid);
        let e = client.restore_volume("db1", 7, None).await.unwrap_err();
        assert!(matches!(e, Error::AlreadyExists(_)), "{e:?}");
        let e = client.prewarm_volume("nope").await.unwrap_err();
        assert!(
            matches!(&e, Error::VolumeNotFound(n) if n == "nope"),
            "{e:?}"
        );
    }

    /// Answers every request with `Deleted`, the wrong kind for all but deletes.
    fn deletes_everything(req: ManagerRequest) -> Answer {
        Ok(match req {
            ManagerRequest::ListVolumes => ManagerReply::Volumes(vec![]),
            _ => ManagerReply::Deleted,
        })
    }

    #[tokio::test]
    async fn a_backup_reply_of_the_wrong_kind_is_an_error() {
        let client = Client::connect(vec![fake_manager(deletes_everything).await])
            .await
            .expect("connect");
        client.delete_backup(3).await.expect("the right kind");
        for (request, e) in [
            (
                "CreateBackup",
                client.create_backup("db1", "s1", None).await.map(|_| ()),
            ),
            ("ListBackups", client.list_backups(None).await.map(|_| ())),
            ("BackupInfo", client.backup_info(3).await.map(|_| ())),
            ("CopyBackup", client.copy_backup(3, "s3a").await.map(|_| ())),
            (
                "RestoreVolume",
                client.restore_volume("db2", 3, None).await.map(|_| ()),
            ),
            (
                "PrewarmVolume",
                client.prewarm_volume("db2").await.map(|_| ()),
            ),
            ("ListStores", client.list_stores().await.map(|_| ())),
        ] {
            assert!(
                matches!(&e, Err(Error::UnexpectedReply { request: r, reply }) if *r == request && reply == "Deleted"),
                "{request}: {e:?}"
            );
        }
    }
}

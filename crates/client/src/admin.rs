//! Typed administrative calls to the manager: create, list, inspect, resize, delete and
//! detach volumes, and ask what their snapshots hold on disk; take, list, inspect and
//! delete snapshots; clone, roll back and flatten
//! volumes; the cluster's status; draining nodes; adding managers. What the CLI (and any
//! other operator tool) sends, one method each.
//!
//! Must never: ignore a reply of the wrong kind (it is [`Error::UnexpectedReply`]); retry a
//! refusal (the manager decided; the caller is told).

use tessera_proto::control::{
    ClusterStatus, ManagerReply, ManagerRequest, NodeStatus, SnapshotInfo, VolumeInfo, VolumeUsage,
};

use crate::error::{snapshot_error, unexpected, volume_error};
use crate::{Client, Error, Result};

/// The managers' Raft group, as [`Client::add_manager`] leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerMembers {
    /// Managers counted for majorities: id and address.
    pub voters: Vec<(u64, String)>,
    /// Managers catching up, promoted to voters when done: id and address.
    pub learners: Vec<(u64, String)>,
}

impl Client {
    /// Creates a thin-provisioned volume of `size` bytes (`chunk_size`: the manager's
    /// default when `None`). [`Error::AlreadyExists`] if the name is taken.
    pub async fn create_volume(
        &self,
        name: &str,
        size: u64,
        chunk_size: Option<u64>,
    ) -> Result<VolumeInfo> {
        let req = ManagerRequest::CreateVolume {
            name: name.into(),
            size,
            chunk_size,
        };
        match self.call(&req).await {
            Ok(ManagerReply::Volume(v)) => Ok(v),
            Ok(other) => Err(unexpected("CreateVolume", &other)),
            Err(e) => Err(volume_error(name, e)),
        }
    }

    /// Creates `name` with `size` bytes unless a volume of that name exists. Whether it
    /// created it.
    pub async fn ensure_volume(&self, name: &str, size: u64) -> Result<bool> {
        match self.volume_info(name).await {
            Ok(_) => Ok(false),
            Err(Error::VolumeNotFound(_)) => match self.create_volume(name, size, None).await {
                Ok(_) => Ok(true),
                // Another client created it in between.
                Err(Error::AlreadyExists(_)) => Ok(false),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Every volume.
    pub async fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        match self.call(&ManagerRequest::ListVolumes).await? {
            ManagerReply::Volumes(v) => Ok(v),
            other => Err(unexpected("ListVolumes", &other)),
        }
    }

    /// One volume, with its read-write attachment.
    pub async fn volume_info(&self, name: &str) -> Result<VolumeInfo> {
        match self
            .call(&ManagerRequest::VolumeInfo { name: name.into() })
            .await
        {
            Ok(ManagerReply::Volume(v)) => Ok(v),
            Ok(other) => Err(unexpected("VolumeInfo", &other)),
            Err(e) => Err(volume_error(name, e)),
        }
    }

    /// The bytes each snapshot of `name` holds on disk, and those written since the newest
    /// (one replica's count). The manager asks the storage nodes: with some of them down,
    /// the groups nobody answered for are listed in
    /// [`VolumeUsage::unreported_groups`], or the call fails [`Error::Control`] with
    /// [`tessera_proto::control::ControlError::Unavailable`].
    pub async fn volume_usage(&self, name: &str) -> Result<VolumeUsage> {
        match self
            .call(&ManagerRequest::VolumeUsage { name: name.into() })
            .await
        {
            Ok(ManagerReply::Usage(u)) => Ok(u),
            Ok(other) => Err(unexpected("VolumeUsage", &other)),
            Err(e) => Err(volume_error(name, e)),
        }
    }

    /// Grows `name` to `size` bytes; shrinking is refused ([`Error::Control`] with
    /// [`ControlError::Invalid`]).
    pub async fn resize_volume(&self, name: &str, size: u64) -> Result<VolumeInfo> {
        let req = ManagerRequest::ResizeVolume {
            name: name.into(),
            size,
        };
        match self.call(&req).await {
            Ok(ManagerReply::Volume(v)) => Ok(v),
            Ok(other) => Err(unexpected("ResizeVolume", &other)),
            Err(e) => Err(volume_error(name, e)),
        }
    }

    /// Deletes `name`: its metadata at once; the groups drop its chunks in the background.
    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        match self
            .call(&ManagerRequest::DeleteVolume { name: name.into() })
            .await
        {
            Ok(ManagerReply::Deleted) => Ok(()),
            Ok(other) => Err(unexpected("DeleteVolume", &other)),
            Err(e) => Err(volume_error(name, e)),
        }
    }

    /// Ends another client's attachment of `name` (an operator moving a VM off a dead or
    /// stuck host) and fences the volume's groups, so that client's writes are refused from
    /// then on: once its lease ran out, or at once with `force`. Returns the epoch fenced
    /// with (0: nothing to fence). Safe to repeat: with nothing attached any more, it
    /// fences with the volume's epoch again.
    pub async fn detach(&self, name: &str, force: bool) -> Result<u64> {
        let req = ManagerRequest::DetachVolume {
            name: name.into(),
            epoch: 0,
            force,
        };
        let fence_epoch = match self.call(&req).await {
            Ok(ManagerReply::Detached { fence_epoch }) => fence_epoch,
            Ok(other) => return Err(unexpected("DetachVolume", &other)),
            Err(e) => return Err(volume_error(name, e)),
        };
        if fence_epoch != 0 {
            let v = self.open_read_only(name).await?;
            v.fence_with(fence_epoch).await?;
        }
        Ok(fence_epoch)
    }

    /// Takes snapshot `name` of `volume` now: returns once it is ready. Every write
    /// acknowledged before the call is in it, none sent after it returns; a writer attached
    /// meanwhile is not paused (see the crate doc). [`Error::AlreadyExists`] if the volume
    /// has a snapshot of that name (one left being created is finished instead),
    /// [`Error::Unavailable`] if a group could not be reached in time (asking again
    /// finishes it).
    pub async fn create_snapshot(&self, volume: &str, name: &str) -> Result<SnapshotInfo> {
        let req = ManagerRequest::CreateSnapshot {
            volume: volume.into(),
            name: name.into(),
        };
        self.snapshot_call("CreateSnapshot", &req).await
    }

    /// The snapshots of `volume`, or of every volume (`None`), oldest first per volume.
    pub async fn list_snapshots(&self, volume: Option<&str>) -> Result<Vec<SnapshotInfo>> {
        let req = ManagerRequest::ListSnapshots {
            volume: volume.map(str::to_string),
        };
        match self.call(&req).await {
            Ok(ManagerReply::Snapshots(s)) => Ok(s),
            Ok(other) => Err(unexpected("ListSnapshots", &other)),
            Err(e) => Err(snapshot_error(e)),
        }
    }

    /// One snapshot: its sequence, state, size and clones.
    pub async fn snapshot_info(&self, volume: &str, name: &str) -> Result<SnapshotInfo> {
        let req = ManagerRequest::SnapshotInfo {
            volume: volume.into(),
            name: name.into(),
        };
        self.snapshot_call("SnapshotInfo", &req).await
    }

    /// Deletes a snapshot; refused while volumes are cloned from it (the error names them).
    pub async fn delete_snapshot(&self, volume: &str, name: &str) -> Result<()> {
        let req = ManagerRequest::DeleteSnapshot {
            volume: volume.into(),
            name: name.into(),
        };
        match self.call(&req).await {
            Ok(ManagerReply::Deleted) => Ok(()),
            Ok(other) => Err(unexpected("DeleteSnapshot", &other)),
            Err(e) => Err(snapshot_error(e)),
        }
    }

    /// Makes volume `name` from snapshot `volume@snapshot`: usable at once, reading the
    /// snapshot's data until written over (or flattened). [`Error::AlreadyExists`] if the
    /// name is taken.
    pub async fn clone_volume(
        &self,
        volume: &str,
        snapshot: &str,
        name: &str,
    ) -> Result<VolumeInfo> {
        let req = ManagerRequest::CloneVolume {
            volume: volume.into(),
            snapshot: snapshot.into(),
            name: name.into(),
        };
        self.volume_call("CloneVolume", &req).await
    }

    /// Makes `volume`'s content its snapshot `snapshot`'s again (every snapshot is kept).
    /// Refused ([`Error::InUse`], naming the holder) while a client holds it read-write.
    pub async fn rollback_volume(&self, volume: &str, snapshot: &str) -> Result<VolumeInfo> {
        let req = ManagerRequest::RollbackVolume {
            volume: volume.into(),
            snapshot: snapshot.into(),
        };
        match self.volume_call("RollbackVolume", &req).await {
            Err(Error::Control(tessera_proto::control::ControlError::Conflict(m))) => {
                Err(Error::InUse(m))
            }
            other => other,
        }
    }

    /// Starts copying into clone `name` everything it still reads from its parent, in the
    /// background; [`VolumeInfo::parent`] shows the progress, and is cleared when done.
    pub async fn flatten_volume(&self, name: &str) -> Result<VolumeInfo> {
        let req = ManagerRequest::FlattenVolume { name: name.into() };
        self.volume_call("FlattenVolume", &req).await
    }

    /// A snapshot request answered with one snapshot.
    async fn snapshot_call(
        &self,
        kind: &'static str,
        req: &ManagerRequest,
    ) -> Result<SnapshotInfo> {
        match self.call(req).await {
            Ok(ManagerReply::Snapshot(s)) => Ok(s),
            Ok(other) => Err(unexpected(kind, &other)),
            Err(e) => Err(snapshot_error(e)),
        }
    }

    /// A snapshot request answered with one volume.
    async fn volume_call(&self, kind: &'static str, req: &ManagerRequest) -> Result<VolumeInfo> {
        match self.call(req).await {
            Ok(ManagerReply::Volume(v)) => Ok(v),
            Ok(other) => Err(unexpected(kind, &other)),
            Err(e) => Err(snapshot_error(e)),
        }
    }

    /// Nodes, racks and replica groups with their leaders, as the manager leader sees them.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        match self.call(&ManagerRequest::ClusterStatus).await? {
            ManagerReply::Status(s) => Ok(s),
            other => Err(unexpected("ClusterStatus", &other)),
        }
    }

    /// Starts moving every replica and leadership off node `node_id` (before maintenance),
    /// or with `undo` stops it. The node's status once the manager took the change (`None`
    /// if the answer left it out).
    pub async fn drain_node(&self, node_id: u64, undo: bool) -> Result<Option<NodeStatus>> {
        match self
            .call(&ManagerRequest::DrainNode { node_id, undo })
            .await?
        {
            ManagerReply::Status(s) => Ok(s.nodes.into_iter().find(|n| n.node_id == node_id)),
            other => Err(unexpected("DrainNode", &other)),
        }
    }

    /// Adds manager `id`, started with `join = true` and serving on `addr`, to the
    /// managers' Raft group: as a learner, promoted to voter once caught up. Asking again
    /// only reports the members.
    pub async fn add_manager(&self, id: u64, addr: &str) -> Result<ManagerMembers> {
        let req = ManagerRequest::AddManager {
            id,
            addr: addr.into(),
        };
        match self.call(&req).await? {
            ManagerReply::Managers { voters, learners } => Ok(ManagerMembers { voters, learners }),
            other => Err(unexpected("AddManager", &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_proto::control::ControlError;

    use super::*;
    use crate::testing::fake_manager;

    /// Answers `ListVolumes` (what `connect` asks) with none, everything else with
    /// `Deleted`.
    fn deletes_everything(req: ManagerRequest) -> std::result::Result<ManagerReply, ControlError> {
        Ok(match req {
            ManagerRequest::ListVolumes => ManagerReply::Volumes(vec![]),
            _ => ManagerReply::Deleted,
        })
    }

    #[tokio::test]
    async fn a_reply_of_the_wrong_kind_is_an_error_naming_it() {
        let client = Client::connect(vec![fake_manager(deletes_everything).await])
            .await
            .expect("connect");
        client.delete_volume("db1").await.expect("the right kind");
        let e = client.cluster_status().await.expect_err("the wrong kind");
        assert!(
            matches!(&e, Error::UnexpectedReply { request: "ClusterStatus", reply } if reply == "Deleted"),
            "{e:?}"
        );
        let e = client
            .resize_volume("db1", 1 << 30)
            .await
            .expect_err("wrong kind");
        assert_eq!(
            e.to_string(),
            "the manager answered ResizeVolume with an unexpected Deleted reply"
        );
        assert!(client.add_manager(2, "10.0.0.2:7400").await.is_err());
        for e in [
            client.create_snapshot("db1", "s1").await.map(|_| ()),
            client.snapshot_info("db1", "s1").await.map(|_| ()),
            client.list_snapshots(None).await.map(|_| ()),
            client.clone_volume("db1", "s1", "db2").await.map(|_| ()),
            client.rollback_volume("db1", "s1").await.map(|_| ()),
            client.flatten_volume("db2").await.map(|_| ()),
            client.volume_usage("db1").await.map(|_| ()),
        ] {
            assert!(matches!(e, Err(Error::UnexpectedReply { reply, .. }) if reply == "Deleted"));
        }
        client
            .delete_snapshot("db1", "s1")
            .await
            .expect("the right kind");
        assert!(client.drain_node(1, false).await.is_err());
        assert!(client.create_volume("db2", 1 << 30, None).await.is_err());
    }

    fn refuses(req: ManagerRequest) -> std::result::Result<ManagerReply, ControlError> {
        match req {
            ManagerRequest::ListVolumes => Ok(ManagerReply::Volumes(vec![])),
            ManagerRequest::CreateVolume { name, .. } => Err(ControlError::AlreadyExists(format!(
                "volume {name:?} already exists"
            ))),
            ManagerRequest::DetachVolume { .. } => {
                Err(ControlError::Conflict("attached read-write by vm7".into()))
            }
            ManagerRequest::DrainNode { node_id, .. } => {
                Err(ControlError::NotFound(format!("node {node_id} not found")))
            }
            ManagerRequest::SnapshotInfo { volume, name } => Err(ControlError::NotFound(format!(
                "snapshot \"{volume}@{name}\" not found"
            ))),
            ManagerRequest::CreateSnapshot { volume, name } => Err(ControlError::AlreadyExists(
                format!("snapshot \"{volume}@{name}\" already exists"),
            )),
            ManagerRequest::DeleteSnapshot { volume, name } => Err(ControlError::Conflict(
                format!("snapshot \"{volume}@{name}\" has clones: db2, db3"),
            )),
            ManagerRequest::RollbackVolume { .. } => {
                Err(ControlError::Conflict("attached read-write by vm7".into()))
            }
            _ => Err(ControlError::NotFound("volume \"nope\" not found".into())),
        }
    }

    /// Volume `db1` with snapshot `ready` (sequence 3, taken at 1 MiB) and `creating`.
    fn snapshots(req: ManagerRequest) -> std::result::Result<ManagerReply, ControlError> {
        let snap = |name: &str, state| tessera_proto::control::SnapshotInfo {
            volume: "db1".into(),
            volume_id: 1,
            name: name.into(),
            seq: 3,
            created_unix: 0,
            state,
            clones: Vec::new(),
            size: 1 << 20,
        };
        match req {
            ManagerRequest::ListVolumes => Ok(ManagerReply::Volumes(vec![])),
            ManagerRequest::SnapshotInfo { name, .. } if name == "ready" => Ok(
                ManagerReply::Snapshot(snap("ready", tessera_proto::control::SnapshotState::Ready)),
            ),
            ManagerRequest::SnapshotInfo { name, .. } if name == "creating" => {
                Ok(ManagerReply::Snapshot(snap(
                    "creating",
                    tessera_proto::control::SnapshotState::Creating,
                )))
            }
            ManagerRequest::OpenVolume { .. } => Ok(ManagerReply::Opened {
                volume: VolumeInfo {
                    id: 1,
                    name: "db1".into(),
                    size: 4 << 20,
                    chunk_size: 1 << 20,
                    mapped_chunks: 0,
                    created_unix: 0,
                    attachment: None,
                    seq: 4,
                    parent: None,
                    snapshots: Vec::new(),
                    reclaims: Vec::new(),
                    restore: None,
                },
                chunks: Vec::new(),
                more_groups: false,
            }),
            _ => Err(ControlError::NotFound("snapshot not found".into())),
        }
    }

    /// `VOL@SNAP` opens a ready snapshot read-only, at its size; one still being created
    /// is not readable; a malformed name is refused before anything is asked.
    #[tokio::test]
    async fn snapshots_open_read_only_once_ready() {
        let client = Client::connect(vec![fake_manager(snapshots).await])
            .await
            .expect("connect");
        let v = client.open_read_only("db1@ready").await.expect("ready");
        assert_eq!(v.size(), 1 << 20);
        assert_eq!(v.snapshot_info().map(|s| s.seq), Some(3));
        assert_eq!(v.epoch(), None);
        let e = v
            .write(0, bytes::Bytes::from_static(b"x"))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::ReadOnly(_)), "{e}");
        let e = client.open_read_only("db1@creating").await.err().unwrap();
        assert!(
            matches!(&e, Error::Unavailable(m) if m.contains("being created")),
            "{e}"
        );
        let e = client.open_read_only("db1@a@b").await.err().unwrap();
        assert!(matches!(e, Error::Invalid(_)), "{e}");
    }

    #[tokio::test]
    async fn refusals_arrive_typed_and_classed() {
        let client = Client::connect(vec![fake_manager(refuses).await])
            .await
            .expect("connect");
        let e = client.volume_info("nope").await.expect_err("missing");
        assert!(
            matches!(&e, Error::VolumeNotFound(n) if n == "nope"),
            "{e:?}"
        );
        let e = client.delete_volume("nope").await.expect_err("missing");
        assert_eq!(e.to_string(), "volume \"nope\" not found");
        let e = client.volume_usage("nope").await.expect_err("missing");
        assert!(
            matches!(&e, Error::VolumeNotFound(n) if n == "nope"),
            "{e:?}"
        );
        let e = client
            .create_volume("db1", 1 << 30, None)
            .await
            .expect_err("taken");
        assert!(matches!(e, Error::AlreadyExists(_)), "{e:?}");
        assert_eq!(e.to_string(), "volume \"db1\" already exists");
        let e = client.detach("vm", false).await.expect_err("lease runs");
        assert!(matches!(e, Error::InUse(_)), "{e:?}");
        assert_eq!(e.class(), crate::ErrorClass::Refused);
        let e = client.drain_node(9, false).await.expect_err("no such node");
        assert_eq!(e.class(), crate::ErrorClass::NotFound);

        let e = client
            .snapshot_info("db1", "s9")
            .await
            .expect_err("missing");
        assert_eq!(e.to_string(), "snapshot \"db1@s9\" not found");
        assert_eq!(e.class(), crate::ErrorClass::NotFound);
        let e = client
            .open_snapshot("db1", "s9")
            .await
            .err()
            .expect("missing");
        assert_eq!(e.class(), crate::ErrorClass::NotFound);
        let e = client
            .create_snapshot("db1", "s1")
            .await
            .expect_err("taken");
        assert_eq!(e.class(), crate::ErrorClass::AlreadyExists);
        let e = client
            .delete_snapshot("db1", "s1")
            .await
            .expect_err("clones");
        assert_eq!(e.class(), crate::ErrorClass::Refused);
        assert!(e.to_string().contains("db2, db3"), "{e}");
        let e = client
            .rollback_volume("db1", "s1")
            .await
            .expect_err("attached");
        assert!(matches!(&e, Error::InUse(m) if m.contains("vm7")), "{e:?}");
    }

    /// The usage of `db1`; nodes down for `db2`.
    fn usage(req: ManagerRequest) -> std::result::Result<ManagerReply, ControlError> {
        match req {
            ManagerRequest::ListVolumes => Ok(ManagerReply::Volumes(vec![])),
            ManagerRequest::VolumeUsage { name } if name == "db1" => {
                Ok(ManagerReply::Usage(VolumeUsage {
                    volume: name,
                    snapshots: vec![tessera_proto::control::SnapshotUsage {
                        name: "monday".into(),
                        seq: 1,
                        bytes: 8 << 20,
                    }],
                    live_bytes: 1 << 20,
                    unreported_groups: vec![4],
                }))
            }
            _ => Err(ControlError::Unavailable(
                "no replica of group 3 answered".into(),
            )),
        }
    }

    /// A volume's usage arrives typed; the manager's failure to ask the nodes is kept as
    /// it said it (a transient error, not a missing volume).
    #[tokio::test]
    async fn volume_usage_arrives_typed() {
        let client = Client::connect(vec![fake_manager(usage).await])
            .await
            .expect("connect");
        let u = client.volume_usage("db1").await.expect("usage");
        assert_eq!(u.snapshots[0].bytes, 8 << 20);
        assert_eq!((u.live_bytes, u.unreported_groups), (1 << 20, vec![4]));
        let e = client.volume_usage("db2").await.expect_err("nodes down");
        assert!(
            matches!(&e, Error::Control(ControlError::Unavailable(m)) if m.contains("group 3")),
            "{e:?}"
        );
    }
}

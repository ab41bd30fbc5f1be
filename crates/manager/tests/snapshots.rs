//! Snapshots, clones, rollback and flatten on a real manager on loopback, with a stand-in
//! storage node that records the group ops it is asked to apply.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use tessera_manager::{Manager, ManagerConfig};
use tessera_net::{FrameReader, NetError, call, rpc_reply, write_frame};
use tessera_proto::control::{
    self, ControlError, GroupOp, ManagerReply, ManagerRequest, NodeRegistration, SnapshotState,
    StorageReply, StorageRequest, VolumeInfo,
};

const T: Duration = Duration::from_secs(10);
const MIB: u64 = 1 << 20;

async fn ask(m: &Manager, req: ManagerRequest) -> Result<ManagerReply, NetError> {
    call(
        &tessera_net::Security::insecure(),
        &m.local_addr().to_string(),
        tessera_net::Expect::AnyManager,
        &req,
        T,
    )
    .await
}

fn control_err<R: std::fmt::Debug>(r: Result<R, NetError>) -> ControlError {
    match r {
        Err(NetError::Control(e)) => e,
        other => panic!("expected a control error, got {other:?}"),
    }
}

/// A stand-in storage node: records every request and answers `Done`.
async fn fake_storage_node() -> (String, mpsc::UnboundedReceiver<StorageRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = FrameReader::new(r);
                while let Ok(Some(f)) = r.next().await {
                    let req: StorageRequest = control::decode(&f.body).unwrap();
                    let _ = tx.send(req);
                    let ok: Result<StorageReply, ControlError> = Ok(StorageReply::Done);
                    write_frame(&mut w, &rpc_reply(f.request_id, &ok))
                        .await
                        .unwrap();
                }
            });
        }
    });
    (addr, rx)
}

/// The group ops applied so far (other requests are dropped).
fn applied(rx: &mut mpsc::UnboundedReceiver<StorageRequest>) -> Vec<(u64, GroupOp)> {
    let mut out = Vec::new();
    while let Ok(req) = rx.try_recv() {
        if let StorageRequest::Apply { group_id, ops } = req {
            out.extend(ops.into_iter().map(|op| (group_id, op)));
        }
    }
    out
}

async fn volume(m: &Manager, name: &str) -> VolumeInfo {
    match ask(m, ManagerRequest::VolumeInfo { name: name.into() })
        .await
        .unwrap()
    {
        ManagerReply::Volume(v) => v,
        other => panic!("unexpected {other:?}"),
    }
}

/// A manager with three nodes (one group, all at `addr`) and volume "v" of 8 MiB in 1 MiB
/// chunks with chunks 0..3 mapped; answers the writer's epoch.
async fn setup(dir: &std::path::Path, addr: &str) -> (Manager, u64) {
    let m = Manager::start(ManagerConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        groups_per_node: 1,
        reconcile_every: Duration::from_millis(100),
        flatten_bytes_per_sec: 1 << 30,
        ..ManagerConfig::default()
    })
    .await
    .unwrap();
    for rack in ["a", "b", "c"] {
        let reg = NodeRegistration {
            node_id: None,
            zone: "z".into(),
            rack: rack.into(),
            addr: addr.into(),
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            disk: 0,
        };
        ask(&m, ManagerRequest::RegisterNode(reg)).await.unwrap();
    }
    let create = ManagerRequest::CreateVolume {
        name: "v".into(),
        size: 8 * MIB,
        chunk_size: Some(MIB),
    };
    ask(&m, create).await.unwrap();
    let attach = ManagerRequest::AttachVolume {
        name: "v".into(),
        client: "writer".into(),
        paged: true,
        holder: String::new(),
    };
    let ManagerReply::Attached { epoch, .. } = ask(&m, attach).await.unwrap() else {
        panic!("not attached");
    };
    let provision = ManagerRequest::ProvisionChunks {
        volume_id: 1,
        first_chunk: 0,
        count: 3,
        epoch,
    };
    ask(&m, provision).await.unwrap();
    (m, epoch)
}

#[tokio::test]
async fn a_snapshot_fences_every_group_and_routes_carry_the_new_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, mut rx) = fake_storage_node().await;
    let (m, epoch) = setup(dir.path(), &addr).await;
    assert_eq!(volume(&m, "v").await.seq, 1);
    // Taken with the writer attached: no pause asked of it.
    let snap = ManagerRequest::CreateSnapshot {
        volume: "v".into(),
        name: "mon".into(),
    };
    let ManagerReply::Snapshot(s) = ask(&m, snap.clone()).await.unwrap() else {
        panic!("not a snapshot");
    };
    assert_eq!((s.seq, s.state, s.size), (1, SnapshotState::Ready, 8 * MIB));
    assert_eq!(
        applied(&mut rx),
        [(
            1,
            GroupOp::Fence {
                volume_id: 1,
                epoch: 0,
                seq: 2
            }
        )]
    );
    assert_eq!(volume(&m, "v").await.seq, 2);
    let route = ManagerRequest::Route {
        volume_id: 1,
        chunk: 5,
        allocate: true,
        epoch,
    };
    let ManagerReply::Route(Some(r)) = ask(&m, route).await.unwrap() else {
        panic!("no route");
    };
    assert_eq!(
        r.seq, 2,
        "a chunk mapped after the cut carries the new sequence"
    );
    assert!(matches!(
        control_err(ask(&m, snap).await),
        ControlError::AlreadyExists(_)
    ));
    let bad = ManagerRequest::CreateSnapshot {
        volume: "v".into(),
        name: "a@b".into(),
    };
    assert!(matches!(
        control_err(ask(&m, bad).await),
        ControlError::Invalid(_)
    ));
    let list = ManagerRequest::ListSnapshots { volume: None };
    let ManagerReply::Snapshots(all) = ask(&m, list).await.unwrap() else {
        panic!()
    };
    assert_eq!(all, [s]);
    m.shutdown().await;
}

#[tokio::test]
async fn a_clone_is_linked_refuses_deletes_and_flattens_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, mut rx) = fake_storage_node().await;
    let (m, epoch) = setup(dir.path(), &addr).await;
    let snap = ManagerRequest::CreateSnapshot {
        volume: "v".into(),
        name: "mon".into(),
    };
    ask(&m, snap).await.unwrap();
    applied(&mut rx);
    let clone = ManagerRequest::CloneVolume {
        volume: "v".into(),
        snapshot: "mon".into(),
        name: "c".into(),
    };
    let ManagerReply::Volume(c) = ask(&m, clone).await.unwrap() else {
        panic!("not a volume");
    };
    assert_eq!(
        (c.size, c.chunk_size, c.seq, c.mapped_chunks),
        (8 * MIB, MIB, 1, 3)
    );
    let links: Vec<_> = applied(&mut rx);
    assert_eq!(links.len(), 3);
    assert!(links.iter().all(|(g, op)| *g == 1
        && matches!(
            op,
            GroupOp::Link {
                parent_volume: 1,
                parent_seq: 1,
                ..
            }
        )));
    // The parent's snapshot lists it; neither it nor the parent can be deleted.
    assert_eq!(volume(&m, "v").await.snapshots[0].clones, ["c"]);
    let err = control_err(
        ask(
            &m,
            ManagerRequest::DeleteSnapshot {
                volume: "v".into(),
                name: "mon".into(),
            },
        )
        .await,
    );
    assert!(
        matches!(&err, ControlError::Conflict(m) if m.contains("has clones (c)")),
        "{err:?}"
    );
    let detach = ManagerRequest::DetachVolume {
        name: "v".into(),
        epoch,
        force: false,
    };
    ask(&m, detach).await.unwrap();
    let err = control_err(ask(&m, ManagerRequest::DeleteVolume { name: "v".into() }).await);
    assert!(matches!(err, ControlError::Conflict(_)), "{err:?}");
    // Flatten: every linked chunk copied, then unlinked, then the parent cleared.
    let flatten = ManagerRequest::FlattenVolume { name: "c".into() };
    let ManagerReply::Volume(c) = ask(&m, flatten).await.unwrap() else {
        panic!()
    };
    assert!(c.parent.unwrap().flattening);
    let deadline = tokio::time::Instant::now() + T;
    while volume(&m, "c").await.parent.is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "flatten never ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ops = applied(&mut rx);
    for chunk in 0..3 {
        let flat = ops
            .iter()
            .position(|(_, op)| matches!(op, GroupOp::Flatten { chunk: c, .. } if *c == chunk))
            .unwrap();
        let unlink = ops
            .iter()
            .position(|(_, op)| matches!(op, GroupOp::Unlink { chunk: c, .. } if *c == chunk))
            .unwrap();
        assert!(flat < unlink, "chunk {chunk}: copied before it is unlinked");
    }
    assert!(volume(&m, "v").await.snapshots[0].clones.is_empty());
    ask(
        &m,
        ManagerRequest::DeleteSnapshot {
            volume: "v".into(),
            name: "mon".into(),
        },
    )
    .await
    .unwrap();
    m.shutdown().await;
}

#[tokio::test]
async fn a_rollback_waits_for_the_writer_then_fences_and_rolls_back_every_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, mut rx) = fake_storage_node().await;
    let (m, epoch) = setup(dir.path(), &addr).await;
    let snap = ManagerRequest::CreateSnapshot {
        volume: "v".into(),
        name: "mon".into(),
    };
    ask(&m, snap).await.unwrap();
    applied(&mut rx);
    let rollback = ManagerRequest::RollbackVolume {
        volume: "v".into(),
        snapshot: "mon".into(),
    };
    let err = control_err(ask(&m, rollback.clone()).await);
    assert!(
        matches!(&err, ControlError::Conflict(m) if m.contains("writer")),
        "{err:?}"
    );
    let detach = ManagerRequest::DetachVolume {
        name: "v".into(),
        epoch,
        force: false,
    };
    ask(&m, detach).await.unwrap();
    let ManagerReply::Volume(v) = ask(&m, rollback).await.unwrap() else {
        panic!()
    };
    assert!(v.attachment.is_none());
    let ops = applied(&mut rx);
    // Each chunk's rollback right after a fence with the new epoch (a group refuses a
    // rollback that does not follow its writer fence).
    let fence = (
        1,
        GroupOp::Fence {
            volume_id: 1,
            epoch: epoch + 1,
            seq: 0,
        },
    );
    assert_eq!(ops.len(), 6, "{ops:?}");
    let chunks: Vec<u64> = ops
        .chunks(2)
        .map(|pair| {
            assert_eq!(pair[0], fence);
            match &pair[1].1 {
                GroupOp::Rollback {
                    chunk,
                    to: 1,
                    seq: 2,
                    ..
                } => *chunk,
                other => panic!("unexpected {other:?}"),
            }
        })
        .collect();
    assert_eq!(chunks, [0, 1, 2]);
    m.shutdown().await;
}

/// A stand-in storage node that refuses every `Apply` until `open` is set.
async fn refusing_storage_node() -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let open = std::sync::Arc::new(AtomicBool::new(false));
    let flag = open.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let flag = flag.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = FrameReader::new(r);
                while let Ok(Some(f)) = r.next().await {
                    let req: StorageRequest = control::decode(&f.body).unwrap();
                    let res: Result<StorageReply, ControlError> = match req {
                        StorageRequest::Apply { .. } if !flag.load(Ordering::SeqCst) => {
                            Ok(StorageReply::NotLeader { hint: 0 })
                        }
                        _ => Ok(StorageReply::Done),
                    };
                    write_frame(&mut w, &rpc_reply(f.request_id, &res))
                        .await
                        .unwrap();
                }
            });
        }
    });
    (addr, open)
}

/// A group that cannot be fenced in time: `Unavailable`, the snapshot stays `Creating` (not
/// readable) at its sequence, and asking again finishes it without moving the sequence.
#[tokio::test]
async fn a_snapshot_whose_groups_cannot_be_fenced_stays_creating_until_asked_again() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, open) = refusing_storage_node().await;
    let (m, _) = setup(dir.path(), &addr).await;
    let snap = ManagerRequest::CreateSnapshot {
        volume: "v".into(),
        name: "mon".into(),
    };
    let asked = call::<_, ManagerReply>(
        &tessera_net::Security::insecure(),
        &m.local_addr().to_string(),
        tessera_net::Expect::AnyManager,
        &snap,
        T * 3,
    )
    .await;
    let err = control_err(asked);
    assert!(
        matches!(&err, ControlError::Unavailable(m) if m.contains("stays creating")),
        "{err:?}"
    );
    let v = volume(&m, "v").await;
    assert_eq!(v.seq, 2);
    assert_eq!(v.snapshots[0].state, SnapshotState::Creating);
    // Cloning it is refused while it is not ready.
    let clone = ManagerRequest::CloneVolume {
        volume: "v".into(),
        snapshot: "mon".into(),
        name: "c".into(),
    };
    assert!(matches!(
        control_err(ask(&m, clone).await),
        ControlError::Unavailable(_)
    ));
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    let ManagerReply::Snapshot(s) = ask(&m, snap).await.unwrap() else {
        panic!()
    };
    assert_eq!((s.seq, s.state), (1, SnapshotState::Ready));
    assert_eq!(volume(&m, "v").await.seq, 2);
    m.shutdown().await;
}

/// A snapshot left `Creating` (the request gave up, or its manager failed over) is finished
/// by the leading manager's background loop once its group can be fenced: asking again
/// afterwards finds it `Ready` (`AlreadyExists`).
#[tokio::test]
async fn the_leading_manager_finishes_a_creating_snapshot_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, open) = refusing_storage_node().await;
    let (m, _) = setup(dir.path(), &addr).await;
    let snap = ManagerRequest::CreateSnapshot {
        volume: "v".into(),
        name: "mon".into(),
    };
    let asked = call::<_, ManagerReply>(
        &tessera_net::Security::insecure(),
        &m.local_addr().to_string(),
        tessera_net::Expect::AnyManager,
        &snap,
        T * 3,
    )
    .await;
    assert!(matches!(control_err(asked), ControlError::Unavailable(_)));
    open.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + T * 3;
    while volume(&m, "v").await.snapshots[0].state != SnapshotState::Ready {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never finished in the background"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(matches!(
        control_err(ask(&m, snap).await),
        ControlError::AlreadyExists(_)
    ));
    m.shutdown().await;
}

//! Reclaiming deleted snapshots' space and reporting usage, on a real manager on loopback
//! with a stand-in storage node that answers `LayerUsage` with a fixed list of layers and
//! records the group ops it is asked to apply.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use tessera_manager::{Manager, ManagerConfig};
use tessera_net::{FrameReader, NetError, call, rpc_reply, write_frame};
use tessera_proto::control::{
    self, ControlError, GroupOp, LayerBytes, ManagerReply, ManagerRequest, NodeRegistration,
    SnapshotUsage, StorageReply, StorageRequest, VolumeInfo,
};

const T: Duration = Duration::from_secs(10);
const KIB: u64 = 1 << 10;
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

fn lb(chunk: u64, layer: u64, bytes: u64) -> LayerBytes {
    LayerBytes {
        chunk,
        layer,
        bytes,
    }
}

/// Chunk 0 has layers 1, 2 and 3; chunk 1 only its base; chunk 2 layers 2 and 3.
fn layers() -> Vec<LayerBytes> {
    vec![
        lb(0, 1, MIB),
        lb(0, 2, 64 * KIB),
        lb(0, 3, 4 * KIB),
        lb(1, 1, MIB),
        lb(2, 2, 8 * KIB),
        lb(2, 3, 8 * KIB),
    ]
}

/// A stand-in storage node: records every request, answers `LayerUsage` with
/// [`layers`] as merged so far (or `NotFound` while `usage_down` is set) and anything else
/// `Done`; a `DropMerged` forgets the chunk's layers of the range but its target (the
/// lowest, or the top of a live range), as a storage node would.
async fn fake_storage_node() -> (
    String,
    mpsc::UnboundedReceiver<StorageRequest>,
    Arc<AtomicBool>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = mpsc::unbounded_channel();
    let down = Arc::new(AtomicBool::new(false));
    let flag = down.clone();
    let held = Arc::new(std::sync::Mutex::new(layers()));
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let tx = tx.clone();
            let flag = flag.clone();
            let held = held.clone();
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let mut r = FrameReader::new(r);
                while let Ok(Some(f)) = r.next().await {
                    let req: StorageRequest = control::decode(&f.body).unwrap();
                    let res: Result<StorageReply, ControlError> = match &req {
                        StorageRequest::LayerUsage { .. } if flag.load(Ordering::SeqCst) => {
                            Err(ControlError::NotFound("no such group".into()))
                        }
                        StorageRequest::LayerUsage { .. } => {
                            Ok(StorageReply::LayerUsage(held.lock().unwrap().clone()))
                        }
                        StorageRequest::Apply { ops, .. } => {
                            for op in ops {
                                if let GroupOp::DropMerged {
                                    chunk,
                                    low,
                                    top,
                                    live,
                                    ..
                                } = op
                                {
                                    drop_merged_layers(
                                        &mut held.lock().unwrap(),
                                        *chunk,
                                        *low,
                                        *top,
                                        *live,
                                    );
                                }
                            }
                            Ok(StorageReply::Done)
                        }
                        _ => Ok(StorageReply::Done),
                    };
                    let _ = tx.send(req);
                    write_frame(&mut w, &rpc_reply(f.request_id, &res))
                        .await
                        .unwrap();
                }
            });
        }
    });
    (addr, rx, down)
}

/// Forgets `chunk`'s layers in `low..=top` but the target.
fn drop_merged_layers(layers: &mut Vec<LayerBytes>, chunk: u64, low: u64, top: u64, live: bool) {
    let in_range = |l: &LayerBytes| l.chunk == chunk && (low..=top).contains(&l.layer);
    let target = if live {
        Some(top)
    } else {
        layers.iter().filter(|l| in_range(l)).map(|l| l.layer).min()
    };
    layers.retain(|l| !in_range(l) || Some(l.layer) == target);
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

/// A manager with three nodes (one group, all at `addr`), volume "v" of 8 MiB in 1 MiB
/// chunks with chunks 0..3 mapped, and snapshots "mon" (sequence 1) and "tue" (2): the
/// volume is at sequence 3.
async fn setup(dir: &std::path::Path, addr: &str) -> Manager {
    setup_at(dir, [addr; 3]).await
}

/// [`setup`] with each node at its own address.
async fn setup_at(dir: &std::path::Path, addrs: [&str; 3]) -> Manager {
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
    for (rack, addr) in ["a", "b", "c"].into_iter().zip(addrs) {
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
    for name in ["mon", "tue"] {
        let snap = ManagerRequest::CreateSnapshot {
            volume: "v".into(),
            name: name.into(),
        };
        ask(&m, snap).await.unwrap();
    }
    assert_eq!(volume(&m, "v").await.seq, 3);
    m
}

async fn delete_snapshot(m: &Manager, name: &str) {
    let req = ManagerRequest::DeleteSnapshot {
        volume: "v".into(),
        name: name.into(),
    };
    assert_eq!(ask(m, req).await.unwrap(), ManagerReply::Deleted);
}

/// Waits until the volume has no reclaim left.
async fn reclaimed(m: &Manager) {
    let deadline = tokio::time::Instant::now() + T;
    while !volume(m, "v").await.reclaims.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reclaim never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn fence(seq: u64) -> (u64, GroupOp) {
    (
        1,
        GroupOp::Fence {
            volume_id: 1,
            epoch: 0,
            seq,
        },
    )
}

fn merge(chunk: u64, low: u64, top: u64, live: bool) -> (u64, GroupOp) {
    (
        1,
        GroupOp::Merge {
            volume_id: 1,
            chunk,
            offset: 0,
            len: MIB as u32,
            low,
            top,
            live,
        },
    )
}

fn drop_merged(chunk: u64, low: u64, top: u64, live: bool) -> (u64, GroupOp) {
    (
        1,
        GroupOp::DropMerged {
            volume_id: 1,
            chunk,
            low,
            top,
            live,
        },
    )
}

/// Deleting the oldest snapshot merges layers 1..=2 of the one chunk that has both (after
/// a fence at the volume's sequence); deleting the newest then merges the live range
/// 1..=3 of every chunk with two layers there, in chunk order: the frozen pass over 1..=2,
/// then the live pass over 1..=3, each merge piece in its own batch behind the fence.
#[tokio::test]
async fn deleting_snapshots_merges_the_layers_nobody_reads_any_more() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, mut rx, _) = fake_storage_node().await;
    let m = setup(dir.path(), &addr).await;
    applied(&mut rx);
    delete_snapshot(&m, "mon").await;
    reclaimed(&m).await;
    assert_eq!(
        applied(&mut rx),
        [fence(3), merge(0, 1, 2, false), drop_merged(0, 1, 2, false)]
    );
    delete_snapshot(&m, "tue").await;
    reclaimed(&m).await;
    let chunk = |c| {
        [
            fence(3),
            merge(c, 1, 2, false),
            drop_merged(c, 1, 2, false),
            fence(3),
            merge(c, 1, 3, true),
            drop_merged(c, 1, 3, true),
        ]
    };
    assert_eq!(applied(&mut rx), [chunk(0), chunk(2)].concat());
    m.shutdown().await;
}

/// Usage per snapshot: the layers since the one before it; live: the layers above the
/// newest. A group no replica of which answers is named, not counted as empty.
#[tokio::test]
async fn volume_usage_counts_each_snapshots_layers_and_names_silent_groups() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _rx, down) = fake_storage_node().await;
    let m = setup(dir.path(), &addr).await;
    let usage = ManagerRequest::VolumeUsage { name: "v".into() };
    let ManagerReply::Usage(u) = ask(&m, usage.clone()).await.unwrap() else {
        panic!("not a usage");
    };
    assert_eq!(u.volume, "v");
    assert_eq!(
        u.snapshots,
        [
            SnapshotUsage {
                name: "mon".into(),
                seq: 1,
                bytes: 2 * MIB
            },
            SnapshotUsage {
                name: "tue".into(),
                seq: 2,
                bytes: 72 * KIB
            }
        ]
    );
    assert_eq!(u.live_bytes, 12 * KIB);
    assert!(u.unreported_groups.is_empty());
    down.store(true, Ordering::SeqCst);
    let ManagerReply::Usage(u) = ask(&m, usage).await.unwrap() else {
        panic!("not a usage");
    };
    assert_eq!(u.unreported_groups, [1]);
    assert_eq!((u.snapshots[0].bytes, u.live_bytes), (0, 0));
    let unknown = ManagerRequest::VolumeUsage { name: "x".into() };
    match ask(&m, unknown).await {
        Err(NetError::Control(ControlError::NotFound(_))) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    m.shutdown().await;
}

/// Only the group's leader applies ops here, so the other two stand-ins keep chunk 0's
/// layers, as replicas whose merge met a full disk would: the reclaim is not recorded
/// done (its progress goes back to chunk 0 for a later pass), and it is not retried at
/// once: one pass, not one per tick.
#[tokio::test]
async fn a_reclaim_is_not_done_while_a_replica_still_holds_the_layers() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(fake_storage_node().await);
    }
    let addrs = [
        nodes[0].0.as_str(),
        nodes[1].0.as_str(),
        nodes[2].0.as_str(),
    ];
    let m = setup_at(dir.path(), addrs).await;
    for n in &mut nodes {
        applied(&mut n.1);
    }
    delete_snapshot(&m, "mon").await;
    // A pass, the settling time, the check, and several ticks more.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ops: Vec<(u64, GroupOp)> = nodes.iter_mut().flat_map(|n| applied(&mut n.1)).collect();
    assert_eq!(
        ops,
        [fence(3), merge(0, 1, 2, false), drop_merged(0, 1, 2, false)],
        "merged once, and not again every tick"
    );
    let v = volume(&m, "v").await;
    assert_eq!(v.reclaims.len(), 1, "not done: {:?}", v.reclaims);
    assert_eq!(v.reclaims[0].next_chunk, 0, "progress back to chunk 0");
    m.shutdown().await;
}

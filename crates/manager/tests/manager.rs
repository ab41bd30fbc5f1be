//! A real manager on loopback, driven through its wire protocol.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use tessera_manager::{Error, Manager, ManagerConfig};
use tessera_net::{FrameReader, NetError, call, rpc_reply, write_frame};
use tessera_proto::control::{
    self, ControlError, GroupState, MAX_DROP_CHUNKS, MAX_ROUTES_PER_PAGE, ManagerReply,
    ManagerRequest, NodeHeartbeat, NodeRegistration, Role, StorageReply, StorageRequest,
};
use tessera_proto::frame::{Frame, Kind};

const T: Duration = Duration::from_secs(5);
const GIB: u64 = 1 << 30;

fn config(dir: &std::path::Path) -> ManagerConfig {
    ManagerConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        groups_per_node: 2,
        ..ManagerConfig::default()
    }
}

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

async fn register(m: &Manager, id: Option<u64>, rack: &str, addr: &str) -> u64 {
    let reg = NodeRegistration {
        node_id: id,
        zone: "z1".into(),
        rack: rack.into(),
        addr: addr.into(),
        capacity_bytes: 1 << 40,
        used_bytes: 0,
        disk: 0,
    };
    match ask(m, ManagerRequest::RegisterNode(reg)).await.unwrap() {
        ManagerReply::Registered { node_id } => node_id,
        other => panic!("unexpected {other:?}"),
    }
}

async fn heartbeat(m: &Manager, node: u64, groups: Vec<GroupState>) -> Result<Vec<u64>, NetError> {
    let hb = NodeHeartbeat {
        node_id: node,
        capacity_bytes: 1 << 40,
        used_bytes: 1 << 20,
        groups,
        recovery: Default::default(),
        descriptors: Default::default(),
        scrub: Default::default(),
    };
    match ask(m, ManagerRequest::Heartbeat(hb)).await? {
        ManagerReply::HeartbeatAck { create_groups, .. } => {
            Ok(create_groups.iter().map(|g| g.group_id).collect())
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn state(group_id: u64, role: Role) -> GroupState {
    GroupState {
        group_id,
        role,
        term: 2,
        leader: 0,
        commit: 10,
        applied: 10,
        voters: Vec::new(),
        learners: Vec::new(),
        joint: false,
        stuck: None,
    }
}

/// Attaches `name` read-write for `client`: its writer epoch.
async fn attach(m: &Manager, name: &str, client: &str) -> Result<u64, NetError> {
    let req = ManagerRequest::AttachVolume {
        name: name.into(),
        client: client.into(),
        paged: true,
        holder: String::new(),
    };
    match ask(m, req).await? {
        ManagerReply::Attached { epoch, .. } => Ok(epoch),
        other => panic!("unexpected {other:?}"),
    }
}

fn control_err<R: std::fmt::Debug>(r: Result<R, NetError>) -> ControlError {
    match r {
        Err(NetError::Control(e)) => e,
        other => panic!("expected a control error, got {other:?}"),
    }
}

/// A stand-in storage node that records the requests it gets and answers `Done`.
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

#[tokio::test]
async fn a_cluster_is_placed_served_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(config(dir.path())).await.unwrap();

    // Two racks: no groups, and allocation says why.
    let n1 = register(&m, None, "r1", "127.0.0.1:7501").await;
    let n2 = register(&m, None, "r2", "127.0.0.1:7502").await;
    assert_eq!((n1, n2), (1, 2));
    let v = match ask(
        &m,
        ManagerRequest::CreateVolume {
            name: "db1".into(),
            size: 8 * GIB,
            chunk_size: None,
        },
    )
    .await
    .unwrap()
    {
        ManagerReply::Volume(v) => v,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        (v.id, v.size, v.chunk_size, v.mapped_chunks),
        (1, 8 * GIB, 64 << 20, 0)
    );
    let epoch = attach(&m, "db1", "test").await.unwrap();
    let route = |chunk, allocate| ManagerRequest::Route {
        volume_id: v.id,
        chunk,
        allocate,
        epoch,
    };
    assert_eq!(
        control_err(ask(&m, route(0, true)).await),
        ControlError::Unavailable("need 3 racks, have 2".into())
    );

    // The third rack brings groups; each node learns its own from heartbeats until it
    // reports them.
    let n3 = register(&m, None, "r3", "127.0.0.1:7503").await;
    let mine = heartbeat(&m, n3, vec![]).await.unwrap();
    assert_eq!(mine, [1, 2]);
    let reported = mine.iter().map(|g| state(*g, Role::Leader)).collect();
    assert!(heartbeat(&m, n3, reported).await.unwrap().is_empty());
    assert!(matches!(
        control_err(heartbeat(&m, 99, vec![]).await),
        ControlError::NotFound(_)
    ));

    assert_eq!(
        ask(&m, route(3, false)).await.unwrap(),
        ManagerReply::Route(None)
    );
    let ManagerReply::Route(Some(r)) = ask(&m, route(3, true)).await.unwrap() else {
        panic!("no route")
    };
    assert_eq!((r.chunk, r.group_id, r.leader), (3, 1, Some(n3)));
    assert_eq!(r.peers.len(), 3);
    assert!(matches!(
        control_err(ask(&m, route(128, true)).await),
        ControlError::Invalid(_)
    ));

    let ManagerReply::Status(st) = ask(&m, ManagerRequest::ClusterStatus).await.unwrap() else {
        panic!()
    };
    assert_eq!(st.nodes.len(), 3);
    assert!(st.nodes.iter().all(|n| n.state == "up" && n.replicas == 2));
    assert_eq!(st.nodes[2].leaders, 2);
    assert_eq!(
        st.nodes[2].last_heartbeat_ms_ago.map(|ms| ms < 5000),
        Some(true)
    );
    assert_eq!(st.nodes[0].last_heartbeat_ms_ago, None);
    assert_eq!(st.groups.len(), 2);
    assert_eq!(st.groups[0].chunks, 1);
    assert_eq!(st.volumes, 1);

    // A second manager may not open the same directory.
    assert!(matches!(
        Manager::start(config(dir.path())).await,
        Err(Error::Locked { .. })
    ));

    m.shutdown().await;
    let m = Manager::start(config(dir.path())).await.unwrap();
    let open = ManagerRequest::OpenVolume {
        name: "db1".into(),
        paged: true,
    };
    let ManagerReply::Opened { volume, chunks, .. } = ask(&m, open).await.unwrap() else {
        panic!()
    };
    assert_eq!((volume.id, volume.mapped_chunks), (1, 1));
    assert_eq!((chunks[0].chunk, chunks[0].group_id), (3, 1));
    // Leaders are learnt from heartbeats, which a restarted manager has not had yet.
    assert_eq!(chunks[0].leader, None);
    // Node ids continue where they were.
    assert_eq!(register(&m, None, "r4", "127.0.0.1:7504").await, 4);
    m.shutdown().await;
}

/// One writer per volume: a second client is refused (naming the holder) while the first
/// holds it, also after a manager restart; a forced detach moves the volume to a new epoch
/// to fence with; the old holder can then neither renew nor allocate.
#[tokio::test]
async fn a_volume_has_one_writer_and_a_forced_detach_ends_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(config(dir.path())).await.unwrap();
    let create = ManagerRequest::CreateVolume {
        name: "vm1".into(),
        size: GIB,
        chunk_size: None,
    };
    let ManagerReply::Volume(v) = ask(&m, create).await.unwrap() else {
        panic!()
    };
    let a = attach(&m, "vm1", "gateway-a").await.unwrap();
    assert_eq!(
        attach(&m, "vm1", "gateway-a").await.unwrap(),
        a,
        "a retry keeps the epoch"
    );
    let held = |e: ControlError| matches!(&e, ControlError::Conflict(m) if m.contains("gateway-a"));
    assert!(held(control_err(attach(&m, "vm1", "gateway-b").await)));
    let info = ManagerRequest::VolumeInfo { name: "vm1".into() };
    let ManagerReply::Volume(got) = ask(&m, info.clone()).await.unwrap() else {
        panic!()
    };
    let att = got.attachment.unwrap();
    assert_eq!((att.client.as_str(), att.epoch), ("gateway-a", a));
    assert!(att.lease_left_ms.is_some_and(|ms| ms > 0));

    // A restarted manager keeps the attachment and gives it a whole lease.
    m.shutdown().await;
    let m = Manager::start(config(dir.path())).await.unwrap();
    assert!(held(control_err(attach(&m, "vm1", "gateway-b").await)));
    let renew = |epoch| ManagerRequest::RenewAttachment {
        volume_id: v.id,
        epoch,
    };
    assert!(matches!(
        ask(&m, renew(a)).await.unwrap(),
        ManagerReply::Renewed { .. }
    ));

    let force = ManagerRequest::DetachVolume {
        name: "vm1".into(),
        epoch: 0,
        force: true,
    };
    let ManagerReply::Detached { fence_epoch } = ask(&m, force).await.unwrap() else {
        panic!()
    };
    assert!(fence_epoch > a);
    let b = attach(&m, "vm1", "gateway-b").await.unwrap();
    assert!(b > fence_epoch);
    assert!(matches!(
        control_err(ask(&m, renew(a)).await),
        ControlError::Conflict(_)
    ));
    let route = |epoch| ManagerRequest::Route {
        volume_id: v.id,
        chunk: 0,
        allocate: true,
        epoch,
    };
    assert!(matches!(
        control_err(ask(&m, route(a)).await),
        ControlError::Conflict(_)
    ));
    // (No storage nodes here: the current holder gets past the check to placement.)
    assert!(matches!(
        control_err(ask(&m, route(b)).await),
        ControlError::Unavailable(_)
    ));
    m.shutdown().await;
}

#[tokio::test]
async fn deleting_a_volume_tells_the_replicas_to_drop_its_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(ManagerConfig {
        groups_per_node: 1,
        ..config(dir.path())
    })
    .await
    .unwrap();
    let (addr, mut dropped) = fake_storage_node().await;
    for rack in ["a", "b", "c"] {
        register(&m, None, rack, &addr).await;
    }
    ask(
        &m,
        ManagerRequest::CreateVolume {
            name: "tmp".into(),
            size: GIB,
            chunk_size: Some(1 << 20),
        },
    )
    .await
    .unwrap();
    let epoch = attach(&m, "tmp", "test").await.unwrap();
    for chunk in [5, 9] {
        ask(
            &m,
            ManagerRequest::Route {
                volume_id: 1,
                chunk,
                allocate: true,
                epoch,
            },
        )
        .await
        .unwrap();
    }
    let del = ManagerRequest::DeleteVolume { name: "tmp".into() };
    // Not while it is attached: the holder lets go first.
    assert!(matches!(
        control_err(ask(&m, del.clone()).await),
        ControlError::Conflict(_)
    ));
    let detach = ManagerRequest::DetachVolume {
        name: "tmp".into(),
        epoch,
        force: false,
    };
    assert_eq!(
        ask(&m, detach).await.unwrap(),
        ManagerReply::Detached { fence_epoch: 0 }
    );
    assert_eq!(ask(&m, del.clone()).await.unwrap(), ManagerReply::Deleted);
    let got = tokio::time::timeout(T, dropped.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        StorageRequest::DropChunks {
            group_id: 1,
            volume_id: 1,
            chunks: vec![5, 9],
        }
    );
    assert_eq!(
        control_err(ask(&m, del).await),
        ControlError::NotFound("volume \"tmp\" not found".into())
    );
    m.shutdown().await;
}

/// A volume with more chunks in one group than one request may name: provisioned a page of
/// routes per change, paged back through `Routes`, and dropped in bounded requests.
#[tokio::test]
async fn a_volume_larger_than_any_one_answer_is_provisioned_paged_and_dropped_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(ManagerConfig {
        groups_per_node: 1,
        ..config(dir.path())
    })
    .await
    .unwrap();
    let (addr, mut dropped) = fake_storage_node().await;
    for rack in ["a", "b", "c"] {
        register(&m, None, rack, &addr).await;
    }
    let chunks = MAX_DROP_CHUNKS as u64 + 1000;
    ask(
        &m,
        ManagerRequest::CreateVolume {
            name: "big".into(),
            size: chunks << 20,
            chunk_size: Some(1 << 20),
        },
    )
    .await
    .unwrap();
    let epoch = attach(&m, "big", "test").await.unwrap();
    let page = u64::from(MAX_ROUTES_PER_PAGE);
    for first_chunk in (0..chunks).step_by(page as usize) {
        let count = (chunks - first_chunk).min(page) as u32;
        let req = ManagerRequest::ProvisionChunks {
            volume_id: 1,
            first_chunk,
            count,
            epoch,
        };
        let ManagerReply::Routes(p) = ask(&m, req).await.unwrap() else {
            panic!()
        };
        assert_eq!(p.routes.len(), count as usize);
    }
    // A reader without an epoch may not provision.
    let req = ManagerRequest::ProvisionChunks {
        volume_id: 1,
        first_chunk: 0,
        count: 1,
        epoch: 0,
    };
    assert!(matches!(
        control_err(ask(&m, req).await),
        ControlError::Conflict(_)
    ));
    let mut seen = 0;
    let mut next = Some(0);
    while let Some(first_chunk) = next {
        let req = ManagerRequest::Routes {
            volume_id: 1,
            first_chunk,
            limit: 0,
            epoch: 0,
        };
        let ManagerReply::Routes(p) = ask(&m, req).await.unwrap() else {
            panic!()
        };
        assert!(p.routes.len() <= MAX_ROUTES_PER_PAGE as usize);
        assert!(p.routes.iter().all(|r| r.chunk >= first_chunk));
        seen += p.routes.len() as u64;
        next = p.next;
    }
    assert_eq!(seen, chunks);

    let detach = ManagerRequest::DetachVolume {
        name: "big".into(),
        epoch,
        force: false,
    };
    ask(&m, detach).await.unwrap();
    let del = ManagerRequest::DeleteVolume { name: "big".into() };
    // Deleting 66,000 chunks takes the manager ~14 s in a debug build (not this change's
    // subject): a longer deadline than the other calls'.
    let t0 = std::time::Instant::now();
    let r: Result<ManagerReply, NetError> = call(
        &tessera_net::Security::insecure(),
        &m.local_addr().to_string(),
        tessera_net::Expect::AnyManager,
        &del,
        Duration::from_secs(120),
    )
    .await;
    eprintln!("deleting {chunks} chunks took {:?}", t0.elapsed());
    assert_eq!(r.unwrap(), ManagerReply::Deleted);
    let mut parts = Vec::new();
    while parts.iter().sum::<usize>() < chunks as usize {
        let got = tokio::time::timeout(T, dropped.recv())
            .await
            .unwrap()
            .unwrap();
        let StorageRequest::DropChunks { chunks, .. } = got else {
            panic!("{got:?}")
        };
        parts.push(chunks.len());
    }
    parts.sort();
    assert_eq!(parts, [1000, MAX_DROP_CHUNKS]);
    m.shutdown().await;
}

#[tokio::test]
async fn garbage_drops_only_its_own_connection() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(config(dir.path())).await.unwrap();
    let addr = m.local_addr();

    // A well-behaved client pipelining requests on one long-lived connection.
    let good = TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = good.into_split();
    let mut replies = FrameReader::new(r);
    let list = control::encode(&ManagerRequest::ListVolumes);
    for id in 1..=3 {
        write_frame(&mut w, &Frame::new(Kind::Rpc, id, list.clone()))
            .await
            .unwrap();
    }
    // A valid frame whose body is not a request is answered, not dropped.
    write_frame(
        &mut w,
        &Frame::new(Kind::Rpc, 4, Bytes::from_static(b"{nope")),
    )
    .await
    .unwrap();
    for id in 1..=4 {
        let f = replies.next().await.unwrap().unwrap();
        assert_eq!((f.kind, f.request_id), (Kind::RpcReply, id));
        let res: Result<ManagerReply, ControlError> = control::decode(&f.body).unwrap();
        if id < 4 {
            assert_eq!(res, Ok(ManagerReply::Volumes(vec![])));
        } else {
            assert!(matches!(res, Err(ControlError::Invalid(_))), "{res:?}");
        }
    }

    // Garbage on another connection: the manager hangs up on it.
    let mut bad = TcpStream::connect(addr).await.unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut bad = FrameReader::new(bad);
    assert!(matches!(
        tokio::time::timeout(T, bad.next()).await.unwrap(),
        Ok(None) | Err(_)
    ));

    // The first connection still works.
    write_frame(&mut w, &Frame::new(Kind::Rpc, 5, list))
        .await
        .unwrap();
    let f = replies.next().await.unwrap().unwrap();
    assert_eq!(f.request_id, 5);
    m.shutdown().await;
}

/// The heartbeat ack's create orders: (group, joining).
async fn create_orders(m: &Manager, node: u64, groups: Vec<GroupState>) -> Vec<(u64, bool)> {
    let hb = NodeHeartbeat {
        node_id: node,
        capacity_bytes: 1 << 40,
        used_bytes: 1 << 20,
        groups,
        recovery: Default::default(),
        descriptors: Default::default(),
        scrub: Default::default(),
    };
    match ask(m, ManagerRequest::Heartbeat(hb)).await.unwrap() {
        ManagerReply::HeartbeatAck { create_groups, .. } => create_groups
            .iter()
            .map(|g| (g.group_id, g.joining))
            .collect(),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_member_that_lost_its_replica_rejoins_after_a_manager_restart() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(config(dir.path())).await.unwrap();
    for (rack, port) in [("r1", 7501), ("r2", 7502), ("r3", 7503)] {
        register(&m, None, rack, &format!("127.0.0.1:{port}")).await;
    }
    // New groups that never had a leader: node 2 is one of their initial voters.
    assert_eq!(create_orders(&m, 2, vec![]).await, [(1, false), (2, false)]);
    // Node 1 leads both: they have a history now.
    let led = vec![state(1, Role::Leader), state(2, Role::Leader)];
    assert!(create_orders(&m, 1, led).await.is_empty());
    assert_eq!(create_orders(&m, 2, vec![]).await, [(1, true), (2, true)]);

    // A restarted manager has heard no heartbeat yet; node 2 comes back without its
    // replicas (a wiped disk). It must wait for a snapshot from the leader, never vote with
    // an empty log.
    m.shutdown().await;
    let m = Manager::start(config(dir.path())).await.unwrap();
    assert_eq!(
        create_orders(&m, 2, vec![]).await,
        [(1, true), (2, true)],
        "a restarted manager told a member that lost its replica to start as a fresh voter"
    );
    m.shutdown().await;
}

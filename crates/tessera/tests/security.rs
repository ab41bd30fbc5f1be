//! Threats against a secure cluster, each tried with no certificate, with a certificate of
//! another CA, and with a valid certificate of the wrong role or identity: each is refused,
//! counted in the refusing process's metrics, and the cluster keeps serving its real
//! clients. Real processes (a manager, three storage nodes) on loopback.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::cluster::issue_certs;
use common::metrics::{counted, counter};
use common::{Cluster, Opts, free_port};
use tessera_net::{Identity, NetError, Role, Security};
use tessera_proto::control::{
    ControlError, ManagerReply, ManagerRequest, NodeHeartbeat, NodeRegistration, PeerInfo,
    StorageReply, StorageRequest,
};
use tessera_proto::data::RaftBatch;
use tessera_proto::frame::{Frame, Kind};

const T: Duration = Duration::from_secs(5);

fn refused<T: std::fmt::Debug>(r: Result<T, NetError>) -> String {
    match r {
        Err(NetError::Control(ControlError::Unauthorized(why))) => why,
        other => panic!("not refused as unauthorized: {other:?}"),
    }
}

fn client(name: &str, role: Role) -> Identity {
    Identity::Client {
        name: name.into(),
        role,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_threat_is_refused_and_counted_and_real_clients_are_served() {
    let manager_metrics = format!("127.0.0.1:{}", free_port());
    let mut c = Cluster::start(Opts {
        nodes: 0,
        manager_extra: format!("metrics_listen = \"{manager_metrics}\"\n"),
        ..Default::default()
    });
    let mut node_metrics = Vec::new();
    for i in 0..3 {
        let m = format!("127.0.0.1:{}", free_port());
        c.add_node(i, &format!("metrics_listen = \"{m}\""));
        node_metrics.push(m);
    }
    let status = c.wait_ready(3).await;
    c.create_volume("a", "8MiB", "1MiB");
    c.create_volume("b", "8MiB", "1MiB");
    let admin = c.client().await;
    let b = admin.open("b").await.expect("open b");
    b.write(0, Bytes::from(vec![0xbb; 4096]))
        .await
        .expect("write b");
    drop(b);

    issue_certs(
        &c.certs,
        &[
            client("user-a", Role::Volumes(vec!["a".into()])),
            client("reader", Role::ReadOnly),
        ],
    );
    let load = |stem: &str| Security::load(&c.certs, stem).expect(stem);
    let (user_a, reader, node2) = (load("client-user-a"), load("client-reader"), load("node-2"));
    let other_ca = tempfile::tempdir().expect("tempdir");
    issue_certs(other_ca.path(), &[client("admin", Role::Admin)]);
    let stranger = Security::load(other_ca.path(), "client-admin").expect("stranger");
    let maddr = c.manager_addr().to_string();
    let node_addr = |id: u64| {
        status
            .nodes
            .iter()
            .find(|n| n.node_id == id)
            .map(|n| n.addr.clone())
            .expect("node")
    };
    // The certificates bind the ids: node i+1 registered as i+1.
    for (i, n) in c.nodes.iter().enumerate() {
        assert_eq!(c.node_id(&status, i), i as u64 + 1, "{}", n.addr);
    }
    let (addr1, addr3) = (node_addr(1), node_addr(3));
    let refused_requests =
        |m: &str, who: &str| counter(m, &format!("tessera_{who}_refused_requests_total"));
    let refused_conns =
        |m: &str, who: &str| counter(m, &format!("tessera_{who}_refused_connections_total"));

    // --- Delete a volume. ---
    // No certificate: the CLI is told the cluster speaks TLS; the manager counts the
    // connection it refused.
    let before = refused_conns(&manager_metrics, "manager");
    let out = std::process::Command::new(common::BIN)
        .args(["--manager", &maddr, "--insecure", "volume", "delete", "a"])
        .output()
        .expect("cli");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("speaks TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another CA's certificate.
    let e = tessera_net::call::<_, ManagerReply>(
        &stranger,
        &maddr,
        &ManagerRequest::DeleteVolume { name: "a".into() },
        T,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, NetError::Handshake { .. }), "{e}");
    counted(
        &manager_metrics,
        "tessera_manager_refused_connections_total",
        before + 2,
    );
    // A volume user of that very volume, and a read-only client.
    let before = refused_requests(&manager_metrics, "manager");
    let out = c.cli(&["--user", "user-a", "volume", "delete", "a"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not allowed"));
    let out = c.cli(&[
        "--user", "reader", "volume", "create", "c", "--size", "1MiB",
    ]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    counted(
        &manager_metrics,
        "tessera_manager_refused_requests_total",
        before + 2,
    );
    assert_eq!(c.volume_names(), ["a", "b"]);

    // --- Read another volume. ---
    let as_user =
        tessera_client::Client::connect_with(vec![maddr.clone()], "user-a", user_a.clone())
            .await
            .expect("user-a connects");
    let e = as_user
        .open("b")
        .await
        .err()
        .expect("volume b refused to user-a");
    assert!(e.to_string().contains("not allowed"), "{e}");
    // Its own volume it uses; its listing shows only it.
    let a = as_user.open("a").await.expect("open a");
    a.write(0, Bytes::from(vec![0xaa; 4096]))
        .await
        .expect("write a");
    assert_eq!(
        &a.read(0, 4096).await.expect("read a")[..],
        &[0xaa; 4096][..]
    );
    drop(a);
    let names: Vec<String> = as_user
        .list_volumes()
        .await
        .expect("list")
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["a"]);
    // A read-only client reads, and may not write on a node.
    let before = refused_requests(&node_metrics[0], "storage");
    let conn = reader
        .connect(&addr1, T)
        .await
        .expect("reader dials node 1");
    let (r, mut w) = conn.into_split();
    let write = tessera_proto::data::Request::write(
        tessera_proto::data::ChunkAddr {
            group: 1,
            volume: 1,
            chunk: 0,
        },
        0,
        Bytes::from(vec![1u8; 4096]),
    );
    tessera_net::write_frame(&mut w, &Frame::new(write.kind(), 1, write.encode()))
        .await
        .expect("send");
    let reply = tessera_net::FrameReader::new(r)
        .next()
        .await
        .expect("reply")
        .expect("frame");
    let text = format!("{:?}", tessera_proto::data::Reply::decode(&reply.body));
    assert!(text.contains("not allowed"), "{text}");
    counted(
        &node_metrics[0],
        "tessera_storage_refused_requests_total",
        before + 1,
    );

    // --- Register a node, take over a node id. ---
    let reg = |node_id| {
        ManagerRequest::RegisterNode(NodeRegistration {
            node_id,
            zone: "zone1".into(),
            rack: "rack9".into(),
            addr: "127.0.0.1:1".into(),
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            disk: 0,
        })
    };
    let before = refused_requests(&manager_metrics, "manager");
    let admin_sec = c.security();
    refused(tessera_net::call::<_, ManagerReply>(&admin_sec, &maddr, &reg(None), T).await);
    refused(tessera_net::call::<_, ManagerReply>(&node2, &maddr, &reg(Some(3)), T).await);
    let why = refused(tessera_net::call::<_, ManagerReply>(&node2, &maddr, &reg(None), T).await);
    assert!(why.contains("wiped"), "{why}");
    let hb = ManagerRequest::Heartbeat(NodeHeartbeat {
        node_id: 3,
        ..Default::default()
    });
    refused(tessera_net::call::<_, ManagerReply>(&node2, &maddr, &hb, T).await);
    counted(
        &manager_metrics,
        "tessera_manager_refused_requests_total",
        before + 4,
    );
    // A process started with node 2's certificate on a fresh disk exits, refused.
    let dir = c.dir.path().join("impostor");
    let cfg = c.dir.path().join("impostor.toml");
    std::fs::write(
        &cfg,
        format!(
            "rack = \"rack9\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{}\"\nmanagers = [\"{maddr}\"]\ncerts_dir = \"{}\"\ncert = \"node-2\"\n",
            dir.display(),
            free_port(),
            c.certs.display()
        ),
    )
    .expect("config");
    let out = std::process::Command::new(common::BIN)
        .args(["storage", "--config", cfg.to_str().expect("utf8")])
        .output()
        .expect("impostor");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not allowed"),
        "{out:?}"
    );
    let now = c.status().await.expect("status");
    assert_eq!(now.nodes.len(), 3);
    assert_eq!(
        now.nodes
            .iter()
            .find(|n| n.node_id == 2)
            .map(|n| n.addr.clone()),
        Some(node_addr(2))
    );

    // --- ChangeMembers (and any order only a manager may give a node). ---
    let change = StorageRequest::ChangeMembers {
        group_id: status.groups[0].group_id,
        peers: vec![PeerInfo {
            node_id: 2,
            addr: node_addr(2),
        }],
    };
    let before = refused_requests(&node_metrics[2], "storage");
    for who in [&admin_sec, &node2, &user_a] {
        refused(tessera_net::call::<_, StorageReply>(who, &addr3, &change, T).await);
    }
    let e = tessera_net::call::<_, StorageReply>(&Security::insecure(), &addr3, &change, T)
        .await
        .unwrap_err();
    assert!(matches!(e, NetError::SpeaksTls), "{e}");
    counted(
        &node_metrics[2],
        "tessera_storage_refused_requests_total",
        before + 3,
    );

    // --- Inject a Raft message: node 2 speaking as node 3, a client speaking as node 2. ---
    let before = refused_requests(&node_metrics[0], "storage");
    for (who, from) in [(&node2, 3), (&admin_sec, 2)] {
        let conn = who.connect(&addr1, T).await.expect("dial node 1");
        let (r, mut w) = conn.into_split();
        let batch = RaftBatch {
            from_node: from,
            msgs: vec![],
        };
        tessera_net::write_frame(&mut w, &Frame::new(Kind::RaftBatch, 0, batch.encode()))
            .await
            .expect("send");
        // Dropped: the connection ends without an answer.
        let end = tokio::time::timeout(T, tessera_net::FrameReader::new(r).next()).await;
        assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "{end:?}");
    }
    counted(
        &node_metrics[0],
        "tessera_storage_refused_requests_total",
        before + 2,
    );

    // The real clients were served throughout, and still are.
    let b = admin.open("b").await.expect("open b");
    assert_eq!(
        &b.read(0, 4096).await.expect("read b")[..],
        &[0xbb; 4096][..]
    );
    b.write(4096, Bytes::from(vec![0xbc; 4096]))
        .await
        .expect("write b");
    let a = admin.open("a").await.expect("open a");
    assert_eq!(
        &a.read(0, 4096).await.expect("read a")[..],
        &[0xaa; 4096][..]
    );
    let s = c.wait_ready(3).await;
    assert!(s.groups.iter().all(|g| g.replicas.len() == 3));
}

//! Threats against a secure cluster, each tried with no certificate, with a certificate of
//! another CA, and with a valid certificate of the wrong role or identity: each is refused,
//! counted in the refusing process's metrics (a server refusing a client) or logged (a
//! process refusing the server it dialled), and the cluster keeps serving its real clients.
//! Real processes (a manager, three storage nodes) on loopback.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster::issue_certs;
use common::metrics::{counted, counter};
use common::{Cluster, Opts, free_port};
use tessera_net::{Expect, Identity, NetError, Role, Security};
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

/// Whoever holds a process's key, listening on an address others dial as someone else:
/// who finished a handshake with it, and how many frames it was sent.
struct Impostor {
    dialled_by: Arc<Mutex<Vec<Identity>>>,
    frames: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Impostor {
    async fn listen(addr: &str, security: Security) -> Impostor {
        // The address was just freed (SIGKILL): retried until it can be taken.
        let deadline = Instant::now() + T;
        let l = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) => assert!(Instant::now() < deadline, "binding {addr}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let dialled_by: Arc<Mutex<Vec<Identity>>> = Arc::default();
        let frames: Arc<AtomicUsize> = Arc::default();
        let (d, f) = (dialled_by.clone(), Arc::clone(&frames));
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = l.accept().await {
                let (security, d, f) = (security.clone(), d.clone(), Arc::clone(&f));
                conns.spawn(async move {
                    let Ok((conn, Some(who))) = security.accept(tcp).await else {
                        return;
                    };
                    d.lock().expect("lock").push(who);
                    let (r, _w) = conn.into_split();
                    let mut r = tessera_net::FrameReader::new(r);
                    while let Ok(Some(_)) = r.next().await {
                        f.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Impostor {
            dialled_by,
            frames,
            task,
        }
    }

    /// Stops listening and drops every connection; its address is free on return.
    async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.task.abort();
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
    let node_metrics = c.add_nodes_with_metrics(3);
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
        Expect::AnyManager,
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
        .connect(&addr1, Expect::Node(1), T)
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
    refused(
        tessera_net::call::<_, ManagerReply>(&admin_sec, &maddr, Expect::AnyManager, &reg(None), T)
            .await,
    );
    refused(
        tessera_net::call::<_, ManagerReply>(&node2, &maddr, Expect::AnyManager, &reg(Some(3)), T)
            .await,
    );
    let why = refused(
        tessera_net::call::<_, ManagerReply>(&node2, &maddr, Expect::AnyManager, &reg(None), T)
            .await,
    );
    assert!(why.contains("wiped"), "{why}");
    let hb = ManagerRequest::Heartbeat(NodeHeartbeat {
        node_id: 3,
        ..Default::default()
    });
    refused(tessera_net::call::<_, ManagerReply>(&node2, &maddr, Expect::AnyManager, &hb, T).await);
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
        refused(
            tessera_net::call::<_, StorageReply>(who, &addr3, Expect::Node(3), &change, T).await,
        );
    }
    let e = tessera_net::call::<_, StorageReply>(
        &Security::insecure(),
        &addr3,
        Expect::Node(3),
        &change,
        T,
    )
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
        let conn = who
            .connect(&addr1, Expect::Node(1), T)
            .await
            .expect("dial node 1");
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

    // --- Answer as another process: node 2's key on node 3's address. ---
    // Node 3, leading volume a's first chunk, goes down, and whoever holds node 2's key
    // takes its address. User-a's client (told node 3 leads), the nodes' Raft links to
    // node 3, and a client given the address as a manager's all dial it; each refuses it
    // once the handshake shows who it is, and sends it nothing.
    common::scrub::Target::of(&c, "a", 0, 0)
        .await
        .make_leader(&c, 2)
        .await;
    let a = as_user.open("a").await.expect("open a");
    a.write(4096, Bytes::from(vec![0xab; 4096]))
        .await
        .expect("write a, led by node 3");
    c.kill_node(2);
    let impostor = Impostor::listen(&addr3, node2.clone()).await;
    a.write(4096, Bytes::from(vec![0xac; 4096]))
        .await
        .expect("write a while node 3 is impersonated");
    drop(a);
    let refused_by_a_node = || {
        c.nodes[..2].iter().any(|n| {
            std::fs::read_to_string(&n.log).is_ok_and(|l| l.contains("is node 2, not node 3"))
        })
    };
    let dialled_by_user_a = || {
        let d = impostor.dialled_by.lock().expect("lock");
        d.iter()
            .any(|w| matches!(w, Identity::Client { name, .. } if name == "user-a"))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(
            impostor.frames.load(Ordering::Relaxed),
            0,
            "the impostor was sent frames; dialled by {:?}",
            impostor.dialled_by.lock().expect("lock")
        );
        if refused_by_a_node() && dialled_by_user_a() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3's address not dialled and refused by a node and user-a; dialled by {:?}\n{}",
            impostor.dialled_by.lock().expect("lock"),
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Listed before the manager, it is passed over like a manager that is down.
    let misled = tessera_client::Client::connect_with(
        vec![addr3.clone(), maddr.clone()],
        "misled",
        admin_sec.clone(),
    )
    .await
    .expect("the manager listed second answers");
    assert_eq!(misled.list_volumes().await.expect("list").len(), 2);
    assert_eq!(impostor.frames.load(Ordering::Relaxed), 0);
    // Dialled by hand, the refusal is the caller's error.
    let status_req = StorageRequest::Status;
    let e =
        tessera_net::call::<_, StorageReply>(&admin_sec, &addr3, Expect::Node(3), &status_req, T)
            .await
            .unwrap_err();
    assert!(
        matches!(
            &e,
            NetError::WrongPeer {
                found: Some(Identity::Node(2)),
                ..
            }
        ),
        "{e}"
    );
    impostor.stop().await;
    c.restart_node(2);

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
    assert_eq!(
        &a.read(4096, 4096).await.expect("read a")[..],
        &[0xac; 4096][..]
    );
    let s = c.wait_ready(3).await;
    assert!(s.groups.iter().all(|g| g.replicas.len() == 3));
}

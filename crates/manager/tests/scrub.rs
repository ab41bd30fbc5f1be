//! Issue 16 through a real manager on loopback: `ScrubStatus` shows every registered node
//! with what its latest heartbeat said of its scrubbing; `ScrubControl` is carried to the
//! node (a stand-in answering `StorageRequest::Scrub`) and answered with its state after.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use tessera_manager::{Manager, ManagerConfig};
use tessera_net::{FrameReader, NetError, call, rpc_reply, write_frame};
use tessera_proto::control::{
    self, ControlError, ManagerReply, ManagerRequest, NodeHeartbeat, NodeRegistration, NodeScrub,
    ScrubAction, ScrubCursor, ScrubStats, StorageReply, StorageRequest,
};

const T: Duration = Duration::from_secs(5);

fn config(dir: &std::path::Path) -> ManagerConfig {
    ManagerConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        groups_per_node: 1,
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

async fn register(m: &Manager, rack: &str, addr: &str) -> u64 {
    let reg = NodeRegistration {
        node_id: None,
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

async fn heartbeat(m: &Manager, node: u64, scrub: ScrubStats) {
    let hb = NodeHeartbeat {
        node_id: node,
        capacity_bytes: 1 << 40,
        used_bytes: 0,
        groups: Vec::new(),
        recovery: Default::default(),
        descriptors: Default::default(),
        scrub,
    };
    let reply = ask(m, ManagerRequest::Heartbeat(hb)).await.unwrap();
    assert!(
        matches!(reply, ManagerReply::HeartbeatAck { .. }),
        "{reply:?}"
    );
}

async fn scrub(m: &Manager, req: ManagerRequest) -> Result<Vec<NodeScrub>, NetError> {
    match ask(m, req).await? {
        ManagerReply::Scrub(nodes) => Ok(nodes),
        other => panic!("unexpected {other:?}"),
    }
}

/// A stand-in storage node: records every scrub action and answers with stats whose
/// `paused` follows them. Its address.
async fn scrubbing_node() -> (String, mpsc::UnboundedReceiver<ScrubAction>) {
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
                    let answer = match control::decode(&f.body).unwrap() {
                        StorageRequest::Scrub { action } => {
                            let _ = tx.send(action);
                            Ok(StorageReply::Scrub(ScrubStats {
                                paused: action == ScrubAction::Pause,
                                running: action == ScrubAction::Start,
                                bytes_per_sec: 16 << 20,
                                pass: 7,
                                ..ScrubStats::default()
                            }))
                        }
                        other => Err(ControlError::Invalid(format!("unexpected {other:?}"))),
                    };
                    write_frame(&mut w, &rpc_reply(f.request_id, &answer))
                        .await
                        .unwrap();
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn scrub_status_lists_every_node_and_control_reaches_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(config(dir.path())).await.unwrap();
    let (addr, mut actions) = scrubbing_node().await;
    let n1 = register(&m, "r1", &addr).await;
    // Nothing listens on port 1 of loopback.
    let n2 = register(&m, "r2", "127.0.0.1:1").await;
    let n3 = register(&m, "r3", "127.0.0.1:7503").await;

    // Before any heartbeat: every node, none with stats.
    let nodes = scrub(&m, ManagerRequest::ScrubStatus).await.unwrap();
    let ids: Vec<u64> = nodes.iter().map(|n| n.node_id).collect();
    assert_eq!(ids, [n1, n2, n3]);
    assert!(nodes.iter().all(|n| n.stats.is_none()), "{nodes:?}");
    assert_eq!(nodes[0].addr, addr);

    // Heartbeats' stats, as the latest one said.
    let stats = ScrubStats {
        running: true,
        bytes_per_sec: 16 << 20,
        period_secs: 604_800,
        pass: 2,
        cursor: ScrubCursor {
            group: 5,
            volume: 1,
            chunk: 9,
            block: 2048,
        },
        bytes_checked: 3 << 30,
        bad_blocks: 1,
        repaired: 1,
        ..ScrubStats::default()
    };
    heartbeat(&m, n3, ScrubStats::default()).await;
    heartbeat(&m, n3, stats.clone()).await;
    let nodes = scrub(&m, ManagerRequest::ScrubStatus).await.unwrap();
    assert_eq!(nodes[2].stats.as_ref(), Some(&stats));
    assert_eq!(
        (nodes[0].stats.as_ref(), nodes[1].stats.as_ref()),
        (None, None)
    );

    // A pause goes to the node; the answer is that node with what it answered.
    let control = |node_id, action| ManagerRequest::ScrubControl { node_id, action };
    let paused = scrub(&m, control(n1, ScrubAction::Pause)).await.unwrap();
    assert_eq!(actions.recv().await, Some(ScrubAction::Pause));
    assert_eq!(paused.len(), 1);
    assert_eq!(
        (paused[0].node_id, paused[0].addr.as_str()),
        (n1, addr.as_str())
    );
    let s = paused[0].stats.as_ref().expect("the node's answer");
    assert!(s.paused && !s.running && s.pass == 7, "{s:?}");
    let started = scrub(&m, control(n1, ScrubAction::Start)).await.unwrap();
    assert_eq!(actions.recv().await, Some(ScrubAction::Start));
    assert!(
        started[0]
            .stats
            .as_ref()
            .is_some_and(|s| s.running && !s.paused)
    );

    // An unknown node, and one that cannot be reached.
    match scrub(&m, control(99, ScrubAction::Start)).await {
        Err(NetError::Control(ControlError::NotFound(msg))) => assert!(msg.contains("99"), "{msg}"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    match scrub(&m, control(n2, ScrubAction::Pause)).await {
        Err(NetError::Control(ControlError::Unavailable(msg))) => {
            assert!(msg.contains(&format!("node {n2}")), "{msg}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    m.shutdown().await;
}

//! Three managers in one process on loopback: one Raft group of managers elects one leader,
//! replicates every change to the others, and survives losing its leader.

use std::time::{Duration, Instant};

use tessera_manager::{Manager, ManagerConfig, ManagerPeer};
use tessera_net::{NetError, call, call_managers};
use tessera_proto::control::{
    ControlError, GroupState, ManagerReply, ManagerRequest, NodeHeartbeat, NodeRegistration, Role,
};

const T: Duration = Duration::from_secs(5);

fn free_addrs(n: usize) -> Vec<String> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

fn config(dir: &std::path::Path, id: u64, addrs: &[String]) -> ManagerConfig {
    ManagerConfig {
        listen: addrs[id as usize - 1].clone(),
        data_dir: dir.join(format!("m{id}")),
        groups_per_node: 1,
        id,
        peers: addrs
            .iter()
            .enumerate()
            .map(|(i, a)| ManagerPeer {
                id: i as u64 + 1,
                addr: a.clone(),
            })
            .collect(),
        ..ManagerConfig::default()
    }
}

/// Waits until exactly one of `ms` leads; returns its position.
async fn one_leader(ms: &[Option<Manager>]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leaders: Vec<usize> = ms
            .iter()
            .enumerate()
            .filter(|(_, m)| m.as_ref().is_some_and(|m| m.is_leader()))
            .map(|(i, _)| i)
            .collect();
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(Instant::now() < deadline, "no single leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn volumes(addrs: &[String]) -> Vec<String> {
    match call_managers::<_, ManagerReply>(
        &tessera_net::Security::insecure(),
        addrs,
        &ManagerRequest::ListVolumes,
        T,
    )
    .await
    {
        Ok(ManagerReply::Volumes(v)) => v.into_iter().map(|v| v.name).collect(),
        other => panic!("listing volumes: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_managers_elect_one_leader_replicate_and_survive_its_loss() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let mut ms = Vec::new();
    for id in 1..=3 {
        ms.push(Some(
            Manager::start(config(dir.path(), id, &addrs))
                .await
                .unwrap(),
        ));
    }
    let leader = one_leader(&ms).await;

    // Followers send the caller to the leader, once they have heard from it.
    let follower = (leader + 1) % 3;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match call::<_, ManagerReply>(
            &tessera_net::Security::insecure(),
            &addrs[follower],
            tessera_net::Expect::AnyManager,
            &ManagerRequest::ListVolumes,
            T,
        )
        .await
        {
            Err(NetError::Control(ControlError::NotLeader(Some(hint)))) => {
                assert_eq!(hint, addrs[leader]);
                break;
            }
            Err(NetError::Control(ControlError::NotLeader(None))) => {
                assert!(
                    Instant::now() < deadline,
                    "the follower never learnt the leader"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("a follower answered {other:?}"),
        }
    }

    let create = |name: &str| ManagerRequest::CreateVolume {
        name: name.into(),
        size: 1 << 30,
        chunk_size: None,
    };
    let rep: ManagerReply = call_managers(
        &tessera_net::Security::insecure(),
        &addrs,
        &create("before"),
        T,
    )
    .await
    .unwrap();
    assert!(matches!(rep, ManagerReply::Volume(v) if v.name == "before"));

    // The leader goes away; the other two elect one of themselves, which has the volume.
    ms[leader].take().unwrap().shutdown().await;
    let next = one_leader(&ms).await;
    assert_ne!(next, leader);
    assert_eq!(volumes(&addrs).await, vec!["before".to_string()]);
    let _: ManagerReply = call_managers(
        &tessera_net::Security::insecure(),
        &addrs,
        &create("after"),
        T,
    )
    .await
    .unwrap();

    // The old leader comes back as a follower and catches up from the log: once the third
    // manager is stopped, the group of two still has both volumes whoever leads.
    ms[leader] = Some(
        Manager::start(config(dir.path(), leader as u64 + 1, &addrs))
            .await
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let third = (0..3).find(|i| *i != leader && *i != next).unwrap();
    ms[third].take().unwrap().shutdown().await;
    loop {
        let res = call_managers::<_, ManagerReply>(
            &tessera_net::Security::insecure(),
            &addrs,
            &ManagerRequest::ListVolumes,
            T,
        )
        .await;
        if let Ok(ManagerReply::Volumes(v)) = res {
            let mut names: Vec<String> = v.into_iter().map(|v| v.name).collect();
            names.sort();
            assert_eq!(names, vec!["after".to_string(), "before".to_string()]);
            break;
        }
        assert!(Instant::now() < deadline, "no leader among the two left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for m in ms.into_iter().flatten() {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_that_lost_its_replica_rejoins_after_a_manager_failover() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let mut ms = Vec::new();
    for id in 1..=3 {
        ms.push(Some(
            Manager::start(config(dir.path(), id, &addrs))
                .await
                .unwrap(),
        ));
    }
    let leader = one_leader(&ms).await;
    for rack in ["a", "b", "c"] {
        let reg = ManagerRequest::RegisterNode(NodeRegistration {
            node_id: None,
            zone: "z".into(),
            rack: rack.into(),
            addr: format!("{rack}:7500"),
            capacity_bytes: 1 << 40,
            used_bytes: 0,
            disk: 0,
        });
        let rep: ManagerReply = call_managers(&tessera_net::Security::insecure(), &addrs, &reg, T)
            .await
            .unwrap();
        assert!(matches!(rep, ManagerReply::Registered { .. }), "{rep:?}");
    }
    // One group on nodes 1, 2 and 3, never led yet: node 2 is an initial voter.
    assert_eq!(create_orders(&addrs, 2, vec![]).await, [(1, false)]);
    // Node 1 reports leading it.
    let led = GroupState {
        group_id: 1,
        role: Role::Leader,
        term: 2,
        leader: 1,
        commit: 10,
        applied: 10,
        voters: vec![1, 2, 3],
        learners: Vec::new(),
        joint: false,
        stuck: None,
    };
    assert!(create_orders(&addrs, 1, vec![led]).await.is_empty());
    assert_eq!(create_orders(&addrs, 2, vec![]).await, [(1, true)]);

    // The leading manager goes away; node 2 comes back without its replica and tells the
    // new leader, which has heard no heartbeat before.
    ms[leader].take().unwrap().shutdown().await;
    let next = one_leader(&ms).await;
    assert_ne!(next, leader);
    assert_eq!(
        create_orders(&addrs, 2, vec![]).await,
        [(1, true)],
        "the new leading manager told a member that lost its replica to start as a fresh voter"
    );
    for m in ms.into_iter().flatten() {
        m.shutdown().await;
    }
}

/// The heartbeat ack's create orders for `node`: (group, joining).
async fn create_orders(addrs: &[String], node: u64, groups: Vec<GroupState>) -> Vec<(u64, bool)> {
    let hb = ManagerRequest::Heartbeat(NodeHeartbeat {
        node_id: node,
        capacity_bytes: 1 << 40,
        used_bytes: 1 << 20,
        groups,
        recovery: Default::default(),
        descriptors: Default::default(),
        scrub: Default::default(),
    });
    match call_managers::<_, ManagerReply>(&tessera_net::Security::insecure(), addrs, &hb, T).await
    {
        Ok(ManagerReply::HeartbeatAck { create_groups, .. }) => create_groups
            .iter()
            .map(|g| (g.group_id, g.joining))
            .collect(),
        other => panic!("heartbeat: {other:?}"),
    }
}

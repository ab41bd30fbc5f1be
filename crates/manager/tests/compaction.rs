//! The managers' Raft log is compacted once applied, and a manager the log no longer reaches
//! (one that lagged, or one being added) catches up from a snapshot of the state.

use std::path::Path;
use std::time::{Duration, Instant};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use tessera_manager::{Manager, ManagerConfig, ManagerPeer};
use tessera_net::{call, call_managers};
use tessera_proto::control::{ManagerReply, ManagerRequest};

const T: Duration = Duration::from_secs(10);
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const VOLUMES: TableDefinition<u64, &[u8]> = TableDefinition::new("volumes");

fn free_addrs(n: usize) -> Vec<String> {
    let ls: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    ls.iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect()
}

fn peers(addrs: &[String]) -> Vec<ManagerPeer> {
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| ManagerPeer {
            id: i as u64 + 1,
            addr: a.clone(),
        })
        .collect()
}

/// (raft log entries, lowest index kept, volumes) of a stopped manager's database.
fn inspect(dir: &Path) -> (u64, Option<u64>, u64) {
    let db = Database::open(dir.join("manager.redb")).unwrap();
    let tx = db.begin_read().unwrap();
    let log = tx.open_table(LOG).unwrap();
    let first = log.iter().unwrap().next().map(|r| r.unwrap().0.value());
    let volumes = tx.open_table(VOLUMES).unwrap().len().unwrap();
    (log.len().unwrap(), first, volumes)
}

async fn create(addrs: &[String], name: &str) {
    let req = ManagerRequest::CreateVolume {
        name: name.into(),
        size: 1 << 30,
        chunk_size: None,
    };
    match call_managers::<_, ManagerReply>(&tessera_net::Security::insecure(), addrs, &req, T).await
    {
        Ok(ManagerReply::Volume(_)) => {}
        other => panic!("creating {name}: {other:?}"),
    }
}

async fn volume_names(addrs: &[String]) -> Vec<String> {
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

/// A directory in memory where there is one: 100,000 operations are 200,000 fsyncs, which
/// test the disk rather than the log's bound.
fn fast_tempdir() -> tempfile::TempDir {
    match std::fs::metadata("/dev/shm") {
        Ok(m) if m.is_dir() => tempfile::tempdir_in("/dev/shm").unwrap(),
        _ => tempfile::tempdir().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_bounded_over_100k_volume_operations() {
    const OPS: u64 = 100_000;
    const KEPT: u64 = 1_000;
    let dir = fast_tempdir();
    let config = ManagerConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        ..ManagerConfig::default()
    };
    let keep = config.log_keep;
    let m = Manager::start(config.clone()).await.unwrap();
    let addr = m.local_addr().to_string();
    let started = Instant::now();
    let mut largest_file = 0;
    // Creates and deletes, 100,000 volume operations in all; KEPT volumes are never deleted.
    let mut i = 0u64;
    let mut ops = 0u64;
    while ops < OPS {
        let name = format!("v{i}");
        let req = ManagerRequest::CreateVolume {
            name: name.clone(),
            size: 1 << 30,
            chunk_size: None,
        };
        assert!(matches!(
            call::<_, ManagerReply>(
                &tessera_net::Security::insecure(),
                &addr,
                tessera_net::Expect::AnyManager,
                &req,
                T
            )
            .await,
            Ok(ManagerReply::Volume(_))
        ));
        ops += 1;
        if i >= KEPT {
            let req = ManagerRequest::DeleteVolume { name };
            assert!(matches!(
                call::<_, ManagerReply>(
                    &tessera_net::Security::insecure(),
                    &addr,
                    tessera_net::Expect::AnyManager,
                    &req,
                    T
                )
                .await,
                Ok(ManagerReply::Deleted)
            ));
            ops += 1;
        }
        i += 1;
        if ops % 10_000 < 2 {
            let size = std::fs::metadata(dir.path().join("manager.redb"))
                .unwrap()
                .len();
            largest_file = largest_file.max(size);
            eprintln!(
                "{ops} operations in {:?}; database {} KiB",
                started.elapsed(),
                size >> 10
            );
        }
    }
    m.shutdown().await;
    let (entries, first, volumes) = inspect(dir.path());
    eprintln!("log: {entries} entries from index {first:?}; largest database {largest_file} bytes");
    assert_eq!(volumes, KEPT);
    // Compacted to `keep` behind the applied index once it reaches twice that, looked at
    // every 100 ms tick (what arrives within one tick comes on top).
    assert!(entries <= 2 * keep + keep / 2, "{entries} log entries kept");
    assert!(first.unwrap_or(0) > OPS / 2, "log starts at {first:?}");
    // Measured: ~2 MiB throughout; every entry kept would be ~30 MiB by the end.
    assert!(
        largest_file < 8 << 20,
        "database grew to {largest_file} bytes"
    );

    // A restart finds the state and the rest of the log, and goes on.
    let m = Manager::start(config).await.unwrap();
    let addr = vec![m.local_addr().to_string()];
    let names = volume_names(&addr).await;
    assert_eq!(names.len() as u64, KEPT);
    assert!(names.iter().any(|n| n == "v0"));
    create(&addr, "after-restart").await;
    assert_eq!(volume_names(&addr).await.len() as u64, KEPT + 1);
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_manager_catches_up_by_snapshot_after_compaction() {
    const KEEP: u64 = 10;
    const N: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let config = |id: u64| ManagerConfig {
        listen: addrs[id as usize - 1].clone(),
        data_dir: dir.path().join(format!("m{id}")),
        id,
        peers: peers(&addrs),
        log_keep: KEEP,
        ..ManagerConfig::default()
    };
    let mut ms = Vec::new();
    for id in 1..=3 {
        ms.push(Some(Manager::start(config(id)).await.unwrap()));
    }
    create(&addrs, "first").await;
    // Stop a follower, and move the others' logs well past where it stopped.
    let lagging = (0..3)
        .find(|&i| !ms[i].as_ref().unwrap().is_leader())
        .unwrap();
    ms[lagging].take().unwrap().shutdown().await;
    let lag_dir = dir.path().join(format!("m{}", lagging + 1));
    let (_, _, before) = inspect(&lag_dir);
    assert_eq!(before, 1);
    for i in 0..N {
        create(&addrs, &format!("v{i}")).await;
    }
    // Compaction is looked at every 100 ms tick; leave a few.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ms[lagging] = Some(Manager::start(config(lagging as u64 + 1)).await.unwrap());

    // Without the old leader, nothing commits unless the lagging manager caught up.
    let leader = (0..3)
        .find(|&i| ms[i].as_ref().is_some_and(|m| m.is_leader()))
        .unwrap();
    assert_ne!(leader, lagging);
    tokio::time::sleep(Duration::from_secs(2)).await;
    ms[leader].take().unwrap().shutdown().await;
    create(&addrs, "last").await;
    assert_eq!(volume_names(&addrs).await.len(), N + 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for m in ms.into_iter().flatten() {
        m.shutdown().await;
    }
    for id in 1..=3 {
        let (entries, first, volumes) = inspect(&dir.path().join(format!("m{id}")));
        eprintln!("manager {id}: {entries} log entries from {first:?}, {volumes} volumes");
        let expected = if id as usize == leader + 1 {
            N + 1
        } else {
            N + 2
        };
        assert_eq!(volumes as usize, expected, "manager {id}");
        assert!(
            entries < N as u64 / 2,
            "manager {id} keeps {entries} entries"
        );
    }
    // It restarts from its installed snapshot and compacted log.
    let m = Manager::start(config(lagging as u64 + 1)).await.unwrap();
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_manager_grows_to_three() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    // Founded alone, the way `tessera dev` or a one-manager deployment runs it.
    let alone = ManagerConfig {
        listen: addrs[0].clone(),
        data_dir: dir.path().join("m1"),
        ..ManagerConfig::default()
    };
    let first = Manager::start(alone).await.unwrap();
    for i in 0..50 {
        create(&addrs[..1], &format!("v{i}")).await;
    }
    let mut joined = Vec::new();
    for id in 2..=3u64 {
        let me = addrs[id as usize - 1].clone();
        joined.push(
            Manager::start(ManagerConfig {
                listen: me.clone(),
                data_dir: dir.path().join(format!("m{id}")),
                id,
                peers: vec![
                    ManagerPeer {
                        id: 1,
                        addr: addrs[0].clone(),
                    },
                    ManagerPeer {
                        id,
                        addr: me.clone(),
                    },
                ],
                join: true,
                ..ManagerConfig::default()
            })
            .await
            .unwrap(),
        );
        // Added as a learner, promoted once caught up; asking again reports which.
        let req = ManagerRequest::AddManager { id, addr: me };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match call::<_, ManagerReply>(
                &tessera_net::Security::insecure(),
                &addrs[0],
                tessera_net::Expect::AnyManager,
                &req,
                T,
            )
            .await
            {
                Ok(ManagerReply::Managers { voters, learners }) => {
                    let ids: Vec<u64> = voters.iter().map(|m| m.0).collect();
                    if ids == (1..=id).collect::<Vec<_>>() {
                        assert!(learners.is_empty());
                        break;
                    }
                    assert!(
                        learners.iter().any(|l| l.0 == id),
                        "{voters:?} {learners:?}"
                    );
                }
                other => panic!("adding manager {id}: {other:?}"),
            }
            assert!(Instant::now() < deadline, "manager {id} never promoted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    create(&addrs, "grown").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The founder goes away; the two added managers hold a majority and every volume.
    first.shutdown().await;
    create(&addrs[1..], "without-the-founder").await;
    assert_eq!(volume_names(&addrs[1..]).await.len(), 52);
    for m in joined {
        m.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_manager_that_is_not_running_leaves_the_founder_committing() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(2);
    let alone = ManagerConfig {
        listen: addrs[0].clone(),
        data_dir: dir.path().join("m1"),
        ..ManagerConfig::default()
    };
    let m = Manager::start(alone).await.unwrap();
    let req = ManagerRequest::AddManager {
        id: 2,
        addr: addrs[1].clone(),
    };
    match call::<_, ManagerReply>(
        &tessera_net::Security::insecure(),
        &addrs[0],
        tessera_net::Expect::AnyManager,
        &req,
        T,
    )
    .await
    {
        Ok(ManagerReply::Managers { voters, learners }) => {
            assert_eq!(voters, vec![(1, addrs[0].clone())]);
            assert_eq!(learners, vec![(2, addrs[1].clone())]);
        }
        other => panic!("adding manager 2: {other:?}"),
    }
    // A learner counts for no majority: the founder still commits alone.
    create(&addrs[..1], "still-writable").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    create(&addrs[..1], "still-writable-later").await;
    m.shutdown().await;
}

/// Asks `addrs` to add manager `id` at `addr` until it is reported a voter (it caught up).
async fn add_until_voter(addrs: &[String], id: u64, addr: &str, within: Duration) {
    let req = ManagerRequest::AddManager {
        id,
        addr: addr.to_string(),
    };
    let deadline = Instant::now() + within;
    loop {
        if let Ok(ManagerReply::Managers { voters, .. }) =
            call_managers::<_, ManagerReply>(&tessera_net::Security::insecure(), addrs, &req, T)
                .await
            && voters.iter().any(|v| v.0 == id)
        {
            return;
        }
        assert!(Instant::now() < deadline, "manager {id} never caught up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_added_amid_writes_and_a_leader_change_still_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(4);
    let founders = peers(&addrs[..3]);
    let config = |id: u64, join: bool| ManagerConfig {
        listen: addrs[id as usize - 1].clone(),
        data_dir: dir.path().join(format!("m{id}")),
        id,
        peers: if join {
            let mut p = founders.clone();
            p.push(ManagerPeer {
                id,
                addr: addrs[id as usize - 1].clone(),
            });
            p
        } else {
            founders.clone()
        },
        join,
        ..ManagerConfig::default()
    };
    let mut ms = Vec::new();
    for id in 1..=3 {
        ms.push(Some(Manager::start(config(id, false)).await.unwrap()));
    }
    create(&addrs[..3], "first").await;
    // Added while writes are being proposed (so entries follow the change before it is
    // applied), then the leader that added it goes away before the newcomer even runs: the
    // new leader knows nothing of the addition but what its log says.
    let writes: Vec<_> = (0..20)
        .map(|i| {
            let a = addrs[..3].to_vec();
            tokio::spawn(async move { create(&a, &format!("amid{i}")).await })
        })
        .collect();
    let req = ManagerRequest::AddManager {
        id: 4,
        addr: addrs[3].clone(),
    };
    match call_managers::<_, ManagerReply>(&tessera_net::Security::insecure(), &addrs[..3], &req, T)
        .await
    {
        Ok(ManagerReply::Managers { learners, .. }) => assert_eq!(learners.len(), 1),
        other => panic!("adding manager 4: {other:?}"),
    }
    for w in writes {
        w.await.unwrap();
    }
    let leader = (0..3)
        .find(|&i| ms[i].as_ref().is_some_and(|m| m.is_leader()))
        .unwrap();
    ms[leader].take().unwrap().shutdown().await;
    create(&addrs[..3], "after-the-leader-change").await;
    let joined = Manager::start(config(4, true)).await.unwrap();
    add_until_voter(&addrs, 4, &addrs[3], Duration::from_secs(20)).await;
    // Three of four voters are left: nothing commits unless the newcomer takes part.
    create(&addrs, "with-the-newcomer").await;
    assert_eq!(volume_names(&addrs).await.len(), 23);
    joined.shutdown().await;
    for m in ms.into_iter().flatten() {
        m.shutdown().await;
    }
    let (_, _, volumes) = inspect(&dir.path().join("m4"));
    assert_eq!(volumes, 23);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_manager_never_gives_an_id_or_an_address_twice() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(3);
    let alone = ManagerConfig {
        listen: addrs[0].clone(),
        data_dir: dir.path().join("m1"),
        ..ManagerConfig::default()
    };
    let m = Manager::start(alone).await.unwrap();
    let add = |id: u64, addr: &str| {
        let req = ManagerRequest::AddManager {
            id,
            addr: addr.to_string(),
        };
        let to = addrs[0].clone();
        async move {
            call::<_, ManagerReply>(
                &tessera_net::Security::insecure(),
                &to,
                tessera_net::Expect::AnyManager,
                &req,
                T,
            )
            .await
            .map_err(|e| e.to_string())
        }
    };
    let members = |voters: Vec<(u64, String)>, learners: Vec<(u64, String)>| {
        Ok::<_, String>(ManagerReply::Managers { voters, learners })
    };
    let v1 = vec![(1, addrs[0].clone())];
    let l2 = vec![(2, addrs[1].clone())];
    assert_eq!(add(2, &addrs[1]).await, members(v1.clone(), l2.clone()));
    // Asking again only reports; a member or learner at another address, or another id at
    // a member's address, is refused by name.
    assert_eq!(add(2, &addrs[1]).await, members(v1.clone(), l2.clone()));
    assert_eq!(add(1, &addrs[0]).await, members(v1.clone(), l2.clone()));
    for (id, addr, says) in [
        (2, &addrs[2], "already being added"),
        (1, &addrs[2], "already a member"),
        (3, &addrs[1], "belongs to manager 2"),
        (3, &addrs[0], "belongs to manager 1"),
    ] {
        match add(id, addr).await {
            Err(e) => assert!(e.contains(says), "{id} at {addr}: {e}"),
            other => panic!("adding {id} at {addr}: {other:?}"),
        }
    }
    assert_eq!(add(2, &addrs[1]).await, members(v1, l2));
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_meant_to_join_but_started_without_join_refuses_to_found_a_second_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let addrs = free_addrs(2);
    let alone = ManagerConfig {
        listen: addrs[0].clone(),
        data_dir: dir.path().join("m1"),
        ..ManagerConfig::default()
    };
    let first = Manager::start(alone).await.unwrap();
    create(&addrs[..1], "v").await;
    let forgot_join = ManagerConfig {
        listen: addrs[1].clone(),
        data_dir: dir.path().join("m2"),
        id: 2,
        peers: peers(&addrs),
        join: false,
        ..ManagerConfig::default()
    };
    let refused = |r: Result<Manager, tessera_manager::Error>| match r {
        Err(e) => assert!(e.to_string().contains("join = true"), "{e}"),
        Ok(_) => panic!("a second cluster was founded"),
    };
    refused(Manager::start(forgot_join.clone()).await);
    // Added first, and then started without `join`: a learner is no founder either.
    let req = ManagerRequest::AddManager {
        id: 2,
        addr: addrs[1].clone(),
    };
    assert!(matches!(
        call::<_, ManagerReply>(
            &tessera_net::Security::insecure(),
            &addrs[0],
            tessera_net::Expect::AnyManager,
            &req,
            T
        )
        .await,
        Ok(ManagerReply::Managers { .. })
    ));
    refused(Manager::start(forgot_join.clone()).await);
    // With `join`, it catches up and is promoted.
    let joined = Manager::start(ManagerConfig {
        join: true,
        ..forgot_join
    })
    .await
    .unwrap();
    add_until_voter(&addrs[..1], 2, &addrs[1], Duration::from_secs(20)).await;
    joined.shutdown().await;
    first.shutdown().await;
}

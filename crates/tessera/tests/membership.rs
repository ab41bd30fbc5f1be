//! Replacing a replica, driven straight through the storage nodes' control RPCs (what the
//! manager's recovery does): a fourth node joins a group as a learner, copies the chunk
//! files from a snapshot, becomes a voter in place of a removed member, and is then needed
//! for the group's majority.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Opts};
use rand::{RngCore, SeedableRng};
use tessera_proto::control::{
    GroupSpec, ManagerReply, ManagerRequest, PeerInfo, StorageReply, StorageRequest,
};

const MIB: u64 = 1 << 20;

async fn storage_call(addr: &str, req: &StorageRequest) -> Option<StorageReply> {
    tessera_net::call::<_, StorageReply>(addr, req, Duration::from_secs(5))
        .await
        .ok()
}

/// The `.crc` and `.dat` files of a group replica, by name (what a snapshot must copy).
fn replica_files(data_dir: &std::path::Path, group: u64) -> Vec<(String, Vec<u8>)> {
    let gdir = data_dir.join("groups").join(format!("{group:016x}"));
    let mut out = Vec::new();
    for v in std::fs::read_dir(&gdir).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(v.path()).into_iter().flatten().flatten() {
            let name = format!(
                "{}/{}",
                v.file_name().to_string_lossy(),
                f.file_name().to_string_lossy()
            );
            let mut bytes = std::fs::read(f.path()).unwrap_or_default();
            // A sparse tail may be longer on one replica; trailing zeroes read the same.
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
            out.push((name, bytes));
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_copies_the_group_and_replaces_a_member() {
    let mut c = Cluster::start(Opts {
        nodes: 4,
        groups_per_node: 1,
        ..Default::default()
    });
    let status = c.wait_ready(4).await;
    c.create_volume("m", "8MiB", "4MiB");
    let client = c.client().await;
    let vol = client.open("m").await.expect("open");
    let mut data = vec![0u8; 8 * MIB as usize];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut data[..3 * MIB as usize]);
    vol.write(0, Bytes::copy_from_slice(&data))
        .await
        .expect("write");

    let route = match client
        .call(&ManagerRequest::Route {
            volume_id: vol.info().id,
            chunk: 0,
            allocate: false,
        })
        .await
        .expect("route")
    {
        ManagerReply::Route(Some(r)) => r,
        other => panic!("no route: {other:?}"),
    };
    let gid = route.group_id;
    let addr_of = |id: u64| {
        status
            .nodes
            .iter()
            .find(|n| n.node_id == id)
            .expect("node")
            .addr
            .clone()
    };
    let members: Vec<u64> = route.peers.iter().map(|p| p.node_id).collect();
    let newcomer = status
        .nodes
        .iter()
        .find(|n| !members.contains(&n.node_id))
        .expect("a node outside the group")
        .node_id;
    // Keep the first two members, replace the third by the newcomer.
    let leaving = members[2];
    let target: Vec<PeerInfo> = members[..2]
        .iter()
        .chain([&newcomer])
        .map(|&id| PeerInfo {
            node_id: id,
            addr: addr_of(id),
        })
        .collect();
    let mut all = route.peers.clone();
    all.push(PeerInfo {
        node_id: newcomer,
        addr: addr_of(newcomer),
    });
    let host = StorageRequest::HostGroup {
        spec: GroupSpec {
            group_id: gid,
            peers: all,
            joining: true,
        },
    };
    assert_eq!(
        storage_call(&addr_of(newcomer), &host).await,
        Some(StorageReply::Done)
    );

    // Drive the change through whoever leads, as the manager would, until it is done.
    let change = StorageRequest::ChangeMembers {
        group_id: gid,
        peers: target.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ask = members[0];
    loop {
        assert!(
            Instant::now() < deadline,
            "membership change never finished\n{}",
            c.logs()
        );
        match storage_call(&addr_of(ask), &change).await {
            Some(StorageReply::Members(m)) if m.done => break,
            Some(StorageReply::NotLeader { hint }) if hint != 0 => ask = hint,
            Some(StorageReply::NotLeader { .. }) | None => {
                ask = members[(members.iter().position(|m| *m == ask).unwrap_or(0) + 1) % 3];
            }
            Some(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The data reads back through the volume, and more writes land.
    assert_eq!(&vol.read(0, 8 * MIB).await.expect("read")[..], &data[..]);
    vol.write(MIB, Bytes::from(vec![0x5a; 4096]))
        .await
        .expect("write after the change");
    data[MIB as usize..MIB as usize + 4096].fill(0x5a);

    // The newcomer's copy converges on the others' (files compared once flushed), and the
    // removed member's replica is destroyed.
    let idx = |id: u64| {
        c.nodes
            .iter()
            .position(|n| n.addr == addr_of(id))
            .expect("harness node")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = replica_files(&c.nodes[idx(members[0])].data_dir, gid);
        let n = replica_files(&c.nodes[idx(newcomer)].data_dir, gid);
        let gone = !c.nodes[idx(leaving)]
            .data_dir
            .join("groups")
            .join(format!("{gid:016x}"))
            .exists();
        if !a.is_empty() && a == n && gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas differ ({} vs {} files) or the old one remains ({})\n{}",
            a.len(),
            n.len(),
            !gone,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The newcomer is a real voter: with one of the old members killed, the group's
    // majority needs it, and I/O goes on.
    c.kill_node(idx(members[0]));
    vol.write(2 * MIB, Bytes::from(vec![0x77; 8192]))
        .await
        .expect("write with the newcomer in the majority");
    data[2 * MIB as usize..2 * MIB as usize + 8192].fill(0x77);
    assert_eq!(&vol.read(0, 8 * MIB).await.expect("read")[..], &data[..]);
    let fetched = match storage_call(&addr_of(newcomer), &StorageRequest::Status).await {
        Some(StorageReply::Status(hb)) => hb.recovery,
        other => panic!("status: {other:?}"),
    };
    eprintln!("newcomer recovery stats: {fetched:?}");
    assert!(fetched.snapshots >= 1 && fetched.bytes_fetched >= 3 * MIB);
}

//! A node that comes back after half a minute away, while writes went on, catches up by
//! moving only what it missed: the log tail the leaders kept, or the blocks whose checksums
//! differ — never a full copy of what it holds.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Opts};
use rand::{Rng, SeedableRng};
use tessera_proto::control::{NodeHeartbeat, StorageReply, StorageRequest};

const MIB: u64 = 1 << 20;

async fn node_status(c: &Cluster, addr: &str) -> Option<NodeHeartbeat> {
    match tessera_net::call::<_, StorageReply>(
        &c.security(),
        addr,
        tessera_net::Expect::Any,
        &StorageRequest::Status,
        Duration::from_secs(5),
    )
    .await
    {
        Ok(StorageReply::Status(hb)) => Some(hb),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_after_thirty_seconds_moves_only_what_it_missed() {
    let away = Duration::from_secs(
        std::env::var("TESSERA_CATCHUP_AWAY_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(30),
    );
    let mut c = Cluster::start(Opts {
        nodes: 3,
        groups_per_node: 2,
        ..Default::default()
    });
    c.wait_ready(3).await;
    c.create_volume("cu", "128MiB", "16MiB");
    let client = c.client().await;
    let vol = client.open("cu").await.expect("open");
    // Every node holds all of it: 128 MiB of data per node.
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut model = vec![0u8; 128 * MIB as usize];
    rng.fill(&mut model[..]);
    for i in 0..32u64 {
        let at = (i * 4 * MIB) as usize;
        vol.write(
            i * 4 * MIB,
            Bytes::copy_from_slice(&model[at..at + 4 * MIB as usize]),
        )
        .await
        .expect("fill");
    }
    let x = 2;
    let x_addr = c.nodes[x].addr.clone();
    // Let the fill reach the chunk files (flushed) so the size below is what is on disk.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = node_status(&c, &x_addr).await.expect("status").used_bytes;

    c.kill_node(x);
    let killed = Instant::now();
    // Overwrite a small part (the first 8 MiB) again and again while it is away: many times
    // the log tail the leaders keep for a lagging peer, but few distinct blocks.
    let mut writes = 0u64;
    while killed.elapsed() < away {
        // 16 in flight, to distinct blocks so their order does not matter to the model.
        let mut batch = tokio::task::JoinSet::new();
        let mut used = std::collections::HashSet::new();
        for _ in 0..16 {
            let block = rng.gen_range(0..(8 * MIB / 4096));
            if !used.insert(block) {
                continue;
            }
            let fill: u8 = rng.r#gen();
            let at = (block * 4096) as usize;
            model[at..at + 4096].fill(fill);
            let vol = vol.clone();
            batch
                .spawn(async move { vol.write(block * 4096, Bytes::from(vec![fill; 4096])).await });
            writes += 1;
        }
        while let Some(r) = batch.join_next().await {
            r.expect("task").expect("write while a node is away");
        }
    }
    c.restart_node(x);
    let back = Instant::now();

    // Caught up: every replica on the node has applied what its group committed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let hb = loop {
        assert!(
            Instant::now() < deadline,
            "the node never caught up\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (Some(hb), Some(status)) = (node_status(&c, &x_addr).await, c.status().await) else {
            continue;
        };
        let behind = status.groups.iter().any(|g| {
            let top = g.replicas.iter().map(|r| r.commit).max().unwrap_or(0);
            hb.groups
                .iter()
                .find(|s| s.group_id == g.group_id)
                .is_none_or(|s| s.applied < top)
        });
        if !behind && hb.recovery.in_progress.is_empty() {
            break hb;
        }
    };
    eprintln!(
        "away {:?}, {writes} writes of 4 KiB meanwhile; caught up {:?} after restart; node \
         holds {held} bytes; fetched {} bytes in {} snapshots (compared {} bytes)",
        away,
        back.elapsed(),
        hb.recovery.bytes_fetched,
        hb.recovery.snapshots,
        hb.recovery.bytes_compared,
    );
    assert!(held >= 128 * MIB, "the node held only {held} bytes");
    assert!(
        hb.recovery.bytes_fetched <= 16 * MIB,
        "fetched {} bytes: more than what changed",
        hb.recovery.bytes_fetched
    );

    // Its copy is right: with another node down, the volume is served by it and the
    // remaining one, and reads back exactly.
    c.kill_node(0);
    let got = vol.read(0, 128 * MIB).await.expect("read");
    assert!(got[..] == model[..], "data differs after catching up");
}

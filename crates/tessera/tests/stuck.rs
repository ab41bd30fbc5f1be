//! Issue 12 with real processes: a storage node whose replicas cannot apply (every entry
//! meets a full disk, through the `raft::apply` fail point set in `FAILPOINTS`; run with
//! `--features failpoints`). Its replicas are reported stuck, the manager replaces them on
//! the spare node and has them destroyed, and every acknowledged write reads back.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, FAST_RECOVERY, Opts, fully_replicated};

const CHUNKS: u64 = 8;

fn block(chunk: u64) -> Bytes {
    Bytes::from(vec![0x40 + chunk as u8; 64 << 10])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_cannot_apply_are_replaced_and_every_write_reads_back() {
    let opts = Opts {
        nodes: 4,
        groups_per_node: 2,
        storage_extra: "stuck_after_ms = 500".into(),
        manager_extra: FAST_RECOVERY.into(),
        ..Default::default()
    };
    let mut c = Cluster::start(opts);
    let s = c.wait_ready(4).await;
    let stuck = c.node_id(&s, 0);
    c.create_volume("v", "8MiB", "1MiB");
    // Node 0 again, now unable to apply anything.
    c.kill_node(0);
    c.nodes[0].env = vec![(
        "FAILPOINTS".into(),
        format!("raft::apply=return({stuck}/*)"),
    )];
    c.restart_node(0);
    let client = c.client().await;
    let vol = client.open("v").await.expect("open v");
    for chunk in 0..CHUNKS {
        tokio::time::timeout(
            Duration::from_secs(60),
            vol.write(chunk << 20, block(chunk)),
        )
        .await
        .unwrap_or_else(|_| panic!("write to chunk {chunk} hung:\n{}", c.logs()))
        .unwrap_or_else(|e| panic!("write to chunk {chunk}: {e}:\n{}", c.logs()));
    }
    // Reported stuck, then replaced everywhere. A replica the rebalancer moved onto the node
    // around its restart that was never given an entry to apply is not stuck, and stays:
    // what must go is every replica reported stuck (in the status, or in the manager's log
    // when the replacement was quicker than the poll).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut stuck_groups = std::collections::BTreeSet::new();
    loop {
        if let Some(s) = c.status().await {
            stuck_groups.extend(s.groups.iter().filter_map(|g| {
                g.replicas
                    .iter()
                    .any(|r| r.node_id == stuck && r.stuck.is_some())
                    .then_some(g.group_id)
            }));
            stuck_groups.extend(replaced_for_being_stuck(&c.logs(), stuck));
            let still = s.groups.iter().any(|g| {
                g.replicas.iter().any(|r| {
                    r.node_id == stuck && (r.stuck.is_some() || stuck_groups.contains(&g.group_id))
                })
            });
            if !stuck_groups.is_empty() && !still && fully_replicated(&s, 3) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {stuck}'s stuck replicas (groups {stuck_groups:?}) were not all replaced: \
                 {s:#?}\n{}",
                c.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for chunk in 0..CHUNKS {
        let got = tokio::time::timeout(Duration::from_secs(60), vol.read(chunk << 20, 64 << 10))
            .await
            .unwrap_or_else(|_| panic!("read of chunk {chunk} hung:\n{}", c.logs()))
            .unwrap_or_else(|e| panic!("read of chunk {chunk}: {e}:\n{}", c.logs()));
        assert_eq!(got, block(chunk), "chunk {chunk} reads back wrong");
    }
    // The replaced replicas were destroyed on the manager's word (releasing the log).
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&c.nodes[0].log)
        .unwrap_or_default()
        .contains("replica destroyed")
    {
        assert!(
            Instant::now() < deadline,
            "node {stuck} destroyed no replica:\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The groups the manager's log says it moved off `node` because their replica there was
/// stuck (`moving a replica group=G from=N to=M why=replica stuck on a live node`).
fn replaced_for_being_stuck(logs: &str, node: u64) -> Vec<u64> {
    let from = format!(" from={node} ");
    logs.lines()
        .filter(|l| l.contains("moving a replica") && l.contains("why=replica stuck"))
        .filter(|l| l.contains(&from))
        .filter_map(|l| {
            let g = l.split(" group=").nth(1)?;
            g.split(' ').next()?.parse().ok()
        })
        .collect()
}

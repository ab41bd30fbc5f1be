//! A node set holding far more chunks than its processes may open files, against real
//! processes: every chunk is written, survives a restart of every node and reads back, and no
//! node stops for want of descriptors (issue 12).
//!
//! `TESSERA_SCALE_CHUNKS` sets the number of chunks (100,000 by default),
//! `TESSERA_SCALE_NOFILE` the storage processes' descriptor limit (2,048 by default).

mod common;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::{Cluster, Opts};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Each storage process may open this many files (soft and hard) by default: far fewer than
/// it holds.
const NOFILE: u64 = 2048;
/// Requests in flight.
const DEPTH: usize = 64;

/// The 4 KiB written into chunk `c` (at a place of its own within the chunk).
fn block(c: u64) -> (u64, Bytes) {
    let mut b = vec![0u8; 4096];
    for (i, w) in b.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&(c * 1000 + i as u64).to_le_bytes());
    }
    let offset = c * (1 << 20) + (c % 256) * 4096;
    (offset, Bytes::from(b))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_chunks_live_within_a_lowered_descriptor_limit() {
    let chunks: u64 = std::env::var("TESSERA_SCALE_CHUNKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let nofile: u64 = std::env::var("TESSERA_SCALE_NOFILE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(NOFILE);
    let mut c = Cluster::start(Opts {
        nofile: Some(nofile),
        ..Default::default()
    });
    c.wait_ready(3).await;
    c.create_volume("many", &format!("{chunks}MiB"), "1MiB");
    let client = c.client().await;
    let vol = client.open("many").await.expect("open");

    let started = Instant::now();
    let depth = Arc::new(Semaphore::new(DEPTH));
    let mut tasks = JoinSet::new();
    for ch in 0..chunks {
        let permit = depth.clone().acquire_owned().await.expect("semaphore");
        let vol = vol.clone();
        tasks.spawn(async move {
            let (offset, data) = block(ch);
            let r = vol.write(offset, data).await;
            drop(permit);
            r.map_err(|e| format!("write to chunk {ch}: {e}"))
        });
        while let Some(done) = tasks.try_join_next() {
            done.expect("task").unwrap_or_else(|e| panic!("{e}"));
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task").unwrap_or_else(|e| panic!("{e}"));
    }
    eprintln!("{chunks} chunks written in {:?}", started.elapsed());

    // Every node reports its budget, keeps within it, and had to close chunks to do so.
    // Dirty chunks closed for room stay open until the next chunk sync (the thread applying
    // writes never waits for an fdatasync), so they count against the descriptor limit but
    // not against the budget; the node starts that sync early when many wait.
    let status = c.status().await.expect("status");
    for n in &status.nodes {
        let d = n.descriptors.expect("a node reports its descriptors");
        eprintln!("node {}: {d:?}", n.node_id);
        assert_eq!(d.limit, nofile, "node {}", n.node_id);
        assert!(d.chunks_budget * 2 < nofile, "node {}: {d:?}", n.node_id);
        assert!(
            d.chunks_closing <= d.chunks_open,
            "node {}: {d:?}",
            n.node_id
        );
        assert!(
            d.chunks_open - d.chunks_closing <= d.chunks_budget + DEPTH as u64,
            "node {}: chunks not being closed exceed the budget: {d:?}",
            n.node_id
        );
        assert!(
            d.chunks_open * 2 < nofile,
            "node {}: open chunks' descriptors reach the process limit: {d:?}",
            n.node_id
        );
        assert!(
            chunks < d.chunks_budget || d.chunks_closed > 0,
            "node {}: {d:?}",
            n.node_id
        );
    }
    vol.close().await.expect("close");
    drop(client);

    for (i, n) in c.nodes.iter_mut().enumerate() {
        let exited = n.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten());
        assert!(
            exited.is_none(),
            "storage node {i} stopped ({exited:?}):\n{}",
            std::fs::read_to_string(&n.log).unwrap_or_default()
        );
    }
    for i in 0..c.nodes.len() {
        c.kill_node(i);
    }
    for i in 0..c.nodes.len() {
        c.restart_node(i);
    }
    c.wait_ready(3).await;
    let started = Instant::now();
    let client = c.client().await;
    let vol = client.open("many").await.expect("open after restart");
    let mut tasks = JoinSet::new();
    for ch in 0..chunks {
        let permit = depth.clone().acquire_owned().await.expect("semaphore");
        let vol = vol.clone();
        tasks.spawn(async move {
            let (offset, want) = block(ch);
            let got = vol.read(offset, 4096).await;
            drop(permit);
            match got {
                Ok(got) if got == want => Ok(()),
                Ok(_) => Err(format!("chunk {ch} reads back different bytes")),
                Err(e) => Err(format!("read of chunk {ch}: {e}")),
            }
        });
        while let Some(done) = tasks.try_join_next() {
            done.expect("task").unwrap_or_else(|e| panic!("{e}"));
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task").unwrap_or_else(|e| panic!("{e}"));
    }
    eprintln!("{chunks} chunks read back in {:?}", started.elapsed());
    for (i, n) in c.nodes.iter_mut().enumerate() {
        let exited = n.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten());
        assert!(
            exited.is_none(),
            "storage node {i} stopped after the restart ({exited:?})"
        );
    }
}

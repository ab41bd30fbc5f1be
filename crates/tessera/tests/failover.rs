//! Hardware failures must not reach the application: SIGKILL group leaders and followers of
//! a live cluster while a workload writes and verifies through the client library.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Opts};
use rand::{Rng, SeedableRng};

const BLOCK: u64 = 4096;
const WRITERS: u64 = 8;
const ROUNDS: usize = 20;

struct Shared {
    /// block index -> fill byte of the last acknowledged write.
    model: Mutex<HashMap<u64, u8>>,
    /// Completion times of every operation, to find the longest pause.
    done: Mutex<Vec<Instant>>,
    stop: std::sync::atomic::AtomicBool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_leaders_and_followers_under_load_loses_nothing() {
    let mut c = Cluster::start(Opts {
        nodes: 4,
        ..Default::default()
    });
    c.wait_ready(4).await;
    c.create_volume("fo", "16MiB", "1MiB");
    let client = c.client().await;
    let vol = client.open("fo").await.expect("open");
    let blocks = vol.size() / BLOCK;

    let shared = Arc::new(Shared {
        model: Mutex::new(HashMap::new()),
        done: Mutex::new(Vec::new()),
        stop: std::sync::atomic::AtomicBool::new(false),
    });
    let mut workers = Vec::new();
    for w in 0..WRITERS {
        let (vol, shared) = (vol.clone(), shared.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w);
            let mut ops = 0u64;
            while !shared.stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Each writer owns the blocks congruent to its number: no overlapping writes
                // in flight, so the model is exact.
                let block = rng.gen_range(0..blocks / WRITERS) * WRITERS + w;
                let fill = rng.gen_range(1..=255u8);
                vol.write(block * BLOCK, Bytes::from(vec![fill; BLOCK as usize]))
                    .await
                    .map_err(|e| format!("write of block {block}: {e}"))?;
                shared.model.lock().expect("model").insert(block, fill);
                let got = vol
                    .read(block * BLOCK, BLOCK)
                    .await
                    .map_err(|e| format!("read of block {block}: {e}"))?;
                if got.iter().any(|&b| b != fill) {
                    return Err(format!(
                        "block {block}: read back differs right after its write"
                    ));
                }
                shared.done.lock().expect("done").push(Instant::now());
                ops += 1;
            }
            Ok::<u64, String>(ops)
        }));
    }

    let mut pauses = Vec::new();
    for round in 0..ROUNDS {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let status = c.status().await.expect("cluster status");
        let group = status
            .groups
            .iter()
            .filter(|g| g.chunks > 0 && g.leader.is_some())
            .nth(round % 3)
            .or_else(|| status.groups.iter().find(|g| g.leader.is_some()))
            .expect("a group with a leader");
        let leader = group.leader.expect("leader");
        // Even rounds kill the leader, odd rounds a follower of the same group.
        let victim = if round % 2 == 0 {
            leader
        } else {
            group
                .replicas
                .iter()
                .map(|r| r.node_id)
                .find(|&n| n != leader)
                .expect("a follower")
        };
        let i = c.node_index(&status, victim);
        let killed_at = Instant::now();
        c.kill_node(i);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        c.restart_node(i);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let mut times: Vec<Instant> = shared
            .done
            .lock()
            .expect("done")
            .iter()
            .copied()
            .filter(|t| *t >= killed_at)
            .collect();
        times.sort();
        let mut prev = killed_at;
        let mut longest = Duration::ZERO;
        for t in times {
            longest = longest.max(t - prev);
            prev = t;
        }
        longest = longest.max(Instant::now() - prev);
        eprintln!(
            "round {round}: killed node {victim} ({}), longest I/O pause {longest:?}",
            if round % 2 == 0 { "leader" } else { "follower" }
        );
        pauses.push(longest);
    }
    shared
        .stop
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for w in workers {
        total += w
            .await
            .expect("worker task")
            .unwrap_or_else(|e| panic!("{e}\n{}", c.logs()));
    }
    assert!(total > 100, "only {total} operations completed");

    // Everything acknowledged is there, read through a fresh client.
    let model = shared.model.lock().expect("model").clone();
    let fresh = c.client().await.open_read_only("fo").await.expect("reopen");
    for (block, fill) in model {
        let got = fresh.read(block * BLOCK, BLOCK).await.expect("final read");
        assert!(
            got.iter().all(|&b| b == fill),
            "block {block} lost its last acknowledged write"
        );
    }
    pauses.sort();
    eprintln!(
        "I/O pause over {ROUNDS} kill rounds: p50 {:?}, p99 {:?}, max {:?}; {total} write+verify operations",
        pauses[pauses.len() / 2],
        pauses[(pauses.len() * 99 / 100).min(pauses.len() - 1)],
        pauses[pauses.len() - 1]
    );
}

/// The data path needs the manager only to learn routes: with the manager down, I/O to
/// chunks already mapped goes on; once it is back, new chunks are mapped again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_goes_on_while_the_manager_is_down() {
    let mut c = Cluster::start(Opts::default());
    c.wait_ready(3).await;
    c.create_volume("m", "8MiB", "1MiB");
    let client = c.client().await;
    let vol = client.open("m").await.expect("open");
    vol.write(0, Bytes::from(vec![1u8; 8192]))
        .await
        .expect("map chunk 0");

    c.kill_manager(0);
    for i in 0..200u64 {
        let off = (i % 200) * 4096;
        vol.write(off, Bytes::from(vec![i as u8; 4096]))
            .await
            .expect("write without a manager");
        let got = vol.read(off, 4096).await.expect("read without a manager");
        assert!(got.iter().all(|&b| b == i as u8));
    }

    c.restart_manager(0);
    // A chunk never written before needs the manager to be mapped: it works again.
    vol.write(5 * 1024 * 1024, Bytes::from(vec![9u8; 4096]))
        .await
        .expect("write to a new chunk after the manager is back");
    assert!(
        vol.read(5 * 1024 * 1024, 4096)
            .await
            .expect("read")
            .iter()
            .all(|&b| b == 9)
    );
}

//! Highly available managers: three `tessera manager` processes in one Raft group. SIGKILL of
//! the manager leader must cost no metadata and no I/O error, the control plane must be back
//! within seconds, and a restarted manager must catch up from the others.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Cluster, Opts};
use rand::{Rng, SeedableRng};

const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;
const WRITERS: u64 = 4;

struct Io {
    /// Completion times of every write+verify, to find the longest pause.
    done: Mutex<Vec<Instant>>,
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// Longest gap between `from`, the completions after it, and now.
fn longest_pause(io: &Io, from: Instant) -> Duration {
    let mut times: Vec<Instant> = io
        .done
        .lock()
        .expect("done")
        .iter()
        .copied()
        .filter(|t| *t >= from)
        .collect();
    times.sort();
    let mut prev = from;
    let mut longest = Duration::ZERO;
    for t in times {
        longest = longest.max(t - prev);
        prev = t;
    }
    longest.max(Instant::now() - prev)
}

/// Waits until manager `i`'s log says it applied the managers' log with `volumes` volumes.
async fn wait_caught_up(c: &Cluster, i: usize, volumes: u64) {
    let needle = format!("; {volumes} volumes");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&c.managers[i].log).unwrap_or_default();
        if log
            .lines()
            .any(|l| l.contains("applied the managers' log up to index") && l.ends_with(&needle))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "manager {} did not catch up to {volumes} volumes\n{}",
            c.managers[i].id,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_manager_leader_loses_no_metadata_and_no_io() {
    let mut c = Cluster::start(Opts {
        managers: 3,
        ..Opts::default()
    });
    c.wait_ready(3).await;
    c.create_volume("before", "16MiB", "1MiB");
    c.create_volume("io", "8MiB", "1MiB");
    let client = c.client().await;
    let vol = client.open("io").await.expect("open");
    // Map every chunk now: afterwards the data path needs no manager, only cached routes.
    for chunk in 0..vol.size() / MIB {
        vol.write(chunk * MIB, Bytes::from(vec![0u8; BLOCK as usize]))
            .await
            .expect("map chunk");
    }
    let blocks = vol.size() / BLOCK;

    let io = Arc::new(Io {
        done: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    });
    let mut workers = Vec::new();
    for w in 0..WRITERS {
        let (vol, io) = (vol.clone(), io.clone());
        workers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w);
            while !io.stop.load(Ordering::Relaxed) {
                // Each writer owns the blocks congruent to its number.
                let block = rng.gen_range(0..blocks / WRITERS) * WRITERS + w;
                let fill = rng.gen_range(1..=255u8);
                let res = async {
                    vol.write(block * BLOCK, Bytes::from(vec![fill; BLOCK as usize]))
                        .await
                        .map_err(|e| format!("write of block {block}: {e}"))?;
                    let got = vol
                        .read(block * BLOCK, BLOCK)
                        .await
                        .map_err(|e| format!("read of block {block}: {e}"))?;
                    if got.iter().any(|&b| b != fill) {
                        return Err(format!("block {block}: read back differs"));
                    }
                    Ok(())
                }
                .await;
                match res {
                    Ok(()) => io.done.lock().expect("done").push(Instant::now()),
                    Err(e) => io.errors.lock().expect("errors").push(e),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let leader = c.wait_leader().await;
    let killed_at = Instant::now();
    c.kill_manager(leader);
    eprintln!("killed manager {} (the leader)", c.managers[leader].id);

    // The control plane is back as soon as the other two elect a leader.
    c.create_volume("after", "16MiB", "1MiB");
    let took = killed_at.elapsed();
    eprintln!("volume create after the leader's death took {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "volume create took {took:?}"
    );
    assert_eq!(c.volume_names(), ["after", "before", "io"]);
    let next = c.wait_leader().await;
    assert_ne!(next, leader);
    // The new leader learnt node health afresh and called no node suspect or down.
    let status = c
        .status()
        .await
        .expect("cluster status from the new leader");
    assert!(
        status.nodes.iter().all(|n| n.state == "up"),
        "node states under the new leader: {:?}",
        status.nodes.iter().map(|n| &n.state).collect::<Vec<_>>()
    );

    // Let the I/O run on a little under the new leader, then look at it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pause = longest_pause(&io, killed_at);
    io.stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker task");
    }
    let errors = io.errors.lock().expect("errors").clone();
    let ops = io.done.lock().expect("done").len();
    eprintln!("I/O across the manager leader's death: {ops} write+verify, longest pause {pause:?}");
    assert!(errors.is_empty(), "I/O errors: {errors:?}");
    assert!(ops > 50, "only {ops} operations completed");
    assert!(pause < Duration::from_secs(5), "I/O paused for {pause:?}");

    // The killed manager comes back as a follower and catches up from the log.
    c.restart_manager(leader);
    wait_caught_up(&c, leader, 3).await;

    // Without the current leader, the restarted manager and the third one still hold a
    // majority, and whichever leads has every volume.
    c.kill_manager(next);
    c.create_volume("last", "16MiB", "1MiB");
    assert_eq!(c.volume_names(), ["after", "before", "io", "last"]);
    let now_leading = c.wait_leader().await;
    eprintln!(
        "after killing manager {}, manager {} leads (restarted one: {})",
        c.managers[next].id, c.managers[now_leading].id, c.managers[leader].id
    );
    let fresh = c.client().await.open_read_only("io").await.expect("reopen");
    assert_eq!(fresh.size(), 8 * MIB);
}

/// Waits until manager `i`'s log says it installed a snapshot of the managers' state.
async fn wait_snapshot_installed(c: &Cluster, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&c.managers[i].log).unwrap_or_default();
        if log
            .lines()
            .any(|l| l.contains("installed a snapshot of the managers' state"))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "manager {} installed no snapshot\n{}",
            c.managers[i].id,
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_manager_with_volumes_grows_to_three_and_survives_losing_the_original() {
    let mut c = Cluster::start(Opts {
        joining: 2,
        ..Opts::default()
    });
    c.wait_ready(3).await;
    let names: Vec<String> = (0..20).map(|i| format!("vol{i:02}")).collect();
    for n in &names {
        c.create_volume(n, "16MiB", "1MiB");
    }
    let client = c.client().await;
    let vol = client.open("vol00").await.expect("open");
    let data = Bytes::from(vec![0xabu8; BLOCK as usize]);
    vol.write(5 * MIB, data.clone()).await.expect("write");
    vol.close().await.expect("close");
    drop(client);

    // Grow: start each new manager (join = true), then add it through the original: a
    // learner until it has caught up from a snapshot, then a voter.
    for i in 1..3 {
        c.restart_manager(i);
        let (id, addr) = (c.managers[i].id.to_string(), c.managers[i].addr.clone());
        let voter = format!("manager {id} {addr} voter");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = c.cli_ok(&["cluster", "add-manager", &id, &addr]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if text.lines().any(|l| l == voter) {
                eprintln!("{text}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not promoted: {text}\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        wait_snapshot_installed(&c, i).await;
    }
    c.create_volume("grown", "16MiB", "1MiB");
    for i in 1..3 {
        wait_caught_up(&c, i, 21).await;
    }

    // The original goes; the two added managers are a majority and have everything.
    c.kill_manager(0);
    let leader = c.wait_leader().await;
    assert_ne!(leader, 0);
    let mut expected = names.clone();
    expected.push("grown".into());
    expected.sort();
    assert_eq!(c.volume_names(), expected);
    c.create_volume("after", "16MiB", "1MiB");
    let fresh = c
        .client()
        .await
        .open_read_only("vol00")
        .await
        .expect("reopen");
    let got = fresh.read(5 * MIB, BLOCK).await.expect("read");
    assert_eq!(&got[..], &data[..]);
    // The other added manager has every volume too: it leads once this one is gone.
    c.restart_manager(0);
    wait_caught_up(&c, 0, 22).await;
    c.kill_manager(leader);
    let other = c.wait_leader().await;
    assert!(other != leader);
    let mut all = expected.clone();
    all.push("after".into());
    all.sort();
    assert_eq!(c.volume_names(), all);
}

//! What taking snapshots costs a writer, and how fast a clone flattens: run by
//! `bench/snapshot.sh` against a running cluster.
//!
//! ```text
//! snapshot_bench MANAGER VOLUME SECS
//! ```
//! One writer attached to VOLUME writes 4 KiB blocks at queue depth 1, at random over the
//! first 256 MiB, for SECS seconds, while a snapshot is taken every second (and, in the
//! first and last fifths, none: the plain-write baseline of the same run). Reports, in
//! microseconds: plain writes (p50, p99), writes in flight while a snapshot was being taken,
//! the first write after each snapshot (it meets the fence and is resent with the new
//! sequence), the writer's pause per snapshot (its slowest write overlapping the snapshot),
//! and the snapshot requests themselves. Then clones the last snapshot, flattens the clone
//! and reports its MB/s (bytes mapped in the snapshot over the flatten's wall time).
//! Last, deletes every snapshot but the newest, then the newest, and reports for each step
//! the space freed (the volume's usage before and after) over the time its merges took.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tessera_client::Client;

const SPAN: u64 = 256 << 20;
const BLOCK: u64 = 4096;

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn line(name: &str, v: &mut [u64]) {
    let n = v.len();
    let (p50, p99) = (percentile(v, 0.50), percentile(v, 0.99));
    let max = v.iter().copied().max().unwrap_or(0);
    println!("{name:<34} n={n:<6} p50={p50:>7} us  p99={p99:>7} us  max={max:>7} us");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, manager, volume, secs] = args.as_slice() else {
        anyhow::bail!("usage: snapshot_bench MANAGER VOLUME SECS");
    };
    let secs: u64 = secs.parse()?;
    let client = Client::connect(vec![manager.clone()]).await?;
    let vol = client.open(volume).await?;
    // Every block of the span written once first: snapshots then preserve real data.
    let fill = Bytes::from(vec![0x5au8; 1 << 20]);
    let mut at = 0;
    while at < SPAN {
        vol.write(at, fill.clone()).await?;
        at += 1 << 20;
    }

    let start = Instant::now();
    let total = Duration::from_secs(secs);
    let quiet = total / 5;
    let writer = {
        let vol = vol.clone();
        tokio::spawn(async move {
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut done = Vec::new();
            let data = Bytes::from(vec![0xa5u8; BLOCK as usize]);
            while start.elapsed() < total {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = (x % (SPAN / BLOCK)) * BLOCK;
                let t0 = Instant::now();
                vol.write(off, data.clone()).await.expect("write");
                done.push((t0, t0.elapsed()));
            }
            done
        })
    };
    let mut snaps = Vec::new();
    let mut k: u32 = 0;
    tokio::time::sleep(quiet).await;
    while start.elapsed() < total - quiet {
        let t0 = Instant::now();
        client.create_snapshot(volume, &format!("bench{k}")).await?;
        snaps.push((t0, Instant::now()));
        k += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let writes = writer.await?;

    let us = |d: Duration| d.as_micros() as u64;
    let overlaps = |t: Instant, d: Duration, (a, b): (Instant, Instant)| t < b && t + d > a;
    let mut plain = Vec::new();
    let mut during = Vec::new();
    for &(t, d) in &writes {
        if t > start + quiet && t < start + total - quiet {
            continue;
        }
        plain.push(us(d));
    }
    for &(t, d) in &writes {
        if snaps.iter().any(|&s| overlaps(t, d, s)) {
            during.push(us(d));
        }
    }
    let mut first = Vec::new();
    let mut pause = Vec::new();
    for &(a, b) in &snaps {
        if let Some(&(_, d)) = writes.iter().find(|&&(t, _)| t >= b) {
            first.push(us(d));
        }
        let worst = writes
            .iter()
            .filter(|&&(t, d)| overlaps(t, d, (a, b)))
            .map(|&(_, d)| us(d))
            .max()
            .unwrap_or(0);
        pause.push(worst);
    }
    let mut create: Vec<u64> = snaps.iter().map(|&(a, b)| us(b - a)).collect();
    println!(
        "{} writes, {} snapshots in {secs} s",
        writes.len(),
        snaps.len()
    );
    line("plain write (no snapshot near)", &mut plain);
    line("write overlapping a snapshot", &mut during);
    line("first write after a snapshot", &mut first);
    line("writer pause per snapshot", &mut pause);
    line("snapshot create request", &mut create);

    // Flatten: a clone of the last snapshot, every chunk of the span linked.
    drop(vol);
    let last = format!("bench{}", k.saturating_sub(1));
    let clone = format!("{volume}-flat");
    client.clone_volume(volume, &last, &clone).await?;
    let t0 = Instant::now();
    client.flatten_volume(&clone).await?;
    loop {
        let info = client.volume_info(&clone).await?;
        if info.parent.is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t0.elapsed().as_secs_f64();
    let mapped = client.volume_info(&clone).await?.mapped_chunks;
    let size = client.volume_info(volume).await?.chunk_size * mapped;
    println!(
        "flatten: {} MiB in {took:.2} s = {:.1} MiB/s",
        size >> 20,
        (size >> 20) as f64 / took
    );

    // Reclaim: every snapshot but the newest deleted (merges of frozen ranges), then the
    // newest (the live range), each timed until its merges are done.
    let names: Vec<String> = (0..k).map(|i| format!("bench{i}")).collect();
    if let Some((newest, older)) = names.split_last() {
        reclaim(&client, volume, older, "older snapshots (frozen ranges)").await?;
        reclaim(
            &client,
            volume,
            std::slice::from_ref(newest),
            "the newest (live range)",
        )
        .await?;
    }
    Ok(())
}

/// Deletes `snapshots` of `volume`, waits for their space to be reclaimed and reports the
/// bytes freed (the volume's usage before and after) over the wall time.
async fn reclaim(
    client: &Client,
    volume: &str,
    snapshots: &[String],
    what: &str,
) -> anyhow::Result<()> {
    let held = |u: &tessera_proto::control::VolumeUsage| {
        u.live_bytes + u.snapshots.iter().map(|s| s.bytes).sum::<u64>()
    };
    // Usage is measured at each node's chunk sync: let one pass.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = held(&client.volume_usage(volume).await?);
    let t0 = Instant::now();
    for s in snapshots {
        client.delete_snapshot(volume, s).await?;
    }
    while !client.volume_info(volume).await?.reclaims.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = held(&client.volume_usage(volume).await?);
    let freed = before.saturating_sub(after) >> 20;
    println!(
        "reclaim of {} {what}: {freed} MiB freed (one replica) in {took:.2} s = {:.1} MiB/s",
        snapshots.len(),
        freed as f64 / took
    );
    Ok(())
}

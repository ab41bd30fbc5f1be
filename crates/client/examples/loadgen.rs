//! Random-I/O load through the client library, for measuring a cluster:
//!
//! ```text
//! cargo run --release -p tessera-client --example loadgen -- \
//!     MANAGER VOLUME write|read BLOCK_SIZE QUEUE_DEPTH SECONDS [SPAN_BYTES]
//! ```
//! Prints operations per second, MB/s and latency percentiles. A read run first fills the
//! span with data so every read reaches the chunk store.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, SeedableRng};

fn arg(args: &[String], i: usize, name: &str) -> String {
    args.get(i).cloned().unwrap_or_else(|| {
        eprintln!(
            "missing {name}: MANAGER VOLUME write|read BLOCK_SIZE QUEUE_DEPTH SECONDS [SPAN]"
        );
        std::process::exit(2)
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let manager = arg(&args, 0, "MANAGER");
    let name = arg(&args, 1, "VOLUME");
    let op = arg(&args, 2, "OP");
    let bs: u64 = arg(&args, 3, "BLOCK_SIZE").parse()?;
    let qd: usize = arg(&args, 4, "QUEUE_DEPTH").parse()?;
    let secs: u64 = arg(&args, 5, "SECONDS").parse()?;
    let client = tessera_client::Client::connect(vec![manager]).await?;
    let vol = client.open(&name).await?;
    let span: u64 = args
        .get(6)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(vol.size().min(1 << 30));
    if op == "read" {
        let fill = Bytes::from(vec![0xa5u8; 1 << 20]);
        let mut off = 0;
        while off < span {
            let n = (1u64 << 20).min(span - off);
            vol.write(off, fill.slice(..n as usize)).await?;
            off += n;
        }
    }
    let blocks = span / bs;
    let deadline = Instant::now() + Duration::from_secs(secs);
    let data = Bytes::from(vec![0x3cu8; bs as usize]);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..qd {
        let (vol, data, op) = (vol.clone(), data.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut rng = rand::rngs::StdRng::from_entropy();
            while Instant::now() < deadline {
                let off = rng.gen_range(0..blocks) * bs;
                let t = Instant::now();
                let r = if op == "write" {
                    vol.write(off, data.clone()).await
                } else {
                    vol.read(off, bs).await.map(|_| ())
                };
                r.map_err(|e| e.to_string())?;
                lat.push(t.elapsed().as_micros() as u32);
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    let ops = lat.len() as f64 / elapsed;
    println!(
        "{op} bs={bs} qd={qd}: {:.0} IOPS, {:.1} MB/s, latency us p50={} p99={} p99.9={} max={} ({} ops in {:.1}s)",
        ops,
        ops * bs as f64 / 1e6,
        pct(0.50),
        pct(0.99),
        pct(0.999),
        lat[lat.len() - 1],
        lat.len(),
        elapsed
    );
    Ok(())
}

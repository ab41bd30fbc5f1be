//! What an attachment costs, measured against a running cluster:
//!
//! ```text
//! cargo run --release -p tessera-client --example attach -- MANAGER VOLUME [ROUNDS]
//! ```
//! Times `Client::open` (attach, then fence every group holding the volume's chunks) and
//! `Volume::close` (detach) over ROUNDS rounds (default 50), and one lease renewal (the
//! manager call a holder makes every third of its lease) over 10 × ROUNDS calls. Prints
//! percentiles in milliseconds. The volume must not be attached by anyone else.

use std::time::{Duration, Instant};

use tessera_proto::control::{ManagerReply, ManagerRequest};

fn pct(mut v: Vec<Duration>) -> String {
    v.sort();
    let at = |p: f64| v[((v.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3;
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(manager), Some(name)) = (args.first(), args.get(1)) else {
        eprintln!("usage: attach MANAGER VOLUME [ROUNDS]");
        std::process::exit(2)
    };
    let rounds: usize = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(50)
        .max(1);
    let client = tessera_client::Client::connect_as(vec![manager.clone()], "attach bench").await?;
    let (mut opens, mut closes) = (Vec::new(), Vec::new());
    let mut groups = 0;
    for _ in 0..rounds {
        let t = Instant::now();
        let vol = client.open(name).await?;
        opens.push(t.elapsed());
        groups = vol.info().mapped_chunks;
        let t = Instant::now();
        vol.close().await?;
        closes.push(t.elapsed());
    }
    let vol = client.open(name).await?;
    let renew = ManagerRequest::RenewAttachment {
        volume_id: vol.info().id,
        epoch: vol.epoch().unwrap_or(0),
    };
    let mut renewals = Vec::new();
    for _ in 0..rounds * 10 {
        let t = Instant::now();
        match client.call(&renew).await? {
            ManagerReply::Renewed { .. } => renewals.push(t.elapsed()),
            other => return Err(format!("unexpected answer {other:?}").into()),
        }
    }
    vol.close().await?;
    println!("volume {name}: {groups} mapped chunks");
    println!("attach + fence ({rounds}): {}", pct(opens));
    println!("detach ({rounds}):         {}", pct(closes));
    println!("renewal ({}):        {}", rounds * 10, pct(renewals));
    Ok(())
}

//! `tessera dev`: a whole cluster in one process, for a laptop or a test. Each storage node
//! is the real service with its own data directory, port and rack; only the process is
//! shared.

use std::path::PathBuf;
use std::sync::Arc;
use std::task::Poll;

use anyhow::{Context, Result, bail};
use clap::Args;
use tessera_client::Client;
use tessera_storage::{StorageConfig, StorageNode};

#[derive(Args)]
pub struct DevArgs {
    /// Where every component keeps its data (reused on the next start).
    #[arg(long, default_value = "./tessera-data")]
    pub data_dir: PathBuf,
    /// Storage nodes, each in its own rack (at least 3: every chunk has three replicas on
    /// three racks).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(3..=64))]
    pub nodes: u16,
    /// NBD gateway address.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd: String,
    /// Manager address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub manager_listen: String,
    /// First storage node's data port; node i listens on base + i.
    #[arg(long, default_value_t = 7500)]
    pub base_port: u16,
    /// Where to serve `GET /metrics` for every component of the dev cluster.
    #[arg(long, default_value = "127.0.0.1:7480")]
    pub metrics: String,
    /// Size of the default volume `vol0`, created on first start.
    #[arg(long, default_value = "10GiB", value_parser = crate::size::parse_size)]
    pub vol0_size: u64,
}

pub async fn run(a: DevArgs) -> Result<()> {
    std::fs::create_dir_all(&a.data_dir)
        .with_context(|| format!("creating {}", a.data_dir.display()))?;
    let manager = tessera_manager::Manager::start(crate::daemon::manager_config(
        a.manager_listen.clone(),
        a.data_dir.join("manager"),
    ))
    .await?;
    let maddr = manager.local_addr().to_string();
    let metrics = tessera_metrics::serve(&a.metrics)
        .await
        .with_context(|| format!("serving metrics on {}", a.metrics))?;
    let host = a
        .manager_listen
        .rsplit_once(':')
        .map_or("127.0.0.1", |(h, _)| h)
        .to_string();
    let mut nodes = Vec::new();
    for i in 0..usize::from(a.nodes) {
        let cfg = StorageConfig {
            zone: "zone1".into(),
            rack: format!("rack{}", i + 1),
            data_dir: a.data_dir.join(format!("node{}", i + 1)),
            listen: format!("{host}:{}", a.base_port as usize + i),
            advertise: None,
            managers: vec![maddr.clone()],
            heartbeat_ms: 1000,
            min_free_bytes: 256 << 20,
            log_segment_bytes: 64 << 20,
            metrics_listen: None,
            recovery_bytes_per_sec: 100 << 20,
            max_open_chunks: None,
            copy_list_page: tessera_proto::copy::MAX_LIST_PAGE,
            stuck_after_ms: 10_000,
        };
        nodes.push(
            StorageNode::start(cfg)
                .await
                .with_context(|| format!("starting storage node {}", i + 1))?,
        );
    }
    let client =
        Client::connect_as(vec![maddr.clone()], &format!("tessera dev nbd {}", a.nbd)).await?;
    client.ensure_volume("vol0", a.vol0_size).await?;
    let nbd = tessera_nbd::NbdServer::bind(&a.nbd, Arc::new(client)).await?;
    let nbd_addr = nbd.local_addr();
    println!(
        "Tessera dev cluster is up: 1 manager, {} storage nodes, data in {}",
        a.nodes,
        a.data_dir.display()
    );
    println!("  volume:  nbd://{nbd_addr}/vol0");
    println!("  try:     qemu-img info nbd://{nbd_addr}/vol0");
    println!("  CLI:     tessera --manager {maddr} volume list");
    println!("  metrics: http://{metrics}/metrics");
    println!("Press Ctrl-C to stop.");
    // A node that hit a fatal storage error has stopped for good: the whole cluster stops
    // with it, rather than run on with a dead replica the user is never told about.
    let mut fatal = None;
    nbd.run(async {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            stopped = first_fatal(&nodes) => fatal = Some(stopped),
        }
    })
    .await;
    for n in nodes {
        n.shutdown().await;
    }
    manager.shutdown().await;
    if let Some((i, msg)) = fatal {
        bail!(
            "storage node {} (data in {}) stopped: {msg}",
            i + 1,
            a.data_dir.join(format!("node{}", i + 1)).display()
        );
    }
    println!("stopped");
    Ok(())
}

/// Resolves with the index and the reason of the first node to hit a fatal storage error.
async fn first_fatal(nodes: &[StorageNode]) -> (usize, String) {
    let mut waits: Vec<_> = nodes.iter().map(|n| Box::pin(n.fatal())).collect();
    std::future::poll_fn(|cx| {
        for (i, w) in waits.iter_mut().enumerate() {
            if let Poll::Ready(msg) = w.as_mut().poll(cx) {
                return Poll::Ready((i, msg));
            }
        }
        Poll::Pending
    })
    .await
}

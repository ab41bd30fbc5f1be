//! Subcommands: the daemons' entry points and the volume / cluster CLI.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Subcommand;
use tessera_client::Client;
use tessera_proto::control::{ManagerReply, ManagerRequest, VolumeInfo};

use crate::Output;
use crate::size::{format_size, parse_size};

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a thin-provisioned volume.
    Create {
        name: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// Chunk size (power of two, 1MiB..1GiB; default 64MiB).
        #[arg(long, value_parser = parse_size)]
        chunk_size: Option<u64>,
    },
    List,
    /// Size, chunks, and who writes the volume (its read-write attachment).
    Info {
        name: String,
    },
    /// End the read-write attachment of a volume (an operator moving a VM): the holder's
    /// writes are refused from then on. Refused while the holder's lease runs, unless
    /// --force (for a holder that is stuck, cut off, or about to be killed).
    Detach {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// Grow a volume (shrinking is refused).
    Resize {
        name: String,
        #[arg(long, value_parser = parse_size)]
        size: u64,
    },
    Delete {
        name: String,
    },
    /// Copy a file into a volume (created to fit if it does not exist).
    Import {
        name: String,
        file: PathBuf,
    },
    /// Copy a volume into a file.
    Export {
        name: String,
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Nodes, racks and replica groups with their leaders.
    Status,
    /// Add a manager, started with `join = true`, to the managers' Raft group: a learner
    /// that catches up from a snapshot and is then promoted to voter. Run it again to see
    /// whether it was.
    AddManager {
        /// Its `id` in manager.toml.
        id: u64,
        /// Its `listen` address, as the other managers and clients reach it.
        addr: String,
    },
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Move every replica and leadership off a node (before maintenance).
    Drain {
        node_id: u64,
        /// Stop draining; the node takes replicas again.
        #[arg(long)]
        undo: bool,
    },
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config {}", path.display()))
}

pub fn manager_config(listen: String, data_dir: PathBuf) -> tessera_manager::ManagerConfig {
    tessera_manager::ManagerConfig {
        listen,
        data_dir,
        ..Default::default()
    }
}

pub async fn run_manager(path: &Path) -> Result<()> {
    let file: tessera_manager::ManagerConfigFile = read_toml(path)?;
    let m = tessera_manager::Manager::start(file.into()).await?;
    eprintln!("tessera manager listening on {}", m.local_addr());
    tokio::signal::ctrl_c().await?;
    m.shutdown().await;
    Ok(())
}

pub async fn run_storage(path: &Path) -> Result<()> {
    let cfg: tessera_storage::StorageConfig = read_toml(path)?;
    let node = tessera_storage::StorageNode::start(cfg).await?;
    eprintln!(
        "tessera storage node {} serving on {}",
        node.node_id(),
        node.local_addr()
    );
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r?; node.shutdown().await; Ok(()) }
        msg = node.fatal() => bail!("storage node stopped: {msg}"),
    }
}

pub async fn run_nbd(
    managers: Vec<String>,
    listen: &str,
    metrics: Option<String>,
    read_only: bool,
) -> Result<()> {
    if let Some(m) = metrics {
        tessera_metrics::serve(&m)
            .await
            .with_context(|| format!("serving metrics on {m}"))?;
    }
    let client = Client::connect_as(managers, &format!("nbd gateway {listen}")).await?;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if read_only {
        let backend = Arc::new(tessera_nbd::ReadOnlyClient(client));
        let server = tessera_nbd::NbdServer::bind(listen, backend).await?;
        eprintln!("tessera NBD gateway (read-only) on {}", server.local_addr());
        server.run(stop).await;
    } else {
        let server = tessera_nbd::NbdServer::bind(listen, Arc::new(client)).await?;
        eprintln!("tessera NBD gateway on {}", server.local_addr());
        server.run(stop).await;
    }
    Ok(())
}

async fn manager_call(client: &Client, req: ManagerRequest) -> Result<ManagerReply> {
    Ok(client.call(&req).await?)
}

fn print_volumes(output: Output, vols: &[VolumeInfo]) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(vols)?);
        return Ok(());
    }
    println!(
        "{:<24} {:>6} {:>12} {:>10} {:>8}",
        "NAME", "ID", "SIZE", "CHUNK", "MAPPED"
    );
    for v in vols {
        println!(
            "{:<24} {:>6} {:>12} {:>10} {:>8}",
            v.name,
            v.id,
            format_size(v.size),
            format_size(v.chunk_size),
            v.mapped_chunks
        );
    }
    Ok(())
}

pub async fn volume(managers: Vec<String>, output: Output, cmd: VolumeCmd) -> Result<()> {
    let client = Client::connect_as(managers, "tessera CLI").await?;
    match cmd {
        VolumeCmd::Create {
            name,
            size,
            chunk_size,
        } => {
            let r = manager_call(
                &client,
                ManagerRequest::CreateVolume {
                    name,
                    size,
                    chunk_size,
                },
            )
            .await?;
            if let ManagerReply::Volume(v) = r {
                print_volumes(output, &[v])?;
            }
        }
        VolumeCmd::List => {
            let vols = client.list_volumes().await?;
            print_volumes(output, &vols)?;
        }
        VolumeCmd::Info { name } => {
            let v = client.volume_info(&name).await?;
            print_volumes(output, std::slice::from_ref(&v))?;
            if output == Output::Table {
                match &v.attachment {
                    None => println!("\nnot attached"),
                    Some(a) => {
                        let lease = a.lease_left_ms.map_or(
                            "a whole lease from the manager leader's election".to_string(),
                            |ms| format!("{:.1}s", ms as f64 / 1000.0),
                        );
                        println!(
                            "\nattached read-write by {}\n  epoch {}, since {} (unix), lease left {lease}",
                            a.client, a.epoch, a.since_unix
                        );
                    }
                }
            }
        }
        VolumeCmd::Detach { name, force } => {
            let holder = client.volume_info(&name).await?.attachment;
            // The manager decides (the lease, as it sees it); repeating this is safe.
            let fenced = client.detach(&name, force).await?;
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::json!({ "detached": name, "fence_epoch": fenced })
                );
            } else {
                match holder {
                    Some(a) => println!(
                        "detached volume \"{name}\" from {}; writes of epochs before {fenced} \
                         are refused",
                        a.client
                    ),
                    None if fenced != 0 => println!(
                        "volume \"{name}\" is not attached; fenced again with epoch {fenced}"
                    ),
                    None => println!("volume \"{name}\" is not attached"),
                }
            }
        }
        VolumeCmd::Resize { name, size } => {
            if let ManagerReply::Volume(v) =
                manager_call(&client, ManagerRequest::ResizeVolume { name, size }).await?
            {
                print_volumes(output, &[v])?;
            }
        }
        VolumeCmd::Delete { name } => {
            manager_call(&client, ManagerRequest::DeleteVolume { name: name.clone() }).await?;
            if output == Output::Json {
                println!("{}", serde_json::json!({ "deleted": name }));
            } else {
                println!("deleted volume \"{name}\"");
            }
        }
        VolumeCmd::Import { name, file } => crate::transfer::import(&client, &name, &file).await?,
        VolumeCmd::Export { name, file } => crate::transfer::export(&client, &name, &file).await?,
    }
    Ok(())
}

pub async fn cluster(managers: Vec<String>, output: Output, cmd: ClusterCmd) -> Result<()> {
    let client = Client::connect(managers).await?;
    match cmd {
        ClusterCmd::AddManager { id, addr } => {
            let ManagerReply::Managers { voters, learners } =
                manager_call(&client, ManagerRequest::AddManager { id, addr }).await?
            else {
                bail!("unexpected reply from the manager");
            };
            if output == Output::Json {
                let v = serde_json::json!({ "voters": voters, "learners": learners });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (id, addr) in voters {
                    println!("manager {id} {addr} voter");
                }
                for (id, addr) in learners {
                    println!("manager {id} {addr} learner (catching up; promoted when done)");
                }
            }
        }
        ClusterCmd::Status => {
            let ManagerReply::Status(s) =
                manager_call(&client, ManagerRequest::ClusterStatus).await?
            else {
                bail!("unexpected reply from the manager");
            };
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&s)?);
                return Ok(());
            }
            println!("NODES");
            println!(
                "{:>4} {:<10} {:<10} {:<22} {:<8} {:>9} {:>8} {:>15}",
                "ID", "ZONE", "RACK", "ADDRESS", "STATE", "REPLICAS", "LEADERS", "OPEN CHUNKS"
            );
            for n in &s.nodes {
                let state = if n.draining {
                    format!("{},draining", n.state)
                } else {
                    n.state.clone()
                };
                // Open chunks against the node's budget of them (see `Descriptors`).
                let open = n.descriptors.map_or_else(
                    || "-".to_string(),
                    |d| format!("{}/{}", d.chunks_open, d.chunks_budget),
                );
                println!(
                    "{:>4} {:<10} {:<10} {:<22} {:<8} {:>9} {:>8} {:>15}",
                    n.node_id, n.zone, n.rack, n.addr, state, n.replicas, n.leaders, open
                );
            }
            println!("\nGROUPS");
            println!(
                "{:>6} {:>7} {:>7} {:<9} REPLICAS (node@rack, ! = node not up, \
                 * = replica stuck: cannot apply, being replaced)",
                "ID", "LEADER", "CHUNKS", "STATE"
            );
            for g in &s.groups {
                let reps: Vec<String> = g
                    .replicas
                    .iter()
                    .map(|r| {
                        let mark = if r.node_state == "up" { "" } else { "!" };
                        let stuck = if r.stuck.is_some() { "*" } else { "" };
                        format!("{}@{}{mark}{stuck}", r.node_id, r.rack)
                    })
                    .collect();
                let state = match (g.leader, g.degraded) {
                    (None, _) => "no-leader",
                    (Some(_), true) => "degraded",
                    (Some(_), false) => "healthy",
                };
                let leader = g.leader.map_or("-".to_string(), |l| l.to_string());
                let moving = if g.moving_to.is_empty() {
                    String::new()
                } else {
                    let to: Vec<String> = g.moving_to.iter().map(u64::to_string).collect();
                    format!("  -> moving to {}", to.join(","))
                };
                println!(
                    "{:>6} {:>7} {:>7} {:<9} {}{moving}",
                    g.group_id,
                    leader,
                    g.chunks,
                    state,
                    reps.join(" ")
                );
            }
            let draining = s.nodes.iter().filter(|n| n.draining).count();
            let degraded = s.groups.iter().filter(|g| g.degraded).count();
            let moving = s.groups.iter().filter(|g| !g.moving_to.is_empty()).count();
            println!(
                "\n{} volume(s); {draining} node(s) draining, {degraded} group(s) degraded, \
                 {moving} move(s) in progress",
                s.volumes
            );
        }
    }
    Ok(())
}

pub async fn node(managers: Vec<String>, output: Output, cmd: NodeCmd) -> Result<()> {
    let client = Client::connect(managers).await?;
    match cmd {
        NodeCmd::Drain { node_id, undo } => {
            let ManagerReply::Status(s) =
                manager_call(&client, ManagerRequest::DrainNode { node_id, undo }).await?
            else {
                bail!("unexpected reply from the manager");
            };
            let n = s.nodes.iter().find(|n| n.node_id == node_id);
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&n)?);
            } else if let Some(n) = n {
                let what = if undo {
                    "no longer draining"
                } else {
                    "draining"
                };
                println!(
                    "node {node_id} {what}: {} replica(s), {} leader(s) left on it",
                    n.replicas, n.leaders
                );
            }
        }
    }
    Ok(())
}

/// A progress line on a terminal; nothing otherwise.
pub struct Progress {
    total: u64,
    started: Instant,
    tty: bool,
    last: Instant,
}

impl Progress {
    pub fn new(total: u64) -> Progress {
        let now = Instant::now();
        Progress {
            total,
            started: now,
            tty: std::io::stderr().is_terminal(),
            last: now,
        }
    }

    pub fn update(&mut self, done: u64) {
        if !self.tty || (self.last.elapsed() < Duration::from_millis(200) && done < self.total) {
            return;
        }
        self.last = Instant::now();
        let pct = (done * 100).checked_div(self.total).unwrap_or(100).min(100);
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let width = 40usize;
        let filled = (pct as usize * width) / 100;
        eprint!(
            "\r[{}{}] {pct:>3}% {} / {} {:.1} MiB/s",
            "#".repeat(filled),
            " ".repeat(width - filled),
            format_size(done),
            format_size(self.total),
            done as f64 / secs / (1 << 20) as f64
        );
        if done >= self.total {
            eprintln!();
        }
    }
}

pub fn is_zero(b: &Bytes) -> bool {
    b.iter().all(|&x| x == 0)
}

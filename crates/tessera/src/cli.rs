//! The operator CLI: `volume`, `cluster` and `node` subcommands (`snapshot`, and the
//! snapshot side of `volume`, are in `snapshots.rs`; `backup` and `store` in `backups.rs`;
//! volumes from backups in `restores.rs`; `scrub` in `scrub.rs`). Each parses its
//! arguments, makes one typed call of the client library and prints the answer (a table,
//! or JSON with `--output json`); no request is built here.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use tessera_client::{Client, ManagerMembers};
use tessera_proto::control::VolumeInfo;

use crate::Output;
use crate::access::Access;
use crate::backups::parse_backup_id;
use crate::progress::Progress;
use crate::restores;
use crate::size::{format_size, parse_size};
use crate::snapshots::{self, SnapSpec, parse_spec};
use crate::usage::{self, UsageAnswer};

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Create a thin-provisioned volume, empty or from a backup.
    ///
    /// From a backup, the volume is created at once and filled from the store in the
    /// background; it can be attached once filled (`volume info` shows how far).
    Create {
        name: String,
        /// Its size (not with --from-backup: the backup's size is taken).
        #[arg(
            long,
            value_parser = parse_size,
            required_unless_present = "from_backup",
            conflicts_with = "from_backup"
        )]
        size: Option<u64>,
        /// Chunk size (power of two, 1MiB..1GiB; default 64MiB; not with --from-backup).
        #[arg(long, value_parser = parse_size, conflicts_with = "from_backup")]
        chunk_size: Option<u64>,
        /// Make it from this ready backup (see `backup list`), with its size and chunk size.
        #[arg(long, value_name = "ID", value_parser = parse_backup_id)]
        from_backup: Option<u64>,
        /// The store to read the backup from (default: a copy in the manager's zone, else
        /// the backup's own store).
        // (`requires` alone lets `--size 1GiB --store s3a` through: clap counts
        // --from-backup as excused by its conflict with --size.)
        #[arg(long, requires = "from_backup", conflicts_with_all = ["size", "chunk_size"])]
        store: Option<String>,
        /// Wait until the volume is filled, with a progress bar on a terminal.
        #[arg(long, requires = "from_backup", conflicts_with_all = ["size", "chunk_size"])]
        wait: bool,
    },
    /// Fill a volume created from a backup now (resumes a fill that stopped on errors).
    Prewarm {
        name: String,
        /// Wait until it is filled, with a progress bar on a terminal.
        #[arg(long)]
        wait: bool,
    },
    List,
    /// Size, chunks, who writes the volume (its read-write attachment), its snapshot
    /// sequence and snapshots, and the snapshot a clone was made from.
    Info {
        name: String,
    },
    /// Make a volume's content its snapshot's again (its snapshots are kept).
    ///
    /// Refused while a client holds it read-write.
    Rollback {
        /// VOLUME@SNAPSHOT
        #[arg(value_parser = parse_spec)]
        snapshot: SnapSpec,
    },
    /// Make a new volume from a snapshot, usable at once.
    ///
    /// It reads the snapshot's data until written over (or flattened).
    Clone {
        /// VOLUME@SNAPSHOT
        #[arg(value_parser = parse_spec)]
        snapshot: SnapSpec,
        /// The new volume's name.
        name: String,
    },
    /// Copy everything a clone still reads from its snapshot into it, in the background.
    ///
    /// `volume info` shows the progress; the snapshot can be deleted once it is done.
    Flatten {
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

pub async fn volume(access: Access, output: Output, cmd: VolumeCmd) -> Result<()> {
    let client = access.client("tessera CLI").await?;
    match cmd {
        VolumeCmd::Create {
            name,
            size,
            chunk_size,
            from_backup,
            store,
            wait,
        } => {
            let v = match (from_backup, size) {
                (Some(id), _) => {
                    restores::restore(&client, output, &name, id, store.as_deref(), wait).await?
                }
                (None, Some(size)) => client.create_volume(&name, size, chunk_size).await?,
                (None, None) => bail!("volume create needs --size or --from-backup"),
            };
            print_volumes(output, &[v])?;
        }
        VolumeCmd::Prewarm { name, wait } => {
            restores::prewarm(&client, output, &name, wait).await?
        }
        VolumeCmd::List => {
            let vols = client.list_volumes().await?;
            print_volumes(output, &vols)?;
        }
        VolumeCmd::Info { name } => {
            let v = client.volume_info(&name).await?;
            // Asked of the storage nodes through the manager: with nodes down the rest of
            // the answer still stands.
            let usage: UsageAnswer = client.volume_usage(&name).await.map_err(|e| e.to_string());
            if output == Output::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&[usage::volume_json(&v, &usage)?])?
                );
            } else {
                print_volumes(output, std::slice::from_ref(&v))?;
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
                if let Some(r) = &v.restore {
                    println!("{}", restores::restore_line(r));
                }
                snapshots::print_lineage(&v, Some(&usage));
            }
        }
        VolumeCmd::Rollback { snapshot } => snapshots::rollback(&client, output, &snapshot).await?,
        VolumeCmd::Clone { snapshot, name } => {
            snapshots::clone(&client, output, &snapshot, &name).await?
        }
        VolumeCmd::Flatten { name } => snapshots::flatten(&client, output, &name).await?,
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
            let v = client.resize_volume(&name, size).await?;
            print_volumes(output, &[v])?;
        }
        VolumeCmd::Delete { name } => {
            client.delete_volume(&name).await?;
            if output == Output::Json {
                println!("{}", serde_json::json!({ "deleted": name }));
            } else {
                println!("deleted volume \"{name}\"");
            }
        }
        VolumeCmd::Import { name, file } => import(&client, &name, &file).await?,
        VolumeCmd::Export { name, file } => export(&client, &name, &file).await?,
    }
    Ok(())
}

pub async fn cluster(access: Access, output: Output, cmd: ClusterCmd) -> Result<()> {
    let client = access.client("tessera CLI").await?;
    match cmd {
        ClusterCmd::AddManager { id, addr } => {
            let ManagerMembers { voters, learners } = client.add_manager(id, &addr).await?;
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
            let s = client.cluster_status().await?;
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

pub async fn node(access: Access, output: Output, cmd: NodeCmd) -> Result<()> {
    let client = access.client("tessera CLI").await?;
    match cmd {
        NodeCmd::Drain { node_id, undo } => {
            let n = client.drain_node(node_id, undo).await?;
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

/// `volume import`: `path` into volume `name` (created to fit if it does not exist).
async fn import(client: &Client, name: &str, path: &Path) -> Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading the size of {}", path.display()))?
        .len();
    let mut progress = Progress::new(len);
    let copied = client
        .import_from(name, file, len, |done| progress.update(done))
        .await
        .with_context(|| format!("importing {} into volume \"{name}\"", path.display()))?;
    eprintln!(
        "imported {} bytes from {} into \"{name}\"",
        copied.bytes,
        path.display()
    );
    Ok(())
}

/// `volume export`: volume `name` into the file at `path` (replaced if it exists).
async fn export(client: &Client, name: &str, path: &Path) -> Result<()> {
    let vol = client.open_read_only(name).await?;
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut progress = Progress::new(vol.size());
    let size = vol
        .export_to(&file, |done| progress.update(done))
        .await
        .with_context(|| format!("exporting volume \"{name}\" to {}", path.display()))?;
    eprintln!("exported {size} bytes of \"{name}\" to {}", path.display());
    Ok(())
}

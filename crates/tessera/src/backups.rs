//! The backup commands of the CLI: `backup create|list|info|delete|copy` and `store list`.
//! Each makes typed calls of the client library and prints the answer (a table, or one
//! JSON document with `--output json`). `create` and `copy` wait for the manager's
//! background job by default, polling the backup's record (a bar on a terminal); a backup
//! that failed makes the command fail. Restores are in `restores.rs`.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use tessera_client::Client;
use tessera_proto::control::{BackupInfo, BackupState, StoreInfo};

use crate::Output;
use crate::access::Access;
use crate::progress::{POLL, Rate, Status, format_rate, format_secs};
use crate::size::format_size;
use crate::snapshots::{SnapSpec, parse_spec};

/// Parses a backup ID as printed by `backup create` and `backup list`: a positive integer
/// (clap reports the error as a usage error, exit code 2).
pub fn parse_backup_id(s: &str) -> std::result::Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(0) => Err("invalid backup ID \"0\": IDs start at 1".into()),
        Ok(id) => Ok(id),
        Err(_) => Err(format!(
            "invalid backup ID {s:?}: expected a number such as 7 (see `tessera backup list`)"
        )),
    }
}

#[derive(Subcommand)]
pub enum BackupCmd {
    /// Back up a ready snapshot to an object store.
    ///
    /// Only the regions changed since the volume's newest ready backup in that store whose
    /// snapshot still exists are read (else all of them); what the store holds already is
    /// not uploaded again. Prints the backup's ID, then waits until it is ready (exit 0)
    /// or failed (exit 1); Ctrl-C stops waiting, not the backup.
    Create {
        /// VOLUME@SNAPSHOT
        #[arg(value_parser = parse_spec)]
        snapshot: SnapSpec,
        /// The store (default: the manager's `default_store`).
        #[arg(long)]
        store: Option<String>,
        /// Return once the backup is started.
        #[arg(long)]
        no_wait: bool,
    },
    /// Backups, newest first, of one volume or of all (deleted volumes' included).
    List { volume: Option<String> },
    /// One backup: state, progress, counts, base and root.
    Info {
        #[arg(value_parser = parse_backup_id)]
        id: u64,
    },
    /// Forget a backup; objects no other backup references are deleted after the
    /// manager's grace period. One still uploading is cancelled. Refused (exit 5) while it
    /// is read by a restore, a copy or an upload based on it.
    Delete {
        #[arg(value_parser = parse_backup_id)]
        id: u64,
    },
    /// Copy a ready backup to another store (e.g. in another zone): only the objects it
    /// lacks, root last; resumed after an interruption. Waits like `create`.
    Copy {
        #[arg(value_parser = parse_backup_id)]
        id: u64,
        /// The store to copy to.
        #[arg(long)]
        to_store: String,
        /// Return once the copy is started.
        #[arg(long)]
        no_wait: bool,
    },
}

#[derive(Subcommand)]
pub enum StoreCmd {
    /// The object stores of manager.toml, with their backups, objects and garbage.
    List,
}

pub async fn backup(access: Access, output: Output, cmd: BackupCmd) -> Result<()> {
    let client = access.client("tessera CLI").await?;
    match cmd {
        BackupCmd::Create {
            snapshot: s,
            store,
            no_wait,
        } => {
            let info = client
                .create_backup(&s.volume, &s.snapshot, store.as_deref())
                .await?;
            started(&client, output, info, !no_wait).await?;
        }
        BackupCmd::Copy {
            id,
            to_store,
            no_wait,
        } => {
            let info = client.copy_backup(id, &to_store).await?;
            started(&client, output, info, !no_wait).await?;
        }
        BackupCmd::List { volume } => {
            let list = client.list_backups(volume.as_deref()).await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for line in backup_table(&list) {
                    println!("{line}");
                }
            }
        }
        BackupCmd::Info { id } => {
            let info = client.backup_info(id).await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                for line in backup_table(std::slice::from_ref(&info)) {
                    println!("{line}");
                }
                println!();
                for line in info_lines(&info) {
                    println!("{line}");
                }
            }
        }
        BackupCmd::Delete { id } => {
            client.delete_backup(id).await?;
            if output == Output::Json {
                println!("{}", serde_json::json!({ "deleted": id }));
            } else {
                println!(
                    "deleted backup {id}; objects no other backup references are deleted \
                     after the grace period"
                );
            }
        }
    }
    Ok(())
}

pub async fn store(access: Access, output: Output, cmd: StoreCmd) -> Result<()> {
    let client = access.client("tessera CLI").await?;
    match cmd {
        StoreCmd::List => {
            let stores = client.list_stores().await?;
            if output == Output::Json {
                println!("{}", serde_json::to_string_pretty(&stores)?);
            } else {
                for line in store_table(&stores) {
                    println!("{line}");
                }
            }
        }
    }
    Ok(())
}

/// After `create` or `copy`: the headline (its ID first), then, with `wait`, the progress
/// until the backup is ready or failed; the final record with `--output json`.
async fn started(client: &Client, output: Output, info: BackupInfo, wait: bool) -> Result<()> {
    if output == Output::Table {
        println!("{}", headline(&info));
    }
    let info = if wait {
        wait_for(client, output, info).await?
    } else {
        info
    };
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else if info.state == BackupState::Ready {
        println!("{}", summary(&info));
    }
    if info.state == BackupState::Failed {
        bail!(
            "backup {} failed: {}",
            info.id,
            info.error.as_deref().unwrap_or("no reason given")
        );
    }
    Ok(())
}

/// Polls backup `info.id` until it is no longer uploading.
async fn wait_for(client: &Client, output: Output, mut info: BackupInfo) -> Result<BackupInfo> {
    let mut status = Status::new(output == Output::Json);
    let mut rate = Rate::new(info.read_bytes);
    while info.state == BackupState::Uploading {
        let line = progress_line(&info, rate.per_sec(info.read_bytes));
        status.show(info.chunks_done, info.chunks_total, &line);
        tokio::time::sleep(POLL).await;
        let next = client.backup_info(info.id).await;
        if next.is_err() {
            status.finish();
        }
        info = next.with_context(|| {
            format!(
                "waiting for backup {0} (it goes on in the background: `tessera backup info {0}`)",
                info.id
            )
        })?;
    }
    status.finish();
    Ok(info)
}

fn state(s: BackupState) -> &'static str {
    match s {
        BackupState::Uploading => "uploading",
        BackupState::Ready => "ready",
        BackupState::Failed => "failed",
    }
}

/// What `create` and `copy` print first: `backup 7 of db1@monday to store local: uploading`.
pub fn headline(b: &BackupInfo) -> String {
    let mut of = String::new();
    if let Some(c) = b.copied_from {
        of.push_str(&format!(" (copy of backup {c})"));
    } else if let Some(base) = b.base {
        of.push_str(&format!(" (incremental to backup {base})"));
    }
    format!(
        "backup {} of {}@{} to store {}{of}: {}",
        b.id,
        b.volume,
        b.snapshot,
        b.store,
        state(b.state)
    )
}

/// The status line while waiting (after the bar on a terminal): chunks, bytes read and
/// uploaded, the pace of reading (what the manager paces), and the error it retries after.
pub fn progress_line(b: &BackupInfo, read_per_sec: Option<f64>) -> String {
    let mut line = format!(
        "backup {}: {}/{} chunks, read {}, uploaded {}",
        b.id,
        b.chunks_done,
        b.chunks_total,
        format_size(b.read_bytes),
        format_size(b.uploaded_bytes)
    );
    if let Some(r) = read_per_sec {
        line.push_str(&format!(", {} read", format_rate(r)));
    }
    if let Some(e) = &b.error {
        let e: String = e.chars().take(80).collect();
        line.push_str(&format!("; retrying after: {e}"));
    }
    line
}

/// What a ready backup's command ends with.
pub fn summary(b: &BackupInfo) -> String {
    let took = b
        .finished_unix
        .map(|f| format!(" in {}", format_secs(f.saturating_sub(b.created_unix))))
        .unwrap_or_default();
    format!(
        "backup {} ready: read {}, uploaded {} ({} objects put, {} already stored), {} chunks{took}",
        b.id,
        format_size(b.read_bytes),
        format_size(b.uploaded_bytes),
        b.uploaded_objects,
        b.present_objects,
        b.chunks_total
    )
}

/// `backup list` (and the first lines of `backup info`): a header and one row per backup.
pub fn backup_table(list: &[BackupInfo]) -> Vec<String> {
    let row = |cells: [&str; 8]| {
        format!(
            "{:>6} {:<32} {:<12} {:<9} {:>10} {:>10} {:>12}  {}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
        )
    };
    let mut lines = vec![row([
        "ID",
        "VOLUME@SNAPSHOT",
        "STORE",
        "STATE",
        "SIZE",
        "UPLOADED",
        "CREATED",
        "BASE",
    ])];
    for b in list {
        let base = match (b.base, b.copied_from) {
            (None, None) => "-".to_string(),
            (Some(base), None) => base.to_string(),
            (None, Some(c)) => format!("copy of {c}"),
            (Some(base), Some(c)) => format!("{base} (copy of {c})"),
        };
        lines.push(row([
            &b.id.to_string(),
            &format!("{}@{}", b.volume, b.snapshot),
            &b.store,
            state(b.state),
            &format_size(b.size),
            &format_size(b.uploaded_bytes),
            &b.created_unix.to_string(),
            &base,
        ]));
    }
    lines
}

/// `backup info` below the table: where, how far, what it read and put, and why it failed.
pub fn info_lines(b: &BackupInfo) -> Vec<String> {
    let mut lines = vec![
        format!(
            "backup {} of {}@{} in store {} (zone {}): {}",
            b.id,
            b.volume,
            b.snapshot,
            b.store,
            if b.zone.is_empty() { "-" } else { &b.zone },
            state(b.state)
        ),
        format!(
            "size {}, chunk size {}; {}/{} chunks recorded",
            format_size(b.size),
            format_size(b.chunk_size),
            b.chunks_done,
            b.chunks_total
        ),
    ];
    lines.push(match (b.copied_from, b.base) {
        (Some(c), _) => format!("copy of backup {c}"),
        (None, Some(base)) => format!("incremental to backup {base}: only changed regions read"),
        (None, None) => "full backup: every region read".to_string(),
    });
    lines.push(format!(
        "read {}; uploaded {}: {} objects put, {} already stored; {} objects referenced",
        format_size(b.read_bytes),
        format_size(b.uploaded_bytes),
        b.uploaded_objects,
        b.present_objects,
        b.objects
    ));
    lines.push(match b.finished_unix {
        Some(f) => format!("created {}, finished {f} (unix seconds)", b.created_unix),
        None => format!("created {} (unix seconds)", b.created_unix),
    });
    if let Some(root) = &b.root {
        lines.push(format!("root {root}"));
    }
    if let Some(e) = &b.error {
        lines.push(match b.state {
            BackupState::Failed => format!("failed: {e}"),
            _ => format!("retrying after: {e}"),
        });
    }
    lines
}

/// `store list`: a header and one row per store.
pub fn store_table(stores: &[StoreInfo]) -> Vec<String> {
    let row = |cells: [&str; 8]| {
        format!(
            "{:<16} {:<10} {:<4} {:<40} {:<7} {:>8} {:>10} {:>8}",
            cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7]
        )
    };
    let mut lines = vec![row([
        "NAME", "ZONE", "KIND", "LOCATION", "DEFAULT", "BACKUPS", "OBJECTS", "GARBAGE",
    ])];
    for s in stores {
        lines.push(row([
            &s.name,
            if s.zone.is_empty() { "-" } else { &s.zone },
            &s.kind,
            &s.location,
            if s.default { "yes" } else { "no" },
            &s.backups.to_string(),
            &s.objects.to_string(),
            &s.garbage.to_string(),
        ]));
    }
    lines
}

#[cfg(test)]
pub(crate) mod tests;

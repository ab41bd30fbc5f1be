//! The snapshot and clone commands of the CLI: `snapshot create|list|info|delete VOL@SNAP`,
//! `volume rollback|clone|flatten`, and what `volume info` says of a volume's snapshots
//! and parent. Each makes one typed call of the client library and prints the answer (a
//! table, or JSON with `--output json`); errors keep their class for the exit code.

use anyhow::Result;
use clap::Subcommand;
use tessera_client::{Client, Error, split_snapshot_name};
use tessera_proto::control::{SnapshotInfo, SnapshotState, VolumeInfo};

use crate::Output;
use crate::access::Access;
use crate::size::format_size;
use crate::usage::{self, UsageAnswer};

/// A snapshot named on the command line as `VOL@SNAP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapSpec {
    pub volume: String,
    pub snapshot: String,
}

impl std::fmt::Display for SnapSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.volume, self.snapshot)
    }
}

/// Parses `VOL@SNAP` strictly: exactly one `@`, a name on each side (clap reports the
/// error as a usage error, exit code 2).
pub fn parse_spec(s: &str) -> std::result::Result<SnapSpec, String> {
    match split_snapshot_name(s) {
        Ok((volume, snapshot)) => Ok(SnapSpec {
            volume: volume.into(),
            snapshot: snapshot.into(),
        }),
        Err(Error::Invalid(m)) => Err(m),
        Err(e) => Err(e.to_string()),
    }
}

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Take a snapshot of a volume now.
    ///
    /// It holds every write acknowledged before the command and none sent after it
    /// returns; an attached writer is not paused. Taking one left unfinished (the command
    /// was interrupted) again finishes it.
    Create {
        /// VOLUME@SNAPSHOT
        #[arg(value_parser = parse_spec)]
        snapshot: SnapSpec,
    },
    /// The snapshots of one volume, or of every volume.
    List { volume: Option<String> },
    /// One snapshot: sequence, state, size and clones.
    Info {
        /// VOLUME@SNAPSHOT
        #[arg(value_parser = parse_spec)]
        snapshot: SnapSpec,
    },
    /// Delete a snapshot (refused while volumes are cloned from it).
    Delete {
        /// VOLUME@SNAPSHOT
        #[arg(value_parser = parse_spec)]
        snapshot: SnapSpec,
    },
}

pub async fn snapshot(access: Access, output: Output, cmd: SnapshotCmd) -> Result<()> {
    let client = access.client("tessera CLI").await?;
    match cmd {
        SnapshotCmd::Create { snapshot: s } => {
            let info = client.create_snapshot(&s.volume, &s.snapshot).await?;
            print_snapshots(output, &[info])?;
        }
        SnapshotCmd::List { volume } => {
            let snaps = client.list_snapshots(volume.as_deref()).await?;
            print_snapshots(output, &snaps)?;
        }
        SnapshotCmd::Info { snapshot: s } => {
            let info = client.snapshot_info(&s.volume, &s.snapshot).await?;
            let usage: UsageAnswer = client
                .volume_usage(&s.volume)
                .await
                .map_err(|e| e.to_string());
            print_snapshot_info(output, info, &usage)?;
        }
        SnapshotCmd::Delete { snapshot: s } => {
            client.delete_snapshot(&s.volume, &s.snapshot).await?;
            if output == Output::Json {
                println!("{}", serde_json::json!({ "deleted": s.to_string() }));
            } else {
                println!("deleted snapshot \"{s}\"");
            }
        }
    }
    Ok(())
}

/// `volume rollback VOL@SNAP`.
pub async fn rollback(client: &Client, output: Output, s: &SnapSpec) -> Result<()> {
    let v = client.rollback_volume(&s.volume, &s.snapshot).await?;
    print_volume(
        output,
        &v,
        &format!("volume \"{}\" rolled back to \"{s}\"", s.volume),
    )
}

/// `volume clone VOL@SNAP NEW`.
pub async fn clone(client: &Client, output: Output, s: &SnapSpec, name: &str) -> Result<()> {
    let v = client.clone_volume(&s.volume, &s.snapshot, name).await?;
    print_volume(
        output,
        &v,
        &format!("volume \"{name}\" cloned from \"{s}\""),
    )
}

/// `volume flatten NAME`.
pub async fn flatten(client: &Client, output: Output, name: &str) -> Result<()> {
    let v = client.flatten_volume(name).await?;
    print_volume(
        output,
        &v,
        &format!("flattening volume \"{name}\" in the background (see `volume info`)"),
    )
}

fn print_volume(output: Output, v: &VolumeInfo, done: &str) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        println!("{done}");
        print_lineage(v, None);
    }
    Ok(())
}

fn state(s: SnapshotState) -> &'static str {
    match s {
        SnapshotState::Creating => "creating",
        SnapshotState::Ready => "ready",
    }
}

fn print_snapshots(output: Output, snaps: &[SnapshotInfo]) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(snaps)?);
        return Ok(());
    }
    println!(
        "{:<40} {:>6} {:<8} {:>12} {:>12}  CLONES",
        "SNAPSHOT", "SEQ", "STATE", "SIZE", "CREATED"
    );
    for s in snaps {
        let clones = if s.clones.is_empty() {
            "-".to_string()
        } else {
            s.clones.join(",")
        };
        println!(
            "{:<40} {:>6} {:<8} {:>12} {:>12}  {clones}",
            format!("{}@{}", s.volume, s.name),
            s.seq,
            state(s.state),
            format_size(s.size),
            s.created_unix,
        );
    }
    Ok(())
}

/// `snapshot info`: the snapshot's line of `snapshot list`, then the bytes it holds (JSON:
/// its object gains `"bytes"`, `null` when unknown).
fn print_snapshot_info(output: Output, info: SnapshotInfo, usage: &UsageAnswer) -> Result<()> {
    let bytes = usage::bytes_of(usage, &info.name);
    if output == Output::Json {
        let mut json = serde_json::to_value(&info)?;
        if let serde_json::Value::Object(map) = &mut json {
            map.insert("bytes".into(), bytes.into());
        }
        println!("{}", serde_json::to_string_pretty(&[json])?);
        return Ok(());
    }
    print_snapshots(output, &[info])?;
    match (bytes, usage) {
        (Some(b), _) => println!(
            "
holds {} (written while it was the newest)",
            format_size(b)
        ),
        (None, Err(why)) => println!(
            "
usage: unavailable ({why})"
        ),
        (None, Ok(_)) => println!(
            "
usage: unknown (the manager did not count it)"
        ),
    }
    Ok(())
}

/// What `volume info` adds about snapshots: the sequence, the snapshots (name, sequence,
/// when taken, bytes held, clones), the parent of a clone with its flatten's progress, and
/// the space lines (`usage`: `None` when not asked, as after a rollback or a clone).
pub fn print_lineage(v: &VolumeInfo, usage: Option<&UsageAnswer>) {
    println!("\nsnapshot sequence {}", v.seq.max(1));
    if let Some(p) = &v.parent {
        let progress = if p.flattening {
            format!("flattening, {} chunk(s) left", p.linked_chunks)
        } else {
            format!("{} chunk(s) read through to it", p.linked_chunks)
        };
        println!(
            "clone of \"{}@{}\" (sequence {}): {progress}",
            p.volume, p.snapshot, p.seq
        );
    }
    if v.snapshots.is_empty() {
        println!("no snapshots");
    } else {
        println!(
            "{:<24} {:>6} {:<8} {:>12} {:>10}  CLONES",
            "SNAPSHOT", "SEQ", "STATE", "CREATED", "BYTES"
        );
    }
    for s in &v.snapshots {
        let clones = if s.clones.is_empty() {
            "-".to_string()
        } else {
            s.clones.join(",")
        };
        println!(
            "{:<24} {:>6} {:<8} {:>12} {:>10}  {clones}",
            s.name,
            s.seq,
            state(s.state),
            s.created_unix,
            usage::snapshot_bytes(usage, s.seq),
        );
    }
    for line in usage::space_lines(v, usage) {
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_specs_are_parsed_strictly() {
        assert_eq!(
            parse_spec("db1@monday"),
            Ok(SnapSpec {
                volume: "db1".into(),
                snapshot: "monday".into()
            })
        );
        for bad in ["db1", "db1@", "@monday", "a@b@c", ""] {
            let e = parse_spec(bad).unwrap_err();
            assert!(e.contains("is not VOLUME@SNAPSHOT"), "{bad}: {e}");
        }
    }
}

//! What `volume info` and `snapshot info` say of space: the bytes each snapshot holds, those
//! written since the newest, and the progress of reclaiming deleted snapshots' space. The
//! usage is asked of the manager (which asks the storage nodes); when it cannot be had the
//! command still succeeds and says why.

use serde_json::Value;
use tessera_proto::control::{VolumeInfo, VolumeUsage};

use crate::size::format_size;

/// A volume's usage as the manager answered, or why it could not be had.
pub type UsageAnswer = Result<VolumeUsage, String>;

/// The BYTES cell of snapshot `seq` in `volume info`'s table: `-` when unknown.
pub fn snapshot_bytes(usage: Option<&UsageAnswer>, seq: u64) -> String {
    match usage {
        Some(Ok(u)) => u
            .snapshots
            .iter()
            .find(|s| s.seq == seq)
            .map_or_else(|| "-".to_string(), |s| format_size(s.bytes)),
        _ => "-".to_string(),
    }
}

/// The lines under the snapshot table: the live image's bytes (or why usage is unknown),
/// the groups that did not answer, and the reclaim's progress while one runs.
pub fn space_lines(v: &VolumeInfo, usage: Option<&UsageAnswer>) -> Vec<String> {
    let mut lines = Vec::new();
    match usage {
        None => {}
        Some(Ok(u)) => {
            let since = if v.snapshots.is_empty() {
                "written (no snapshots)"
            } else {
                "written since the newest snapshot"
            };
            lines.push(format!("live: {} {since}", format_size(u.live_bytes)));
            if !u.unreported_groups.is_empty() {
                let groups: Vec<String> = u.unreported_groups.iter().map(u64::to_string).collect();
                lines.push(format!(
                    "usage incomplete: no replica of group(s) {} answered",
                    groups.join(",")
                ));
            }
        }
        Some(Err(why)) => lines.push(format!("usage: unavailable ({why})")),
    }
    // `next_chunk` is an index (a sparse volume's may pass its count of mapped chunks),
    // so it is shown as one, beside the count, never as "X of Y".
    if let Some(next) = v.reclaims.iter().map(|r| r.next_chunk).min() {
        lines.push(format!(
            "reclaiming space of deleted snapshots: next chunk index {next} ({} chunks mapped)",
            v.mapped_chunks
        ));
    }
    lines
}

/// A volume's JSON with its usage under `"usage"` (`null` when it could not be had, with
/// why under `"usage_error"`); every other key as [`VolumeInfo`] has it.
pub fn volume_json(v: &VolumeInfo, usage: &UsageAnswer) -> serde_json::Result<Value> {
    let mut json = serde_json::to_value(v)?;
    if let Value::Object(map) = &mut json {
        match usage {
            Ok(u) => {
                map.insert("usage".into(), serde_json::to_value(u)?);
            }
            Err(why) => {
                map.insert("usage".into(), Value::Null);
                map.insert("usage_error".into(), Value::String(why.clone()));
            }
        }
    }
    Ok(json)
}

/// The bytes of snapshot `name` in `usage` (`None`: unknown).
pub fn bytes_of(usage: &UsageAnswer, name: &str) -> Option<u64> {
    usage
        .as_ref()
        .ok()?
        .snapshots
        .iter()
        .find(|s| s.name == name)
        .map(|s| s.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::control::{
        ReclaimInfo, SnapshotInfo, SnapshotState, SnapshotUsage, VolumeUsage,
    };

    fn volume() -> VolumeInfo {
        let snap = |name: &str, seq| SnapshotInfo {
            volume: "db1".into(),
            volume_id: 1,
            name: name.into(),
            seq,
            created_unix: 0,
            state: SnapshotState::Ready,
            clones: Vec::new(),
            size: 1 << 30,
        };
        VolumeInfo {
            id: 1,
            name: "db1".into(),
            size: 1 << 30,
            chunk_size: 64 << 20,
            mapped_chunks: 16,
            created_unix: 0,
            attachment: None,
            seq: 4,
            parent: None,
            snapshots: vec![snap("monday", 1), snap("tuesday", 3)],
            reclaims: Vec::new(),
            restore: None,
        }
    }

    fn usage() -> VolumeUsage {
        VolumeUsage {
            volume: "db1".into(),
            snapshots: vec![
                SnapshotUsage {
                    name: "monday".into(),
                    seq: 1,
                    bytes: 512 << 20,
                },
                SnapshotUsage {
                    name: "tuesday".into(),
                    seq: 3,
                    bytes: 3 << 19,
                },
            ],
            live_bytes: 4 << 20,
            unreported_groups: Vec::new(),
        }
    }

    /// Each snapshot's bytes and the live bytes in human units; a failed usage query is
    /// said, not fatal; the reclaim's progress is the least advanced one's chunk.
    #[test]
    fn volume_info_shows_bytes_and_the_reclaims_progress() {
        let mut v = volume();
        let u: UsageAnswer = Ok(usage());
        assert_eq!(snapshot_bytes(Some(&u), 1), "512 MiB");
        assert_eq!(snapshot_bytes(Some(&u), 3), "1.5 MiB");
        assert_eq!(snapshot_bytes(Some(&u), 2), "-");
        assert_eq!(snapshot_bytes(None, 1), "-");
        assert_eq!(
            space_lines(&v, Some(&u)),
            ["live: 4 MiB written since the newest snapshot"]
        );
        assert_eq!(space_lines(&v, None), Vec::<String>::new());
        v.reclaims = vec![
            ReclaimInfo {
                low: 2,
                next_chunk: 9,
            },
            ReclaimInfo {
                low: 4,
                next_chunk: 5,
            },
        ];
        let down: UsageAnswer = Err("no manager leader".into());
        assert_eq!(snapshot_bytes(Some(&down), 1), "-");
        assert_eq!(
            space_lines(&v, Some(&down)),
            [
                "usage: unavailable (no manager leader)",
                "reclaiming space of deleted snapshots: next chunk index 5 (16 chunks mapped)"
            ]
        );
        // A sparse volume: the index passes the count, and is shown as it is.
        v.reclaims[1].next_chunk = 40;
        assert_eq!(
            space_lines(&v, None),
            ["reclaiming space of deleted snapshots: next chunk index 9 (16 chunks mapped)"]
        );
        v.reclaims.truncate(1);
        v.reclaims[0].next_chunk = 40;
        assert_eq!(
            space_lines(&v, None),
            ["reclaiming space of deleted snapshots: next chunk index 40 (16 chunks mapped)"]
        );
        let mut partial = usage();
        partial.unreported_groups = vec![3, 8];
        v.snapshots.clear();
        v.reclaims.clear();
        assert_eq!(
            space_lines(&v, Some(&Ok(partial))),
            [
                "live: 4 MiB written (no snapshots)",
                "usage incomplete: no replica of group(s) 3,8 answered"
            ]
        );
    }

    /// The JSON keeps every key of the volume (it still reads back as a `VolumeInfo`) and
    /// adds `usage`, `null` when unknown with why in `usage_error`.
    #[test]
    fn volume_json_adds_usage_and_keeps_the_rest() {
        let v = volume();
        let json = volume_json(&v, &Ok(usage())).unwrap();
        assert_eq!(json["usage"]["live_bytes"], 4 << 20);
        assert_eq!(json["usage"]["snapshots"][1]["name"], "tuesday");
        let back: VolumeInfo = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, v);
        assert!(json.get("usage_error").is_none());
        let json = volume_json(&v, &Err("down".into())).unwrap();
        assert!(json["usage"].is_null());
        assert_eq!(json["usage_error"], "down");
        assert_eq!(json["name"], "db1");
        assert_eq!(bytes_of(&Ok(usage()), "tuesday"), Some(3 << 19));
        assert_eq!(bytes_of(&Ok(usage()), "nope"), None);
        assert_eq!(bytes_of(&Err("down".into()), "tuesday"), None);
    }
}

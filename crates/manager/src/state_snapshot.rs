//! Snapshots of the managers' state (not volume snapshots), for a manager the compacted Raft
//! log no longer reaches: the state tables as of an applied index, with the members'
//! addresses, in a versioned and checksummed blob carried by raft-rs `MsgSnapshot`.
//!
//! Owns the blob's format, taking a snapshot (one read transaction: a consistent cut at the
//! applied index it holds), installing one (one write transaction: state rows, applied index,
//! conf state, addresses, empty log), and the raft-rs [`Storage`] of the managers' group,
//! which hands out the latest snapshot taken. Nothing is taken until a peer needs one:
//! compaction itself only deletes log entries, since the state tables already hold their
//! effect. A blob comes from the network: [`decode`] checks everything and never panics.
//!
//! Blob: `TSMGRSNP`, version `u32`, CRC32C `u32` of the body, body length `u64`, then the
//! body: the length `u64` of a JSON [`Records`], the JSON, and the chunk map as
//! `(volume, chunk, group)` triples of little-endian `u64`s. All integers little-endian.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use raft::eraftpb::{Entry, Snapshot, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use redb::Database;
use serde::{Deserialize, Serialize};

use crate::db::{self, DbError, Image};
use crate::error::Error;
use crate::raft_log;
use crate::state::{BackupImage, CrlRecord, GroupRecord, NextIds, NodeRecord, VolumeRecord};

const MAGIC: &[u8; 8] = b"TSMGRSNP";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 4 + 8;
const CHUNK_ROW: usize = 24;

/// What a snapshot holds, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub image: Image,
    pub managers: BTreeMap<u64, String>,
}

/// The blob's JSON part: every row but the chunk map.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Records {
    applied_index: u64,
    nodes: Vec<NodeRecord>,
    groups: Vec<GroupRecord>,
    volumes: Vec<VolumeRecord>,
    next: NextIds,
    managers: BTreeMap<u64, String>,
    /// Backups and the stores' reference counts (absent from managers before backups).
    #[serde(default, skip_serializing_if = "BackupImage::is_empty")]
    backups: BackupImage,
    /// The revocation lists in force (absent when none were published).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crl: Option<CrlRecord>,
}

pub fn encode(p: &Payload) -> Vec<u8> {
    let records = Records {
        applied_index: p.image.applied_index,
        nodes: p.image.nodes.clone(),
        groups: p.image.groups.clone(),
        volumes: p.image.volumes.clone(),
        next: p.image.next,
        managers: p.managers.clone(),
        backups: p.image.backups.clone(),
        crl: p.image.crl.clone(),
    };
    // Plain records of strings and integers always serialize.
    let json = serde_json::to_vec(&records).unwrap_or_default();
    let mut body = Vec::with_capacity(8 + json.len() + p.image.chunks.len() * CHUNK_ROW);
    body.extend_from_slice(&(json.len() as u64).to_le_bytes());
    body.extend_from_slice(&json);
    for (v, c, g) in &p.image.chunks {
        body.extend_from_slice(&v.to_le_bytes());
        body.extend_from_slice(&c.to_le_bytes());
        body.extend_from_slice(&g.to_le_bytes());
    }
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&body);
    out
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// Decodes an untrusted blob; checks magic, version, length, checksum, and that the rows
/// make a consistent state.
pub fn decode(data: &[u8]) -> Result<Payload, String> {
    if data.len() < HEADER {
        return Err(format!(
            "snapshot of {} bytes: shorter than its header",
            data.len()
        ));
    }
    if &data[..8] != MAGIC {
        return Err("snapshot: bad magic".into());
    }
    let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    if version != VERSION {
        return Err(format!(
            "snapshot format {version} is not supported (this manager reads {VERSION})"
        ));
    }
    let crc = u32::from_le_bytes([data[12], data[13], data[14], data[15]]);
    let body = &data[HEADER..];
    if le_u64(&data[16..24]) != body.len() as u64 {
        return Err(format!(
            "snapshot body of {} bytes, header says {}",
            body.len(),
            le_u64(&data[16..24])
        ));
    }
    if crc32c::crc32c(body) != crc {
        return Err("snapshot: checksum mismatch".into());
    }
    if body.len() < 8 {
        return Err("snapshot: truncated body".into());
    }
    let json_len = usize::try_from(le_u64(body)).map_err(|_| "snapshot: bad length")?;
    let rest = &body[8..];
    if json_len > rest.len() {
        return Err(format!(
            "snapshot: records of {json_len} bytes, {} left",
            rest.len()
        ));
    }
    let (json, chunk_rows) = rest.split_at(json_len);
    let r: Records = serde_json::from_slice(json).map_err(|e| format!("snapshot records: {e}"))?;
    if chunk_rows.len() % CHUNK_ROW != 0 {
        return Err(format!(
            "snapshot chunk map of {} bytes is not whole rows",
            chunk_rows.len()
        ));
    }
    let chunks = chunk_rows
        .chunks_exact(CHUNK_ROW)
        .map(|row| (le_u64(row), le_u64(&row[8..]), le_u64(&row[16..])))
        .collect();
    let p = Payload {
        image: Image {
            applied_index: r.applied_index,
            nodes: r.nodes,
            groups: r.groups,
            volumes: r.volumes,
            chunks,
            next: r.next,
            backups: r.backups,
            crl: r.crl,
        },
        managers: r.managers,
    };
    // Rows that do not make a state are refused here, not found at the next restart.
    p.image
        .clone()
        .into_state()
        .map_err(|e| format!("snapshot state: {e}"))?;
    Ok(p)
}

/// Reads the state tables and member addresses in one read transaction.
pub fn take(db: &Database, path: &Path) -> Result<Payload, Error> {
    let read = || -> Result<Payload, DbError> {
        let tx = db.begin_read()?;
        let image = db::read_image(&tx)?;
        let managers = raft_log::managers_in(&tx)?;
        Ok(Payload { image, managers })
    };
    read().map_err(db::db_err(path))
}

/// Replaces the state with the snapshot's, at `meta`'s index, and empties the Raft log,
/// in one transaction: a crash leaves either the old state and log or the new ones.
pub fn install(
    db: &Database,
    path: &Path,
    payload: &Payload,
    meta: &SnapshotMetadata,
) -> Result<(), Error> {
    let conf_state = raft_log::encode_conf(meta.get_conf_state())?;
    let write = || -> Result<(), DbError> {
        let tx = db.begin_write()?;
        let image = Image {
            applied_index: meta.index,
            ..payload.image.clone()
        };
        db::write_image(&tx, &image)?;
        raft_log::reset_in(&tx, meta.index, meta.term, &conf_state, &payload.managers)?;
        tx.commit()?;
        Ok(())
    };
    write().map_err(db::db_err(path))
}

/// The latest snapshot taken, and whether a peer asked for one since.
#[derive(Default)]
struct Cache {
    latest: Option<Snapshot>,
    wanted: bool,
}

/// The raft-rs storage of the managers' group: the log in memory (mirroring `raft_log`),
/// and snapshots taken on demand.
#[derive(Clone)]
pub struct LogStorage {
    pub mem: MemStorage,
    cache: Arc<Mutex<Cache>>,
}

impl LogStorage {
    pub fn new(mem: MemStorage) -> LogStorage {
        LogStorage {
            mem,
            cache: Arc::default(),
        }
    }

    /// Whether a peer asked for a snapshot that is not there; clears the request.
    pub fn take_wanted(&self) -> bool {
        self.cache
            .lock()
            .map(|mut c| std::mem::take(&mut c.wanted))
            .unwrap_or(false)
    }

    /// Makes `snap` the one handed to peers from now on.
    pub fn offer(&self, snap: Snapshot) {
        if let Ok(mut c) = self.cache.lock() {
            c.latest = Some(snap);
        }
    }

    /// Drops the log before `index` in memory while keeping `index`'s term known (raft-rs
    /// asks for it to match the entries after it).
    pub fn compact(&self, index: u64, term: u64) -> raft::Result<()> {
        // Only the Raft task writes the storage: reading before locking races with nothing.
        let RaftState {
            hard_state,
            conf_state,
        } = self.mem.initial_state()?;
        let last = self.mem.last_index()?;
        let kept = if index < last {
            self.mem
                .entries(index + 1, last + 1, None, GetEntriesContext::empty(false))?
        } else {
            Vec::new()
        };
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().set_conf_state(conf_state);
        let mut w = self.mem.wl();
        w.apply_snapshot(snap)?;
        w.append(&kept)?;
        w.set_hardstate(hard_state);
        Ok(())
    }
}

impl Storage for LogStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    /// The latest snapshot taken if it serves `to` (it is a member in it, and the log goes
    /// on from it); otherwise asks the Raft task for a new one and lets raft-rs retry.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let first = self.mem.first_index()?;
        let Ok(mut c) = self.cache.lock() else {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        };
        if let Some(s) = &c.latest {
            let m = s.get_metadata();
            let cs = m.get_conf_state();
            let member = cs.voters.contains(&to) || cs.learners.contains(&to);
            if m.index >= request_index && m.index + 1 >= first && member {
                return Ok(s.clone());
            }
        }
        c.wanted = true;
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::NodeRecord;

    fn payload() -> Payload {
        Payload {
            image: Image {
                applied_index: 42,
                nodes: vec![NodeRecord {
                    id: 1,
                    zone: "z".into(),
                    rack: "r1".into(),
                    addr: "a:1".into(),
                    capacity_bytes: 1 << 40,
                    used_bytes: 0,
                    draining: false,
                    disk: 0,
                }],
                groups: vec![GroupRecord {
                    id: 1,
                    members: vec![1],
                    ..GroupRecord::default()
                }],
                volumes: vec![VolumeRecord::new(3, "db", 1 << 30, 1 << 26, 7)],
                chunks: vec![(3, 0, 1), (3, 9, 1)],
                next: NextIds {
                    node: 2,
                    group: 2,
                    volume: 4,
                    backup: 1,
                },
                backups: Default::default(),
                crl: Some(CrlRecord {
                    version: 2,
                    pem: "-----BEGIN X509 CRL-----".into(),
                    lists: vec![("30".into(), 3)],
                }),
            },
            managers: [(1, "m1:7400".to_string())].into(),
        }
    }

    #[test]
    fn a_snapshot_round_trips() {
        let p = payload();
        assert_eq!(decode(&encode(&p)).unwrap(), p);
    }

    /// Volume rows with snapshots, reclaims and a parent link travel in a snapshot blob; a
    /// row from before them (no `seq`, `snapshots`, `parent`) still decodes, as sequence 1.
    #[test]
    fn snapshot_and_clone_fields_travel_and_old_rows_still_load() {
        use crate::state::{ParentLink, SnapshotRecord};
        use tessera_proto::control::SnapshotState;
        let mut p = payload();
        let mut v = p.image.volumes[0].clone();
        v.snap_seq = 5;
        v.snapshots = vec![SnapshotRecord {
            name: "mon".into(),
            seq: 4,
            created_unix: 9,
            state: SnapshotState::Ready,
            size: 1 << 30,
        }];
        let mut c = VolumeRecord::new(4, "c", 1 << 30, 1 << 26, 10);
        c.parent = Some(ParentLink {
            volume_id: 3,
            snapshot: "mon".into(),
            seq: 4,
            linked: vec![9],
            linking: false,
            flattening: true,
        });
        v.reclaims = vec![crate::state::Reclaim {
            low: 2,
            next_chunk: 7,
        }];
        p.image.volumes = vec![v, c];
        p.image.chunks.push((4, 9, 1));
        p.image.next.volume = 5;
        assert_eq!(decode(&encode(&p)).unwrap(), p);
        // The JSON part as a manager from before snapshots wrote it.
        let old = br#"{"applied_index":1,"nodes":[],"groups":[],"volumes":[{"id":3,"name":"db","size":4096,"chunk_size":1048576,"created_unix":7}],"next":{"node":1,"group":1,"volume":4},"managers":{}}"#;
        let records: Records = serde_json::from_slice(old).unwrap();
        assert_eq!(records.volumes[0].seq(), 1);
        assert!(records.volumes[0].snapshots.is_empty());
        assert!(records.volumes[0].reclaims.is_empty());
    }

    #[test]
    fn a_malformed_snapshot_is_an_error_never_a_panic() {
        let good = encode(&payload());
        // Every truncation, and every single flipped bit, is refused.
        for len in 0..good.len() {
            assert!(decode(&good[..len]).is_err(), "truncated to {len}");
        }
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                assert!(decode(&bad).is_err(), "bit {bit} of byte {i} flipped");
            }
        }
        // A well-formed blob whose rows contradict each other (a group on an unknown node).
        let mut p = payload();
        p.image.groups[0].members = vec![9];
        let err = decode(&encode(&p)).unwrap_err();
        assert!(err.contains("unknown member node"), "{err}");
        // A newer format is named as such.
        let mut newer = good.clone();
        newer[8] = 2;
        assert!(decode(&newer).unwrap_err().contains("format 2"));
        assert!(decode(&[0xff; 100]).is_err());
    }

    /// The cost of a snapshot of N volumes (each with 16 mapped chunks): run with
    /// `SNAPSHOT_VOLUMES=100000 cargo test -p tessera-manager --release --lib snapshot_cost
    /// -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn snapshot_cost() {
        let n: u64 = std::env::var("SNAPSHOT_VOLUMES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(10_000);
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = crate::db::Db::open(dir.path()).unwrap();
        let db = store.database();
        let mut p = payload();
        p.image.volumes = (1..=n)
            .map(|id| VolumeRecord {
                epoch: 3,
                ..VolumeRecord::new(
                    id,
                    &format!("volume-{id:08}"),
                    1 << 40,
                    1 << 26,
                    1_700_000_000,
                )
            })
            .collect();
        p.image.chunks = (1..=n)
            .flat_map(|v| (0..16).map(move |c| (v, c, 1)))
            .collect();
        p.image.next.volume = n + 1;
        let meta = SnapshotMetadata {
            index: 7,
            term: 1,
            ..Default::default()
        };
        let t = std::time::Instant::now();
        install(&db, store.path(), &p, &meta).unwrap();
        let size = |what: &str| {
            let len = std::fs::metadata(store.path()).map_or(0, |m| m.len());
            println!("database after {what}: {len} bytes");
        };
        println!("first install {:?}", t.elapsed());
        size("first install");
        let t = std::time::Instant::now();
        let taken = take(&db, store.path()).unwrap();
        let read = t.elapsed();
        let t = std::time::Instant::now();
        let blob = encode(&taken);
        let encoded = t.elapsed();
        let t = std::time::Instant::now();
        let back = decode(&blob).unwrap();
        let decoded = t.elapsed();
        let t = std::time::Instant::now();
        install(&db, store.path(), &back, &meta).unwrap();
        let installed = t.elapsed();
        size("second install");
        println!(
            "{n} volumes, {} chunks: {} bytes; read {read:?}, encode {encoded:?}, \
             decode+check {decoded:?}, install {installed:?}",
            back.image.chunks.len(),
            blob.len()
        );
    }
}

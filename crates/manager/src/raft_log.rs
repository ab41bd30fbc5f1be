//! Durability of the managers' Raft group: its log, hard state and conf state, in tables of
//! the manager's redb database (beside the state they produce, see `db`).
//!
//! Owns only these tables; never interprets an entry. Every save is one transaction
//! committed with fsync before it returns, so raft-rs's "persist before you send" rules hold
//! as soon as [`RaftLog::save`] does.
//!
//! The log is compacted ([`RaftLog::compact`]) once its entries are applied to the state
//! tables: `log_start` records the index and term of the last entry deleted, and the log
//! holds the entries after it. A manager the log no longer reaches back far enough for gets
//! a snapshot of the state tables instead (`state_snapshot`), installed together with
//! [`reset_in`] in one transaction. The members' addresses (`managers`) are kept here too:
//! membership changes carry them, so a grown group knows where its members are.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use redb::{Database, ReadableTable, TableDefinition};

use crate::db::DbError;
use crate::error::Error;

/// Log index → protobuf-encoded [`Entry`].
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// `hard_state`, `conf_state`, `log_start` (a [`SnapshotMetadata`] of index and term) →
/// protobuf encodings; `managers` → JSON map of member id to address.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

pub struct RaftLog {
    db: Arc<Database>,
    path: PathBuf,
}

/// What a restart finds on disk.
#[derive(Debug, Default)]
pub struct Loaded {
    pub hard_state: HardState,
    /// `None` on a database that never held a Raft group.
    pub conf_state: Option<ConfState>,
    /// Index and term of the last entry compacted away (or installed by a snapshot); the
    /// log resumes after it. (0, 0): never compacted.
    pub log_start: (u64, u64),
    /// Every entry kept, in index order from `log_start.0 + 1`.
    pub entries: Vec<Entry>,
    /// Address of each member, as learnt from membership changes and snapshots.
    pub managers: BTreeMap<u64, String>,
}

/// A conf state as [`reset_in`] stores it. Encoded before the transaction: an empty one
/// stored in its place would be a manager with no membership.
pub fn encode_conf(conf_state: &ConfState) -> Result<Vec<u8>, Error> {
    conf_state
        .write_to_bytes()
        .map_err(|e| Error::Task(format!("encoding a raft conf state: {e}")))
}

/// Empties the log and makes it resume after `index` (of `term`) with `conf_state` (from
/// [`encode_conf`]) and `managers`, inside the caller's transaction (a snapshot install).
pub fn reset_in(
    tx: &redb::WriteTransaction,
    index: u64,
    term: u64,
    conf_state: &[u8],
    managers: &BTreeMap<u64, String>,
) -> Result<(), DbError> {
    tx.delete_table(LOG)?;
    tx.open_table(LOG)?;
    let mut meta = tx.open_table(META)?;
    meta.insert("log_start", encode_start(index, term).as_slice())?;
    meta.insert("conf_state", conf_state)?;
    meta.insert("managers", encode_managers(managers).as_slice())?;
    Ok(())
}

/// The member addresses, read inside the caller's transaction (a snapshot being built).
pub fn managers_in(tx: &redb::ReadTransaction) -> Result<BTreeMap<u64, String>, DbError> {
    let meta = tx.open_table(META)?;
    let v = meta.get("managers")?;
    Ok(v.and_then(|v| serde_json::from_slice(v.value()).ok())
        .unwrap_or_default())
}

fn encode_start(index: u64, term: u64) -> Vec<u8> {
    let m = SnapshotMetadata {
        index,
        term,
        ..Default::default()
    };
    m.write_to_bytes().unwrap_or_default()
}

fn encode_managers(managers: &BTreeMap<u64, String>) -> Vec<u8> {
    // A map of integers to strings always serializes.
    serde_json::to_vec(managers).unwrap_or_default()
}

impl RaftLog {
    /// Creates the tables if missing and loads what they hold.
    pub fn open(db: Arc<Database>, path: &Path) -> Result<(RaftLog, Loaded), Error> {
        let log = RaftLog {
            db,
            path: path.to_path_buf(),
        };
        let loaded = log.load()?;
        Ok((log, loaded))
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> Error {
        Error::Database {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn corrupt(&self, detail: String) -> Error {
        Error::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    fn load(&self) -> Result<Loaded, Error> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        tx.open_table(LOG).map_err(|e| self.db_err(e))?;
        tx.open_table(META).map_err(|e| self.db_err(e))?;
        tx.commit().map_err(|e| self.db_err(e))?;

        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
        let mut loaded = Loaded::default();
        if let Some(v) = meta.get("hard_state").map_err(|e| self.db_err(e))? {
            loaded.hard_state = HardState::parse_from_bytes(v.value())
                .map_err(|e| self.corrupt(format!("raft hard state: {e}")))?;
        }
        if let Some(v) = meta.get("conf_state").map_err(|e| self.db_err(e))? {
            loaded.conf_state = Some(
                ConfState::parse_from_bytes(v.value())
                    .map_err(|e| self.corrupt(format!("raft conf state: {e}")))?,
            );
        }
        if let Some(v) = meta.get("log_start").map_err(|e| self.db_err(e))? {
            let m = SnapshotMetadata::parse_from_bytes(v.value())
                .map_err(|e| self.corrupt(format!("raft log start: {e}")))?;
            loaded.log_start = (m.index, m.term);
        }
        if let Some(v) = meta.get("managers").map_err(|e| self.db_err(e))? {
            loaded.managers = serde_json::from_slice(v.value())
                .map_err(|e| self.corrupt(format!("manager addresses: {e}")))?;
        }
        let table = tx.open_table(LOG).map_err(|e| self.db_err(e))?;
        for row in table.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let index = k.value();
            let e = Entry::parse_from_bytes(v.value())
                .map_err(|e| self.corrupt(format!("raft log entry {index}: {e}")))?;
            let expected = loaded.log_start.0 + loaded.entries.len() as u64 + 1;
            if e.index != index || index != expected {
                return Err(self.corrupt(format!(
                    "raft log entry at key {index} has index {} (expected {expected})",
                    e.index
                )));
            }
            loaded.entries.push(e);
        }
        Ok(loaded)
    }

    /// Appends `entries` (replacing any entries from the first one's index on, which a new
    /// leader overwrote) and stores `hard_state` and `conf_state` when given; durable on
    /// return.
    pub fn save(
        &self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
        conf_state: Option<&ConfState>,
    ) -> Result<(), Error> {
        let encode = |m: &dyn protobuf::Message| {
            m.write_to_bytes()
                .map_err(|e| Error::Task(format!("encoding a raft record: {e}")))
        };
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut log = tx.open_table(LOG).map_err(|e| self.db_err(e))?;
            if let Some(first) = entries.first() {
                // Row by row, as in `compact`.
                loop {
                    let last = log
                        .last()
                        .map_err(|e| self.db_err(e))?
                        .map(|(k, _)| k.value());
                    match last {
                        Some(k) if k >= first.index => {
                            log.remove(k).map_err(|e| self.db_err(e))?;
                        }
                        _ => break,
                    }
                }
            }
            for e in entries {
                log.insert(e.index, encode(e)?.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            let mut meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
            if let Some(hs) = hard_state {
                meta.insert("hard_state", encode(hs)?.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            if let Some(cs) = conf_state {
                meta.insert("conf_state", encode(cs)?.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Stores a membership change's outcome: the new conf state and member addresses.
    pub fn save_conf(
        &self,
        conf_state: &ConfState,
        managers: &BTreeMap<u64, String>,
    ) -> Result<(), Error> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
            let cs = conf_state
                .write_to_bytes()
                .map_err(|e| Error::Task(format!("encoding a raft record: {e}")))?;
            meta.insert("conf_state", cs.as_slice())
                .map_err(|e| self.db_err(e))?;
            meta.insert("managers", encode_managers(managers).as_slice())
                .map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(())
    }

    /// Deletes every entry up to `index` (whose term is `term`); the log resumes after it.
    /// Only for entries whose effect is in the state tables.
    pub fn compact(&self, index: u64, term: u64) -> Result<(), Error> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut log = tx.open_table(LOG).map_err(|e| self.db_err(e))?;
            loop {
                let first = log
                    .first()
                    .map_err(|e| self.db_err(e))?
                    .map(|(k, _)| k.value());
                match first {
                    Some(k) if k <= index => {
                        log.remove(k).map_err(|e| self.db_err(e))?;
                    }
                    _ => break,
                }
            }
            let mut meta = tx.open_table(META).map_err(|e| self.db_err(e))?;
            meta.insert("log_start", encode_start(index, term).as_slice())
                .map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))?;
        Ok(())
    }

    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Db;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn log_survives_reopen_and_a_new_leader_overwrites_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (db, _) = Db::open(dir.path()).unwrap();
            let (log, loaded) = RaftLog::open(db.database(), db.path()).unwrap();
            assert!(loaded.conf_state.is_none() && loaded.entries.is_empty());
            let cs = ConfState {
                voters: vec![1, 2, 3],
                ..Default::default()
            };
            let hs = HardState {
                term: 2,
                vote: 1,
                ..Default::default()
            };
            let es: Vec<Entry> = (1..=4).map(|i| entry(i, 1, b"old")).collect();
            log.save(&es, Some(&hs), Some(&cs)).unwrap();
            // A new leader's entries from index 3 replace 3 and 4.
            log.save(&[entry(3, 2, b"new")], None, None).unwrap();
        }
        let (db, _) = Db::open(dir.path()).unwrap();
        let (_, loaded) = RaftLog::open(db.database(), db.path()).unwrap();
        assert_eq!(loaded.conf_state.unwrap().voters, vec![1, 2, 3]);
        assert_eq!((loaded.hard_state.term, loaded.hard_state.vote), (2, 1));
        let got: Vec<(u64, u64, &[u8])> = loaded
            .entries
            .iter()
            .map(|e| (e.index, e.term, &e.data[..]))
            .collect();
        assert_eq!(
            got,
            vec![(1, 1, &b"old"[..]), (2, 1, b"old"), (3, 2, b"new")]
        );
    }
}

#[cfg(test)]
mod compaction_cost {
    use super::*;
    use crate::db::Db;

    /// File size after rounds of appending and compacting: run with
    /// `cargo test -p tessera-manager --lib compaction_file_size -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn compaction_file_size() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let (db, _) = Db::open(dir.path()).unwrap();
        let (log, _) = RaftLog::open(db.database(), db.path()).unwrap();
        let mut next = 1u64;
        for round in 0..40 {
            for _ in 0..20 {
                let es: Vec<Entry> = (0..100)
                    .map(|i| Entry {
                        index: next + i,
                        term: 1,
                        data: vec![7u8; 300].into(),
                        ..Default::default()
                    })
                    .collect();
                next += 100;
                log.save(&es, None, None).unwrap();
            }
            if next > 4000 {
                log.compact(next - 2001, 1).unwrap();
            }
            if round % 5 == 4 {
                let len = std::fs::metadata(db.path()).unwrap().len();
                println!("{} entries appended: {} KiB", next - 1, len >> 10);
            }
        }
    }
}

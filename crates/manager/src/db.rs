//! Durability: the manager's state in a redb database, `manager.redb` in the data directory.
//!
//! Owns the on-disk layout; knows nothing of requests or the network. A mutation is written
//! in one transaction committed with fsync ([`redb::Durability::Immediate`], redb's default)
//! before anyone is told about it. Rows hold JSON records (debuggable, and new fields are
//! easy), except the chunk map, which is plain integers because it is the bulk of the data.
//!
//! redb holds an exclusive lock on the file while it is open, so a second manager on the same
//! data directory is refused.
//!
//! The managers' Raft log shares the database (its tables are in `raft_log`): a mutation
//! applied from the log is written together with its log index (`applied_index` in `meta`),
//! in one transaction, so a restart applies nothing twice and skips nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, DatabaseError, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::state::{
    BackupDelta, BackupImage, CrlRecord, GroupRecord, Mutation, NextIds, NodeRecord, State,
    VolumeRecord, change_record, record_change_of,
};

mod backups;

const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
const GROUPS: TableDefinition<u64, &[u8]> = TableDefinition::new("groups");
const VOLUMES: TableDefinition<u64, &[u8]> = TableDefinition::new("volumes");
/// (volume id, chunk index) → group id.
const CHUNKS: TableDefinition<(u64, u64), u64> = TableDefinition::new("chunks");
/// Format version and the next-id marks.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Single records of the cluster, JSON: `crl` (the revocation lists in force).
const SETTINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("settings");

const FORMAT: u64 = 1;
const FILE_NAME: &str = "manager.redb";

pub struct Db {
    db: Arc<Database>,
    path: PathBuf,
}

/// Any redb error, boxed: redb's error enum is large and every database call can return one.
pub struct DbError(pub Box<redb::Error>);

impl<E: Into<redb::Error>> From<E> for DbError {
    fn from(e: E) -> Self {
        DbError(Box::new(e.into()))
    }
}

type DbResult<T> = Result<T, DbError>;

pub fn db_err(path: &Path) -> impl Fn(DbError) -> Error + '_ {
    move |e| Error::Database {
        path: path.to_path_buf(),
        source: e.0,
    }
}

impl Db {
    /// Opens (or creates) the database in `dir` and loads the state from it.
    pub fn open(dir: &Path) -> Result<(Db, State), Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::DataDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => Error::Locked { path: path.clone() },
            other => db_err(&path)(other.into()),
        })?;
        let store = Db {
            db: Arc::new(db),
            path,
        };
        store.init().map_err(db_err(&store.path))?;
        let state = store.load()?;
        Ok((store, state))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database, for the Raft log kept beside the state.
    pub fn database(&self) -> Arc<Database> {
        self.db.clone()
    }

    /// Index of the last Raft log entry whose mutation is in the state (0: none yet).
    pub fn applied_index(&self) -> Result<u64, Error> {
        let read = || -> DbResult<u64> {
            let tx = self.db.begin_read()?;
            let meta = tx.open_table(META)?;
            Ok(meta.get("applied_index")?.map_or(0, |v| v.value()))
        };
        read().map_err(db_err(&self.path))
    }

    /// Creates the tables and stamps the format on a new database; refuses a newer format.
    fn init(&self) -> DbResult<()> {
        let tx = self.db.begin_write()?;
        {
            tx.open_table(NODES)?;
            tx.open_table(GROUPS)?;
            tx.open_table(VOLUMES)?;
            tx.open_table(CHUNKS)?;
            tx.open_table(SETTINGS)?;
            backups::init(&tx)?;
            let mut meta = tx.open_table(META)?;
            let format = meta.get("format")?.map(|v| v.value());
            match format {
                None => {
                    meta.insert("format", FORMAT)?;
                }
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(redb::Error::Corrupted(format!(
                        "database format {other} is not supported (this manager reads format {FORMAT})"
                    ))
                    .into());
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn load(&self) -> Result<State, Error> {
        let tx = self
            .db
            .begin_read()
            .map_err(|e| db_err(&self.path)(e.into()))?;
        let image = read_image(&tx).map_err(db_err(&self.path))?;
        image.into_state().map_err(|detail| Error::Corrupt {
            path: self.path.clone(),
            detail,
        })
    }

    /// The state as the database holds it now (after a snapshot was installed under it).
    pub fn reload(&self) -> Result<State, Error> {
        self.load()
    }

    /// Records `index` as applied for a log entry that changes no state (a membership
    /// change), so that a snapshot taken afterwards covers it.
    pub fn set_applied(&self, index: u64) -> Result<(), Error> {
        let write = || -> DbResult<()> {
            let tx = self.db.begin_write()?;
            tx.open_table(META)?.insert("applied_index", index)?;
            tx.commit()?;
            Ok(())
        };
        write().map_err(db_err(&self.path))
    }

    /// Makes `m` durable, as planned against `state` (which it is not applied to yet).
    /// Returns once fsynced. Outside the Raft log: for tests of the state alone.
    #[cfg(test)]
    pub fn commit(&self, m: &Mutation, state: &State) -> Result<(), Error> {
        let next = state.next_ids().after(m);
        let delta = state.backup_delta(m);
        self.try_commit(m, next, delta.as_ref(), None)
            .map_err(db_err(&self.path))
    }

    /// Makes the mutation at `index` of the Raft log durable, recording `index` as applied
    /// in the same transaction: with the id marks `next` it leads to and, for a backup
    /// mutation, the rows the state decided for it (`State::backup_delta`).
    pub fn commit_applied(
        &self,
        m: &Mutation,
        next: NextIds,
        backup: Option<&BackupDelta>,
        index: u64,
    ) -> Result<(), Error> {
        self.try_commit(m, next, backup, Some(index))
            .map_err(db_err(&self.path))
    }

    fn try_commit(
        &self,
        m: &Mutation,
        next: NextIds,
        backup: Option<&BackupDelta>,
        applied: Option<u64>,
    ) -> DbResult<()> {
        let tx = self.db.begin_write()?;
        if let Some(d) = backup {
            backups::write_delta(&tx, d)?;
        }
        if let Some(id) = record_change_of(m) {
            update_record(&tx, VOLUMES, id, |v: &mut VolumeRecord| change_record(v, m))?;
        }
        match m {
            Mutation::CutSnapshot { .. }
            | Mutation::RollbackDone { .. }
            | Mutation::SnapshotReady { .. }
            | Mutation::DeleteSnapshot { .. }
            | Mutation::CloneLinked { .. }
            | Mutation::SetFlattening { .. }
            | Mutation::ChunkUnlinked { .. }
            | Mutation::ParentCleared { .. }
            | Mutation::ReclaimProgress { .. }
            | Mutation::ReclaimDone { .. }
            | Mutation::RestoreProgress { .. }
            | Mutation::RestoreLinked { .. }
            | Mutation::RestoreDone { .. } => {}
            // Written as their delta, above.
            Mutation::CreateBackup(_)
            | Mutation::BackupChunks { .. }
            | Mutation::BackupReady { .. }
            | Mutation::BackupFailed { .. }
            | Mutation::BackupError { .. }
            | Mutation::DeleteBackup { .. }
            | Mutation::SegmentsReleased { .. }
            | Mutation::GcClaim { .. }
            | Mutation::GcDeleted { .. } => {}
            Mutation::CloneVolume { volume, chunks }
            | Mutation::RestoreVolume { volume, chunks } => {
                tx.open_table(VOLUMES)?
                    .insert(volume.id, json(volume).as_slice())?;
                let mut t = tx.open_table(CHUNKS)?;
                for (chunk, group_id) in chunks {
                    t.insert((volume.id, *chunk), *group_id)?;
                }
            }
            Mutation::PutNode(n) => {
                tx.open_table(NODES)?.insert(n.id, json(n).as_slice())?;
            }
            Mutation::AddGroups(gs) => {
                let mut t = tx.open_table(GROUPS)?;
                for g in gs {
                    t.insert(g.id, json(g).as_slice())?;
                }
            }
            Mutation::PutVolume(v) => {
                tx.open_table(VOLUMES)?.insert(v.id, json(v).as_slice())?;
            }
            Mutation::DeleteVolume { id } => {
                tx.open_table(VOLUMES)?.remove(*id)?;
                // Row by row: redb's retain_in over many rows grows the file by far more
                // than the rows (see `write_image`).
                let mut chunks = tx.open_table(CHUNKS)?;
                let keys = chunks
                    .range((*id, 0)..=(*id, u64::MAX))?
                    .map(|row| row.map(|(k, _)| k.value()))
                    .collect::<Result<Vec<_>, _>>()?;
                for k in keys {
                    chunks.remove(k)?;
                }
            }
            Mutation::MapChunk {
                volume_id,
                chunk,
                group_id,
            } => {
                tx.open_table(CHUNKS)?
                    .insert((*volume_id, *chunk), *group_id)?;
            }
            Mutation::MapChunks { volume_id, chunks } => {
                let mut t = tx.open_table(CHUNKS)?;
                for (chunk, group_id) in chunks {
                    t.insert((*volume_id, *chunk), *group_id)?;
                }
            }
            Mutation::SetGroupTarget { group_id, target } => {
                update_record(&tx, GROUPS, *group_id, |g: &mut GroupRecord| {
                    g.target = target.clone();
                })?;
            }
            Mutation::SetGroupMembers {
                group_id,
                members,
                term,
            } => {
                update_record(&tx, GROUPS, *group_id, |g: &mut GroupRecord| {
                    g.members = members.clone();
                    g.target.clear();
                    g.term = g.term.max(*term);
                })?;
            }
            Mutation::SetCrl(c) => {
                tx.open_table(SETTINGS)?.insert("crl", json(c).as_slice())?;
            }
            Mutation::SetNodeDraining { node_id, draining } => {
                update_record(&tx, NODES, *node_id, |n: &mut NodeRecord| {
                    n.draining = *draining;
                })?;
            }
            Mutation::SetGroupsEstablished { group_ids } => {
                for id in group_ids {
                    update_record(&tx, GROUPS, *id, |g: &mut GroupRecord| {
                        g.established = true;
                    })?;
                }
            }
        }
        {
            let mut meta = tx.open_table(META)?;
            meta.insert("next_node_id", next.node)?;
            meta.insert("next_group_id", next.group)?;
            meta.insert("next_volume_id", next.volume)?;
            meta.insert("next_backup_id", next.backup)?;
            if let Some(index) = applied {
                meta.insert("applied_index", index)?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// The whole state as rows, with the applied index it reflects: what a snapshot carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Image {
    pub applied_index: u64,
    pub nodes: Vec<NodeRecord>,
    pub groups: Vec<GroupRecord>,
    pub volumes: Vec<VolumeRecord>,
    /// (volume id, chunk index, group id).
    pub chunks: Vec<(u64, u64, u64)>,
    pub next: NextIds,
    /// Backups and the stores' reference counts.
    pub backups: BackupImage,
    /// The revocation lists in force.
    pub crl: Option<CrlRecord>,
}

impl Image {
    /// Checks the rows against each other and builds the memory state from them.
    pub fn into_state(self) -> Result<State, String> {
        let mut s = State::restore(
            self.nodes,
            self.groups,
            self.volumes,
            self.chunks,
            self.next,
        )
        .map_err(|e| e.0)?;
        s.restore_backups(self.backups).map_err(|e| e.0)?;
        if let Some(c) = self.crl {
            s.apply(&Mutation::SetCrl(c));
        }
        Ok(s)
    }
}

/// Reads every state row in one read transaction (a consistent cut at its applied index).
pub fn read_image(tx: &redb::ReadTransaction) -> Result<Image, DbError> {
    let nodes: Vec<NodeRecord> = read_records(tx, NODES, "node")?;
    let groups: Vec<GroupRecord> = read_records(tx, GROUPS, "group")?;
    let volumes: Vec<VolumeRecord> = read_records(tx, VOLUMES, "volume")?;
    let mut chunks = Vec::new();
    let table = tx.open_table(CHUNKS)?;
    for row in table.iter()? {
        let (k, v) = row?;
        let (volume, chunk) = k.value();
        chunks.push((volume, chunk, v.value()));
    }
    let meta = tx.open_table(META)?;
    let mark = |key: &str| -> DbResult<u64> { Ok(meta.get(key)?.map_or(1, |v| v.value())) };
    let next = NextIds {
        node: mark("next_node_id")?,
        group: mark("next_group_id")?,
        volume: mark("next_volume_id")?,
        backup: mark("next_backup_id")?,
    };
    let backups = backups::read(tx)?;
    let applied_index = meta.get("applied_index")?.map_or(0, |v| v.value());
    let crl = tx
        .open_table(SETTINGS)?
        .get("crl")?
        .map(|v| serde_json::from_slice::<CrlRecord>(v.value()))
        .transpose()
        .map_err(|e| redb::Error::Corrupted(format!("the revocation lists: {e}")))?;
    Ok(Image {
        applied_index,
        nodes,
        groups,
        volumes,
        chunks,
        next,
        backups,
        crl,
    })
}

/// Replaces every state row with `image`'s, inside the caller's transaction. Tables are
/// dropped whole: deleting every row and inserting anew in one transaction makes redb's
/// file grow by hundreds of times the data.
pub fn write_image(tx: &redb::WriteTransaction, image: &Image) -> Result<(), DbError> {
    {
        tx.delete_table(NODES)?;
        let mut t = tx.open_table(NODES)?;
        for n in &image.nodes {
            t.insert(n.id, json(n).as_slice())?;
        }
    }
    {
        tx.delete_table(GROUPS)?;
        let mut t = tx.open_table(GROUPS)?;
        for g in &image.groups {
            t.insert(g.id, json(g).as_slice())?;
        }
    }
    {
        tx.delete_table(VOLUMES)?;
        let mut t = tx.open_table(VOLUMES)?;
        for v in &image.volumes {
            t.insert(v.id, json(v).as_slice())?;
        }
    }
    {
        tx.delete_table(CHUNKS)?;
        let mut t = tx.open_table(CHUNKS)?;
        for (volume, chunk, group) in &image.chunks {
            t.insert((*volume, *chunk), *group)?;
        }
    }
    backups::write(tx, &image.backups)?;
    {
        let mut t = tx.open_table(SETTINGS)?;
        match &image.crl {
            Some(c) => t.insert("crl", json(c).as_slice())?,
            None => t.remove("crl")?,
        };
    }
    let mut meta = tx.open_table(META)?;
    meta.insert("next_backup_id", image.next.backup)?;
    meta.insert("next_node_id", image.next.node)?;
    meta.insert("next_group_id", image.next.group)?;
    meta.insert("next_volume_id", image.next.volume)?;
    meta.insert("applied_index", image.applied_index)?;
    Ok(())
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain records of strings and integers always serialize.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Rewrites one JSON row in place; a missing row is left missing, as [`State::apply`] does.
fn update_record<T: Serialize + DeserializeOwned>(
    tx: &redb::WriteTransaction,
    def: TableDefinition<u64, &[u8]>,
    id: u64,
    change: impl FnOnce(&mut T),
) -> DbResult<()> {
    let mut table = tx.open_table(def)?;
    let Some(mut rec) = table
        .get(id)?
        .map(|v| serde_json::from_slice::<T>(v.value()))
        .transpose()
        .map_err(|e| redb::Error::Corrupted(format!("record {id}: {e}")))?
    else {
        return Ok(());
    };
    change(&mut rec);
    table.insert(id, json(&rec).as_slice())?;
    Ok(())
}

fn read_records<T: DeserializeOwned>(
    tx: &redb::ReadTransaction,
    def: TableDefinition<u64, &[u8]>,
    what: &str,
) -> DbResult<Vec<T>> {
    let table = tx.open_table(def)?;
    let mut out = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let rec = serde_json::from_slice(v.value())
            .map_err(|e| redb::Error::Corrupted(format!("{what} record {}: {e}", k.value())))?;
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod backup_tests;
#[cfg(test)]
mod tests;

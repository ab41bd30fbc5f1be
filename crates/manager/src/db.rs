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

use crate::Error;
use crate::state::{GroupRecord, Mutation, NextIds, NodeRecord, State, VolumeRecord};

const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
const GROUPS: TableDefinition<u64, &[u8]> = TableDefinition::new("groups");
const VOLUMES: TableDefinition<u64, &[u8]> = TableDefinition::new("volumes");
/// (volume id, chunk index) → group id.
const CHUNKS: TableDefinition<(u64, u64), u64> = TableDefinition::new("chunks");
/// Format version and the next-id marks.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

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

    /// Makes `m` durable, with the id marks `next` it leads to. Returns once fsynced. Outside
    /// the Raft log: for tests of the state alone.
    #[cfg(test)]
    pub fn commit(&self, m: &Mutation, next: NextIds) -> Result<(), Error> {
        self.try_commit(m, next, None).map_err(db_err(&self.path))
    }

    /// [`Db::commit`] of the mutation at `index` of the Raft log, recording `index` as
    /// applied in the same transaction.
    pub fn commit_applied(&self, m: &Mutation, next: NextIds, index: u64) -> Result<(), Error> {
        self.try_commit(m, next, Some(index))
            .map_err(db_err(&self.path))
    }

    fn try_commit(&self, m: &Mutation, next: NextIds, applied: Option<u64>) -> DbResult<()> {
        let tx = self.db.begin_write()?;
        match m {
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
}

impl Image {
    /// Checks the rows against each other and builds the memory state from them.
    pub fn into_state(self) -> Result<State, String> {
        State::restore(
            self.nodes,
            self.groups,
            self.volumes,
            self.chunks,
            self.next,
        )
        .map_err(|e| e.0)
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
    };
    let applied_index = meta.get("applied_index")?.map_or(0, |v| v.value());
    Ok(Image {
        applied_index,
        nodes,
        groups,
        volumes,
        chunks,
        next,
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
    let mut meta = tx.open_table(META)?;
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
mod tests {
    use super::*;
    use tessera_proto::control::NodeRegistration;

    fn reopen(dir: &Path) -> (Db, State) {
        Db::open(dir).unwrap()
    }

    fn step(store: &Db, state: &mut State, m: Mutation) {
        let next = state.next_ids().after(&m);
        store.commit(&m, next).unwrap();
        state.apply(&m);
    }

    /// Registers one node per rack, in order (ids 1, 2, ...).
    fn register(store: &Db, state: &mut State, racks: &[&str]) {
        for rack in racks {
            let (_, m) = state
                .plan_register(&NodeRegistration {
                    node_id: None,
                    zone: "z".into(),
                    rack: (*rack).into(),
                    addr: format!("{rack}:1"),
                    capacity_bytes: 1,
                    used_bytes: 0,
                })
                .unwrap();
            step(store, state, m);
        }
    }

    /// Chunks mapped in bulk are rows like chunks mapped one by one.
    #[test]
    fn chunks_mapped_in_bulk_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let (store, mut state) = reopen(dir.path());
            register(&store, &mut state, &["a", "b", "c"]);
            let m = state.plan_groups(|_| true, 3, 2).unwrap();
            step(&store, &mut state, m);
            let m = state.plan_create_volume("v", 1 << 40, None, 7).unwrap();
            step(&store, &mut state, m);
            let id = state.volume_by_name("v").unwrap().id;
            let m = state
                .plan_map_chunks(id, 100, 1000, |_| true)
                .unwrap()
                .unwrap();
            step(&store, &mut state, m);
            id
        };
        let (_, state) = reopen(dir.path());
        assert_eq!(state.volume_by_name("v").unwrap().mapped_chunks, 1000);
        let page = state.route_page(id, 0, 0).unwrap();
        assert_eq!(page.routes.len(), 1000);
        assert_eq!(page.routes[0].chunk, 100);
        assert_eq!(page.next, None);
        assert_eq!(state.group_chunks(1) + state.group_chunks(2), 1000);
        assert_eq!(state.group_page(id, 0).unwrap().routes.len(), 2);
    }

    #[test]
    fn state_survives_reopen_and_ids_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (vol_id, chunk_group) = {
            let (store, mut state) = reopen(dir.path());
            register(&store, &mut state, &["a", "b", "c"]);
            let m = state.plan_groups(|_| true, 3, 2).unwrap();
            step(&store, &mut state, m);
            let m = state.plan_create_volume("gone", 1 << 30, None, 7).unwrap();
            step(&store, &mut state, m);
            let gone = state.volume_by_name("gone").unwrap().id;
            let m = state.plan_map_chunk(gone, 3, |_| true).unwrap();
            step(&store, &mut state, m);
            let (m, _) = state.plan_delete_volume("gone").unwrap();
            step(&store, &mut state, m);
            let m = state.plan_create_volume("kept", 1 << 30, None, 8).unwrap();
            step(&store, &mut state, m);
            let kept = state.volume_by_name("kept").unwrap().id;
            let m = state.plan_map_chunk(kept, 5, |_| true).unwrap();
            step(&store, &mut state, m);
            (kept, state.route(kept, 5).unwrap().unwrap().group_id)
        };
        let (store, mut state) = reopen(dir.path());
        assert_eq!(state.nodes().count(), 3);
        assert_eq!(state.groups().count(), 2);
        assert_eq!(state.volume_count(), 1);
        let kept = state.volume_by_name("kept").unwrap();
        assert_eq!(
            (kept.id, kept.mapped_chunks, kept.created_unix),
            (vol_id, 1, 8)
        );
        assert_eq!(
            state.route(vol_id, 5).unwrap().unwrap().group_id,
            chunk_group
        );
        assert_eq!(state.group_chunks(chunk_group), 1);

        // Deleting the highest ids must not let them come back after a reopen.
        let (m, _) = state.plan_delete_volume("kept").unwrap();
        step(&store, &mut state, m);
        drop(store);
        let (_, state) = reopen(dir.path());
        assert_eq!(state.volume_count(), 0);
        let m = state.plan_create_volume("new", 4096, None, 9).unwrap();
        assert!(matches!(m, Mutation::PutVolume(v) if v.id == vol_id + 1));
        let (id, _) = state
            .plan_register(&NodeRegistration {
                node_id: None,
                zone: "z".into(),
                rack: "d".into(),
                addr: "d:1".into(),
                capacity_bytes: 1,
                used_bytes: 0,
            })
            .unwrap();
        assert_eq!(id, 4);
        assert_eq!(state.next_ids().group, 3);
    }

    #[test]
    fn moves_and_drains_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, mut state) = reopen(dir.path());
            register(&store, &mut state, &["a", "b", "c", "d"]);
            let m = state.plan_groups(|n| n != 4, 3, 1).unwrap();
            step(&store, &mut state, m);
            let m = state.plan_drain(1, true, 3).unwrap().unwrap();
            step(&store, &mut state, m);
            // Group 1 moves from node 1 to node 4, then is re-aimed (back onto node 1).
            let m = Mutation::SetGroupTarget {
                group_id: 1,
                target: vec![4, 2, 3],
            };
            step(&store, &mut state, m);
            let m = Mutation::SetGroupMembers {
                group_id: 1,
                members: vec![4, 2, 3],
                term: 7,
            };
            step(&store, &mut state, m);
            let m = Mutation::SetGroupTarget {
                group_id: 1,
                target: vec![4, 1, 3],
            };
            step(&store, &mut state, m);
        }
        let (_, state) = reopen(dir.path());
        let g = state.group(1).unwrap();
        assert_eq!(g.members, [4, 2, 3]);
        assert_eq!(g.target, [4, 1, 3]);
        // Node 1, added back, joins at the term the last finished move was reported in.
        let spec = state.group_spec(g, true);
        assert!(spec.joining);
        assert_eq!(spec.min_term, 7);
        assert!(state.node(1).unwrap().draining);
        assert_eq!(state.groups_of(1).count(), 0);
        assert_eq!(state.groups_of(4).count(), 1);
        // A drained node that restarts and registers again stays draining.
        let (_, m) = state
            .plan_register(&NodeRegistration {
                node_id: Some(1),
                zone: "z".into(),
                rack: "a".into(),
                addr: "a:1".into(),
                capacity_bytes: 1,
                used_bytes: 0,
            })
            .unwrap();
        assert!(matches!(m, Mutation::PutNode(n) if n.draining));
        // Draining the last spare rack away is refused.
        assert!(matches!(
            state.plan_drain(2, true, 3),
            Err(tessera_proto::control::ControlError::Unavailable(_))
        ));
    }

    #[test]
    fn established_groups_survive_a_restart_and_a_move() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, mut state) = reopen(dir.path());
            register(&store, &mut state, &["a", "b", "c", "d"]);
            let m = state.plan_groups(|n| n != 4, 3, 2).unwrap();
            step(&store, &mut state, m);
            // Unknown group 99 is ignored, as in the state.
            let m = Mutation::SetGroupsEstablished {
                group_ids: vec![1, 99],
            };
            step(&store, &mut state, m);
            let m = Mutation::SetGroupMembers {
                group_id: 1,
                members: vec![4, 2, 3],
                term: 7,
            };
            step(&store, &mut state, m);
        }
        let (_, state) = reopen(dir.path());
        let g = state.group(1).unwrap();
        assert_eq!(g.members, [4, 2, 3]);
        assert!(g.established);
        assert!(!state.group(2).unwrap().established);
        assert!(state.group(99).is_none());
    }

    #[test]
    fn group_rows_from_before_established_read_as_not_established() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, mut state) = reopen(dir.path());
            register(&store, &mut state, &["a", "b", "c"]);
            // A row as an older manager wrote it, without the field.
            let tx = store.db.begin_write().unwrap();
            tx.open_table(GROUPS)
                .unwrap()
                .insert(1, br#"{"id":1,"members":[1,2,3]}"#.as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let (store, mut state) = reopen(dir.path());
        assert!(!state.group(1).unwrap().established);
        let m = Mutation::SetGroupsEstablished { group_ids: vec![1] };
        step(&store, &mut state, m);
        drop(store);
        let (_, state) = reopen(dir.path());
        assert!(state.group(1).unwrap().established);
    }

    #[test]
    fn a_second_open_of_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = reopen(dir.path());
        assert!(matches!(Db::open(dir.path()), Err(Error::Locked { .. })));
        drop(first);
        assert!(Db::open(dir.path()).is_ok());
    }
}

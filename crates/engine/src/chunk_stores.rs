//! [`ChunkStores`]: the node's set of chunk stores, one [`ChunkStore`] per namespace (a replica
//! group, to its users) under one directory, `<dir>/<space:016x>/`.
//!
//! A namespace's chunks are then exactly one directory: listing what a replica holds,
//! copying it to another node, or destroying it when the replica moves away touch nothing
//! else. Owns the map of open stores and nothing more; knows nothing of Raft. Every store
//! counts its open chunks against one [`FileBudget`], the node's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::chunk::{ChunkStore, FileBudget};
use crate::fsutil::sync_dir;
use crate::{Error, Result};

/// The chunk stores of one node, one per namespace. `Send + Sync`.
pub struct ChunkStores {
    dir: PathBuf,
    budget: Arc<FileBudget>,
    stores: RwLock<HashMap<u64, Arc<ChunkStore>>>,
}

impl ChunkStores {
    /// Opens every namespace already under `dir` (creating `dir` if missing), with a budget
    /// of [`crate::chunk::DEFAULT_OPEN_CHUNKS`] open chunks.
    pub fn open(dir: &Path) -> Result<ChunkStores> {
        ChunkStores::open_in(dir, FileBudget::new(crate::chunk::DEFAULT_OPEN_CHUNKS))
    }

    /// As [`ChunkStores::open`], every store's open chunks counted against `budget`.
    pub fn open_in(dir: &Path, budget: Arc<FileBudget>) -> Result<ChunkStores> {
        std::fs::create_dir_all(dir)?;
        let mut stores = HashMap::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let Some(space) = e.file_name().to_str().and_then(parse_space) else {
                continue;
            };
            if e.file_type()?.is_dir() {
                stores.insert(space, ChunkStore::open_in(&e.path(), &budget)?);
            }
        }
        Ok(ChunkStores {
            dir: dir.to_path_buf(),
            budget,
            stores: RwLock::new(stores),
        })
    }

    /// The store of `space`, created (empty) on first use.
    pub fn get(&self, space: u64) -> Result<Arc<ChunkStore>> {
        if let Some(s) = self.read_map().get(&space) {
            return Ok(s.clone());
        }
        let mut map = self.write_map();
        if let Some(s) = map.get(&space) {
            return Ok(s.clone());
        }
        let s = ChunkStore::open_in(&self.space_dir(space), &self.budget)?;
        // The new directory's entry must survive a crash like the files inside it will.
        sync_dir(&self.dir)?;
        map.insert(space, s.clone());
        Ok(s)
    }

    /// The store of `space` if it exists.
    pub fn existing(&self, space: u64) -> Option<Arc<ChunkStore>> {
        self.read_map().get(&space).cloned()
    }

    /// Namespaces that have a directory.
    pub fn spaces(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.read_map().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Deletes the namespace and every chunk in it, durably. Users still holding its store
    /// see their files vanish: only call this once nothing uses it any more.
    pub fn remove(&self, space: u64) -> Result<()> {
        self.write_map().remove(&space);
        let d = self.space_dir(space);
        match std::fs::remove_dir_all(&d) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::Io(e)),
        }
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// [`ChunkStore::sync`] of every store. A store removed while this runs is skipped (its
    /// directory may be gone under it; nothing of it needs to be durable any more).
    pub fn sync(&self) -> Result<()> {
        let all: Vec<(u64, Arc<ChunkStore>)> = self
            .read_map()
            .iter()
            .map(|(k, s)| (*k, s.clone()))
            .collect();
        for (space, s) in all {
            if let Err(e) = s.sync() {
                if !self.read_map().contains_key(&space) {
                    continue;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// The node's budget of open chunks.
    pub fn budget(&self) -> &FileBudget {
        &self.budget
    }

    /// Approximate bytes allocated on disk by the chunk files of every store.
    pub fn used_bytes(&self) -> u64 {
        self.read_map().values().map(|s| s.used_bytes()).sum()
    }

    fn space_dir(&self, space: u64) -> PathBuf {
        self.dir.join(format!("{space:016x}"))
    }

    fn read_map(&self) -> RwLockReadGuard<'_, HashMap<u64, Arc<ChunkStore>>> {
        self.stores.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_map(&self) -> RwLockWriteGuard<'_, HashMap<u64, Arc<ChunkStore>>> {
        self.stores.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn parse_space(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_are_separate_directories_and_removal_forgets_one() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let stores = ChunkStores::open(tmp.path()).expect("open");
        stores
            .get(1)
            .expect("g1")
            .write(7, 0, 0, b"one")
            .expect("w");
        stores
            .get(2)
            .expect("g2")
            .write(7, 0, 0, b"two")
            .expect("w");
        stores
            .get(2)
            .expect("g2")
            .write(8, 3, 4096, b"x")
            .expect("w");
        stores.sync().expect("sync");
        assert_eq!(stores.spaces(), vec![1, 2]);
        let reopened = ChunkStores::open(tmp.path()).expect("reopen");
        assert_eq!(
            &reopened.get(1).unwrap().read(7, 0, 0, 3).unwrap()[..],
            b"one"
        );
        assert_eq!(
            reopened.get(2).unwrap().list_chunks().unwrap(),
            vec![(7, 0), (8, 3)]
        );
        let crcs = reopened.get(2).unwrap().checksums(8, 3, 0, 2).unwrap();
        assert_eq!(&crcs[..4], &[0, 0, 0, 0], "block 0 was never written");
        assert_ne!(&crcs[4..], &[0, 0, 0, 0]);
        // A store removed while someone still holds it: syncing everything skips it.
        let held = reopened.get(2).expect("g2");
        held.write(9, 0, 0, b"late").expect("w");
        reopened.remove(2).expect("remove");
        reopened.sync().expect("sync skips the removed store");
        drop(held);
        assert_eq!(reopened.spaces(), vec![1]);
        assert!(reopened.get(2).unwrap().list_chunks().unwrap().is_empty());
        assert!(
            !tmp.path()
                .join(format!("{:016x}", 2))
                .join("0000000000000008")
                .exists()
        );
    }
}

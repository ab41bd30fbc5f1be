//! [`DirLock`]: the exclusive lock a process holds on its data directory.
//!
//! Owns the `<dir>/LOCK` file and the advisory `flock` on it, held until the [`DirLock`] is
//! dropped (or the process dies: the kernel releases it, so a crash never leaves a stale
//! lock). Must never delete the lock file or truncate it before holding the lock: the pid
//! in it belongs to whoever holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// An exclusive lock on a data directory, released on drop.
#[derive(Debug)]
pub struct DirLock {
    path: PathBuf,
    _file: File,
}

impl DirLock {
    /// Locks `dir` (creating it if missing). Fails with [`Error::Locked`] if another process,
    /// or another `DirLock` in this process, holds it: `flock` locks belong to the open file
    /// description, so two opens in one process conflict too.
    pub fn acquire(dir: &Path) -> Result<DirLock> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: dir.to_path_buf(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
        // For humans: which process holds it.
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        Ok(DirLock { path, _file: file })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_same_dir_is_refused_until_the_first_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let first = DirLock::acquire(&dir).unwrap();
        let pid = std::fs::read_to_string(first.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        match DirLock::acquire(&dir) {
            Err(Error::Locked { path }) => assert_eq!(path, dir),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        DirLock::acquire(&dir).unwrap();
    }
}

//! The free-space floor a copy respects: below it a copy fails (to be retried) rather than
//! fill the disk under the log. Must never let a copy allocate where client writes are
//! refused.

use std::path::PathBuf;

use super::CopyError;

/// The free-space floor of the node's data directory: below it nothing new is allocated.
pub(crate) struct Floor {
    pub(crate) dir: PathBuf,
    pub(crate) min_free_bytes: u64,
}

impl Floor {
    /// Fails (for a later retry) when the data directory is below the floor.
    pub(super) fn check(&self, group: u64) -> Result<(), CopyError> {
        if cfg!(tessera_unfixed = "snapshot_floor") {
            return Ok(());
        }
        match tessera_engine::fsutil::fs_space(&self.dir) {
            Ok((_, avail)) if avail < self.min_free_bytes => Err(CopyError::Failed(format!(
                "{} has {avail} bytes free, below the floor of {}: not copying group {group}",
                self.dir.display(),
                self.min_free_bytes
            ))),
            Ok(_) => Ok(()),
            Err(e) => Err(CopyError::Failed(format!(
                "checking free space on {}: {e}",
                self.dir.display()
            ))),
        }
    }
}

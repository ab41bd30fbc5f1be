//! Errors of starting and running a manager (as opposed to [`ControlError`], what a request's
//! sender is told).

use std::path::PathBuf;

use tessera_proto::control::ControlError;

/// Why a manager cannot start or go on; each variant names what the operator can fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is refused: fix the setting named.
    #[error("invalid manager configuration: {0}")]
    Config(String),
    /// The data directory cannot be created or used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The data directory.
        path: PathBuf,
        /// What the file system said.
        source: std::io::Error,
    },
    /// Another manager process has the database open: one manager per data directory.
    #[error("database {path} is in use by another manager process")]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// The database failed to read or write.
    #[error("database {path}: {source}")]
    Database {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        source: Box<redb::Error>,
    },
    /// The database's rows (state or Raft log) disagree with each other.
    #[error("database {path} is inconsistent: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What disagrees.
        detail: String,
    },
    /// The listening address cannot be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address from the configuration.
        addr: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A backup store cannot be used (its credentials were refused): fix its entry.
    #[error("backup store {name:?}: {why}")]
    Store {
        /// The store's name.
        name: String,
        /// What it said.
        why: String,
    },
    /// A manager task (the Raft group, the applier, a blocking job) failed.
    #[error("manager task failed: {0}")]
    Task(String),
}

impl From<Error> for ControlError {
    /// A request that hit a manager-side failure: the sender cannot fix it, only retry.
    fn from(e: Error) -> Self {
        ControlError::Internal(e.to_string())
    }
}

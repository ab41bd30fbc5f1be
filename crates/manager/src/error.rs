//! Errors of starting and running a manager (as opposed to [`ControlError`], what a request's
//! sender is told).

use std::path::PathBuf;

use tessera_proto::control::ControlError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid manager configuration: {0}")]
    Config(String),
    #[error("data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path} is in use by another manager process")]
    Locked { path: PathBuf },
    #[error("database {path}: {source}")]
    Database {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("database {path} is inconsistent: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("manager task failed: {0}")]
    Task(String),
}

impl From<Error> for ControlError {
    /// A request that hit a manager-side failure: the sender cannot fix it, only retry.
    fn from(e: Error) -> Self {
        ControlError::Internal(e.to_string())
    }
}

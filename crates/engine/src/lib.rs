//! The storage node's local engine: the log shared by all replica groups, chunk files with
//! per-block CRC32C, data-directory locking.
//!
//! - [`lock`]: [`DirLock`], the exclusive lock a process holds on its data directory.
//! - [`fsutil`]: small durable-filesystem helpers (atomic file replacement, free space).
//! - [`log`]: [`Log`], the one append-only log of every replica group on the node, with
//!   group commit (one fdatasync per batch) and segment recycling.
//! - [`chunk`]: [`ChunkStore`], sparse chunk files with a CRC32C per 4 KiB block, and
//!   [`chunk::FileBudget`], the node-wide limit on open chunks.
//! - [`chunk_stores`]: [`ChunkStores`], the node's set of chunk stores, one per replica
//!   group, each its own directory.
//!
//! This crate knows nothing about Raft or the network: it stores opaque entries and byte
//! ranges, and must not depend on `tessera-raft`, `tessera-net` or any async runtime.
//! Everything read back from disk is untrusted: it is length- and checksum-checked, and a bad
//! byte yields an [`Error`], never a panic.

#![warn(missing_docs)]

pub mod chunk;
pub mod chunk_stores;
pub mod fsutil;
pub mod lock;
pub mod log;

use std::path::PathBuf;

pub use chunk::ChunkStore;
/// The former name of [`chunk_stores`], kept so that existing paths still resolve.
pub use chunk_stores as stores;
pub use chunk_stores::ChunkStores;
pub use lock::DirLock;
pub use log::{
    EntryKind, GroupWrite, Log, LogEntry, LogOptions, LogStats, Recovered, RecoveredGroup,
};

/// Errors of the local engine, named after what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another process (or another [`DirLock`] in this one) owns the data directory.
    #[error("data directory {} is locked by another process", path.display())]
    Locked {
        /// The data directory.
        path: PathBuf,
    },
    /// The disk has no room for the write; nothing of it was acknowledged.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// Bytes read back from disk failed a check; the message names the file, offset and check.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A resource limit of the process (open descriptors) is reached, even after closing
    /// idle files: nothing was changed; retry once others are released.
    #[error("resource exhausted: {0}")]
    Exhausted(String),
    /// An offset or length outside what the engine accepts.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// The operation contradicts the store's state in a way every replica finds alike (a
    /// link to another parent, a rollback to a sequence not below its layer): nothing was
    /// changed. Never the system's own answer to a system call.
    #[error("refused: {0}")]
    Refused(String),
    /// The log had a write or fsync failure: the kernel may have dropped dirty pages, so the
    /// node must stop rather than carry on.
    #[error("fatal log failure, the node must stop: {0}")]
    Fatal(String),
    /// Any other I/O error, as the system reported it.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Blocks of a restored chunk (linked to [`chunk::RESTORED`]) that no layer holds yet
    /// were needed: their bytes are in the backup, which the engine never reads. A read
    /// answers with what it has (zeroes in their place) and which blocks they are, for the
    /// caller to fetch; an operation that needs their bytes (a partial-block write over
    /// one) changes nothing and is retried once they are filled.
    #[error("restored chunk: {} block(s) not filled from the backup yet", .0.blocks.len())]
    Unfilled(Box<Unfilled>),
}

/// What [`Error::Unfilled`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfilled {
    /// A read's bytes with zeroes in place of the unfilled blocks (empty for anything but a
    /// read).
    pub data: bytes::Bytes,
    /// The unfilled blocks' indexes in the chunk, ascending.
    pub blocks: Vec<u32>,
}

/// The result of an engine operation.
pub type Result<T> = std::result::Result<T, Error>;

/// Whether an open failed for want of descriptors (the process's or the system's).
pub(crate) fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// Whether an I/O error means the disk (or the quota) is full.
pub(crate) fn is_no_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

//! The seam between the NBD protocol and storage: what the server needs from a block store.
//!
//! Two implementations exist: [`tessera_client::Client`] (in `tessera_backend.rs`) for
//! production, and an in-memory store in this crate's unit tests, where faults (failing
//! or slow requests) are injected. Nothing here knows about NBD wire formats; the server
//! maps [`BackendError`] to NBD error numbers in one place (`transmission.rs`).

use std::future::Future;

use bytes::Bytes;

/// Why a backend operation failed, in the terms the NBD server needs to pick an error
/// number. Messages name the thing and the value; they may be shown to NBD clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// No export (volume) of that name.
    #[error("export \"{0}\" not found")]
    NotFound(String),
    /// The range lies (partly) outside the export.
    #[error("out of range: {0}")]
    OutOfRange(String),
    /// The store is full.
    #[error("no space left: {0}")]
    NoSpace(String),
    /// The store refused the request as malformed.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Another client writes the export (it cannot be opened read-write here now).
    #[error("in use: {0}")]
    Busy(String),
    /// This handle may not write: another client took the export over, or it was opened
    /// read-only. Nothing was written.
    #[error("not permitted: {0}")]
    Denied(String),
    /// Anything else: corrupt data, I/O failure, cluster unavailable.
    #[error("i/o error: {0}")]
    Io(String),
}

/// What a connection will do with an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Look at it (`NBD_OPT_INFO`): size and limits, no I/O.
    Info,
    /// Read and write it (`NBD_OPT_GO`, `NBD_OPT_EXPORT_NAME`).
    ReadWrite,
    /// Read it, never write, and never take it from a client writing it (a read-only
    /// identity's `NBD_OPT_GO`): the export returned must say [`Export::read_only`], or the
    /// server refuses it.
    Read,
}

/// What a range of an export holds, for `NBD_CMD_BLOCK_STATUS` (`base:allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Not allocated: reads as zeroes, takes no space.
    Hole,
    /// Allocated, reads as zeroes.
    Zero,
    /// Holds data (or may: the safe answer when unknown).
    Data,
}

/// A run of bytes in one [`Allocation`] state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes in the run (more than 0).
    pub len: u64,
    /// What they hold.
    pub state: Allocation,
}

/// A store of named block devices.
pub trait Backend: Send + Sync + 'static {
    /// An open device; one is opened per NBD connection.
    type Export: Export;

    /// The names of every export, in any order.
    fn list(&self) -> impl Future<Output = Result<Vec<String>, BackendError>> + Send;

    /// Opens the export `name`; [`BackendError::NotFound`] if there is none,
    /// [`BackendError::Busy`] if another client writes it and `access` needs writing.
    fn open(
        &self,
        name: &str,
        access: Access,
    ) -> impl Future<Output = Result<Self::Export, BackendError>> + Send;
}

/// One open block device. Called concurrently from many tasks; every range passed in
/// has already been checked against [`Export::size`] and has a non-zero length.
pub trait Export: Send + Sync + 'static {
    /// Size in bytes, fixed for the life of this handle.
    fn size(&self) -> u64;

    /// Whether writes are refused (the export is advertised read-only).
    fn read_only(&self) -> bool {
        false
    }

    /// Reads exactly `len` bytes at `offset`.
    fn read(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Bytes, BackendError>> + Send;

    /// Writes `data` at `offset`; returns once the write is durable.
    fn write(
        &self,
        offset: u64,
        data: Bytes,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Makes `len` bytes at `offset` read as zeroes; durable on return. With `punch` the
    /// store may free the range's space (a hole); without, it must stay provisioned, so
    /// that later writes there cannot fail for want of space (`NBD_CMD_FLAG_NO_HOLE`).
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        punch: bool,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Hints that `len` bytes at `offset` are no longer needed.
    fn discard(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Returns once every write already acknowledged through this handle is durable.
    fn flush(&self) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// What the `len` bytes at `offset` hold, as consecutive extents from `offset`: they
    /// may cover less than `len` (the client asks on) but not more, and never none. A store
    /// that cannot tell says it all holds data.
    fn block_status(
        &self,
        offset: u64,
        len: u64,
    ) -> impl Future<Output = Result<Vec<Extent>, BackendError>> + Send {
        let _ = offset;
        async move {
            Ok(vec![Extent {
                len,
                state: Allocation::Data,
            }])
        }
    }
}

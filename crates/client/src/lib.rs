//! The Tessera client library: volume handles, routing, retries, pipelined requests.
//!
//! API (stable; the NBD gateway and the CLI are written against it):
//! - [`Client::connect`] with the manager address(es), then [`Client::open`] a volume by name.
//! - [`Volume::read`], [`Volume::write`], [`Volume::write_zeroes`], [`Volume::discard`],
//!   [`Volume::flush`] at any byte offset and length; a [`Volume`] is cheap to clone and
//!   safe to use from many tasks at once (requests are pipelined).

use bytes::Bytes;
use tessera_proto::control::VolumeInfo;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("volume \"{0}\" not found")]
    VolumeNotFound(String),
    #[error("range {offset}+{len} is past the end of volume \"{volume}\" ({size} bytes)")]
    OutOfRange {
        volume: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("no space left: {0}")]
    DiskFull(String),
    #[error("data corrupt: {0}")]
    Corrupt(String),
    #[error("i/o error: {0}")]
    Io(String),
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error(transparent)]
    Control(#[from] tessera_proto::control::ControlError),
    #[error(transparent)]
    Net(#[from] tessera_net::NetError),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A connection to a Tessera cluster. Cheap to clone.
#[derive(Clone)]
pub struct Client {}

impl Client {
    pub async fn connect(_managers: Vec<String>) -> Result<Client> {
        todo!()
    }
    pub async fn open(&self, _name: &str) -> Result<Volume> {
        todo!()
    }
    pub async fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        todo!()
    }
}

/// An open volume. Cheap to clone; all clones share routes and connections.
#[derive(Clone)]
pub struct Volume {}

impl Volume {
    pub fn info(&self) -> &VolumeInfo {
        todo!()
    }
    pub fn name(&self) -> &str {
        todo!()
    }
    pub fn size(&self) -> u64 {
        todo!()
    }
    pub async fn read(&self, _offset: u64, _len: u64) -> Result<Bytes> {
        todo!()
    }
    pub async fn write(&self, _offset: u64, _data: Bytes) -> Result<()> {
        todo!()
    }
    pub async fn write_zeroes(&self, _offset: u64, _len: u64) -> Result<()> {
        todo!()
    }
    pub async fn discard(&self, _offset: u64, _len: u64) -> Result<()> {
        todo!()
    }
    /// Every write already acknowledged is durable on a majority: this only waits for
    /// writes still in flight from this handle.
    pub async fn flush(&self) -> Result<()> {
        todo!()
    }
}

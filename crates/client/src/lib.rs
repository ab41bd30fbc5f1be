//! The Tessera client library: volume handles, routing, retries, pipelined requests.
//!
//! - [`Client::connect`] with the manager address(es), then [`Client::open`] a volume by name.
//! - [`Volume::read`], [`Volume::write`], [`Volume::write_zeroes`], [`Volume::discard`],
//!   [`Volume::flush`] at any byte offset and length; a [`Volume`] is cheap to clone and
//!   safe to use from many tasks at once (requests are pipelined on one connection per
//!   storage node).
//!
//! A request is split at chunk boundaries (and at [`MAX_IO`]); each piece goes to the
//! leader of the chunk's replica group. Routes come from the manager once and are cached;
//! a wrong-leader answer carries a hint that is followed at once, and other transient
//! failures (a dead node, an election in progress, a group still being created) are retried
//! with bounded back-off until [`RETRY_FOR`] has passed. The application sees latency, not
//! errors, across a leader change.
//!
//! Must never: acknowledge a write before the storage node did; turn a definite storage
//! answer (disk full, corrupt data, out of range) into a silent retry loop.

mod conn;
mod volume;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_proto::control::{ControlError, ManagerReply, ManagerRequest, VolumeInfo};
use tessera_proto::data::MAX_IO as WIRE_MAX_IO;

pub use volume::Volume;

/// Largest piece sent in one request.
pub const MAX_IO: u64 = WIRE_MAX_IO as u64;
/// How long transient failures are retried before an error reaches the caller.
pub const RETRY_FOR: Duration = Duration::from_secs(60);
/// Deadline of one control-plane call and of one data-plane attempt.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

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
    Control(#[from] ControlError),
    #[error(transparent)]
    Net(#[from] tessera_net::NetError),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A connection to a Tessera cluster. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: Arc<ClientInner>,
}

struct ClientInner {
    managers: Vec<String>,
    conns: Mutex<HashMap<String, Arc<conn::NodeConn>>>,
}

impl Client {
    /// A client of the cluster managed at `managers`: one address, or every manager of a
    /// highly available control plane (requests go to whichever leads). Checks that a
    /// manager answers.
    pub async fn connect(managers: Vec<String>) -> Result<Client> {
        if managers.is_empty() {
            return Err(Error::Invalid("no manager address given".into()));
        }
        let c = Client {
            inner: Arc::new(ClientInner {
                managers,
                conns: Mutex::new(HashMap::new()),
            }),
        };
        c.list_volumes().await?;
        Ok(c)
    }

    /// One control-plane call, to the manager leader (hints followed, unreachable managers
    /// skipped, retried for up to [`tessera_net::MANAGER_RETRY_FOR`]).
    pub async fn call(&self, req: &ManagerRequest) -> Result<ManagerReply> {
        tessera_net::call_managers::<_, ManagerReply>(&self.inner.managers, req, CALL_TIMEOUT)
            .await
            .map_err(|e| match e {
                tessera_net::NetError::Control(e) => Error::Control(e),
                e => Error::Net(e),
            })
    }

    pub async fn open(&self, name: &str) -> Result<Volume> {
        match self
            .call(&ManagerRequest::OpenVolume { name: name.into() })
            .await
        {
            Ok(ManagerReply::Opened { volume, chunks }) => {
                Ok(Volume::new(self.clone(), volume, chunks))
            }
            Ok(other) => Err(Error::Io(format!("unexpected manager reply {other:?}"))),
            Err(Error::Control(ControlError::NotFound(_))) => {
                Err(Error::VolumeNotFound(name.into()))
            }
            Err(e) => Err(e),
        }
    }

    pub async fn list_volumes(&self) -> Result<Vec<VolumeInfo>> {
        match self.call(&ManagerRequest::ListVolumes).await? {
            ManagerReply::Volumes(v) => Ok(v),
            other => Err(Error::Io(format!("unexpected manager reply {other:?}"))),
        }
    }

    /// The live connection to a storage node, opened if needed.
    async fn node(&self, addr: &str) -> Result<Arc<conn::NodeConn>> {
        if let Some(c) = self
            .inner
            .conns
            .lock()
            .ok()
            .and_then(|m| m.get(addr).cloned())
            && !c.is_dead()
        {
            return Ok(c);
        }
        let c = conn::NodeConn::open(addr, CALL_TIMEOUT).await?;
        if let Ok(mut m) = self.inner.conns.lock() {
            // Another task may have raced us here; keep whichever is alive.
            if let Some(existing) = m.get(addr)
                && !existing.is_dead()
            {
                return Ok(existing.clone());
            }
            m.insert(addr.to_string(), c.clone());
        }
        Ok(c)
    }
}

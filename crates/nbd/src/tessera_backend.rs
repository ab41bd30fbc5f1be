//! [`Backend`] for a Tessera cluster: exports are volumes, opened through the client
//! library. The only place this crate touches `tessera_client`.

use bytes::Bytes;
use tessera_client::{Client, Error, Volume};
use tessera_proto::data::BlockState;

use crate::backend::{Access, Allocation, Backend, BackendError, Export, Extent};

impl From<Error> for BackendError {
    fn from(err: Error) -> Self {
        match err {
            Error::VolumeNotFound(name) | Error::NotFound(name) => BackendError::NotFound(name),
            e @ Error::OutOfRange { .. } => BackendError::OutOfRange(e.to_string()),
            Error::DiskFull(m) => BackendError::NoSpace(m),
            Error::Invalid(m) => BackendError::Invalid(m),
            Error::InUse(m) => BackendError::Busy(m),
            e @ (Error::Fenced(_) | Error::ReadOnly(_)) => BackendError::Denied(e.to_string()),
            e @ (Error::Corrupt(_)
            | Error::Io(_)
            | Error::AlreadyExists(_)
            | Error::UnexpectedReply { .. }
            | Error::Local { .. }
            | Error::Unavailable(_)
            | Error::Control(_)
            | Error::Net(_)) => BackendError::Io(e.to_string()),
        }
    }
}

impl Backend for Client {
    type Export = Volume;

    async fn list(&self) -> Result<Vec<String>, BackendError> {
        let volumes = self.list_volumes().await?;
        Ok(volumes.into_iter().map(|v| v.name).collect())
    }

    /// A read-write open attaches the volume for this gateway's client: every connection
    /// of the gateway to the volume shares the attachment (NBD multi-connection). A
    /// snapshot (`VOL@SNAP`) is opened read-only whatever the access: it never changes.
    async fn open(&self, name: &str, access: Access) -> Result<Volume, BackendError> {
        Ok(match access {
            _ if name.contains('@') => Client::open_read_only(self, name).await?,
            Access::Info | Access::Read => Client::open_read_only(self, name).await?,
            Access::ReadWrite => Client::open(self, name).await?,
        })
    }
}

/// A gateway that only reads (`tessera nbd --read-only`): every export is opened without an
/// attachment, so it serves a volume while another client writes it, and refuses writes.
pub struct ReadOnlyClient(pub Client);

impl Backend for ReadOnlyClient {
    type Export = Volume;

    async fn list(&self) -> Result<Vec<String>, BackendError> {
        self.0.list().await
    }

    async fn open(&self, name: &str, _: Access) -> Result<Volume, BackendError> {
        Ok(self.0.open_read_only(name).await?)
    }
}

impl Export for Volume {
    fn size(&self) -> u64 {
        Volume::size(self)
    }

    fn read_only(&self) -> bool {
        self.epoch().is_none()
    }

    async fn read(&self, offset: u64, len: u64) -> Result<Bytes, BackendError> {
        Ok(Volume::read(self, offset, len).await?)
    }

    async fn write(&self, offset: u64, data: Bytes) -> Result<(), BackendError> {
        Ok(Volume::write(self, offset, data).await?)
    }

    async fn write_zeroes(&self, offset: u64, len: u64, punch: bool) -> Result<(), BackendError> {
        // A discard reads back as zeroes too, and leaves the range thin.
        if punch {
            Ok(Volume::discard(self, offset, len).await?)
        } else {
            Ok(Volume::write_zeroes(self, offset, len).await?)
        }
    }

    async fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        Ok(Volume::discard(self, offset, len).await?)
    }

    async fn flush(&self) -> Result<(), BackendError> {
        Ok(Volume::flush(self).await?)
    }

    /// A storage node from before block status refuses it as a bad request (the range
    /// itself was checked): the range is then reported as data, the answer that is never
    /// wrong, so `qemu-img map` works during an upgrade.
    async fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>, BackendError> {
        let extents = match Volume::block_status(self, offset, len).await {
            Ok(e) => e,
            Err(Error::Invalid(m)) => {
                tracing::debug!(volume = self.name(), "block status refused ({m}): all data");
                return Ok(vec![Extent {
                    len,
                    state: Allocation::Data,
                }]);
            }
            Err(e) => return Err(e.into()),
        };
        Ok(extents
            .into_iter()
            .map(|e| Extent {
                len: e.len,
                state: match e.state {
                    BlockState::Hole => Allocation::Hole,
                    BlockState::Zero => Allocation::Zero,
                    BlockState::Data => Allocation::Data,
                },
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_map_to_what_the_nbd_client_can_act_on() {
        let range = Error::OutOfRange {
            volume: "db1".into(),
            offset: 10,
            len: 20,
            size: 16,
        };
        assert!(
            matches!(BackendError::from(range), BackendError::OutOfRange(m) if m.contains("db1"))
        );
        assert_eq!(
            BackendError::from(Error::VolumeNotFound("db1".into())),
            BackendError::NotFound("db1".into())
        );
        assert!(matches!(
            BackendError::from(Error::DiskFull("x".into())),
            BackendError::NoSpace(_)
        ));
        assert!(matches!(
            BackendError::from(Error::Invalid("x".into())),
            BackendError::Invalid(_)
        ));
        for e in [
            Error::Corrupt("c".into()),
            Error::Io("i".into()),
            Error::Unavailable("u".into()),
        ] {
            assert!(matches!(BackendError::from(e), BackendError::Io(_)));
        }
    }
}

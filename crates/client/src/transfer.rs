//! Whole-volume copies: [`Client::import_from`] a reader into a volume, and
//! [`Volume::export_to`] a file. Pipelined (several [`BLOCK`]-sized requests in flight) and
//! thin: zero blocks are not sent (a fresh volume reads zeroes already, an existing one has
//! them discarded) and not written (the target file is sized with holes).
//!
//! Must never: report a copy done before every write of it was acknowledged (and the
//! volume closed), or before the target file was synced; print anything (progress goes to
//! the caller's callback).

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

use crate::{Client, Error, Result, Volume};

/// The unit of a copy: one request, and one read or write of the file.
const BLOCK: u64 = 4 << 20;
/// Requests of a copy in flight at once.
const IN_FLIGHT: usize = 8;

/// What [`Client::import_from`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    /// Bytes copied.
    pub bytes: u64,
    /// The volume did not exist and was created to fit.
    pub created: bool,
}

impl Client {
    /// Copies the `len` bytes `src` holds into volume `name` from its start, creating the
    /// volume to fit (rounded up to 4 KiB) if it does not exist. Attaches the volume for
    /// the copy and detaches it after. `progress` is told the bytes known written so far.
    /// [`Error::Invalid`] if the volume is smaller than `len`.
    pub async fn import_from(
        &self,
        name: &str,
        mut src: impl Read,
        len: u64,
        mut progress: impl FnMut(u64),
    ) -> Result<Copied> {
        let (vol, created) = match self.open(name).await {
            Ok(v) => (v, false),
            Err(Error::VolumeNotFound(_)) => {
                let size = len.div_ceil(4096).max(1) * 4096;
                self.create_volume(name, size, None).await?;
                (self.open(name).await?, true)
            }
            Err(e) => return Err(e),
        };
        if vol.size() < len {
            return Err(Error::Invalid(format!(
                "the source is {len} bytes but volume \"{name}\" holds only {} bytes",
                vol.size()
            )));
        }
        let mut tasks = VecDeque::new();
        let mut off = 0u64;
        while off < len {
            let n = BLOCK.min(len - off);
            let mut buf = vec![0u8; n as usize];
            src.read_exact(&mut buf).map_err(|source| Error::Local {
                what: format!("reading the source at {off}"),
                source,
            })?;
            let data = Bytes::from(buf);
            let v = vol.clone();
            let at = off;
            tasks.push_back(tokio::spawn(async move {
                if is_zero(&data) {
                    // A fresh volume reads zeroes already.
                    if created {
                        Ok(())
                    } else {
                        v.discard(at, n).await
                    }
                } else {
                    v.write(at, data).await
                }
            }));
            off += n;
            if tasks.len() >= IN_FLIGHT
                && let Some(t) = tasks.pop_front()
            {
                joined(t.await)?;
            }
            progress(off.saturating_sub(BLOCK * tasks.len() as u64));
        }
        for t in tasks {
            joined(t.await)?;
        }
        vol.close().await?;
        progress(len);
        Ok(Copied {
            bytes: len,
            created,
        })
    }
}

impl Volume {
    /// Copies the whole volume into `dst`, which it sizes to the volume (zero blocks are
    /// left as holes) and syncs. `progress` is told the bytes written so far. The size.
    pub async fn export_to(&self, dst: &File, mut progress: impl FnMut(u64)) -> Result<u64> {
        let size = self.size();
        dst.set_len(size).map_err(|source| Error::Local {
            what: format!("sizing the target to {size} bytes"),
            source,
        })?;
        let mut tasks = VecDeque::new();
        let mut off = 0u64;
        let mut done = 0u64;
        while off < size || !tasks.is_empty() {
            while off < size && tasks.len() < IN_FLIGHT {
                let n = BLOCK.min(size - off);
                let v = self.clone();
                let at = off;
                tasks.push_back((at, tokio::spawn(async move { v.read(at, n).await })));
                off += n;
            }
            if let Some((at, t)) = tasks.pop_front() {
                let data = joined(t.await)?;
                // The file was sized with holes: zero blocks need no write.
                if !is_zero(&data) {
                    dst.write_all_at(&data, at).map_err(|source| Error::Local {
                        what: format!("writing the target at {at}"),
                        source,
                    })?;
                }
                done += data.len() as u64;
                progress(done);
            }
        }
        dst.sync_all().map_err(|source| Error::Local {
            what: "syncing the target".into(),
            source,
        })?;
        Ok(size)
    }
}

/// A copy task's result, its panic or cancellation as an error.
fn joined<T>(r: std::result::Result<Result<T>, tokio::task::JoinError>) -> Result<T> {
    r.map_err(|e| Error::Io(format!("copy task failed: {e}")))?
}

/// Whether every byte of `b` is zero.
fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_all_zero_blocks_are_zero() {
        assert!(is_zero(&[]));
        assert!(is_zero(&[0; 4096]));
        let mut b = vec![0u8; 4096];
        b[4095] = 1;
        assert!(!is_zero(&b));
    }
}

//! `volume import` and `volume export`: whole-volume copies to and from files, pipelined
//! (several 4 MiB requests in flight) and thin (zero blocks are not sent or written).

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use tessera_client::{Client, Error as ClientError};
use tessera_proto::control::{ManagerReply, ManagerRequest};

use crate::cli::{Progress, is_zero};

const BLOCK: u64 = 4 << 20;
const IN_FLIGHT: usize = 8;

pub async fn import(client: &Client, name: &str, path: &Path) -> Result<()> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let len = file.metadata()?.len();
    let (vol, fresh) = match client.open(name).await {
        Ok(v) => (v, false),
        Err(ClientError::VolumeNotFound(_)) => {
            let size = len.div_ceil(4096).max(1) * 4096;
            client
                .call(&ManagerRequest::CreateVolume {
                    name: name.into(),
                    size,
                    chunk_size: None,
                })
                .await?;
            (client.open(name).await?, true)
        }
        Err(e) => return Err(e.into()),
    };
    if vol.size() < len {
        bail!(
            "{} is {len} bytes but volume \"{name}\" holds only {} bytes",
            path.display(),
            vol.size()
        );
    }
    let mut progress = Progress::new(len);
    let mut tasks = VecDeque::new();
    let mut off = 0u64;
    while off < len {
        let n = BLOCK.min(len - off);
        let mut buf = vec![0u8; n as usize];
        file.read_exact(&mut buf)
            .with_context(|| format!("reading {} at {off}", path.display()))?;
        let data = Bytes::from(buf);
        let v = vol.clone();
        let at = off;
        tasks.push_back(tokio::spawn(async move {
            if is_zero(&data) {
                if fresh {
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
            t.await??;
        }
        progress.update(off.saturating_sub(BLOCK * tasks.len() as u64));
    }
    for t in tasks {
        t.await??;
    }
    vol.close().await?;
    progress.update(len);
    eprintln!(
        "imported {len} bytes from {} into \"{name}\"",
        path.display()
    );
    Ok(())
}

pub async fn export(client: &Client, name: &str, path: &Path) -> Result<()> {
    let vol = client.open_read_only(name).await?;
    let size = vol.size();
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(size)?;
    let mut progress = Progress::new(size);
    let mut tasks = VecDeque::new();
    let mut off = 0u64;
    let mut done = 0u64;
    while off < size || !tasks.is_empty() {
        while off < size && tasks.len() < IN_FLIGHT {
            let n = BLOCK.min(size - off);
            let v = vol.clone();
            let at = off;
            tasks.push_back((at, tokio::spawn(async move { v.read(at, n).await })));
            off += n;
        }
        if let Some((at, t)) = tasks.pop_front() {
            let data = t.await??;
            // The file was sized with holes: zero blocks need no write.
            if !is_zero(&data) {
                file.write_all_at(&data, at)
                    .with_context(|| format!("writing {} at {at}", path.display()))?;
            }
            done += data.len() as u64;
            progress.update(done);
        }
    }
    file.sync_all()?;
    eprintln!("exported {size} bytes of \"{name}\" to {}", path.display());
    Ok(())
}

/// Creates `name` unless it exists.
pub async fn ensure_volume(client: &Client, name: &str, size: u64) -> Result<()> {
    match client.volume_info(name).await {
        Ok(_) => Ok(()),
        Err(ClientError::VolumeNotFound(_)) => {
            let r = client
                .call(&ManagerRequest::CreateVolume {
                    name: name.into(),
                    size,
                    chunk_size: None,
                })
                .await?;
            match r {
                ManagerReply::Volume(_) => Ok(()),
                other => bail!("unexpected reply {other:?}"),
            }
        }
        Err(e) => Err(e.into()),
    }
}

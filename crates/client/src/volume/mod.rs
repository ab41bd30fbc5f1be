//! An open volume: a handle's state, and splitting its I/O into chunk pieces that run
//! side by side. Where each piece goes is `routes`; how one piece is sent, retried and
//! settled is `retry`.
//!
//! Must never: let a piece's task outlive its request (see [`PieceTasks`]); send a write
//! through a handle without a live attachment.

mod block_status;
mod retry;
mod routes;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use tessera_proto::control::{ChunkRoute, SnapshotInfo, VolumeInfo};
use tessera_proto::data::Op;

use crate::attachment::Attachment;
use crate::{Client, Error, MAX_IO, Result};

pub use block_status::Extent;
use routes::{PageSeen, Route};

/// An open volume. Cheap to clone; all clones share routes and connections.
#[derive(Clone)]
pub struct Volume {
    inner: Arc<VolumeInner>,
}

pub(crate) struct VolumeInner {
    pub(crate) client: Client,
    pub(crate) info: VolumeInfo,
    routes: RwLock<HashMap<u64, Arc<Route>>>,
    /// Held while a page of routes is fetched, so tasks missing the same page wait for one
    /// fetch; it keeps the chunks the last page covered and when it was asked for.
    last_page: tokio::sync::Mutex<Option<PageSeen>>,
    /// The manager predates paged route lookups: look chunks up one at a time, and fence
    /// the groups of the routes it gave at open (all of them, then).
    unpaged: AtomicBool,
    /// The read-write attachment, shared by this client's handles of the volume (`None`:
    /// opened read-only).
    attachment: Option<Arc<Attachment>>,
    /// The volume's snapshot sequence as this client knows it, shared by every handle of
    /// this client to the volume (see `Client::volume_seq`): every write, zeroes and
    /// discard carries it, read when the attempt is sent. Only ever raised.
    seq: Arc<AtomicU64>,
    /// The snapshot this handle reads (`None`: the live volume). Such a handle never
    /// writes.
    snapshot: Option<SnapshotInfo>,
}

/// One piece of a request: inside one chunk, at most [`MAX_IO`] bytes.
#[derive(Clone, Copy)]
struct Piece {
    chunk: u64,
    offset: u32,
    len: u32,
    /// Where the piece starts in the caller's buffer.
    at: usize,
}

impl Volume {
    fn build(
        client: Client,
        info: VolumeInfo,
        chunks: Vec<ChunkRoute>,
        attachment: Option<Arc<Attachment>>,
        snapshot: Option<SnapshotInfo>,
    ) -> Volume {
        // A record from before snapshots says 0: sequence 1.
        let seq = client.volume_seq(info.id, info.seq.max(1));
        let mut learnt = 0;
        let routes = chunks
            .into_iter()
            .filter(|r| !r.peers.is_empty())
            .map(|r| {
                learnt = learnt.max(r.seq);
                (r.chunk, Arc::new(Route::from(r)))
            })
            .collect();
        seq.fetch_max(learnt, Ordering::AcqRel);
        Volume {
            inner: Arc::new(VolumeInner {
                client,
                info,
                routes: RwLock::new(routes),
                last_page: tokio::sync::Mutex::new(None),
                unpaged: AtomicBool::new(false),
                attachment,
                seq,
                snapshot,
            }),
        }
    }

    pub(crate) fn read_only(client: Client, info: VolumeInfo, chunks: Vec<ChunkRoute>) -> Volume {
        Volume::build(client, info, chunks, None, None)
    }

    /// A read-only handle reading `snapshot` of the volume `info` describes: its reads are
    /// as of the snapshot's sequence, its size the volume's when the snapshot was taken.
    pub(crate) fn snapshot(
        client: Client,
        mut info: VolumeInfo,
        chunks: Vec<ChunkRoute>,
        snapshot: SnapshotInfo,
    ) -> Volume {
        // A manager from before sizes were recorded with snapshots says 0.
        if snapshot.size != 0 {
            info.size = snapshot.size;
        }
        Volume::build(client, info, chunks, None, Some(snapshot))
    }

    /// A handle holding `attachment`. Not for writes before [`Volume::fence_all`].
    pub(crate) fn attached(
        client: Client,
        info: VolumeInfo,
        chunks: Vec<ChunkRoute>,
        attachment: Arc<Attachment>,
    ) -> Volume {
        Volume::build(client, info, chunks, Some(attachment), None)
    }

    /// Lets go of the volume: if this is the last handle of this client's attachment,
    /// detaches it now, so that another client may attach at once (dropping the last handle
    /// detaches too, in the background, which a process about to exit may not wait for).
    pub async fn close(self) -> Result<()> {
        let Some(a) = self.inner.attachment.clone() else {
            return Ok(());
        };
        // Whether this was the last handle (no clone of it, no other handle of the client
        // to the volume) is decided under the attach gate.
        drop(self);
        Attachment::detach_if_last(a).await
    }

    /// The writer epoch of this handle's attachment (`None`: opened read-only).
    pub fn epoch(&self) -> Option<u64> {
        self.inner.attachment.as_ref().map(|a| a.epoch)
    }

    /// Fences every group holding a chunk of the volume with this handle's epoch, once per
    /// attachment (concurrent callers wait for the same fencing).
    pub(crate) async fn fence_all(&self) -> Result<()> {
        let Some(a) = &self.inner.attachment else {
            return Ok(());
        };
        a.fenced
            .get_or_try_init(|| self.fence_with(a.epoch))
            .await
            .map(|_| ())
    }

    /// Makes `epoch` the volume's writer epoch in every group holding one of its chunks:
    /// returns once each group has it in its log (see `Op::Fence`).
    pub(crate) async fn fence_with(&self, epoch: u64) -> Result<()> {
        // One chunk of each group addresses the group.
        let groups = self.groups().await?;
        let mut tasks = PieceTasks(Vec::with_capacity(groups.len()));
        for chunk in groups.into_values() {
            let v = self.clone();
            let p = Piece {
                chunk,
                offset: 0,
                len: 0,
                at: 0,
            };
            tasks.0.push(tokio::spawn(async move {
                v.attempts(Op::Fence, p, Bytes::new(), epoch).await
            }));
        }
        for t in &mut tasks.0 {
            t.await
                .map_err(|e| Error::Io(format!("fence task failed: {e}")))??;
        }
        Ok(())
    }

    /// The snapshot this handle reads (`None`: the live volume).
    pub fn snapshot_info(&self) -> Option<&SnapshotInfo> {
        self.inner.snapshot.as_ref()
    }

    /// The volume's snapshot sequence as this client knows it: the one its writes carry.
    pub fn seq(&self) -> u64 {
        self.inner.seq.load(Ordering::Acquire)
    }

    /// A newer sequence of the volume was learnt (a route, or a group's `Resequence`):
    /// every handle of this client to the volume writes with it from now on.
    pub(crate) fn learn_seq(&self, seq: u64) {
        self.inner.seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// The sequence a read is sent with: the snapshot's, or 0 (the live volume).
    fn read_seq(&self) -> u64 {
        self.inner.snapshot.as_ref().map_or(0, |s| s.seq)
    }

    /// The epoch this handle writes with, or why it may not write.
    fn write_epoch(&self) -> Result<u64> {
        if let Some(s) = &self.inner.snapshot {
            return Err(Error::ReadOnly(format!(
                "snapshot \"{}@{}\" is read-only",
                s.volume, s.name
            )));
        }
        match &self.inner.attachment {
            None => Err(Error::ReadOnly(format!(
                "volume \"{}\" was opened read-only",
                self.name()
            ))),
            Some(a) => match a.ended() {
                Some(why) => Err(Error::Fenced(why)),
                None => Ok(a.epoch),
            },
        }
    }

    /// The epoch sent with route lookups and reads: the attachment's, or 0 for a reader.
    fn epoch_or_zero(&self) -> u64 {
        self.epoch().unwrap_or(0)
    }

    /// The volume as the manager described it when this handle was opened.
    pub fn info(&self) -> &VolumeInfo {
        &self.inner.info
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.inner.info.name
    }

    /// The volume's size in bytes, as of when this handle was opened (a snapshot's: the
    /// volume's when the snapshot was taken).
    pub fn size(&self) -> u64 {
        self.inner.info.size
    }

    fn pieces(&self, offset: u64, len: u64) -> Result<Vec<Piece>> {
        self.pieces_of(offset, len, MAX_IO)
    }

    /// [`Volume::pieces`] of at most `max` bytes each.
    fn pieces_of(&self, offset: u64, len: u64, max: u64) -> Result<Vec<Piece>> {
        let size = self.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::OutOfRange {
                volume: self.name().to_string(),
                offset,
                len,
                size,
            });
        }
        let cs = self.inner.info.chunk_size;
        let mut out = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let chunk = pos / cs;
            let in_chunk = pos % cs;
            let n = (cs - in_chunk).min(end - pos).min(max);
            out.push(Piece {
                chunk,
                offset: in_chunk as u32,
                len: n as u32,
                at: (pos - offset) as usize,
            });
            pos += n;
        }
        Ok(out)
    }

    /// `len` bytes from `offset`; never-written ranges read as zeroes.
    /// [`Error::OutOfRange`] past the end.
    pub async fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        let pieces = self.pieces(offset, len)?;
        if pieces.len() == 1 {
            return self.piece(Op::Read, pieces[0], Bytes::new()).await;
        }
        let mut tasks = PieceTasks(Vec::with_capacity(pieces.len()));
        for p in &pieces {
            let v = self.clone();
            let p = *p;
            tasks.0.push(tokio::spawn(async move {
                v.piece(Op::Read, p, Bytes::new()).await
            }));
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for t in &mut tasks.0 {
            let data = t
                .await
                .map_err(|e| Error::Io(format!("read task failed: {e}")))??;
            out.extend_from_slice(&data);
        }
        Ok(out.freeze())
    }

    /// Writes `data` at `offset`; returns once every piece is durable on a majority of
    /// its group. [`Error::ReadOnly`] through a read-only handle, [`Error::Fenced`] once
    /// the attachment was ended.
    pub async fn write(&self, offset: u64, data: Bytes) -> Result<()> {
        let pieces = self.pieces(offset, data.len() as u64)?;
        self.run(Op::Write, pieces, Some(data)).await
    }

    /// Makes the range read as zeroes and keeps it provisioned: its chunks are mapped and
    /// their space allocated on every replica, so later writes there do not run out of it.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let pieces = self.pieces(offset, len)?;
        self.run(Op::WriteZeroes, pieces, None).await
    }

    /// Makes the range read as zeroes and gives its space back (thin again).
    pub async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let pieces = self.pieces(offset, len)?;
        self.run(Op::Discard, pieces, None).await
    }

    /// Every write already acknowledged is durable on a majority of its group's replicas,
    /// so there is nothing to flush.
    pub async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn run(&self, op: Op, pieces: Vec<Piece>, data: Option<Bytes>) -> Result<()> {
        self.write_epoch()?;
        let slice = |p: &Piece| match &data {
            Some(d) => d.slice(p.at..p.at + p.len as usize),
            None => Bytes::new(),
        };
        if pieces.len() == 1 {
            return self
                .piece(op, pieces[0], slice(&pieces[0]))
                .await
                .map(|_| ());
        }
        let mut tasks = PieceTasks(Vec::with_capacity(pieces.len()));
        for p in &pieces {
            let v = self.clone();
            let (p, d) = (*p, slice(p));
            tasks
                .0
                .push(tokio::spawn(async move { v.piece(op, p, d).await }));
        }
        let mut first_err = None;
        for t in &mut tasks.0 {
            let r = t.await.map_err(|e| Error::Io(format!("task failed: {e}")));
            if let Err(e) | Ok(Err(e)) = r.map(|r| r.map(|_| ())) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// The tasks of one request's pieces, aborted if the request is dropped (an NBD connection
/// closed under it): none keeps retrying behind its caller's back, where a write could land
/// after the caller's next writes. An attempt already sent may still be proposed until its
/// deadline.
struct PieceTasks<T>(Vec<tokio::task::JoinHandle<T>>);

impl<T> Drop for PieceTasks<T> {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

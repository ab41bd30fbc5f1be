//! The lazy fill of restored chunks: a chunk restored from a backup is usable at once,
//! linked to it (`RESTORED_PARENT`), and the blocks it has not filled yet are fetched from
//! the backup's stores by its group's leader when a client needs them.
//!
//! Owns, on this node:
//! - completing a client read the Raft node answered `Reply::Unfilled` ([`Lazy::complete_read`]):
//!   the regions holding its unfilled blocks fetched, their bytes copied in, answered
//!   `Reply::Ok`; then each fetched region proposed once as a hydrate (`RaftNode::hydrate`),
//!   not waited for, unless committed lately or past the node's budget of reads' hydrates
//!   in the air (`budget`). Serving before filling is linearizable: the read's applied
//!   index saw those blocks unfilled, so the backup's bytes are their value there.
//! - preparing a partial-block write, zeroing or discard ([`Lazy::prepare_write`]; of
//!   any chunk, see [`Lazy::needs_fill`]): each partial block read through the group's read
//!   path (a probe) and, if unfilled, its region fetched, hydrated and committed, and probed
//!   again, before the write is proposed (the engine refuses to complete such a block from
//!   zeroes, and an entry committed over one stalls every replica's apply). The write is
//!   proposed only if every probe found its block filled; any other answer is the write's.
//! - every hydrate of a region padded with zeroes to a whole region (`blocks::padded`): the
//!   last region of a backup may be short, and the blocks past it are zeroes, not left
//!   unfilled.
//! - the fill of a stalled apply outside the log (`stall`: the Raft node's unfilled hook).
//! - the sources of restored chunks (`source`: the managers' `RestoreSource`, the chunk's
//!   segment), the decoded regions kept for sequential readers, the fetches (`fetch`: one
//!   per object in the air, `flight`, at most `fetch::MAX_FETCHES` on the node), and the
//!   access record (`access`: client reads per chunk, which backups report for a restore's
//!   pre-warm order). A failed fetch forgets the chunk's source only if a copy was missing
//!   or corrupt, never on an outage (`fetch::Failure`).
//!
//! Must never: serve a block whose region failed its hash (a corrupt copy is skipped for
//! the next store's, or the read fails `Unavailable`); write but through the group's log,
//! as a hydrate, which the engine applies only where no layer holds the block (so a
//! client's writes and trims always win, and a hydrate of a chunk no longer restoring does
//! nothing); run on the Raft poller's thread (a read's answer is completed by a task of
//! the runtime); hold a lock across an await; fetch or decode on the runtime's threads
//! what the blocking pool should (decoding is `spawn_blocking`).

mod access;
mod blocks;
mod budget;
mod cache;
mod fetch;
mod flight;
#[cfg(test)]
mod node_tests;
mod source;
mod stall;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tessera_metrics::LazyCounter;
use tessera_proto::control::{ControlError, Hash, ManagerReply, ManagerRequest, REGION_BYTES};
use tessera_proto::data::{ChunkAddr, Op, Reply, Request};
use tessera_raft::RaftNode;
use tokio::sync::{Semaphore, oneshot};

use crate::backup::StoreCache;
use access::AccessRecord;
use blocks::{BLOCK, is_partial, overlay, padded, partial_blocks, region_of, regions_of};
use budget::Recent;
use cache::Bounded;
use fetch::{Failure, Why};
use flight::{Flight, Flights};
use source::{Source, Sources};

static LAZY_READ: tessera_metrics::Lazy = tessera_metrics::Lazy::new(
    "tessera_storage_lazy_read_seconds",
    "A client read of a restored chunk that met unfilled blocks: completed from the backup \
     (source look-up, fetches) to answer",
);
static HYDRATED: LazyCounter = LazyCounter::new(
    "tessera_storage_lazy_hydrated_bytes",
    "Bytes of restored chunks committed as hydrates by the lazy fill of this node",
);

/// How long a source look-up may wait for the managers.
const MANAGER_TIMEOUT: Duration = Duration::from_secs(5);

/// The node's lazy fill: caches, fetches and hydrates in the air, the access record.
pub(crate) struct Lazy {
    node: u64,
    managers: Vec<String>,
    /// How the managers are dialled.
    security: tessera_net::Security,
    stores: Arc<StoreCache>,
    sources: Sources,
    regions: Mutex<Bounded<Hash, Bytes>>,
    fetches: Flights<Hash, Result<Bytes, Failure>>,
    // Fetches in the air on this node (`fetch::MAX_FETCHES` permits).
    fetching: Arc<Semaphore>,
    // By (volume, chunk, offset of the entry in the chunk).
    hydrates: Flights<(u64, u64, u64), Reply>,
    // Bytes (in KiB) of the hydrates reads proposed still in the air
    // (`budget::READ_HYDRATE_KIB` permits): past it a read's hydrate is skipped.
    read_hydrates: Arc<Semaphore>,
    // Hydrate entries committed lately, not proposed again by reads.
    recent: Arc<Recent>,
    // Out-of-band fills of stalled applies, by (group, volume, chunk).
    stalls: Flights<(u64, u64, u64), ()>,
    reads: AccessRecord,
    /// Client reads waiting for their blocks from a store: while any does, this node's
    /// pre-warm fetches one object at a time (`backup::prewarm_window`), so the store
    /// serves the client first.
    pub(crate) reads_waiting: AtomicUsize,
}

/// Counts a client read in [`Lazy::reads_waiting`] while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(n: &'a AtomicUsize) -> Waiting<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        Waiting(n)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Lazy {
    /// The lazy fill of node `node`, asking `managers` (dialled as `security` says) for
    /// sources and opening stores through `stores` (the node's, shared with backups).
    pub(crate) fn new(
        node: u64,
        managers: Vec<String>,
        security: tessera_net::Security,
        stores: Arc<StoreCache>,
    ) -> Lazy {
        Lazy {
            node,
            managers,
            security,
            stores,
            sources: Sources::default(),
            regions: Mutex::new(Bounded::new(fetch::MAX_REGIONS)),
            fetches: Flights::default(),
            fetching: Arc::new(Semaphore::new(fetch::MAX_FETCHES)),
            hydrates: Flights::default(),
            read_hydrates: Arc::new(Semaphore::new(budget::READ_HYDRATE_KIB)),
            recent: Arc::default(),
            stalls: Flights::default(),
            reads: AccessRecord::default(),
            reads_waiting: AtomicUsize::new(0),
        }
    }

    /// A client read of the chunk was served (counted in the access record).
    pub(crate) fn count_read(&self, volume: u64, chunk: u64) {
        self.reads.count(volume, chunk);
    }

    /// The volume's `chunks` were dropped (the volume deleted): forgotten by the access
    /// record.
    pub(crate) fn chunks_dropped(&self, volume: u64, chunks: &[u64]) {
        self.reads.forget(volume, chunks);
    }

    /// Client reads of the chunk this node served (the access record).
    pub(crate) fn reads(&self, volume: u64, chunk: u64) -> u64 {
        self.reads.reads(volume, chunk)
    }

    /// Whether `req` must wait for [`Lazy::prepare_write`]: a write, zeroing or discard
    /// covering a block in part, of any chunk. Not only of chunks this node sees
    /// restoring: a restore's Link may be committed (the volume already attachable) and not
    /// yet applied here, or a new leader may not have applied it yet, and a partial write
    /// proposed then would reach an unfilled block at apply and stall the group. The probe
    /// is a linearizable read, so it sees every Link committed before the write was sent.
    /// Costs a partial write one leader read of its partial blocks; whole-block writes
    /// nothing.
    pub(crate) fn needs_fill(req: &Request) -> bool {
        matches!(req.op, Op::Write | Op::WriteZeroes | Op::Discard)
            && is_partial(req.offset, req.len)
    }

    /// The answer to a client read of `data.len()` bytes at `offset` of the chunk at
    /// `addr`, which found `blocks` unfilled: `Ok` with the backup's bytes in their place,
    /// or `Unavailable` saying what failed (logged). Proposes the hydrate of each region
    /// fetched (padded to a whole region), once, without waiting for it; skipped if the
    /// same entry committed lately, or if the node's budget of reads' hydrates in the air
    /// is spent (the read is answered all the same; the pre-warm fills it later).
    pub(crate) async fn complete_read(
        self: &Arc<Self>,
        raft: &RaftNode,
        addr: ChunkAddr,
        offset: u32,
        data: Bytes,
        blocks: Vec<u32>,
    ) -> Reply {
        let started = std::time::Instant::now();
        let waiting = Waiting::new(&self.reads_waiting);
        let filled = match self.source(addr.volume, addr.chunk).await {
            Ok(source) => {
                self.fill(&source, addr.chunk, u64::from(offset), data, &blocks)
                    .await
            }
            Err(e) => Err(e),
        };
        drop(waiting);
        LAZY_READ.observe_since(started);
        match filled {
            Ok((read, fetched)) => {
                for (r, bytes) in fetched {
                    let at = u64::from(r) * REGION_BYTES;
                    self.hydrate_for_read(raft, addr, at, padded(bytes));
                }
                Reply::Ok(read)
            }
            Err(e) => {
                tracing::warn!(
                    volume = addr.volume,
                    chunk = addr.chunk,
                    "read of unfilled blocks failed: {e}"
                );
                self.failed(addr.volume, addr.chunk, &e);
                Reply::Unavailable(e.msg)
            }
        }
    }

    /// Makes sure every block `req` (a write, zeroing or discard) covers in part is filled
    /// before it is proposed: each read through the group's read path (a probe), and an
    /// unfilled one fetched and hydrated, waiting for its commit, then probed again. `Ok`
    /// only if every probe answered `Ok` (or `Unfilled`, then `Ok` once filled): any other
    /// answer (`NotLeader`, `Unavailable` from a leader that has not committed yet,
    /// `GroupNotFound`, ...) is the write's, with nothing proposed, so the client's retry is
    /// safe. A write proposed on any other answer could be acknowledged at commit and stall
    /// every replica at apply. `Err` is the answer to give the request instead (the probe's,
    /// the hydrate's, `Unavailable` if the fetch failed or the block is still unfilled,
    /// `Expired` if its deadline passed before or during the fill, as Raft would answer).
    pub(crate) async fn prepare_write(
        self: &Arc<Self>,
        raft: &RaftNode,
        req: &Request,
    ) -> Result<(), Reply> {
        self.prepare_write_probed(raft, req, |addr, b| probe(raft, addr, b))
            .await
    }

    /// [`Lazy::prepare_write`], each block read by `probe` (the group's read path; a test's
    /// stand-in answering as a node that lost its lead would).
    async fn prepare_write_probed<P, F>(
        self: &Arc<Self>,
        raft: &RaftNode,
        req: &Request,
        probe: P,
    ) -> Result<(), Reply>
    where
        P: Fn(ChunkAddr, u32) -> F,
        F: Future<Output = Reply>,
    {
        let addr = req.addr;
        expired(req)?;
        for b in partial_blocks(req.offset, req.len) {
            match probe(addr, b).await {
                Reply::Ok(_) => continue,
                Reply::Unfilled { .. } => {}
                other => return Err(other),
            }
            self.fill_for_write(raft, addr, b).await?;
            match probe(addr, b).await {
                Reply::Ok(_) => {}
                Reply::Unfilled { .. } => {
                    return Err(Reply::Unavailable(format!(
                        "restore: block {b} of chunk {} still unfilled after its hydrate \
                         committed",
                        addr.chunk
                    )));
                }
                other => return Err(other),
            }
            expired(req)?;
        }
        Ok(())
    }

    /// Fetches the region of unfilled block `b` and hydrates it (padded to cover `b`),
    /// waiting for the commit; a region without an object hydrates `b` alone, as zeroes.
    async fn fill_for_write(
        self: &Arc<Self>,
        raft: &RaftNode,
        addr: ChunkAddr,
        b: u32,
    ) -> Result<(), Reply> {
        let failed = |e: Failure| {
            tracing::warn!(
                volume = addr.volume,
                chunk = addr.chunk,
                "partial write over an unfilled block failed: {e}"
            );
            self.failed(addr.volume, addr.chunk, &e);
            Reply::Unavailable(e.msg)
        };
        let source = self.source(addr.volume, addr.chunk).await.map_err(failed)?;
        let r = region_of(b);
        let (offset, data) = match source.object(r) {
            Some(h) => (
                u64::from(r) * REGION_BYTES,
                padded(
                    self.region(&source, addr.chunk, r, h)
                        .await
                        .map_err(failed)?,
                ),
            ),
            // A region the backup holds as zeroes: only this block, as zeroes.
            None => (u64::from(b) * BLOCK, Bytes::from(vec![0u8; BLOCK as usize])),
        };
        match self.hydrate(raft, addr, offset, data).await {
            Reply::Ok(_) => Ok(()),
            other => Err(other),
        }
    }

    /// The read `data` (at `offset` of `chunk`) with the bytes of `blocks` (ascending)
    /// copied in from `source`'s regions, and the regions fetched (to hydrate). A region
    /// without an object leaves its blocks as the zeroes they read as.
    async fn fill(
        self: &Arc<Self>,
        source: &Arc<Source>,
        chunk: u64,
        offset: u64,
        data: Bytes,
        blocks: &[u32],
    ) -> Result<(Bytes, Vec<(u32, Bytes)>), Failure> {
        let wanted = regions_of(blocks)
            .into_iter()
            .filter_map(|r| source.object(r).map(|h| (r, h)));
        let fetched =
            futures::future::try_join_all(wanted.map(|(r, h)| async move {
                self.region(source, chunk, r, h).await.map(|b| (r, b))
            }))
            .await
            .map_err(|e| Failure::new(e.why, format!("{e} (backup {})", source.backup)))?;
        if fetched.is_empty() {
            return Ok((data, fetched));
        }
        let mut read = data.to_vec();
        for &b in blocks {
            if let Some((_, region)) = fetched.iter().find(|(r, _)| *r == region_of(b)) {
                overlay(&mut read, offset, b, region);
            }
        }
        Ok((Bytes::from(read), fetched))
    }

    /// The bytes of region `r` of `chunk` (object `hash`): kept, or fetched (one fetch per
    /// object in the air, shared by every caller meanwhile; at most `fetch::MAX_FETCHES`
    /// in the air on the node) and kept.
    async fn region(
        self: &Arc<Self>,
        source: &Arc<Source>,
        chunk: u64,
        r: u32,
        hash: Hash,
    ) -> Result<Bytes, Failure> {
        if let Some(b) = self.lock_regions().get(&hash) {
            return Ok(b);
        }
        let (this, specs) = (self.clone(), source.stores.clone());
        let flight = self.fetches.join(
            hash,
            move || {
                Box::pin(async move {
                    let _permit = this.fetching.acquire().await;
                    let got =
                        fetch::fetch_region(&this.stores, this.node, &specs, hash, chunk, r).await;
                    if let Ok(b) = &got {
                        this.lock_regions().insert(hash, b.clone());
                    }
                    got
                })
            },
            |e| {
                Err(Failure::new(
                    Why::Transport,
                    format!("restore: a fetch task failed: {e}"),
                ))
            },
        );
        flight.await
    }

    /// Proposes `data` at `offset` of the chunk at `addr` as a hydrate, unless the same
    /// entry is in the air (then joins it); the flight's answer is the commit's. A
    /// committed entry is remembered a few seconds (`recent`), for reads.
    fn hydrate(
        self: &Arc<Self>,
        raft: &RaftNode,
        addr: ChunkAddr,
        offset: u64,
        data: Bytes,
    ) -> Flight<Reply> {
        let (raft, recent) = (raft.clone(), self.recent.clone());
        self.hydrates.join(
            (addr.volume, addr.chunk, offset),
            move || {
                Box::pin(async move {
                    let (tx, rx) = oneshot::channel();
                    let len = data.len() as u64;
                    // Below the chunk limit (4 GiB): the offset of a block of the chunk.
                    raft.hydrate(
                        addr.group,
                        addr.volume,
                        addr.chunk,
                        offset as u32,
                        data,
                        Box::new(move |r| {
                            let _ = tx.send(r);
                        }),
                    );
                    let reply = rx.await.unwrap_or_else(|_| {
                        Reply::Unavailable("storage node is shutting down".into())
                    });
                    match &reply {
                        Reply::Ok(_) => {
                            HYDRATED.add(len);
                            recent.insert((addr.volume, addr.chunk, offset));
                        }
                        other => tracing::warn!(
                            volume = addr.volume,
                            chunk = addr.chunk,
                            offset,
                            "restore: hydrate not committed: {other:?}"
                        ),
                    }
                    reply
                })
            },
            |e| Reply::Unavailable(format!("restore: a hydrate task failed: {e}")),
        )
    }

    /// Proposes a read's hydrate of `data` at `offset` (see [`Lazy::complete_read`]),
    /// not waited for.
    fn hydrate_for_read(
        self: &Arc<Self>,
        raft: &RaftNode,
        addr: ChunkAddr,
        offset: u64,
        data: Bytes,
    ) {
        if self.recent.contains(&(addr.volume, addr.chunk, offset)) {
            return;
        }
        let kib = u32::try_from(data.len().div_ceil(1024)).unwrap_or(u32::MAX);
        let Ok(permit) = self.read_hydrates.clone().try_acquire_many_owned(kib) else {
            tracing::debug!(
                volume = addr.volume,
                chunk = addr.chunk,
                offset,
                "restore: reads' hydrates in the air at their bound; this one is skipped"
            );
            return;
        };
        let flight = self.hydrate(raft, addr, offset, data);
        // In the air on its own: the read does not wait for it.
        tokio::spawn(async move {
            flight.await;
            drop(permit);
        });
    }

    /// A look-up or fetch of the chunk's source failed: forgets the source unless the
    /// failure was the transport's (an outage: a retry needs only the fetch again).
    fn failed(&self, volume: u64, chunk: u64, e: &Failure) {
        if e.why != Why::Transport {
            self.sources.forget(volume, chunk);
        }
    }

    /// The source of the chunk: cached, or asked of the managers.
    async fn source(self: &Arc<Self>, volume: u64, chunk: u64) -> Result<Arc<Source>, Failure> {
        let this = self.clone();
        self.sources
            .get(volume, chunk, move || async move {
                this.lookup(volume, chunk).await
            })
            .await
    }

    async fn lookup(&self, volume: u64, chunk: u64) -> Result<Source, Failure> {
        let req = ManagerRequest::RestoreSource {
            volume_id: volume,
            chunk,
        };
        let answer =
            match tessera_net::call_managers(&self.security, &self.managers, &req, MANAGER_TIMEOUT)
                .await
            {
                Ok(ManagerReply::RestoreSource(s)) => *s,
                Ok(other) => {
                    return Err(Failure::new(
                        Why::Transport,
                        format!(
                            "restore: the managers answered the source of volume {volume} chunk \
                         {chunk} with {other:?}"
                        ),
                    ));
                }
                Err(tessera_net::NetError::Control(ControlError::NotFound(m))) => {
                    return Err(Failure::new(
                        Why::Gone,
                        format!(
                            "restore: the managers know no restore of volume {volume} chunk \
                         {chunk}: {m}"
                        ),
                    ));
                }
                Err(e) => {
                    return Err(Failure::new(
                        Why::Transport,
                        format!(
                            "restore: asking the managers for the source of volume {volume} \
                         chunk {chunk}: {e}"
                        ),
                    ));
                }
            };
        source::source_of(&self.stores, self.node, chunk, answer).await
    }

    fn lock_regions(&self) -> std::sync::MutexGuard<'_, Bounded<Hash, Bytes>> {
        self.regions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads block `b` of the chunk at `addr` through the group's read path (linearizable on
/// the leader): `Ok` filled, `Unfilled`, or why it could not be read.
async fn probe(raft: &RaftNode, addr: ChunkAddr, b: u32) -> Reply {
    let at = u64::from(b) * BLOCK;
    let probe = Request::other(Op::Read, addr, at as u32, BLOCK as u32);
    let (tx, rx) = oneshot::channel();
    raft.submit(
        probe,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.await
        .unwrap_or_else(|_| Reply::Unavailable("storage node is shutting down".into()))
}

/// `Expired` if `req`'s deadline has passed (as Raft answers a request it will not
/// propose).
fn expired(req: &Request) -> Result<(), Reply> {
    if req.expired() {
        return Err(Reply::Expired(format!(
            "request to group {} passed its deadline while its partial blocks were filled; \
             not applied",
            req.addr.group
        )));
    }
    Ok(())
}

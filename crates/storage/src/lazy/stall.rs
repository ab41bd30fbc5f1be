//! The storage node's side of a stalled apply (`tessera_raft::UnfilledHook`): a committed
//! entry (acknowledged at commit) needs blocks of a restored chunk not filled yet, so no
//! later entry can fill them first. The blocks' regions are fetched (the same sources,
//! fetches and verification as reads, one fill per chunk in the air) and written with
//! `ChunkStore::hydrate` straight into the group's replica, outside the log: every replica
//! fills alike from the backup's immutable, verified bytes, and a hydrate fills only blocks
//! no layer holds of a chunk still linked to its backup, so a client's writes and trims
//! always win. Raft retries the apply, and calls the hook again while the stall lasts.
//! Each fill first marks its blocks dirty in the Raft node's scrub watches
//! (`Watches::touched`), as apply does for an entry: a scrub must never take them for what
//! they were at its mark.
//!
//! Must never: block the Raft poller (the hook only spawns); hydrate on the runtime's
//! threads (it waits for an fsync: `spawn_blocking`); fill a block from anything but its
//! verified region, or zeroes where the backup holds none.

use std::sync::Arc;

use bytes::Bytes;
use tessera_engine::ChunkStores;
use tessera_proto::control::REGION_BYTES;
use tessera_raft::RaftNode;
use tessera_raft::scrub::Watches;

use super::Lazy;
use super::blocks::{BLOCK, padded, region_of, regions_of};
use super::fetch::{Failure, Why};

impl Lazy {
    /// Installs the node's hook for stalled applies on `raft` (at node start), filling
    /// from the replicas in `chunks`. Called on the poller: it only spawns a task.
    pub(crate) fn on_unfilled(self: &Arc<Self>, raft: &RaftNode, chunks: Arc<ChunkStores>) {
        let rt = tokio::runtime::Handle::current();
        let lazy = self.clone();
        let watches = raft.watches();
        raft.on_unfilled(Arc::new(move |group, volume, chunk, blocks| {
            let (lazy, chunks, watches) = (lazy.clone(), chunks.clone(), watches.clone());
            rt.spawn(async move {
                lazy.fill_stalled((chunks, watches), group, volume, chunk, blocks)
                    .await
            });
        }));
    }

    /// Fills `blocks` of the chunk in group `group`'s replica outside the log (see the
    /// module doc); one fill per chunk in the air (a call meanwhile joins it: the hook is
    /// called again while the stall lasts). Failures are logged. `watches`: the Raft node's
    /// scrub watches, marked before each fill (see the module doc).
    pub(crate) async fn fill_stalled(
        self: &Arc<Self>,
        (chunks, watches): (Arc<ChunkStores>, Arc<Watches>),
        group: u64,
        volume: u64,
        chunk: u64,
        blocks: Vec<u32>,
    ) {
        let this = self.clone();
        let flight = self.stalls.join(
            (group, volume, chunk),
            move || {
                Box::pin(async move {
                    match this
                        .fill_out_of_band((&chunks, &watches), group, volume, chunk, &blocks)
                        .await
                    {
                        Ok(()) => tracing::info!(
                            group,
                            volume,
                            chunk,
                            ?blocks,
                            "restore: filled blocks outside the log for a stalled apply"
                        ),
                        Err(e) if e.why == Why::Gone => tracing::error!(
                            group,
                            volume,
                            chunk,
                            "restore: an apply of group {group} is stalled on unfilled \
                             blocks of chunk {chunk}, and its backup source is gone: {e}"
                        ),
                        Err(e) => {
                            this.failed(volume, chunk, &e);
                            tracing::warn!(
                                group,
                                volume,
                                chunk,
                                "restore: filling blocks for a stalled apply failed: {e}"
                            );
                        }
                    }
                })
            },
            |e| tracing::warn!("restore: a stalled apply's fill task failed: {e}"),
        );
        flight.await;
    }

    async fn fill_out_of_band(
        self: &Arc<Self>,
        (chunks, watches): (&ChunkStores, &Watches),
        group: u64,
        volume: u64,
        chunk: u64,
        blocks: &[u32],
    ) -> Result<(), Failure> {
        let Some(store) = chunks.existing(group) else {
            return Err(Failure::new(
                Why::Transport,
                format!("group {group} is not hosted here"),
            ));
        };
        let mut blocks = blocks.to_vec();
        blocks.sort_unstable();
        blocks.dedup();
        let source = self.source(volume, chunk).await?;
        let mut fills: Vec<(u64, Bytes)> = Vec::new();
        for r in regions_of(&blocks) {
            match source.object(r) {
                Some(h) => {
                    let bytes = self.region(&source, chunk, r, h).await?;
                    fills.push((u64::from(r) * REGION_BYTES, padded(bytes)));
                }
                // The backup holds the region as zeroes: the blocks named, as zeroes.
                None => {
                    let zero = Bytes::from(vec![0u8; BLOCK as usize]);
                    for &b in blocks.iter().filter(|&&b| region_of(b) == r) {
                        fills.push((u64::from(b) * BLOCK, zero.clone()));
                    }
                }
            }
        }
        for (offset, data) in fills {
            // Dirty before the fill, as apply marks an entry's blocks: a scrub scan reading
            // them meanwhile must not report them as of its mark (clean), or a repair
            // could "un-hydrate" them.
            let first = offset / BLOCK;
            let count = (offset + data.len() as u64).div_ceil(BLOCK) - first;
            watches.touched(group, volume, chunk, first, count);
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.hydrate(volume, chunk, offset, &data))
                .await
                .map_err(|e| Failure::new(Why::Transport, format!("a hydrate task failed: {e}")))?
                .map_err(|e| {
                    Failure::new(
                        Why::Transport,
                        format!("hydrating {offset} of chunk {chunk}: {e}"),
                    )
                })?;
        }
        Ok(())
    }
}

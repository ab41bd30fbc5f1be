//! Serving a peer's catch-up: the replica a connection copies from, pinned for the copy
//! ([`CopySources`]), and its layer lists, checksums and data ([`serve_catch_up`]), straight
//! from the chunk files. Only nodes ask for these (see `authz`).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tessera_engine::chunk::{DropPin, LayerKey, layer_of};
use tessera_engine::{ChunkStore, ChunkStores};
use tessera_proto::copy::{ChunkEntry, ChunkListPage};
use tessera_proto::data::{Op, Reply, Request};
use tessera_proto::frame::MAX_BODY;

use crate::replies;

/// The replicas a connection copies from: each one as the connection's first catch-up
/// request of its group found it. A copy runs over one connection (see `fetch.rs`); if its
/// replica is destroyed meanwhile, and perhaps hosted anew and empty, its later requests must
/// fail rather than read what is there now: a missing chunk file reads as zeroes, with
/// matching checksums, which the copier would install as the group's data.
/// Weak: a connection held open must not keep a destroyed replica's store (and its open
/// files) alive; it also keeps the allocation, so a new store never takes its address.
///
/// Each source is pinned ([`ChunkStore::pin_dropped`]) from that first request until the
/// connection closes: a merge's drop after the copy listed a chunk hides layers the copy
/// will still ask for, and their files must stay for the raw reads to serve them (read as
/// absent, they would be cleared, and the new replica would replay the merge from before
/// it without its sources). Hence the `served_` reads, which serve such a layer.
#[derive(Default)]
pub(crate) struct CopySources(HashMap<u64, (std::sync::Weak<ChunkStore>, DropPin)>);

impl CopySources {
    /// The replica of `group` this connection copies from, while it is still hosted here.
    pub(crate) fn source(&mut self, chunks: &ChunkStores, group: u64) -> Option<Arc<ChunkStore>> {
        let hosted = chunks.existing(group)?;
        let first = self
            .0
            .entry(group)
            .or_insert_with(|| (Arc::downgrade(&hosted), hosted.pin_dropped()));
        std::ptr::eq(first.0.as_ptr(), Arc::as_ptr(&hosted)).then_some(hosted)
    }
}

/// A peer catching up (copying a replica) asks for the group's layer list, a layer's
/// checksums or its data, from `store` (see [`CopySources`]). Served straight from the
/// chunk files (they hold at least what the Raft snapshot the peer got stands for), one
/// layer as stored at a time (`req.seq`: 0 or 1 is layer 1, as older peers ask); blocks
/// are verified as on every read.
pub(crate) fn serve_catch_up(
    chunks: &ChunkStores,
    store: &Arc<ChunkStore>,
    req: &Request,
) -> Reply {
    let (v, c) = (req.addr.volume, req.addr.chunk);
    let layer = layer_of(req.seq);
    let res = match req.op {
        Op::CatchUpList => match list_page(store, req) {
            Ok(Some(b)) => Ok(b),
            Ok(None) => {
                return Reply::Io(format!(
                    "group {} holds too many chunks to list in one frame; the node copying \
                     it must ask for pages (upgrade it)",
                    req.addr.group
                ));
            }
            Err(e) => Err(e),
        },
        Op::CatchUpChecksums => {
            store.served_checksums_in(v, c, layer, u64::from(req.offset), u64::from(req.len))
        }
        Op::CatchUpRead => {
            store.served_read_in(v, c, layer, u64::from(req.offset), u64::from(req.len))
        }
        _ => return Reply::BadRequest("not a catch-up request".into()),
    };
    // The replica may have been destroyed during the read, its files deleted under it and
    // read as zeroes. `ChunkStores::remove` forgets a store before it deletes its files: one
    // still hosted now was read intact.
    let hosted = chunks.existing(req.addr.group);
    if !hosted.is_some_and(|h| Arc::ptr_eq(&h, store)) {
        return Reply::GroupNotFound;
    }
    match res {
        Ok(b) => Reply::Ok(b),
        Err(e) => replies::engine_error(e),
    }
}

/// The page of `store`'s list `req` asks for ([`ChunkListPage`]): its layers and links for
/// a peer that asks for layers, its chunks (layer 1 of each) for an older one; or, for a
/// node from before paging (`len` 0), the whole chunk list, `None` if it does not fit one
/// frame.
fn list_page(store: &ChunkStore, req: &Request) -> tessera_engine::Result<Option<Bytes>> {
    if ChunkListPage::wants_layers(req) {
        let list = store.served_list_layers()?;
        let (keys, more) =
            ChunkListPage::select(&list, |k: &LayerKey| (k.volume, k.chunk, k.layer), req);
        let mut entries = Vec::with_capacity(keys.len());
        let mut link = None;
        for k in keys {
            // One look-up per chunk, not per layer.
            let l = match link {
                Some((v, c, l)) if (v, c) == (k.volume, k.chunk) => l,
                _ => store.link_of(k.volume, k.chunk)?,
            };
            link = Some((k.volume, k.chunk, l));
            entries.push(ChunkEntry {
                volume: k.volume,
                chunk: k.chunk,
                layer: k.layer,
                blocks: store.served_blocks_in(k.volume, k.chunk, k.layer)?,
                link: l,
            });
        }
        return Ok(Some(
            ChunkListPage {
                entries,
                more,
                layers: true,
            }
            .encode(),
        ));
    }
    // A node from before layers copies layer 1 and no link: of a group holding more, that
    // copy would be wrong, so it gets none.
    if store.holds_layers_or_links() {
        return Err(tessera_engine::Error::Refused(
            "this group holds snapshot layers or clone links, which the copying node (from \
             before snapshots) cannot copy: upgrade it"
                .into(),
        ));
    }
    let list = store.list_chunks()?;
    let entry = |&(volume, chunk): &(u64, u64)| -> tessera_engine::Result<ChunkEntry> {
        Ok(ChunkEntry {
            volume,
            chunk,
            layer: 1,
            blocks: store.chunk_blocks(volume, chunk)?,
            link: None,
        })
    };
    if req.len == 0 {
        // The reply's status byte, then 24 bytes a chunk.
        if 1 + list.len().saturating_mul(24) > MAX_BODY as usize {
            return Ok(None);
        }
        let entries = list.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
        return Ok(Some(ChunkListPage::encode_unpaged(&entries)));
    }
    let (keys, more) = ChunkListPage::select(&list, |&(v, c)| (v, c, 1), req);
    let entries = keys.iter().map(entry).collect::<Result<Vec<_>, _>>()?;
    Ok(Some(
        ChunkListPage {
            entries,
            more,
            layers: false,
        }
        .encode(),
    ))
}

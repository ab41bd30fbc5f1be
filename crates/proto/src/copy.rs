//! Copying a replica between nodes (a Raft catch-up): the group's chunk layers, in pages.
//!
//! A `CatchUpList` request ([`crate::data::Op::CatchUpList`]) names a cursor and a page size:
//! the entries at or after the cursor, in order, at most `len` of them (capped at
//! [`MAX_LIST_PAGE`], or [`MAX_LAYER_PAGE`] for layers). The answer, the body of a
//! [`crate::data::Reply::Ok`], is a [`ChunkListPage`] (little-endian), in one of two layouts
//! its flags tell apart:
//!
//! ```text
//! chunks: count u32 | flags u32 (bit 0: more follow; bit 1 clear) | count × entry (24 bytes):
//!         volume u64 | chunk u64 | blocks u64
//! layers: count u32 | flags u32 (bit 0: more follow; bit 1 set)   | count × entry (72 bytes):
//!         volume u64 | chunk u64 | layer u64 | blocks u64 | link u64 (bit 0: linked)
//!         | parent u64 | parent_seq u64 | reserved u64 (0) | reserved u64 (0)
//! ```
//! The first (chunks) lists each chunk's layer 1 only; the cursor is `(addr.volume,
//! addr.chunk)`. The second (layers) lists every layer of every chunk, and every linked
//! chunk (with its link, on each of its entries), in `(volume, chunk, layer)` order; the
//! cursor is `(addr.volume, addr.chunk, seq)`. A requester asks for layers by a cursor
//! layer (`Request::seq`) of at least 1; a node from before layers ignores it and answers
//! with chunks, which the requester takes as layer 1 of each (its next cursor then moves
//! by chunks). A request with `seq` 0 (a node from before layers) is answered with chunks.
//!
//! Compatibility with nodes from before paging, whose requests carry `len` 0 and whose
//! answers are the whole list as bare triples: a request with `len` 0 is answered with the
//! bare list (refused if it does not fit one frame), and [`ChunkListPage::decode`] takes a
//! bare list for a last page. The layouts never meet: a paged answer's length is 8 more
//! than a multiple of 24 (both entry sizes are multiples of 24), a bare list's is a
//! multiple of 24.

use bytes::{BufMut, Bytes, BytesMut};

use crate::data::{ChunkAddr, Op, Request};
use crate::{DecodeError, Reader};

/// Most chunks one page lists: 1.5 MiB, a fifth of [`crate::frame::MAX_BODY`].
pub const MAX_LIST_PAGE: u32 = 64 * 1024;
/// Most layers one page of layers lists (1.5 MiB as well).
pub const MAX_LAYER_PAGE: u32 = MAX_LIST_PAGE / 3;
const HEADER: usize = 8;
const ENTRY: usize = 24;
const LAYER_ENTRY: usize = 72;
const MORE: u32 = 1;
const LAYERS: u32 = 2;
const LINKED: u64 = 1;

/// One layer of one chunk a replica holds, its length in blocks, and the chunk's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChunkEntry {
    /// The volume's id.
    pub volume: u64,
    /// The chunk's index in the volume.
    pub chunk: u64,
    /// The layer (at least 1; 1 from a node from before layers).
    pub layer: u64,
    /// How many [`crate::BLOCK_SIZE`] blocks the replica's layer file holds: the copier
    /// compares and fetches that many.
    pub blocks: u64,
    /// The chunk reads through to `(parent volume, parent seq)` (see
    /// [`crate::command::CmdOp::Link`]); the same on every entry of the chunk.
    pub link: Option<(u64, u64)>,
}

impl ChunkEntry {
    /// Where the entry sorts: `(volume, chunk, layer)`.
    pub fn key(&self) -> (u64, u64, u64) {
        (self.volume, self.chunk, self.layer)
    }
}

/// A page of a group's chunk list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkListPage {
    /// In `(volume, chunk, layer)` order, strictly increasing.
    pub entries: Vec<ChunkEntry>,
    /// More entries follow the last one: ask again from [`ChunkListPage::next_cursor`].
    pub more: bool,
    /// The layers layout (every layer listed); otherwise chunks (layer 1 of each).
    pub layers: bool,
}

impl ChunkListPage {
    /// The request for the page of group `group`'s layers at or after `cursor` `(volume,
    /// chunk, layer)`, at most `limit` of them (a cursor layer of 0 is 1: layers are
    /// always asked for).
    pub fn request(group: u64, cursor: (u64, u64, u64), limit: u32) -> Request {
        let addr = ChunkAddr {
            group,
            volume: cursor.0,
            chunk: cursor.1,
        };
        let mut req = Request::other(Op::CatchUpList, addr, 0, limit.clamp(1, MAX_LIST_PAGE));
        req.seq = cursor.2.max(1);
        req
    }

    /// Whether `req` asks for the layers layout (see the module doc).
    pub fn wants_layers(req: &Request) -> bool {
        req.seq != 0
    }

    /// The part of a source's whole list, sorted by `key`, that `req` asks for (at most
    /// [`MAX_LIST_PAGE`] items, [`MAX_LAYER_PAGE`] for layers), and whether more items
    /// follow it. For chunks, `key`'s layer is ignored.
    pub fn select<'a, T>(
        sorted: &'a [T],
        key: impl Fn(&T) -> (u64, u64, u64),
        req: &Request,
    ) -> (&'a [T], bool) {
        let (cursor, max) = if Self::wants_layers(req) {
            ((req.addr.volume, req.addr.chunk, req.seq), MAX_LAYER_PAGE)
        } else {
            ((req.addr.volume, req.addr.chunk, 0), MAX_LIST_PAGE)
        };
        let limit = req.len.clamp(1, max) as usize;
        let start = sorted.partition_point(|e| key(e) < cursor);
        let rest = &sorted[start..];
        (&rest[..rest.len().min(limit)], rest.len() > limit)
    }

    /// Where the page after this one starts (`None`: this was the last).
    pub fn next_cursor(&self) -> Option<(u64, u64, u64)> {
        if !self.more {
            return None;
        }
        let last = self.entries.last()?;
        if self.layers
            && let Some(l) = last.layer.checked_add(1)
        {
            return Some((last.volume, last.chunk, l));
        }
        match last.chunk.checked_add(1) {
            Some(c) => Some((last.volume, c, 1)),
            None => Some((last.volume.checked_add(1)?, 0, 1)),
        }
    }

    /// The answer body (a paged layout: layers or chunks, as [`ChunkListPage::layers`]).
    pub fn encode(&self) -> Bytes {
        let size = if self.layers { LAYER_ENTRY } else { ENTRY };
        let mut b = BytesMut::with_capacity(HEADER + self.entries.len() * size);
        b.put_u32_le(self.entries.len() as u32);
        let mut flags = if self.more { MORE } else { 0 };
        if self.layers {
            flags |= LAYERS;
        }
        b.put_u32_le(flags);
        for e in &self.entries {
            b.put_u64_le(e.volume);
            b.put_u64_le(e.chunk);
            if self.layers {
                b.put_u64_le(e.layer);
            }
            b.put_u64_le(e.blocks);
            if self.layers {
                let (parent, parent_seq) = e.link.unwrap_or((0, 0));
                b.put_u64_le(if e.link.is_some() { LINKED } else { 0 });
                b.put_u64_le(parent);
                b.put_u64_le(parent_seq);
                b.put_u64_le(0);
                b.put_u64_le(0);
            }
        }
        b.freeze()
    }

    /// The whole list in the layout of nodes from before paging (bare triples).
    pub fn encode_unpaged(entries: &[ChunkEntry]) -> Bytes {
        let mut b = BytesMut::with_capacity(entries.len() * ENTRY);
        for e in entries {
            b.put_u64_le(e.volume);
            b.put_u64_le(e.chunk);
            b.put_u64_le(e.blocks);
        }
        b.freeze()
    }

    /// Decodes an untrusted answer: a page of either layout, or a bare list from an older
    /// node (taken as the last page). Entries out of order, or a page saying more follow
    /// but listing nothing (a cursor that would not move), are refused.
    pub fn decode(body: &[u8]) -> Result<ChunkListPage, DecodeError> {
        let (count, flags, mut r) = if body.len().is_multiple_of(ENTRY) {
            (body.len() / ENTRY, 0, Reader::new(body))
        } else {
            let mut r = Reader::new(body);
            let count = r.u32()? as usize;
            let flags = r.u32()?;
            if flags & !(MORE | LAYERS) != 0 {
                return Err(DecodeError::Invalid(format!("chunk list flags {flags:#x}")));
            }
            let size = if flags & LAYERS != 0 {
                LAYER_ENTRY
            } else {
                ENTRY
            };
            if r.remaining() != count.saturating_mul(size) {
                return Err(DecodeError::Invalid(format!(
                    "chunk list of {count} entries in {} bytes",
                    body.len()
                )));
            }
            (count, flags, r)
        };
        let (more, layers) = (flags & MORE != 0, flags & LAYERS != 0);
        let mut entries: Vec<ChunkEntry> = Vec::with_capacity(count);
        for _ in 0..count {
            let e = if layers {
                let (volume, chunk, layer, blocks) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
                let (linked, parent, parent_seq) = (r.u64()?, r.u64()?, r.u64()?);
                let (_, _) = (r.u64()?, r.u64()?);
                if linked & !LINKED != 0 || layer == 0 {
                    return Err(DecodeError::Invalid(format!(
                        "chunk list entry of volume {volume} chunk {chunk}: layer {layer}, \
                         link flags {linked:#x}"
                    )));
                }
                ChunkEntry {
                    volume,
                    chunk,
                    layer,
                    blocks,
                    link: (linked & LINKED != 0).then_some((parent, parent_seq)),
                }
            } else {
                ChunkEntry {
                    volume: r.u64()?,
                    chunk: r.u64()?,
                    layer: 1,
                    blocks: r.u64()?,
                    link: None,
                }
            };
            if entries.last().is_some_and(|p| p.key() >= e.key()) {
                return Err(DecodeError::Invalid(format!(
                    "chunk list out of order at volume {} chunk {} layer {}",
                    e.volume, e.chunk, e.layer
                )));
            }
            entries.push(e);
        }
        if more && entries.is_empty() {
            return Err(DecodeError::Invalid(
                "an empty chunk list page says more follow".into(),
            ));
        }
        Ok(ChunkListPage {
            entries,
            more,
            layers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(all: &[ChunkEntry], req: &Request) -> ChunkListPage {
        let (entries, more) = ChunkListPage::select(all, ChunkEntry::key, req);
        ChunkListPage {
            entries: entries.to_vec(),
            more,
            layers: ChunkListPage::wants_layers(req),
        }
    }

    fn list(n: u64) -> Vec<ChunkEntry> {
        (0..n)
            .map(|i| ChunkEntry {
                volume: 1 + i / 10,
                chunk: i % 10,
                layer: 1,
                blocks: i,
                link: None,
            })
            .collect()
    }

    #[test]
    fn pages_round_trip() {
        for page in [
            ChunkListPage::default(),
            ChunkListPage {
                entries: list(25),
                more: true,
                layers: false,
            },
            ChunkListPage {
                entries: layers(25),
                more: true,
                layers: true,
            },
        ] {
            assert_eq!(ChunkListPage::decode(&page.encode()).unwrap(), page);
        }
    }

    /// Entries of several layers, some of linked chunks.
    fn layers(n: u64) -> Vec<ChunkEntry> {
        (0..n)
            .map(|i| ChunkEntry {
                volume: 1 + i / 12,
                chunk: i % 12 / 3,
                layer: 1 + i % 3 * 4,
                blocks: i,
                link: (i % 12 < 3).then_some((9, i)),
            })
            .collect()
    }

    /// Walking the cursor visits every layer once, in pages of the asked size, whatever
    /// layer a page ends at.
    #[test]
    fn walking_the_cursor_lists_every_layer_once() {
        let all = layers(95);
        let mut got = Vec::new();
        let mut cursor = (0, 0, 0);
        loop {
            let req = ChunkListPage::request(7, cursor, 7);
            let page = ChunkListPage::decode(&select(&all, &req).encode()).unwrap();
            assert!(page.layers);
            assert!(page.entries.len() <= 7);
            got.extend_from_slice(&page.entries);
            match page.next_cursor() {
                Some(c) => cursor = c,
                None => break,
            }
        }
        assert_eq!(got, all);
    }

    /// A node from before layers answers a request for layers with chunks: taken as layer
    /// 1 of each, with no link, and the cursor moves by chunks.
    #[test]
    fn a_chunk_page_from_a_node_before_layers_is_layer_one() {
        let all = list(25);
        let mut req = ChunkListPage::request(7, (0, 0, 0), 10);
        req.seq = 0; // as the old node reads it: it ignores the cursor's layer
        let page = ChunkListPage::decode(&select(&all, &req).encode()).unwrap();
        assert!(!page.layers);
        assert!(
            page.entries
                .iter()
                .all(|e| e.layer == 1 && e.link.is_none())
        );
        assert_eq!(page.next_cursor(), Some((1, 9 + 1, 1)));
        // The layers layout never reads as the chunks one, nor as a bare list.
        let layered = ChunkListPage {
            entries: layers(16),
            more: false,
            layers: true,
        }
        .encode();
        assert_eq!(layered.len() % 24, 8);
    }

    /// Walking the cursor of a node from before layers visits every chunk once.
    #[test]
    fn walking_the_cursor_lists_every_chunk_once() {
        let all = list(95);
        let mut got = Vec::new();
        let mut cursor = (0, 0, 0);
        let mut pages = 0;
        loop {
            let mut req = ChunkListPage::request(7, cursor, 10);
            req.seq = 0;
            let page = ChunkListPage::decode(&select(&all, &req).encode()).unwrap();
            assert!(page.entries.len() <= 10);
            got.extend_from_slice(&page.entries);
            pages += 1;
            match page.next_cursor() {
                Some(c) => cursor = c,
                None => break,
            }
        }
        assert_eq!(got, all);
        assert_eq!(pages, 10);
    }

    #[test]
    fn the_cursor_after_the_last_chunk_of_a_volume_moves_to_the_next_volume() {
        let page = ChunkListPage {
            entries: vec![ChunkEntry {
                volume: 4,
                chunk: u64::MAX,
                layer: u64::MAX,
                blocks: 1,
                link: None,
            }],
            more: true,
            layers: true,
        };
        assert_eq!(page.next_cursor(), Some((5, 0, 1)));
    }

    /// A full page fits a frame whatever the group holds; a request asking for more gets
    /// a full page.
    #[test]
    fn a_page_is_bounded_whatever_is_asked() {
        let all = list(u64::from(MAX_LIST_PAGE) + 5);
        let mut req = ChunkListPage::request(1, (0, 0, 0), u32::MAX);
        req.seq = 0;
        assert_eq!(req.len, MAX_LIST_PAGE);
        let mut req0 = req.clone();
        req0.len = u32::MAX;
        let mut layered = req.clone();
        layered.seq = 1;
        for req in [req, req0, layered] {
            let page = select(&all, &req);
            let max = if page.layers {
                MAX_LAYER_PAGE
            } else {
                MAX_LIST_PAGE
            };
            assert_eq!(page.entries.len(), max as usize);
            assert!(page.more);
            assert!(page.encode().len() <= crate::frame::MAX_BODY as usize / 4);
        }
    }

    /// A node from before paging answers with the bare list: read as the last page.
    #[test]
    fn a_bare_list_from_an_older_node_is_the_last_page() {
        let all = list(3);
        let page = ChunkListPage::decode(&ChunkListPage::encode_unpaged(&all)).unwrap();
        assert_eq!(
            page,
            ChunkListPage {
                entries: all,
                more: false,
                layers: false,
            }
        );
    }

    #[test]
    fn malformed_pages_are_refused() {
        let good = ChunkListPage {
            entries: list(3),
            more: true,
            layers: false,
        }
        .encode();
        // Truncated, or padded, by less than an entry.
        assert!(ChunkListPage::decode(&good[..good.len() - 1]).is_err());
        let mut padded = good.to_vec();
        padded.push(0);
        assert!(ChunkListPage::decode(&padded).is_err());
        // A count that disagrees with the length.
        let mut bad = good.to_vec();
        bad[0] = 2;
        assert!(ChunkListPage::decode(&bad).is_err());
        // Unknown flags.
        let mut bad = good.to_vec();
        bad[4] = 5;
        assert!(ChunkListPage::decode(&bad).is_err());
        // Out of order.
        let mut rev = list(3);
        rev.reverse();
        let bad = ChunkListPage {
            entries: rev,
            more: false,
            layers: false,
        }
        .encode();
        assert!(ChunkListPage::decode(&bad).is_err());
        // More to come, but no cursor to come from.
        let bad = ChunkListPage {
            entries: vec![],
            more: true,
            layers: false,
        }
        .encode();
        assert!(ChunkListPage::decode(&bad).is_err());
        // A layer entry of layer 0, or with unknown link flags.
        let good = ChunkListPage {
            entries: layers(2),
            more: false,
            layers: true,
        }
        .encode();
        let mut bad = good.to_vec();
        bad[8 + 16..8 + 24].copy_from_slice(&0u64.to_le_bytes());
        assert!(ChunkListPage::decode(&bad).is_err());
        let mut bad = good.to_vec();
        bad[8 + 32] = 2;
        assert!(ChunkListPage::decode(&bad).is_err());
    }
}

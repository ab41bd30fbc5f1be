//! Copying a replica between nodes: the group's chunk list, in pages.
//!
//! A `SnapList` request ([`crate::data::Op::SnapList`]) names a cursor and a page size: the
//! chunks at or after `(addr.volume, addr.chunk)`, in `(volume, chunk)` order, at most
//! `len` of them (capped at [`MAX_LIST_PAGE`]). The answer, the body of a
//! [`crate::data::Reply::Ok`], is a [`ChunkListPage`] (little-endian):
//!
//! ```text
//! count u32 | flags u32 (bit 0: more chunks follow) | count × (volume u64 | chunk u64 | blocks u64)
//! ```
//!
//! Compatibility with nodes from before paging, whose requests carry `len` 0 and whose
//! answers are the whole list as bare triples: a request with `len` 0 is answered with the
//! bare list (refused if it does not fit one frame), and [`ChunkListPage::decode`] takes a
//! bare list for a last page. The two layouts never meet: a paged answer's length is 8 more
//! than a multiple of 24, a bare list's is a multiple of 24.

use bytes::{BufMut, Bytes, BytesMut};

use crate::data::{ChunkAddr, Op, Request};
use crate::{DecodeError, Reader};

/// Most chunks one page lists: 1.5 MiB, a fifth of [`crate::frame::MAX_BODY`].
pub const MAX_LIST_PAGE: u32 = 64 * 1024;
const HEADER: usize = 8;
const ENTRY: usize = 24;
const MORE: u32 = 1;

/// One chunk a replica holds, and its length in blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChunkEntry {
    /// The volume's id.
    pub volume: u64,
    /// The chunk's index in the volume.
    pub chunk: u64,
    /// How many [`crate::BLOCK_SIZE`] blocks the replica's chunk file holds: the copier
    /// compares and fetches that many.
    pub blocks: u64,
}

/// A page of a group's chunk list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkListPage {
    /// In `(volume, chunk)` order, strictly increasing.
    pub entries: Vec<ChunkEntry>,
    /// More chunks follow the last entry: ask again from [`ChunkListPage::next_cursor`].
    pub more: bool,
}

impl ChunkListPage {
    /// The request for the page of group `group`'s chunks at or after `cursor`, at most
    /// `limit` of them.
    pub fn request(group: u64, cursor: (u64, u64), limit: u32) -> Request {
        let addr = ChunkAddr {
            group,
            volume: cursor.0,
            chunk: cursor.1,
        };
        Request::other(Op::SnapList, addr, 0, limit.clamp(1, MAX_LIST_PAGE))
    }

    /// The part of a source's whole list, sorted by `(volume, chunk)`, that `req` asks for
    /// (at most [`MAX_LIST_PAGE`] items), and whether more items follow it.
    pub fn select<'a, T>(
        sorted: &'a [T],
        key: impl Fn(&T) -> (u64, u64),
        req: &Request,
    ) -> (&'a [T], bool) {
        let cursor = (req.addr.volume, req.addr.chunk);
        let limit = req.len.clamp(1, MAX_LIST_PAGE) as usize;
        let start = sorted.partition_point(|e| key(e) < cursor);
        let rest = &sorted[start..];
        (&rest[..rest.len().min(limit)], rest.len() > limit)
    }

    /// Where the page after this one starts (`None`: this was the last).
    pub fn next_cursor(&self) -> Option<(u64, u64)> {
        if !self.more {
            return None;
        }
        let last = self.entries.last()?;
        match last.chunk.checked_add(1) {
            Some(c) => Some((last.volume, c)),
            None => Some((last.volume.checked_add(1)?, 0)),
        }
    }

    /// The answer body (the paged layout).
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(HEADER + self.entries.len() * ENTRY);
        b.put_u32_le(self.entries.len() as u32);
        b.put_u32_le(if self.more { MORE } else { 0 });
        for e in &self.entries {
            b.put_u64_le(e.volume);
            b.put_u64_le(e.chunk);
            b.put_u64_le(e.blocks);
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

    /// Decodes an untrusted answer: a page, or a bare list from an older node (taken as the
    /// last page). Entries out of order, or a page saying more follow but listing nothing
    /// (a cursor that would not move), are refused.
    pub fn decode(body: &[u8]) -> Result<ChunkListPage, DecodeError> {
        let (count, more, mut r) = if body.len().is_multiple_of(ENTRY) {
            (body.len() / ENTRY, false, Reader::new(body))
        } else {
            let mut r = Reader::new(body);
            let count = r.u32()? as usize;
            let flags = r.u32()?;
            if flags & !MORE != 0 {
                return Err(DecodeError::Invalid(format!("chunk list flags {flags:#x}")));
            }
            if r.remaining() != count.saturating_mul(ENTRY) {
                return Err(DecodeError::Invalid(format!(
                    "chunk list of {count} entries in {} bytes",
                    body.len()
                )));
            }
            (count, flags & MORE != 0, r)
        };
        let mut entries: Vec<ChunkEntry> = Vec::with_capacity(count);
        for _ in 0..count {
            let e = ChunkEntry {
                volume: r.u64()?,
                chunk: r.u64()?,
                blocks: r.u64()?,
            };
            if entries
                .last()
                .is_some_and(|p| (p.volume, p.chunk) >= (e.volume, e.chunk))
            {
                return Err(DecodeError::Invalid(format!(
                    "chunk list out of order at volume {} chunk {}",
                    e.volume, e.chunk
                )));
            }
            entries.push(e);
        }
        if more && entries.is_empty() {
            return Err(DecodeError::Invalid(
                "an empty chunk list page says more follow".into(),
            ));
        }
        Ok(ChunkListPage { entries, more })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(all: &[ChunkEntry], req: &Request) -> ChunkListPage {
        let (entries, more) = ChunkListPage::select(all, |e| (e.volume, e.chunk), req);
        ChunkListPage {
            entries: entries.to_vec(),
            more,
        }
    }

    fn list(n: u64) -> Vec<ChunkEntry> {
        (0..n)
            .map(|i| ChunkEntry {
                volume: 1 + i / 10,
                chunk: i % 10,
                blocks: i,
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
            },
        ] {
            assert_eq!(ChunkListPage::decode(&page.encode()).unwrap(), page);
        }
    }

    /// Walking the cursor visits every chunk once, in pages of the asked size.
    #[test]
    fn walking_the_cursor_lists_every_chunk_once() {
        let all = list(95);
        let mut got = Vec::new();
        let mut cursor = (0, 0);
        let mut pages = 0;
        loop {
            let req = ChunkListPage::request(7, cursor, 10);
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
                blocks: 1,
            }],
            more: true,
        };
        assert_eq!(page.next_cursor(), Some((5, 0)));
    }

    /// A full page fits a frame whatever the group holds; a request asking for more gets
    /// a full page.
    #[test]
    fn a_page_is_bounded_whatever_is_asked() {
        let all = list(u64::from(MAX_LIST_PAGE) + 5);
        let req = ChunkListPage::request(1, (0, 0), u32::MAX);
        assert_eq!(req.len, MAX_LIST_PAGE);
        let mut req0 = req.clone();
        req0.len = u32::MAX;
        for req in [req, req0] {
            let page = select(&all, &req);
            assert_eq!(page.entries.len(), MAX_LIST_PAGE as usize);
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
                more: false
            }
        );
    }

    #[test]
    fn malformed_pages_are_refused() {
        let good = ChunkListPage {
            entries: list(3),
            more: true,
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
        bad[4] = 3;
        assert!(ChunkListPage::decode(&bad).is_err());
        // Out of order.
        let mut rev = list(3);
        rev.reverse();
        let bad = ChunkListPage {
            entries: rev,
            more: false,
        }
        .encode();
        assert!(ChunkListPage::decode(&bad).is_err());
        // More to come, but no cursor to come from.
        let bad = ChunkListPage {
            entries: vec![],
            more: true,
        }
        .encode();
        assert!(ChunkListPage::decode(&bad).is_err());
    }
}

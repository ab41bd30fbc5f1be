//! Chunk routes: which group holds a chunk of a volume, pages of routes for clients, and
//! mapping unmapped chunks to groups.
//!
//! Plans return a [`Mutation`] and change nothing: only [`State::apply`] does. Must never
//! remap a chunk that is already mapped: its data lives in that group.

use std::collections::BTreeSet;

use tessera_proto::control::{
    ChunkRoute, ControlError, MAX_ROUTES_PER_PAGE, RoutePage, VolumeInfo,
};

use crate::volume;

use super::{GroupRecord, Mutation, State};

/// The routes a page holds when `limit` were asked for (0: as many as may be).
fn page_limit(limit: u32) -> usize {
    match limit {
        0 => MAX_ROUTES_PER_PAGE,
        n => n.min(MAX_ROUTES_PER_PAGE),
    }
    .try_into()
    .unwrap_or(usize::MAX)
}

impl State {
    /// The volume by name and the first page of its groups ([`State::group_page`]); a
    /// clone still linking, or a restore not linked to its backup yet, is not opened
    /// (`Unavailable`). A linked restore is: its groups fetch what is not filled yet.
    pub fn open_volume(&self, name: &str) -> Result<(VolumeInfo, RoutePage), ControlError> {
        let id = self.id_of(name)?;
        let v = &self.volumes[&id];
        if v.rec.linking() {
            return Err(super::linking(&v.rec));
        }
        if v.rec.rolling_back.is_some() {
            return Err(super::rolling_back(&v.rec));
        }
        if let Some(e) = self.unlinked_error(&v.rec) {
            return Err(e);
        }
        Ok((self.info(v), self.group_page(id, 0)?))
    }

    /// The routes of the volume's mapped chunks from `first_chunk` on, at most `limit`
    /// (capped at [`MAX_ROUTES_PER_PAGE`]; 0: that many); `next` is the next mapped chunk
    /// (without leaders, which only heartbeats know).
    pub fn route_page(
        &self,
        volume_id: u64,
        first_chunk: u64,
        limit: u32,
    ) -> Result<RoutePage, ControlError> {
        let v = self.volume(volume_id)?;
        let count = volume::chunk_count(v.rec.size, v.rec.chunk_size);
        if first_chunk >= count {
            return Err(ControlError::Invalid(format!(
                "chunk {first_chunk} is out of range: volume {:?} has {count} chunks",
                v.rec.name
            )));
        }
        let limit = page_limit(limit);
        let mut mapped = v.chunks.range(first_chunk..);
        let routes = mapped
            .by_ref()
            .take(limit)
            .map(|(c, g)| self.route_of(*c, *g, v.rec.seq()))
            .collect();
        Ok(RoutePage {
            routes,
            next: mapped.next().map(|(c, _)| *c),
        })
    }

    /// One route for each group holding chunks of the volume, of groups with ids above
    /// `after_group`, in id order: at most [`MAX_ROUTES_PER_PAGE`], each through the
    /// volume's lowest chunk in that group; `next` is the `after_group` of the next page.
    pub fn group_page(&self, volume_id: u64, after_group: u64) -> Result<RoutePage, ControlError> {
        let v = self.volume(volume_id)?;
        let mut routes: Vec<ChunkRoute> = Vec::new();
        let mut from = after_group.checked_add(1);
        while let Some(g) = from {
            let Some(&(group, chunk)) = v.by_group.range((g, 0)..).next() else {
                return Ok(RoutePage { routes, next: None });
            };
            if routes.len() == page_limit(0) {
                let next = routes.last().map(|r| r.group_id);
                return Ok(RoutePage { routes, next });
            }
            routes.push(self.route_of(chunk, group, v.rec.seq()));
            from = group.checked_add(1);
        }
        Ok(RoutePage { routes, next: None })
    }

    /// Maps every unmapped chunk of `first_chunk..first_chunk + count` (at most
    /// [`MAX_ROUTES_PER_PAGE`]), each to the usable group holding the fewest chunks as
    /// [`State::plan_map_chunk`] would one at a time. `None`: nothing to map; an error if
    /// the range is out of the volume or no group is usable.
    pub fn plan_map_chunks(
        &self,
        volume_id: u64,
        first_chunk: u64,
        count: u32,
        usable: impl Fn(&GroupRecord) -> bool,
    ) -> Result<Option<Mutation>, ControlError> {
        let v = self.volume(volume_id)?;
        let total = volume::chunk_count(v.rec.size, v.rec.chunk_size);
        let end = first_chunk.saturating_add(u64::from(count));
        if count > MAX_ROUTES_PER_PAGE || end > total {
            return Err(ControlError::Invalid(format!(
                "chunks {first_chunk}..{end} of volume {:?}: it has {total} chunks, and at \
                 most {MAX_ROUTES_PER_PAGE} are provisioned at once",
                v.rec.name
            )));
        }
        let unmapped = (first_chunk..end).filter(|c| !v.chunks.contains_key(c));
        let chunks = self.place_chunks(unmapped, usable)?;
        Ok((!chunks.is_empty()).then_some(Mutation::MapChunks { volume_id, chunks }))
    }

    /// `(chunk, group id)` for each of `chunks` in turn: the usable group holding the
    /// fewest chunks (counting those placed before it), ties to the lowest id.
    pub(super) fn place_chunks(
        &self,
        chunks: impl IntoIterator<Item = u64>,
        usable: impl Fn(&GroupRecord) -> bool,
    ) -> Result<Vec<(u64, u64)>, ControlError> {
        // (chunks, id) of every usable group: the least loaded is taken, then counted.
        let mut load: BTreeSet<(u64, u64)> = self
            .groups
            .values()
            .filter(|g| usable(&g.rec))
            .map(|g| (g.chunks, g.rec.id))
            .collect();
        let mut out = Vec::new();
        for chunk in chunks {
            let Some((n, group)) = load.pop_first() else {
                return Err(ControlError::Unavailable(
                    "no replica group has a majority of its nodes up".into(),
                ));
            };
            out.push((chunk, group));
            load.insert((n + 1, group));
        }
        Ok(out)
    }

    /// The route of a chunk if it is mapped, after checking the chunk exists.
    pub fn route(&self, volume_id: u64, chunk: u64) -> Result<Option<ChunkRoute>, ControlError> {
        let v = self.volumes.get(&volume_id).ok_or_else(|| {
            ControlError::NotFound(format!("volume with id {volume_id} not found"))
        })?;
        let count = volume::chunk_count(v.rec.size, v.rec.chunk_size);
        if chunk >= count {
            return Err(ControlError::Invalid(format!(
                "chunk {chunk} is out of range: volume {:?} has {count} chunks",
                v.rec.name
            )));
        }
        Ok(v.chunks
            .get(&chunk)
            .map(|g| self.route_of(chunk, *g, v.rec.seq())))
    }

    /// Maps an unmapped chunk (checked with [`State::route`]) to the usable group holding
    /// the fewest chunks, ties to the lowest id; `None` when no group is usable.
    pub fn plan_map_chunk(
        &self,
        volume_id: u64,
        chunk: u64,
        usable: impl Fn(&GroupRecord) -> bool,
    ) -> Option<Mutation> {
        let group = self
            .groups
            .values()
            .filter(|g| usable(&g.rec))
            .min_by_key(|g| (g.chunks, g.rec.id))?;
        Some(Mutation::MapChunk {
            volume_id,
            chunk,
            group_id: group.rec.id,
        })
    }

    /// A route, carrying the volume's sequence `seq` (a writer adopts it before writing).
    fn route_of(&self, chunk: u64, group_id: u64, seq: u64) -> ChunkRoute {
        ChunkRoute {
            chunk,
            group_id,
            peers: self
                .group(group_id)
                .map(|g| self.peers(g))
                .unwrap_or_default(),
            leader: None,
            seq,
        }
    }
}

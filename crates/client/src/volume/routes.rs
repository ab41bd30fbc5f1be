//! Where a volume's chunks live: the cached route of each chunk (its group, members and
//! last known leader), fetched from the manager a bounded page at a time and shared by the
//! tasks missing it at once; mapping unmapped chunks a whole extent at a time.
//!
//! Must never: take a page's silence about a chunk for "unmapped" in a lookup that began
//! before the page was asked for (the chunk may have been mapped in between); ask the
//! manager for routes chunk by chunk unless it predates pages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tessera_proto::control::{ChunkRoute, ControlError, ManagerReply, ManagerRequest};

use super::Volume;
use crate::error::unexpected;
use crate::{Error, Result};

/// A cached route: the group's members and who led it when last heard.
pub(super) struct Route {
    pub(super) group_id: u64,
    pub(super) peers: Vec<(u64, String)>,
    pub(super) leader: AtomicU64,
}

impl Route {
    pub(super) fn from(r: ChunkRoute) -> Route {
        Route {
            group_id: r.group_id,
            leader: AtomicU64::new(r.leader.unwrap_or(0)),
            peers: r.peers.into_iter().map(|p| (p.node_id, p.addr)).collect(),
        }
    }

    /// The node to try: the known leader, else members in turn.
    pub(super) fn target(&self, attempt: usize) -> (u64, String) {
        let leader = self.leader.load(Ordering::Relaxed);
        if let Some(p) = self.peers.iter().find(|p| p.0 == leader) {
            return p.clone();
        }
        self.peers[attempt % self.peers.len()].clone()
    }
}

/// Route pages are asked for from a multiple of this many chunks (far fewer than a page
/// holds, so the page still reaches the chunk that was missed).
const PAGE_ALIGN: u64 = 64;

/// A write to an unmapped chunk maps the aligned extent of this many chunks around it in
/// one manager change (`ProvisionChunks`): mapping is metadata only (a chunk's files are
/// made by its first write), and one Raft entry per chunk bounds a client filling fresh
/// chunks at ~110 a second.
const MAP_EXTENT: u64 = 64;

/// The chunks a page of routes covered: every one in `first..end` it has no route for was
/// unmapped when the page was asked for, at `asked`.
#[derive(Clone, Copy)]
pub(super) struct PageSeen {
    first: u64,
    end: u64,
    asked: Instant,
}

impl Volume {
    /// One chunk of each group holding the volume's chunks, by group id, asked of the
    /// manager a bounded page at a time; the routes are cached.
    pub(super) async fn groups(&self) -> Result<BTreeMap<u64, u64>> {
        let mut groups = BTreeMap::new();
        let mut after_group = 0;
        while !self.inner.unpaged.load(Ordering::Relaxed) {
            let req = ManagerRequest::VolumeGroups {
                volume_id: self.inner.info.id,
                after_group,
                epoch: self.epoch_or_zero(),
            };
            let page = match self.manager(&req).await {
                Ok(ManagerReply::Groups(page)) => page,
                Ok(other) => return Err(unexpected("VolumeGroups", &other)),
                Err(e) if unknown_request(&e) => {
                    self.inner.unpaged.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e) => return Err(e),
            };
            groups.extend(page.routes.iter().map(|r| (r.group_id, r.chunk)));
            self.cache(page.routes);
            match page.next {
                Some(next) if next > after_group => after_group = next,
                _ => return Ok(groups),
            }
        }
        // A manager from before paging gave every route at open.
        Ok(self
            .inner
            .routes
            .read()
            .map(|m| m.iter().map(|(c, r)| (r.group_id, *c)).collect())
            .unwrap_or_default())
    }

    /// A manager call of this handle: a refusal of its epoch ends its attachment.
    async fn manager(&self, req: &ManagerRequest) -> Result<ManagerReply> {
        match self.inner.client.call(req).await {
            Err(Error::Control(ControlError::Conflict(m))) => {
                if let Some(a) = &self.inner.attachment {
                    a.end(&m);
                }
                Err(Error::Fenced(m))
            }
            other => other,
        }
    }

    /// Caches `routes`, keeping routes already cached (and the leaders learnt for them),
    /// and adopts the newest volume sequence they carry (a chunk mapped after a snapshot
    /// is in no group the snapshot fenced: its first write must carry the new sequence).
    pub(super) fn cache(&self, routes: Vec<ChunkRoute>) {
        if let Some(seq) = routes.iter().map(|r| r.seq).max() {
            self.learn_seq(seq);
        }
        if let Ok(mut m) = self.inner.routes.write() {
            for r in routes.into_iter().filter(|r| !r.peers.is_empty()) {
                m.entry(r.chunk).or_insert_with(|| Arc::new(Route::from(r)));
            }
        }
    }

    /// The cached route of `chunk` after asking the manager for the page of routes around
    /// it (once for all tasks missing it at the same time). `Ok(None)`: unmapped when asked.
    /// `Err` of an unknown request: the manager predates pages.
    async fn route_from_page(&self, chunk: u64) -> Result<Option<Arc<Route>>> {
        let asked = Instant::now();
        let mut last = self.inner.last_page.lock().await;
        if let Some(r) = self.cached_route(chunk) {
            return Ok(Some(r));
        }
        // A page asked for since this lookup began is as fresh as one asked for now.
        if let Some(p) = *last
            && p.asked >= asked
            && (p.first..p.end).contains(&chunk)
        {
            return Ok(None);
        }
        // From an aligned chunk, so that tasks missing nearby chunks at once share the page;
        // if the page ends before `chunk` (more mapped chunks in between than it holds),
        // again from `chunk` itself, whose page starts with its route if it has one.
        for first in [chunk - chunk % PAGE_ALIGN, chunk] {
            let req = ManagerRequest::Routes {
                volume_id: self.inner.info.id,
                first_chunk: first,
                limit: 0,
                epoch: self.epoch_or_zero(),
            };
            let asked = Instant::now();
            let page = match self.manager(&req).await? {
                ManagerReply::Routes(page) => page,
                other => return Err(unexpected("Routes", &other)),
            };
            let seen = PageSeen {
                first,
                end: page.next.unwrap_or(u64::MAX),
                asked,
            };
            *last = Some(seen);
            self.cache(page.routes);
            if let Some(r) = self.cached_route(chunk) {
                return Ok(Some(r));
            }
            if (seen.first..seen.end).contains(&chunk) {
                return Ok(None);
            }
        }
        Err(Error::Io(format!(
            "the manager's page of routes from chunk {chunk} does not cover it"
        )))
    }

    /// Maps the extent of [`MAP_EXTENT`] chunks holding `chunk` (those of it not yet
    /// mapped) and caches its routes; once for all tasks missing it at the same time.
    /// `Err` of an unknown request: the manager predates provisioning.
    async fn map_extent(&self, chunk: u64) -> Result<Option<Arc<Route>>> {
        let _one = self.inner.last_page.lock().await;
        if let Some(r) = self.cached_route(chunk) {
            return Ok(Some(r));
        }
        let info = &self.inner.info;
        let chunks = info.size.div_ceil(info.chunk_size.max(1));
        let first = chunk - chunk % MAP_EXTENT;
        let count = MAP_EXTENT.min(chunks.saturating_sub(first)).max(1) as u32;
        let req = ManagerRequest::ProvisionChunks {
            volume_id: info.id,
            first_chunk: first,
            count,
            epoch: self.epoch_or_zero(),
        };
        match self.manager(&req).await? {
            ManagerReply::Routes(page) => self.cache(page.routes),
            other => return Err(unexpected("ProvisionChunks", &other)),
        }
        Ok(self.cached_route(chunk))
    }

    pub(super) fn cached_route(&self, chunk: u64) -> Option<Arc<Route>> {
        self.inner
            .routes
            .read()
            .ok()
            .and_then(|m| m.get(&chunk).cloned())
    }

    /// The route of `chunk`: cached, else asked of the manager with the routes of the
    /// mapped chunks after it (allocating the chunk on a write; `refresh`: only this chunk,
    /// the cached route failed). `None`: the chunk was never written and reads as zeroes.
    pub(super) async fn route(
        &self,
        chunk: u64,
        allocate: bool,
        refresh: bool,
    ) -> Result<Option<Arc<Route>>> {
        if !refresh {
            if let Some(r) = self.cached_route(chunk) {
                return Ok(Some(r));
            }
            if !self.inner.unpaged.load(Ordering::Relaxed) {
                match self.route_from_page(chunk).await {
                    Ok(Some(r)) => return Ok(Some(r)),
                    Ok(None) if !allocate => return Ok(None),
                    Ok(None) => match self.map_extent(chunk).await {
                        Ok(Some(r)) => return Ok(Some(r)),
                        Ok(None) => {}
                        Err(e) if unknown_request(&e) => {
                            self.inner.unpaged.store(true, Ordering::Relaxed);
                        }
                        Err(e) => return Err(e),
                    },
                    Err(e) if unknown_request(&e) => {
                        self.inner.unpaged.store(true, Ordering::Relaxed);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let req = ManagerRequest::Route {
            volume_id: self.inner.info.id,
            chunk,
            allocate,
            epoch: self.epoch_or_zero(),
        };
        let route = match self.manager(&req).await? {
            ManagerReply::Route(r) => r,
            other => return Err(unexpected("Route", &other)),
        };
        let Some(route) = route.filter(|r| !r.peers.is_empty()) else {
            return Ok(None);
        };
        self.learn_seq(route.seq);
        let route = Arc::new(Route::from(route));
        if let Ok(mut m) = self.inner.routes.write() {
            m.insert(chunk, route.clone());
        }
        Ok(Some(route))
    }
}

/// A manager from before paged route lookups cannot decode their requests.
fn unknown_request(e: &Error) -> bool {
    matches!(e, Error::Control(ControlError::Invalid(m))
        if m.starts_with("malformed request") && m.contains("unknown variant"))
}

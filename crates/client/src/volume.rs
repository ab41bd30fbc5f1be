//! An open volume: splitting I/O into chunk pieces, routing each piece to its group's
//! leader, and retrying transient failures.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tessera_proto::control::{ChunkRoute, ControlError, ManagerReply, ManagerRequest, VolumeInfo};
use tessera_proto::data::{ChunkAddr, Op, Reply, Request};
use tessera_proto::frame::Kind;

use crate::attachment::Attachment;
use crate::error::unexpected;
use crate::{CALL_TIMEOUT, Client, Error, MAX_IO, RETRY_FOR, Result};

/// How long a write whose outcome is unknown is retried before the caller gets an error
/// that says so. Below the 90 s a storage node remembers an applied request id (its
/// `dedup` window): a retry later than that could be applied a second time.
const SETTLE_FOR: Duration = Duration::from_secs(80);
/// How far a storage node's clock may run behind this client's, for deadlines.
const CLOCK_MARGIN: Duration = Duration::from_secs(1);

static CLIENT_WRITE: tessera_metrics::Lazy = tessera_metrics::Lazy::new(
    "tessera_client_write_seconds",
    "One write piece: sent to a storage node until its answer arrived (network + node)",
);
static CLIENT_READ: tessera_metrics::Lazy = tessera_metrics::Lazy::new(
    "tessera_client_read_seconds",
    "One read piece: sent to a storage node until its answer arrived (network + node)",
);

/// A cached route: the group's members and who led it when last heard.
struct Route {
    group_id: u64,
    peers: Vec<(u64, String)>,
    leader: AtomicU64,
}

impl Route {
    fn from(r: ChunkRoute) -> Route {
        Route {
            group_id: r.group_id,
            leader: AtomicU64::new(r.leader.unwrap_or(0)),
            peers: r.peers.into_iter().map(|p| (p.node_id, p.addr)).collect(),
        }
    }

    /// The node to try: the known leader, else members in turn.
    fn target(&self, attempt: usize) -> (u64, String) {
        let leader = self.leader.load(Ordering::Relaxed);
        if let Some(p) = self.peers.iter().find(|p| p.0 == leader) {
            return p.clone();
        }
        self.peers[attempt % self.peers.len()].clone()
    }
}

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
struct PageSeen {
    first: u64,
    end: u64,
    asked: Instant,
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
    ) -> Volume {
        let routes = chunks
            .into_iter()
            .filter(|r| !r.peers.is_empty())
            .map(|r| (r.chunk, Arc::new(Route::from(r))))
            .collect();
        Volume {
            inner: Arc::new(VolumeInner {
                client,
                info,
                routes: RwLock::new(routes),
                last_page: tokio::sync::Mutex::new(None),
                unpaged: AtomicBool::new(false),
                attachment,
            }),
        }
    }

    pub(crate) fn read_only(client: Client, info: VolumeInfo, chunks: Vec<ChunkRoute>) -> Volume {
        Volume::build(client, info, chunks, None)
    }

    /// A handle holding `attachment`. Not for writes before [`Volume::fence_all`].
    pub(crate) fn attached(
        client: Client,
        info: VolumeInfo,
        chunks: Vec<ChunkRoute>,
        attachment: Arc<Attachment>,
    ) -> Volume {
        Volume::build(client, info, chunks, Some(attachment))
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

    /// The epoch this handle writes with, or why it may not write.
    fn write_epoch(&self) -> Result<u64> {
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

    pub fn info(&self) -> &VolumeInfo {
        &self.inner.info
    }

    pub fn name(&self) -> &str {
        &self.inner.info.name
    }

    pub fn size(&self) -> u64 {
        self.inner.info.size
    }

    fn pieces(&self, offset: u64, len: u64) -> Result<Vec<Piece>> {
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
            let n = (cs - in_chunk).min(end - pos).min(MAX_IO);
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

    /// One chunk of each group holding the volume's chunks, by group id, asked of the
    /// manager a bounded page at a time; the routes are cached.
    async fn groups(&self) -> Result<BTreeMap<u64, u64>> {
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

    /// Caches `routes`, keeping routes already cached (and the leaders learnt for them).
    fn cache(&self, routes: Vec<ChunkRoute>) {
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

    fn cached_route(&self, chunk: u64) -> Option<Arc<Route>> {
        self.inner
            .routes
            .read()
            .ok()
            .and_then(|m| m.get(&chunk).cloned())
    }

    /// The route of `chunk`: cached, else asked of the manager with the routes of the
    /// mapped chunks after it (allocating the chunk on a write; `refresh`: only this chunk,
    /// the cached route failed). `None`: the chunk was never written and reads as zeroes.
    async fn route(&self, chunk: u64, allocate: bool, refresh: bool) -> Result<Option<Arc<Route>>> {
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
        let route = Arc::new(Route::from(route));
        if let Ok(mut m) = self.inner.routes.write() {
            m.insert(chunk, route.clone());
        }
        Ok(Some(route))
    }

    /// One piece, with this handle's epoch.
    async fn piece(&self, op: Op, p: Piece, data: Bytes) -> Result<Bytes> {
        let epoch = if op == Op::Read {
            self.epoch_or_zero()
        } else {
            self.write_epoch()?
        };
        self.attempts(op, p, data, epoch).await
    }

    /// One piece, with retries of everything transient until [`RETRY_FOR`] has passed; a
    /// change (write, zeroes, discard, fence) whose last attempts' outcome is unknown is
    /// retried on until one answer settles it (see `unsettled` below), up to
    /// [`SETTLE_FOR`], because failing it while it may still land would tell the caller
    /// a falsehood.
    async fn attempts(&self, op: Op, p: Piece, data: Bytes, epoch: u64) -> Result<Bytes> {
        let started = Instant::now();
        let deadline = started + RETRY_FOR;
        // One id for every attempt: a retry must never take effect a second time.
        let id = if op == Op::Read { 0 } else { request_id() };
        let mut backoff = Duration::from_millis(5);
        let mut attempt = 0usize;
        let mut refresh = false;
        let mut last_err = String::new();
        // Some attempt may have been proposed and not answered: it may still be applied.
        // Settled by an answer about this id from a leader: `Ok` (it was applied, once),
        // `Expired` or `Fenced` (the leader looked the id up in its log first: it is not
        // there, and no attempt can enter the log any more).
        let mut unsettled = false;
        let mut warned = false;
        // A change the caller stops waiting for (an NBD client hung up) or that fails may
        // still sit in a node's queue until its deadline: the next write to the chunk
        // waits that long rather than be overtaken by it (see `Attachment::quiet`).
        let mut guard = match (&self.inner.attachment, op) {
            (Some(a), Op::Write | Op::WriteZeroes | Op::Discard) => Some(Abandoned {
                attachment: a.clone(),
                chunk: p.chunk,
                unanswered_until: None,
                earlier: None,
                done: false,
            }),
            _ => None,
        };
        loop {
            if Instant::now() >= deadline {
                if unsettled && started.elapsed() >= SETTLE_FOR {
                    return Err(Error::Unavailable(format!(
                        "chunk {} of volume \"{}\": no leader settled a write's outcome in \
                         {SETTLE_FOR:?} ({last_err}); it may or may not have been applied",
                        p.chunk,
                        self.name(),
                    )));
                }
                if !unsettled {
                    return Err(Error::Unavailable(format!(
                        "chunk {} of volume \"{}\": gave up after {:?}: {last_err}",
                        p.chunk,
                        self.name(),
                        RETRY_FOR
                    )));
                }
                if !warned {
                    warned = true;
                    tracing::warn!(
                        volume = self.name(),
                        chunk = p.chunk,
                        "a write's outcome is still unknown after {RETRY_FOR:?} ({last_err}); \
                         retrying until a leader settles it"
                    );
                }
            }
            let allocate = matches!(op, Op::Write | Op::WriteZeroes);
            let route = match self.route(p.chunk, allocate, refresh).await {
                Ok(Some(r)) => r,
                // Never written: reads see zeroes, a discard is already done.
                Ok(None) if allocate => {
                    return Err(Error::Io("manager returned no route for a write".into()));
                }
                Ok(None) if op == Op::Read => return Ok(Bytes::from(vec![0u8; p.len as usize])),
                Ok(None) => return Ok(Bytes::new()),
                // The manager restarting or electing a leader is as transient as a storage
                // node doing so: wait for it like for them.
                Err(
                    e @ (Error::Control(ControlError::Unavailable(_) | ControlError::NotLeader(_))
                    | Error::Net(_)),
                ) => {
                    last_err = format!("manager: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    continue;
                }
                // The attachment ended while an attempt may still land: the group answers
                // Fenced once the new holder's fence is in its log, settling it.
                Err(Error::Fenced(m)) if unsettled => {
                    last_err = m;
                    refresh = false;
                    match self.cached_route(p.chunk) {
                        Some(r) => r,
                        None => {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_millis(500));
                            continue;
                        }
                    }
                }
                Err(e) => return Err(e),
            };
            refresh = false;
            let (node_id, addr) = route.target(attempt);
            attempt += 1;
            if let Some(g) = &mut guard {
                g.attachment.quiet(p.chunk).await;
                // The node refuses it after its deadline; a margin for clocks that differ.
                g.unanswered_until = Some(Instant::now() + CALL_TIMEOUT + CLOCK_MARGIN);
            }
            let req = Request {
                op,
                addr: ChunkAddr {
                    group: route.group_id,
                    volume: self.inner.info.id,
                    chunk: p.chunk,
                },
                epoch,
                id,
                // Not proposed after the attempt is given up on: its retry never races it.
                deadline_ms: Request::deadline_in(CALL_TIMEOUT),
                offset: p.offset,
                len: p.len,
                data: data.clone(),
            };
            let reply = match self.send(&addr, &req).await {
                Ok(r) => {
                    if let Some(g) = &mut guard {
                        g.answered();
                    }
                    r
                }
                Err(e) => {
                    // Sent or not, answered or not: unknown.
                    unsettled |= op != Op::Read;
                    if let Some(g) = &mut guard {
                        g.unanswered();
                    }
                    last_err = format!("node {node_id} at {addr}: {e}");
                    route.leader.store(0, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    refresh = attempt.is_multiple_of(route.peers.len().max(1));
                    continue;
                }
            };
            match reply {
                Reply::Ok(d) => {
                    route.leader.store(node_id, Ordering::Relaxed);
                    // Applied, once: an earlier attempt of it arriving late is answered
                    // from the node's memory of the id, never applied again.
                    if let Some(g) = &mut guard {
                        g.done = true;
                    }
                    return Ok(d);
                }
                Reply::NotLeader { hint } => {
                    last_err = format!(
                        "node {node_id} is not the leader of group {}",
                        route.group_id
                    );
                    let known = route.peers.iter().any(|p| p.0 == hint && hint != node_id);
                    route
                        .leader
                        .store(if known { hint } else { 0 }, Ordering::Relaxed);
                    if !known {
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                        refresh = attempt.is_multiple_of(route.peers.len().max(1));
                    }
                }
                Reply::GroupNotFound | Reply::Unavailable(_) | Reply::Expired(_) => {
                    match &reply {
                        // A leader that lost its leadership after proposing answers
                        // Unavailable: the entry may still commit.
                        Reply::Unavailable(_) => unsettled |= op != Op::Read,
                        Reply::Expired(_) => unsettled = false,
                        // The group moved or was re-created: ask the manager again.
                        _ => refresh = true,
                    }
                    last_err = format!("node {node_id}: {reply:?}");
                    route.leader.store(0, Ordering::Relaxed);
                    tokio::time::sleep(backoff).await;
                    let cap = if unsettled && Instant::now() >= deadline {
                        Duration::from_secs(1)
                    } else {
                        Duration::from_millis(500)
                    };
                    backoff = (backoff * 2).min(cap);
                }
                Reply::Fenced(m) => {
                    if let Some(a) = &self.inner.attachment
                        && a.epoch == epoch
                    {
                        a.end(&m);
                    }
                    return Err(Error::Fenced(m));
                }
                Reply::DiskFull(m) => return Err(Error::DiskFull(m)),
                Reply::Corrupt(m) => return Err(Error::Corrupt(m)),
                Reply::Io(m) => return Err(Error::Io(m)),
                Reply::OutOfRange(m) | Reply::BadRequest(m) => return Err(Error::Invalid(m)),
            }
        }
    }

    async fn send(&self, addr: &str, req: &Request) -> Result<Reply> {
        let conn = self.inner.client.node(addr).await?;
        let sent = std::time::Instant::now();
        let (head, data) = req.encode_parts();
        let f = conn.request(req.kind(), head, data, CALL_TIMEOUT).await?;
        match req.op {
            Op::Read => CLIENT_READ.observe_since(sent),
            _ => CLIENT_WRITE.observe_since(sent),
        }
        if f.kind != Kind::Reply {
            return Err(Error::Io(format!(
                "unexpected frame kind {:?} from {addr}",
                f.kind
            )));
        }
        Reply::decode(&f.body).map_err(|e| Error::Io(format!("bad reply from {addr}: {e}")))
    }
}

/// Attempts of one change whose answers never came: noted with the attachment when the
/// change ends without success (its caller gave up, or it failed), so that the chunk's next
/// write waits until none of them can be proposed any more.
struct Abandoned {
    attachment: Arc<Attachment>,
    chunk: u64,
    /// When the attempt in flight can no longer be proposed (`None`: answered).
    unanswered_until: Option<Instant>,
    /// The same for earlier attempts that got no answer.
    earlier: Option<Instant>,
    done: bool,
}

impl Abandoned {
    fn answered(&mut self) {
        self.unanswered_until = None;
    }

    fn unanswered(&mut self) {
        self.earlier = self.earlier.max(self.unanswered_until.take());
    }
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(until) = self.earlier.max(self.unanswered_until) {
            self.attachment.hold_back(self.chunk, until);
        }
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

/// A manager from before paged route lookups cannot decode their requests.
fn unknown_request(e: &Error) -> bool {
    matches!(e, Error::Control(ControlError::Invalid(m))
        if m.starts_with("malformed request") && m.contains("unknown variant"))
}

/// A new request id: this process's random identity in the high half, a count in the low.
fn request_id() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    static CLIENT: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(1);
    let client = *CLIENT.get_or_init(|| {
        // SipHash keyed from the OS's random source, over the pid and the time.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish() | 1
    });
    (client as u128) << 64 | COUNT.fetch_add(1, Ordering::Relaxed) as u128
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vol(size: u64, chunk_size: u64) -> VolumeInfo {
        VolumeInfo {
            id: 1,
            name: "v".into(),
            size,
            chunk_size,
            mapped_chunks: 0,
            created_unix: 0,
            attachment: None,
        }
    }

    fn pieces(size: u64, cs: u64, off: u64, len: u64) -> Result<Vec<(u64, u32, u32, usize)>> {
        // Build a Volume without a live client: only splitting is exercised.
        let inner = VolumeInner {
            client: Client::offline(),
            info: vol(size, cs),
            routes: RwLock::new(HashMap::new()),
            last_page: tokio::sync::Mutex::new(None),
            unpaged: AtomicBool::new(false),
            attachment: None,
        };
        let v = Volume {
            inner: Arc::new(inner),
        };
        Ok(v.pieces(off, len)?
            .into_iter()
            .map(|p| (p.chunk, p.offset, p.len, p.at))
            .collect())
    }

    #[test]
    fn splits_at_chunk_boundaries_and_max_io() {
        let mib = 1 << 20;
        assert_eq!(
            pieces(64 * mib, 8 * mib, 0, 4096).unwrap(),
            [(0, 0, 4096, 0)]
        );
        assert_eq!(
            pieces(64 * mib, 8 * mib, 8 * mib - 100, 200).unwrap(),
            [(0, (8 * mib - 100) as u32, 100, 0), (1, 0, 100, 100)]
        );
        let p = pieces(64 * mib, 16 * mib, 0, 10 * mib).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[2], (0, 8 * mib as u32, 2 * mib as u32, 8 * mib as usize));
        assert!(pieces(64 * mib, 8 * mib, 64 * mib - 1, 2).is_err());
        assert!(pieces(64 * mib, 8 * mib, u64::MAX, 2).is_err());
        assert!(pieces(64 * mib, 8 * mib, 64 * mib, 0).unwrap().is_empty());
    }

    /// A manager played by the test, holding the routes of `mapped` chunks (group 1 on one
    /// node): answers route lookups and records each request's kind. `old`: a manager from
    /// before paged lookups, which cannot decode `Routes` or `VolumeGroups`.
    async fn fake_manager(
        mapped: Vec<u64>,
        old: bool,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use tessera_proto::control::RoutePage;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let route = |chunk| ChunkRoute {
            chunk,
            group_id: 1,
            peers: vec![tessera_proto::control::PeerInfo {
                node_id: 1,
                addr: "127.0.0.1:9".into(),
            }],
            leader: Some(1),
        };
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (log, mapped) = (log.clone(), mapped.clone());
                tokio::spawn(async move {
                    let (r, mut w) = s.into_split();
                    let mut frames = tessera_net::FrameReader::new(r);
                    while let Ok(Some(f)) = frames.next().await {
                        let req: ManagerRequest = tessera_proto::control::decode(&f.body).unwrap();
                        let kind = format!("{req:?}");
                        let kind = kind.split([' ', '(']).next().unwrap_or("").to_string();
                        log.lock().unwrap().push(kind.clone());
                        let res: std::result::Result<ManagerReply, ControlError> = match req {
                            ManagerRequest::ListVolumes => Ok(ManagerReply::Volumes(vec![])),
                            ManagerRequest::Route { chunk, .. } => Ok(ManagerReply::Route(
                                mapped.contains(&chunk).then(|| route(chunk)),
                            )),
                            _ if old => Err(ControlError::Invalid(format!(
                                "malformed request: unknown variant `{kind}`, expected one of \
                                 `RegisterNode`, `Heartbeat`"
                            ))),
                            ManagerRequest::Routes {
                                first_chunk, limit, ..
                            } => {
                                let mut from = mapped.iter().filter(|c| **c >= first_chunk);
                                let routes: Vec<ChunkRoute> = from
                                    .by_ref()
                                    .take(if limit == 0 { 1024 } else { limit as usize })
                                    .map(|c| route(*c))
                                    .collect();
                                Ok(ManagerReply::Routes(RoutePage {
                                    routes,
                                    next: from.next().copied(),
                                }))
                            }
                            other => panic!("unexpected {other:?}"),
                        };
                        let reply = tessera_net::rpc_reply(f.request_id, &res);
                        tessera_net::write_frame(&mut w, &reply).await.unwrap();
                    }
                });
            }
        });
        (addr, seen)
    }

    /// Tasks missing routes of nearby chunks at the same time share page fetches; nothing is
    /// looked up chunk by chunk. A page tells an unmapped chunk only to lookups that began
    /// before it was asked for (else a chunk mapped in between could read as zeroes), so
    /// the tasks that arrived while the first page was on its way share a second one.
    #[tokio::test]
    async fn concurrent_misses_fetch_one_page_of_routes() {
        let mapped: Vec<u64> = (0..200).filter(|c| c % 3 != 1).collect();
        let (addr, seen) = fake_manager(mapped.clone(), false).await;
        let client = Client::connect(vec![addr]).await.expect("connect");
        let v = Volume::read_only(client, vol(1 << 30, 1 << 20), vec![]);
        let mut tasks = Vec::new();
        for chunk in 0..64u64 {
            let v = v.clone();
            tasks.push(tokio::spawn(async move {
                (chunk, v.route(chunk, false, false).await.expect("route"))
            }));
        }
        for t in tasks {
            let (chunk, r) = t.await.unwrap();
            assert_eq!(r.is_some(), mapped.contains(&chunk), "chunk {chunk}");
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen[0], "ListVolumes");
        assert!(
            (2..=3).contains(&seen.len()) && seen[1..].iter().all(|k| k == "Routes"),
            "{seen:?}"
        );
    }

    /// Against a manager from before paging, the client looks chunks up one by one.
    #[tokio::test]
    async fn a_manager_without_paged_lookups_is_asked_chunk_by_chunk() {
        let (addr, seen) = fake_manager(vec![3, 5], true).await;
        let client = Client::connect(vec![addr]).await.expect("connect");
        let v = Volume::read_only(client, vol(1 << 30, 1 << 20), vec![]);
        assert!(v.route(3, false, false).await.expect("route").is_some());
        assert!(v.route(4, false, false).await.expect("route").is_none());
        assert!(v.route(5, false, false).await.expect("route").is_some());
        assert!(v.inner.unpaged.load(Ordering::Relaxed));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, ["ListVolumes", "Routes", "Route", "Route", "Route"]);
    }

    /// A storage node played by the test: records each request with its arrival time (Unix
    /// ms), never answers the first, answers every later one Ok.
    async fn silent_first_node() -> (String, Arc<std::sync::Mutex<Vec<(u64, Request)>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Arc<std::sync::Mutex<Vec<(u64, Request)>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut frames = tessera_net::FrameReader::new(r);
            while let Ok(Some(f)) = frames.next().await {
                let req = Request::decode(f.kind, &f.body).unwrap();
                let first = {
                    let mut seen = log.lock().unwrap();
                    seen.push((
                        tessera_proto::data::Request::deadline_in(Duration::ZERO),
                        req,
                    ));
                    seen.len() == 1
                };
                if !first {
                    let reply = tessera_proto::frame::Frame::new(
                        Kind::Reply,
                        f.request_id,
                        Reply::Ok(Bytes::new()).encode(),
                    );
                    tessera_net::write_frame(&mut w, &reply).await.unwrap();
                }
            }
        });
        (addr, seen)
    }

    /// A write the caller stopped waiting for (its NBD client hung up) may still sit in a
    /// node's queue until its deadline: the next write to the same chunk is not sent before
    /// then (it could overtake it from a new connection), a write to another chunk is.
    #[tokio::test]
    async fn a_write_after_an_abandoned_one_waits_for_its_deadline() {
        let (addr, seen) = silent_first_node().await;
        let client = Client::offline();
        let cs = 1 << 20;
        let route = |chunk| ChunkRoute {
            chunk,
            group_id: 1,
            peers: vec![tessera_proto::control::PeerInfo {
                node_id: 1,
                addr: addr.clone(),
            }],
            leader: Some(1),
        };
        let a = Attachment::share(&client, "v", 1, 7, Duration::from_secs(600));
        let v = Volume::attached(client, vol(4 * cs, cs), vec![route(0), route(1)], a);
        let block = || Bytes::from(vec![0xab; 4096]);

        let x = tokio::spawn({
            let v = v.clone();
            async move { v.write(0, block()).await }
        });
        while seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        x.abort();
        let _ = x.await;
        v.write(cs, block()).await.expect("another chunk");
        v.write(0, block()).await.expect("the same chunk, later");

        let seen = seen.lock().unwrap();
        let x_deadline = seen[0].1.deadline_ms;
        assert_eq!(seen[0].1.epoch, 7);
        let (other_at, other) = &seen[1];
        assert_eq!(other.addr.chunk, 1);
        assert!(
            *other_at < x_deadline,
            "a write to another chunk was held back"
        );
        let (same_at, same) = &seen[2];
        assert_eq!(same.addr.chunk, 0);
        assert!(
            *same_at >= x_deadline,
            "sent at {same_at} ms, before the abandoned write's deadline {x_deadline}"
        );
    }
}

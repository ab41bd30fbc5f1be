//! Backups on a storage node: the leader of a replica group uploads the regions of one
//! chunk as of a snapshot ([`backup_chunk`], `StorageRequest::BackupChunk`) and fills a
//! restored chunk from a store ([`hydrate_chunk`], `StorageRequest::HydrateChunk`).
//!
//! Owns moving bytes between a group and a store, and the node's open stores
//! ([`StoreCache`], one per store spec). The object formats and the store clients are
//! `tessera_backup`'s; which chunks and regions to move, retries and pacing the
//! manager's.
//!
//! Must never: read a chunk but through the group's read path (`RaftNode::submit`, so the
//! replica has applied everything up to the read index, as a snapshot export reads); write
//! one but through the group's log (`RaftNode::hydrate`); answer `Done` before every
//! hydrate entry is committed; write a block of an object that failed its verification.
//!
//! Leader only: a node that does not lead the group answers `StorageReply::NotLeader`
//! (learnt from its first read, before anything is moved), and so does one that does not
//! host it (`hint: 0`: the manager asks another member). A directory store is used only
//! if it holds the manager's marker (`tessera_backup::MARKER`): a path each host has its
//! own of would otherwise take objects no other node or manager sees. Store errors are
//! `ControlError::Unavailable` with the store's message (the manager retries the chunk), a
//! corrupt object `ControlError::Invalid` naming it, a request that could never work
//! `ControlError::Invalid`.
//!
//! Blocking work: `ChunkStore::changed_blocks` reads every checksum file of the chunk's
//! newer layers (4 bytes a block) and region encoding and decoding compress a MiB each:
//! all three run on the blocking pool, never on the node's network runtime.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;
use tessera_backup::{Store, keys, region};
use tessera_engine::ChunkStores;
use tessera_metrics::LazyCounter;
use tessera_proto::control::{
    self, BackupChunkRequest, ChunkUpload, ControlError, Hash, HydrateChunkRequest,
    MAX_CHUNK_REGIONS, REGION_BLOCKS, REGION_BYTES, RegionRef, StorageReply, StoreKind, StoreSpec,
};
use tessera_proto::data::{ChunkAddr, Op, Reply, Request};
use tessera_raft::RaftNode;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

static READ_BYTES: LazyCounter = LazyCounter::new(
    "tessera_storage_backup_read_bytes",
    "Bytes of chunks read by backups on this node",
);
static UPLOADED_BYTES: LazyCounter = LazyCounter::new(
    "tessera_storage_backup_uploaded_bytes",
    "Bytes of region objects put to stores by backups on this node",
);
static HYDRATED_BYTES: LazyCounter = LazyCounter::new(
    "tessera_storage_hydrated_bytes",
    "Bytes of restored chunks proposed for hydration by this node",
);

const BLOCK: u64 = tessera_engine::chunk::BLOCK_SIZE;
/// Object puts or fetches one request has in flight at most, whatever it asks: each holds
/// up to a region (1 MiB) in memory, twice while it is encoded or decoded.
pub(crate) const MAX_WINDOW: u32 = 64;
/// Bytes of one hydrate entry at most: `MAX_IO`, whole regions (4).
const ENTRY_BYTES: usize = tessera_proto::data::MAX_IO as usize;

/// The stores this node has opened, one per spec (its JSON, credentials included: two
/// specs of one name with other keys are two clients).
#[derive(Default)]
pub(crate) struct StoreCache(Mutex<HashMap<String, Store>>);

impl StoreCache {
    /// The store of `spec`, opened on first use (`Invalid` if it cannot be: a bad path,
    /// endpoint or bucket name). A directory store must hold the marker the manager's
    /// check leaves (`tessera_backup::MARKER`), verified once per cached store: without
    /// it the path is not the manager's (each host its own disk), and objects put there
    /// would be lost to every other node and to the manager.
    pub(crate) async fn open(&self, spec: &StoreSpec, node: u64) -> Result<Store, ControlError> {
        let key = String::from_utf8_lossy(&control::encode(spec)).into_owned();
        if let Some(s) = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(s.clone());
        }
        let store = Store::open(spec).map_err(|e| ControlError::Invalid(e.to_string()))?;
        if let StoreKind::Dir { path } = &spec.kind {
            match store.verify_marker().await {
                Ok(()) => {}
                Err(tessera_backup::Error::NotFound { .. }) => {
                    return Err(ControlError::Invalid(format!(
                        "directory store {} at {path} is not shared with node {node}: no \
                         {} marker; a directory store needs a path every node and manager \
                         share",
                        spec.name,
                        tessera_backup::MARKER
                    )));
                }
                Err(e) => return Err(store_error(e)),
            }
        }
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.entry(key).or_insert(store).clone())
    }
}

/// What a backup or a hydration needs of the node.
pub(crate) struct Node<'a> {
    pub(crate) id: u64,
    pub(crate) raft: &'a RaftNode,
    pub(crate) chunks: &'a ChunkStores,
    pub(crate) stores: &'a StoreCache,
    /// Client reads of restored chunks waiting for a store on this node (see
    /// [`prewarm_window`]).
    pub(crate) reads_waiting: &'a std::sync::atomic::AtomicUsize,
}

/// Objects a pre-warm's `HydrateChunk` fetches at once: its `window`, but one while any
/// client read on this node waits for a store (a first read queued behind a pre-warm's
/// dozens of fetches waited seconds on S3; the client's read goes first, the fill goes on).
pub(crate) fn prewarm_window(window: usize, reads_waiting: usize) -> usize {
    if reads_waiting > 0 { 1 } else { window.max(1) }
}

/// A step that ends the request early: the node does not lead, or an error.
enum Stop {
    NotLeader(u64),
    Failed(ControlError),
}

impl From<ControlError> for Stop {
    fn from(e: ControlError) -> Stop {
        Stop::Failed(e)
    }
}

fn finish(r: Result<StorageReply, Stop>) -> Result<StorageReply, ControlError> {
    match r {
        Ok(reply) => Ok(reply),
        Err(Stop::NotLeader(hint)) => Ok(StorageReply::NotLeader { hint }),
        Err(Stop::Failed(e)) => Err(e),
    }
}

/// A store's failure as the manager acts on it: a corrupt object is `Invalid` (the message
/// says "corrupt" and names the object), anything else `Unavailable` (retried).
fn store_error(e: tessera_backup::Error) -> ControlError {
    match e {
        tessera_backup::Error::Corrupt { .. } => ControlError::Invalid(e.to_string()),
        e => ControlError::Unavailable(e.to_string()),
    }
}

/// The Raft node's answer to a read or a hydrate, as the request's outcome.
fn raft_answer(group: u64, what: &str, answer: Option<Reply>) -> Result<Bytes, Stop> {
    match answer {
        Some(Reply::Ok(data)) => Ok(data),
        Some(Reply::NotLeader { hint }) => Err(Stop::NotLeader(hint)),
        // Not hosted here (moved, or not yet created): the manager asks another member.
        Some(Reply::GroupNotFound) => {
            tracing::debug!(group, "{what}: the group is not hosted here");
            Err(Stop::NotLeader(0))
        }
        Some(Reply::BadRequest(m) | Reply::OutOfRange(m)) => {
            Err(Stop::Failed(ControlError::Invalid(format!("{what}: {m}"))))
        }
        Some(Reply::Unavailable(m) | Reply::DiskFull(m) | Reply::Corrupt(m) | Reply::Io(m)) => Err(
            Stop::Failed(ControlError::Unavailable(format!("{what}: {m}"))),
        ),
        // Never printed whole: it carries the read's data (MiBs).
        Some(Reply::Unfilled { blocks, .. }) => {
            Err(Stop::Failed(ControlError::Unavailable(format!(
                "{what}: chunk not filled from its backup yet ({} blocks unfilled)",
                blocks.len()
            ))))
        }
        Some(other) => Err(Stop::Failed(ControlError::Internal(format!(
            "{what}: {other:?}"
        )))),
        None => Err(Stop::Failed(ControlError::Unavailable(
            "node shutting down".into(),
        ))),
    }
}

/// Reads `len` bytes at `offset` of the chunk through the group's read path, as of `seq`.
async fn read(
    raft: &RaftNode,
    addr: ChunkAddr,
    seq: u64,
    offset: u64,
    len: u64,
) -> Result<Bytes, Stop> {
    let mut req = Request::other(Op::Read, addr, offset as u32, len as u32);
    req.seq = seq;
    let (tx, rx) = oneshot::channel();
    raft.submit(
        req,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    let what = format!(
        "reading volume {} chunk {} at {offset} as of {seq}",
        addr.volume, addr.chunk
    );
    let data = raft_answer(addr.group, &what, rx.await.ok())?;
    if data.len() as u64 != len {
        return Err(Stop::Failed(ControlError::Internal(format!(
            "{what}: {} bytes answered, {len} asked",
            data.len()
        ))));
    }
    Ok(data)
}

/// Whether this node leads the chunk's group, from a read of its first block: answered
/// `Unfilled` by a restored chunk not filled yet, which this node leads all the same.
async fn leads(raft: &RaftNode, addr: ChunkAddr) -> Result<(), Stop> {
    let (tx, rx) = oneshot::channel();
    let req = Request::other(Op::Read, addr, 0, BLOCK as u32);
    raft.submit(req, Box::new(move |r| drop(tx.send(r))));
    let what = format!("reading volume {} chunk {}", addr.volume, addr.chunk);
    match rx.await.ok() {
        Some(Reply::Unfilled { .. }) => Ok(()),
        answer => raft_answer(addr.group, &what, answer).map(drop),
    }
}

/// Regions of a chunk of `chunk_bytes`, refused past the chunk limit or the request's,
/// or if not whole blocks.
fn region_count(chunk_bytes: u64) -> Result<u64, ControlError> {
    let n = chunk_bytes.div_ceil(REGION_BYTES);
    if chunk_bytes == 0
        || chunk_bytes > tessera_engine::chunk::MAX_CHUNK
        || n > MAX_CHUNK_REGIONS as u64
        || !chunk_bytes.is_multiple_of(BLOCK)
    {
        return Err(ControlError::Invalid(format!(
            "a chunk of {chunk_bytes} bytes: must be whole blocks of {BLOCK} bytes, 1 to {} \
             bytes in at most {MAX_CHUNK_REGIONS} regions",
            tessera_engine::chunk::MAX_CHUNK
        )));
    }
    Ok(n)
}

/// `StorageRequest::BackupChunk`: reads the chunk's regions as of `req.seq` (those holding
/// a block changed since `req.after`, or all), puts each as an object unless the store has
/// it, at most `req.window` puts in flight while the next region is read.
pub(crate) async fn backup_chunk(
    node: Node<'_>,
    req: BackupChunkRequest,
) -> Result<StorageReply, ControlError> {
    let started = std::time::Instant::now();
    let (group, volume, chunk) = (req.group_id, req.volume_id, req.chunk);
    let out = finish(upload(&node, &req).await.map(StorageReply::BackupChunk));
    match &out {
        Ok(StorageReply::BackupChunk(u)) => tracing::info!(
            group,
            volume,
            chunk,
            regions = u.regions.len(),
            read_bytes = u.read_bytes,
            uploaded_bytes = u.uploaded_bytes,
            uploaded_objects = u.uploaded_objects,
            present_objects = u.present_objects,
            ms = started.elapsed().as_millis() as u64,
            "chunk backed up"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(group, volume, chunk, "chunk backup failed: {e}"),
    }
    out
}

async fn upload(node: &Node<'_>, req: &BackupChunkRequest) -> Result<ChunkUpload, Stop> {
    let total = region_count(req.chunk_bytes)?;
    let store = node.stores.open(&req.store, node.id).await?;
    let addr = ChunkAddr {
        group: req.group_id,
        volume: req.volume_id,
        chunk: req.chunk,
    };
    let region_len = |r: u64| REGION_BYTES.min(req.chunk_bytes - r * REGION_BYTES);
    // The first read: learns that this node leads, and makes its replica apply up to the
    // read index, past the snapshot's fence, before the changed blocks are looked at.
    let first = read(node.raft, addr, req.seq, 0, region_len(0)).await?;
    // Counted when region 0 is one to answer (the probe is otherwise not the backup's).
    let mut out = ChunkUpload::default();
    let regions = regions_to_read(node, req, total).await?;
    let window = req.window.clamp(1, MAX_WINDOW) as usize;
    let mut uploads = Uploads::new();
    let mut done = BTreeMap::new();
    let mut first = Some(first);
    for r in regions {
        let data = match first.take().filter(|_| r == 0) {
            Some(d) => d,
            None => read(node.raft, addr, req.seq, r * REGION_BYTES, region_len(r)).await?,
        };
        out.read_bytes += data.len() as u64;
        while uploads.len() >= window {
            collect(&mut uploads, &mut done, &mut out).await?;
        }
        let (store, force) = (store.clone(), req.force);
        uploads.spawn(async move {
            let region = r as u32;
            let encoded = tokio::task::spawn_blocking(move || region::encode(&data))
                .await
                .map_err(|e| tessera_backup::Error::Unavailable {
                    store: store.name().to_string(),
                    why: format!("encoding region {region}: {e}"),
                })?;
            let Some(enc) = encoded else {
                return Ok(Uploaded {
                    r: RegionRef {
                        region,
                        object: None,
                    },
                    put: None,
                });
            };
            let size = enc.bytes.len() as u64;
            let put = store
                .put_if_missing(&keys::object(&enc.hash), enc.bytes, force)
                .await?;
            let object = Some(enc.hash);
            Ok(Uploaded {
                r: RegionRef { region, object },
                put: Some((put, size)),
            })
        });
    }
    while !uploads.is_empty() {
        collect(&mut uploads, &mut done, &mut out).await?;
    }
    READ_BYTES.add(out.read_bytes);
    UPLOADED_BYTES.add(out.uploaded_bytes);
    out.regions = done.into_values().collect();
    Ok(out)
}

/// One region's upload: what the reply says of it, and whether its object was put (with
/// its size) or found present (`None`: no object, the region reads as zeroes).
struct Uploaded {
    r: RegionRef,
    put: Option<(bool, u64)>,
}

type Uploads = JoinSet<tessera_backup::Result<Uploaded>>;

/// Takes the next finished upload into `out`; a failed one fails the request (the others
/// are aborted when the set is dropped).
async fn collect(
    uploads: &mut Uploads,
    done: &mut BTreeMap<u32, RegionRef>,
    out: &mut ChunkUpload,
) -> Result<(), Stop> {
    let Some(joined) = uploads.join_next().await else {
        return Ok(());
    };
    let finished = joined.map_err(|e| ControlError::Internal(format!("an upload task: {e}")))?;
    let Uploaded { r, put } = finished.map_err(store_error)?;
    match put {
        Some((true, size)) => {
            out.uploaded_objects += 1;
            out.uploaded_bytes += size;
        }
        Some((false, _)) => out.present_objects += 1,
        None => {}
    }
    done.insert(r.region, r);
    Ok(())
}

/// The regions to read, ascending: those holding a block written after `req.after` (up to
/// `req.seq`), when the chunk is this replica's own (not linked to a parent); else all.
async fn regions_to_read(
    node: &Node<'_>,
    req: &BackupChunkRequest,
    total: u64,
) -> Result<Vec<u64>, Stop> {
    if req.after == 0 {
        return Ok((0..total).collect());
    }
    // Removed since the first read: the manager asks another member.
    let Some(store) = node.chunks.existing(req.group_id) else {
        return Err(Stop::NotLeader(0));
    };
    let (volume, chunk, after, seq) = (req.volume_id, req.chunk, req.after, req.seq);
    let changed = tokio::task::spawn_blocking(move || {
        if store.link_of(volume, chunk)?.is_some() {
            return Ok(None);
        }
        store.changed_blocks(volume, chunk, after, seq).map(Some)
    })
    .await
    .map_err(|e| ControlError::Internal(format!("looking up changed blocks: {e}")))?
    .map_err(|e| ControlError::Unavailable(format!("looking up changed blocks: {e}")))?;
    Ok(match changed {
        None => (0..total).collect(),
        Some(blocks) => blocks
            .into_iter()
            .map(|b| b / REGION_BLOCKS)
            .filter(|&r| r < total)
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect(),
    })
}

/// `StorageRequest::HydrateChunk`: fetches each region's object (at most `req.window` in
/// flight), verifies it, and proposes whole regions through the group's log, consecutive
/// ones packed into entries of up to `MAX_IO` (blocks the object does not hold are zero
/// blocks, which the engine writes as zero where nothing is held: what the backup says);
/// `Done` once every entry is committed. Each entry that fills anything costs its replicas
/// two fdatasyncs (see `tessera_engine`'s hydrate), so whole regions, packed, make it two
/// per 4 MiB rather than two per run of blocks.
pub(crate) async fn hydrate_chunk(
    node: Node<'_>,
    req: HydrateChunkRequest,
) -> Result<StorageReply, ControlError> {
    let started = std::time::Instant::now();
    let (group, volume, chunk) = (req.group_id, req.volume_id, req.chunk);
    let out = finish(fill(&node, &req).await);
    match &out {
        Ok(StorageReply::Done) => tracing::info!(
            group,
            volume,
            chunk,
            regions = req.regions.len(),
            ms = started.elapsed().as_millis() as u64,
            "chunk hydrated"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(group, volume, chunk, "chunk hydration failed: {e}"),
    }
    out
}

async fn fill(node: &Node<'_>, req: &HydrateChunkRequest) -> Result<StorageReply, Stop> {
    if req.regions.len() > MAX_CHUNK_REGIONS {
        return Err(Stop::Failed(ControlError::Invalid(format!(
            "{} regions in one request; at most {MAX_CHUNK_REGIONS}",
            req.regions.len()
        ))));
    }
    let max_regions = tessera_engine::chunk::MAX_CHUNK / REGION_BYTES;
    if let Some(r) = req
        .regions
        .iter()
        .find(|r| u64::from(r.region) >= max_regions)
    {
        return Err(Stop::Failed(ControlError::Invalid(format!(
            "region {} is past the chunk limit",
            r.region
        ))));
    }
    let store = node.stores.open(&req.store, node.id).await?;
    let addr = ChunkAddr {
        group: req.group_id,
        volume: req.volume_id,
        chunk: req.chunk,
    };
    // Leader only, learnt before anything is fetched.
    leads(node.raft, addr).await?;
    let window = req.window.clamp(1, MAX_WINDOW) as usize;
    // Fetched in order (packing needs it), `window` at once; each task aborted if the
    // request ends first.
    let mut fetches: VecDeque<Fetch> = VecDeque::new();
    let mut wanted = req
        .regions
        .iter()
        .filter_map(|r| r.object.map(|h| (r.region, h)));
    // Entries proposed, oldest first: a few wait for their commit while more are fetched.
    let mut proposed: VecDeque<oneshot::Receiver<Reply>> = VecDeque::new();
    let max_proposed = window.div_ceil(4).max(2);
    // The entry being packed: its first region and its bytes (whole regions so far).
    let mut entry: Option<(u32, Vec<u8>)> = None;
    let mut bytes = 0u64;
    loop {
        let room = prewarm_window(
            window,
            node.reads_waiting
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        while fetches.len() < room {
            let Some((region, hash)) = wanted.next() else {
                break;
            };
            fetches.push_back(Fetch(tokio::spawn(fetch(store.clone(), region, hash))));
        }
        let Some(mut next) = fetches.pop_front() else {
            break;
        };
        let joined = (&mut next.0)
            .await
            .map_err(|e| ControlError::Internal(format!("a fetch task: {e}")))?;
        let (region, data) = joined.map_err(store_error)?;
        let follows = entry.as_ref().is_some_and(|(first, d)| {
            u64::from(region) == u64::from(*first) + d.len() as u64 / REGION_BYTES
                && (d.len() as u64).is_multiple_of(REGION_BYTES)
                && d.len() + data.len() <= ENTRY_BYTES
        });
        match &mut entry {
            Some((_, d)) if follows => d.extend_from_slice(&data),
            _ => {
                if let Some(done) = entry.replace((region, data)) {
                    bytes += propose(node, req, done, &mut proposed);
                }
            }
        }
        if entry.as_ref().is_some_and(|(_, d)| d.len() >= ENTRY_BYTES)
            && let Some(done) = entry.take()
        {
            bytes += propose(node, req, done, &mut proposed);
        }
        while proposed.len() > max_proposed {
            committed(req, proposed.pop_front()).await?;
        }
    }
    if let Some(done) = entry.take() {
        bytes += propose(node, req, done, &mut proposed);
    }
    while !proposed.is_empty() {
        committed(req, proposed.pop_front()).await?;
    }
    HYDRATED_BYTES.add(bytes);
    Ok(StorageReply::Done)
}

/// A region's fetch, aborted if dropped unfinished (the request failed or was given up).
struct Fetch(tokio::task::JoinHandle<tessera_backup::Result<(u32, Vec<u8>)>>);

impl Drop for Fetch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The region object `hash`, read (at most `region::MAX_OBJECT_BYTES`) and verified, as
/// the region's bytes (zero blocks where it holds none).
async fn fetch(store: Store, region: u32, hash: Hash) -> tessera_backup::Result<(u32, Vec<u8>)> {
    let key = keys::object(&hash);
    let got = store.get_bounded(&key, region::MAX_OBJECT_BYTES).await?;
    let name = store.name().to_string();
    let decoded = tokio::task::spawn_blocking(move || {
        region::decode(&name, &hash, &got).map(|r| r.to_bytes())
    })
    .await
    .map_err(|e| tessera_backup::Error::Unavailable {
        store: store.name().to_string(),
        why: format!("decoding {key}: {e}"),
    })??;
    Ok((region, decoded))
}

/// Proposes one hydrate entry of `data` at region `first`; its bytes.
fn propose(
    node: &Node<'_>,
    req: &HydrateChunkRequest,
    (first, data): (u32, Vec<u8>),
    proposed: &mut VecDeque<oneshot::Receiver<Reply>>,
) -> u64 {
    let len = data.len() as u64;
    let (tx, rx) = oneshot::channel();
    node.raft.hydrate(
        req.group_id,
        req.volume_id,
        req.chunk,
        // Below the chunk limit (4 GiB), checked above.
        (u64::from(first) * REGION_BYTES) as u32,
        Bytes::from(data),
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    proposed.push_back(rx);
    len
}

/// Waits for one hydrate entry to be committed.
async fn committed(
    req: &HydrateChunkRequest,
    entry: Option<oneshot::Receiver<Reply>>,
) -> Result<(), Stop> {
    let what = format!("hydrating volume {} chunk {}", req.volume_id, req.chunk);
    let answer = match entry {
        Some(rx) => rx.await.ok(),
        None => return Ok(()),
    };
    raft_answer(req.group_id, &what, answer).map(|_| ())
}

#[cfg(test)]
#[path = "backup_tests.rs"]
pub(crate) mod tests;

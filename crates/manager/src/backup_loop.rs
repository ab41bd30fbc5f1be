//! The leading manager's backup uploader: every `Uploading` backup that is not a copy is
//! carried on, chunk by chunk, until its root is stored and `BackupReady` recorded.
//!
//! Per backup, the chunks of the volume mapped to a group whose segment is not recorded
//! yet (so a new leader resumes from the recorded map), `backup_chunks_in_flight` at once:
//! a `BackupChunk` to the group's leader (incremental after the base's snapshot when the
//! backup has a base), the answered regions merged into the base's segment of that chunk
//! (read back from the store), the new segment put unless it is the base's, then recorded
//! in batches (`BackupChunks`, with the store's `gc_gen` read before the chunk was sent, so
//! a chunk uploaded across the collection of one of its keys is skipped by the state and
//! redone with `force`; one the collection did not touch is recorded, see
//! `service::collected`).
//! A chunk with no data records nothing (remembered in memory: a new leader reads it
//! again). Each chunk's whole size is paced before its request is sent
//! (`backup_bytes_per_sec`, shared with copies) under a manager-wide slot (see
//! `Settings::slots`); the group's members are looked up again at each attempt. A chunk
//! failing (or skipped by the state) for `GIVE_UP` (60 s) in a row fails the backup; until
//! then it is backed off and the last error recorded (`BackupError`). Before each batch
//! and before `BackupReady`, the backup's volume and snapshot are checked (a chunk answered
//! empty because the volume went away never makes the backup ready): gone, the backup
//! fails naming why. A backup deleted while uploading stops its task.
//!
//! Must never: record a chunk before its objects and segment are stored, nor the backup
//! ready before its root is; hold the service lock across a call to a node or a store;
//! panic on what a node or a store answers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_backup::manifest::{FORMAT, Root};
use tessera_backup::{Store, keys};
use tessera_proto::control::{
    BackupChunkRequest, BackupState, Hash, REGION_BYTES, StorageReply, StorageRequest, StoreSpec,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub(crate) use crate::backup_jobs::{
    BATCH, BATCH_WAIT, ERROR_EVERY, FIRST_BACKOFF, GIVE_UP, MAX_BACKOFF, Running, Settings, Shared,
    Stores, TICK, call_leader, commit, fail, locked, merge, put_root_ready, read_segment,
    record_chunks, resolve, stats_of, still_uploading,
};
use crate::pace::Pace;
use crate::service::Service;
use crate::state::{BackupStats, ChunkSegment, Mutation};

/// How long one node gets to answer one chunk request (it reads and uploads the chunk).
const CHUNK_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs until `stopped` turns true: each tick, starts the upload of every uploading
/// backup (not a copy) that has no task yet; stops them all when this manager stops
/// leading.
pub async fn run(
    service: Shared,
    stores: Stores,
    settings: Settings,
    pace: Arc<Pace>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut running = Running::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tick.tick() => {}
        }
        let jobs = locked(&service, |s| {
            s.lead()?;
            Ok(plan_all(s))
        })
        .await;
        let Ok(jobs) = jobs else {
            running.abort_all();
            continue;
        };
        // A backup deleted (or finished) meanwhile: its task stops.
        running.keep_only(&jobs.iter().map(|j| j.id).collect());
        for job in jobs {
            let Some((spec, store)) = stores.get(&job.store).cloned() else {
                warn!(backup = job.id, store = %job.store, "backup's store is not configured here");
                continue;
            };
            let ctx = Ctx {
                service: service.clone(),
                spec,
                store,
                settings: settings.clone(),
                pace: pace.clone(),
            };
            running.start(job.id, upload(ctx, job));
        }
    }
    running.abort_all();
}

/// What one backup's task works with.
struct Ctx {
    service: Shared,
    spec: StoreSpec,
    store: Store,
    settings: Settings,
    pace: Arc<Pace>,
}

/// One uploading backup as planned from the state.
#[derive(Debug, Clone)]
pub(crate) struct BackupJob {
    pub id: u64,
    pub store: String,
    pub volume: String,
    pub volume_id: u64,
    pub snapshot: String,
    pub seq: u64,
    /// The base's snapshot sequence (0: a full backup).
    pub after: u64,
    /// The base's recorded segments (empty: a full backup).
    pub base: BTreeMap<u64, Hash>,
    pub size: u64,
    pub chunk_size: u64,
    pub created_unix: u64,
    /// `(chunk, bytes of it, its group's id)`: the chunks mapped to a group, not recorded
    /// yet.
    pub todo: Vec<(u64, u64, u64)>,
}

fn plan_all(s: &Service) -> Vec<BackupJob> {
    let state = s.state();
    let mut out = Vec::new();
    for b in state.backups_uploading() {
        if b.copied_from.is_some() {
            continue;
        }
        let recorded = state.backup_segments(b.id);
        // A base deleted meanwhile cannot be merged into: the chunks left are read whole
        // (what is recorded already merged the base while it was there).
        let base_ready = b.base.is_some_and(|id| {
            state
                .backup(id)
                .is_some_and(|r| r.state == BackupState::Ready)
        });
        if b.base.is_some() && !base_ready {
            warn!(backup = b.id, base = ?b.base, "base backup gone: the rest is read whole");
        }
        let base = b
            .base
            .filter(|_| base_ready)
            .map(|id| state.backup_segments(id))
            .unwrap_or_default();
        let count = b.size.div_ceil(b.chunk_size.max(1));
        let mut todo = Vec::new();
        for (chunk, group_id) in state.volume_chunk_groups(b.volume_id) {
            if chunk >= count || recorded.contains_key(&chunk) {
                continue;
            }
            // Its members are looked up at each attempt (`resolve`): a group unknown then
            // has no member to ask, and the chunk fails and is retried (never skipped: the
            // backup would miss its data).
            let bytes = b.chunk_size.min(b.size - chunk * b.chunk_size);
            todo.push((chunk, bytes, group_id));
        }
        out.push(BackupJob {
            id: b.id,
            store: b.store.clone(),
            volume: b.volume.clone(),
            volume_id: b.volume_id,
            snapshot: b.snapshot.clone(),
            seq: b.seq,
            after: if base_ready { b.base_seq } else { 0 },
            base,
            size: b.size,
            chunk_size: b.chunk_size,
            created_unix: b.created_unix,
            todo,
        });
    }
    out
}

/// A chunk uploaded and its segment stored, waiting to be recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Uploaded {
    pub chunk: u64,
    pub segment: Hash,
    /// The distinct objects the segment names.
    pub objects: Vec<Hash>,
    pub gc_gen: u64,
    /// Client reads its group's leader reported (the access record).
    pub reads: u64,
}

/// How one attempt at a chunk ended.
enum Attempt {
    /// The chunk holds no data: no segment to record, only what was read.
    Empty(BackupStats),
    Stored(Uploaded, BackupStats),
}

/// A chunk still to do.
struct Todo {
    bytes: u64,
    group_id: u64,
    force: bool,
    not_before: Instant,
    /// Since when its attempts fail (or are skipped by the state) in a row: reset only
    /// once it is recorded.
    failing_since: Option<Instant>,
    backoff: Duration,
}

/// What one backup's chunk loop keeps between chunks.
struct Progress {
    todo: BTreeMap<u64, Todo>,
    last_error: Option<(Instant, String)>,
}

async fn upload(ctx: Ctx, job: BackupJob) {
    // A volume or snapshot gone fails the backup at its first record or at its finish
    // (a deleted volume has no chunk left to ask).
    let id = job.id;
    match upload_all(&ctx, &job).await {
        Ok(Some(root)) => info!(backup = id, %root, "backup ready"),
        Ok(None) => debug!(backup = id, "backup no longer uploading here"),
        Err(e) => warn!(backup = id, error = %e, "backup upload stopped; resumed later"),
    }
}

/// Uploads every chunk of the job, then the root: the root once `BackupReady` is
/// recorded; `None` if the backup stopped being this manager's to upload.
async fn upload_all(ctx: &Ctx, job: &BackupJob) -> Result<Option<Hash>, String> {
    let job = Arc::new(job.clone());
    let t = Instant::now();
    let mut p = Progress {
        todo: job
            .todo
            .iter()
            .map(|(c, bytes, group_id)| {
                let t = Todo {
                    bytes: *bytes,
                    group_id: *group_id,
                    force: false,
                    not_before: t,
                    failing_since: None,
                    backoff: FIRST_BACKOFF,
                };
                (*c, t)
            })
            .collect(),
        last_error: None,
    };
    let mut running: JoinSet<(u64, Result<Attempt, String>)> = JoinSet::new();
    let mut in_flight: BTreeSet<u64> = BTreeSet::new();
    let mut batch: Vec<Uploaded> = Vec::new();
    let mut stats = BackupStats::default();
    let mut batch_since = Instant::now();
    loop {
        let t = Instant::now();
        let ready: Vec<u64> = p
            .todo
            .iter()
            .filter(|(c, d)| d.not_before <= t && !in_flight.contains(c))
            .map(|(c, _)| *c)
            .take(
                ctx.settings
                    .chunks_in_flight
                    .max(1)
                    .saturating_sub(running.len()),
            )
            .collect();
        for chunk in ready {
            let Some(d) = p.todo.get(&chunk) else {
                continue;
            };
            in_flight.insert(chunk);
            let (job, spec, store, pace) = (
                job.clone(),
                ctx.spec.clone(),
                ctx.store.clone(),
                ctx.pace.clone(),
            );
            let (service, settings) = (ctx.service.clone(), ctx.settings.clone());
            let (bytes, group_id, force) = (d.bytes, d.group_id, d.force);
            running.spawn(async move {
                let req = ChunkReq {
                    job: &job,
                    chunk,
                    bytes,
                    group_id,
                    force,
                    spec,
                };
                let res = back_up_chunk(&service, &store, &pace, &settings, req).await;
                (chunk, res)
            });
        }
        let full = batch.len() >= BATCH
            || batch
                .first()
                .is_some_and(|u| u.gc_gen != batch[batch.len() - 1].gc_gen);
        let stale = !batch.is_empty() && batch_since.elapsed() >= BATCH_WAIT;
        let idle = running.is_empty() && (!batch.is_empty() || stats != BackupStats::default());
        if full || stale || idle {
            let sent = std::mem::take(&mut batch);
            let st = std::mem::take(&mut stats);
            let Some(recorded) = record(&ctx.service, job.id, &ctx.store, sent.clone(), st).await?
            else {
                running.abort_all();
                return Ok(None);
            };
            for u in sent {
                if recorded.contains(&u.chunk) {
                    p.todo.remove(&u.chunk);
                } else if let Some(d) = p.todo.get_mut(&u.chunk) {
                    // Skipped: uploaded across the collection of one of its keys (or naming
                    // a key being deleted). Redone with force, backed off, counted.
                    d.force = true;
                    let error = format!("collector deleting objects; redoing chunk {}", u.chunk);
                    if failed(ctx, job.id, &mut p, u.chunk, error).await? {
                        running.abort_all();
                        return Ok(None);
                    }
                }
            }
            batch_since = Instant::now();
        }
        if p.todo.is_empty() && running.is_empty() {
            break;
        }
        let wake = p
            .todo
            .iter()
            .filter(|(c, _)| !in_flight.contains(c))
            .map(|(_, d)| d.not_before)
            .min()
            .unwrap_or(t + BATCH_WAIT)
            .min(t + BATCH_WAIT);
        let done = tokio::select! {
            done = running.join_next(), if !running.is_empty() => done,
            () = tokio::time::sleep_until(wake.into()) => None,
        };
        let Some(done) = done else { continue };
        let (chunk, res) = done.map_err(|e| format!("a chunk task failed: {e}"))?;
        in_flight.remove(&chunk);
        match res {
            // No data (or none any more): nothing to record. Whether the volume and
            // snapshot still stand is checked again before the backup is made ready.
            Ok(Attempt::Empty(st)) => {
                stats = stats.plus(&st);
                p.todo.remove(&chunk);
            }
            Ok(Attempt::Stored(u, st)) => {
                if batch.is_empty() {
                    batch_since = Instant::now();
                }
                stats = stats.plus(&st);
                batch.push(u);
                if let Some(d) = p.todo.get_mut(&chunk) {
                    // Not again until recorded (or skipped): far in the future.
                    d.not_before = Instant::now() + Duration::from_secs(3600);
                }
            }
            Err(e) => {
                if failed(ctx, job.id, &mut p, chunk, format!("chunk {chunk}: {e}")).await? {
                    running.abort_all();
                    return Ok(None);
                }
            }
        }
    }
    finish(ctx, &job).await
}

/// One failed (or skipped) attempt at `chunk`: backed off, its error recorded now and then
/// (`BackupError`); `true` once the chunk has failed for [`GIVE_UP`]: the backup is
/// recorded failed.
async fn failed(
    ctx: &Ctx,
    id: u64,
    p: &mut Progress,
    chunk: u64,
    error: String,
) -> Result<bool, String> {
    let Some(d) = p.todo.get_mut(&chunk) else {
        return Ok(false);
    };
    let now = Instant::now();
    let since = *d.failing_since.get_or_insert(now);
    if now.duration_since(since) >= GIVE_UP {
        locked(&ctx.service, move |s| fail(s, id, error)).await?;
        return Ok(true);
    }
    debug!(backup = id, %error, "chunk failed; retried");
    d.not_before = now + d.backoff;
    d.backoff = (d.backoff * 2).min(MAX_BACKOFF);
    if p.last_error
        .as_ref()
        .is_none_or(|(at, e)| *e != error && at.elapsed() >= ERROR_EVERY)
    {
        p.last_error = Some((now, error.clone()));
        commit(&ctx.service, Mutation::BackupError { id, error }).await?;
    }
    Ok(false)
}

/// Puts the root of every recorded segment and records the backup ready (see
/// [`put_root_ready`]), once the volume and snapshot are checked again.
async fn finish(ctx: &Ctx, job: &BackupJob) -> Result<Option<Hash>, String> {
    let id = job.id;
    let segments = locked(&ctx.service, move |s| {
        if !still_uploading(s, id, true)? {
            return Ok(None);
        }
        Ok(Some(s.state().backup_segments(id)))
    })
    .await?;
    let Some(segments) = segments else {
        return Ok(None);
    };
    let root = Root {
        format: FORMAT,
        backup_id: job.id,
        volume: job.volume.clone(),
        volume_id: job.volume_id,
        snapshot: job.snapshot.clone(),
        seq: job.seq,
        size: job.size,
        chunk_size: job.chunk_size,
        region_bytes: REGION_BYTES,
        created_unix: job.created_unix,
        segments: segments.into_iter().collect(),
    };
    let (hash, bytes) = root.encode();
    let ready = put_root_ready(&ctx.service, &ctx.store, id, hash, bytes, true).await?;
    Ok(ready.then_some(hash))
}

/// Records a batch (see [`record_chunks`]).
async fn record(
    service: &Shared,
    id: u64,
    store: &Store,
    batch: Vec<Uploaded>,
    stats: BackupStats,
) -> Result<Option<BTreeSet<u64>>, String> {
    // One gc_gen per batch, the oldest: chunks finish out of order, and an entry stamped
    // with a newer gc_gen than it read could name an object the collector deleted in
    // between. With the oldest, a chunk any of whose keys was collected since is skipped
    // (redone with force); the others are recorded (`Service::record_backup_chunks`).
    let gc_gen = batch.iter().map(|u| u.gc_gen).min().unwrap_or(0);
    let chunks = batch
        .into_iter()
        .map(|u| ChunkSegment {
            chunk: u.chunk,
            segment: u.segment,
            objects: Some(u.objects),
            reads: u.reads,
        })
        .collect();
    let store = store.name().to_string();
    record_chunks(service, id, store, gc_gen, chunks, stats, true).await
}

/// One chunk's request.
struct ChunkReq<'a> {
    job: &'a BackupJob,
    chunk: u64,
    bytes: u64,
    group_id: u64,
    force: bool,
    spec: StoreSpec,
}

/// One attempt at a chunk: uploaded by its group's leader (its members looked up now),
/// merged with the base's segment, the segment stored. A manager-wide slot is held and
/// the chunk's whole size paced before the request is sent.
async fn back_up_chunk(
    service: &Shared,
    store: &Store,
    pace: &Pace,
    settings: &Settings,
    r: ChunkReq<'_>,
) -> Result<Attempt, String> {
    let _slot = settings.slot().await;
    pace.take(r.bytes).await;
    let group = resolve(service, r.group_id).await?;
    let name = r.spec.name.clone();
    let gc_gen = locked(service, move |s| Ok(s.state().gc_gen(&name))).await?;
    let req = StorageRequest::BackupChunk(BackupChunkRequest {
        group_id: r.group_id,
        volume_id: r.job.volume_id,
        chunk: r.chunk,
        chunk_bytes: r.bytes,
        seq: r.job.seq,
        after: r.job.after,
        store: r.spec,
        window: settings.window.max(1),
        force: r.force,
    });
    let (reply, _) = call_leader(&settings.security, &group, &req, 0, CHUNK_TIMEOUT).await?;
    let upload = match reply {
        StorageReply::BackupChunk(u) => u,
        other => return Err(format!("group {} answered {other:?}", r.group_id)),
    };
    let mut stats = stats_of(&upload);
    let base = match r.job.base.get(&r.chunk) {
        Some(h) => Some((*h, read_segment(store, h).await?)),
        None => None,
    };
    let merged = merge(
        base.as_ref().map(|(_, s)| s),
        r.chunk,
        r.bytes,
        &upload.regions,
    )?;
    if merged.regions.is_empty() {
        return Ok(Attempt::Empty(stats));
    }
    let segment = match &base {
        Some((h, b)) if *b == merged && !r.force => *h,
        _ => {
            let (h, bytes) = merged.encode();
            let len = bytes.len() as u64;
            let put = store
                .put_if_missing(&keys::segment(&h), bytes, r.force)
                .await
                .map_err(|e| e.to_string())?;
            if put {
                stats.uploaded_bytes = stats.uploaded_bytes.saturating_add(len);
            }
            h
        }
    };
    stats.objects = merged.regions.len() as u64;
    let objects: BTreeSet<Hash> = merged.regions.iter().map(|(_, h)| *h).collect();
    Ok(Attempt::Stored(
        Uploaded {
            chunk: r.chunk,
            segment,
            objects: objects.into_iter().collect(),
            gc_gen,
            reads: upload.reads,
        },
        stats,
    ))
}

#[cfg(test)]
#[path = "backup_loop_batch_tests.rs"]
mod batch_tests;
#[cfg(test)]
#[path = "backup_loop_tests.rs"]
pub(crate) mod tests;

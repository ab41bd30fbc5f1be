//! The leading manager's backup uploader: every `Uploading` backup that is not a copy is
//! carried on, chunk by chunk, until its root is stored and `BackupReady` recorded.
//!
//! Per backup, the chunks of the volume mapped to a group whose segment is not recorded
//! yet (so a new leader resumes from the recorded map), `backup_chunks_in_flight` at once:
//! a `BackupChunk` to the group's leader (incremental after the base's snapshot when the
//! backup has a base), the answered regions merged into the base's segment of that chunk
//! (read back from the store), the new segment put unless it is the base's, then recorded
//! in batches (`BackupChunks`, with the store's `gc_gen` read before the chunk was sent, so
//! a chunk uploaded across a collection is skipped by the state and redone with `force`).
//! A chunk with no data records nothing (remembered in memory: a new leader reads it
//! again). Paced by the bytes the groups read (`backup_bytes_per_sec`, shared with
//! copies). A chunk failing for `GIVE_UP` (60 s) in a row fails the backup; until then the last
//! error is recorded (`BackupError`) for `backup info`.
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
    BackupChunkRequest, BackupState, ChunkUpload, Hash, REGION_BYTES, StorageReply, StorageRequest,
    StoreSpec,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub(crate) use crate::backup_jobs::{
    GIVE_UP, Running, Settings, Shared, Stores, TICK, call_leader, commit, locked, merge, now,
    read_segment, unix_now,
};
use crate::group_calls::GroupJob;
use crate::pace::Pace;
use crate::service::{Now, Service};
use crate::state::{BackupStats, ChunkSegment, Mutation};

/// How long one node gets to answer one chunk request (it reads and uploads the chunk).
const CHUNK_TIMEOUT: Duration = Duration::from_secs(300);
/// Back-off between attempts of a failing chunk.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Chunks recorded in one `BackupChunks`, and how long a finished chunk may wait for one.
const BATCH: usize = 64;
const BATCH_WAIT: Duration = Duration::from_millis(500);
/// `BackupError` is recorded at most this often per backup.
const ERROR_EVERY: Duration = Duration::from_secs(5);

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
            Ok(plan_all(s, now()))
        })
        .await;
        let Ok(jobs) = jobs else {
            running.abort_all();
            continue;
        };
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
    /// `(chunk, bytes of it, its group)`: the chunks mapped to a group, not recorded yet.
    pub todo: Vec<(u64, u64, GroupJob)>,
    /// Why the backup cannot go on (its volume is gone): it fails.
    pub gone: Option<String>,
}

fn plan_all(s: &Service, now: Now) -> Vec<BackupJob> {
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
        let gone = state.volume_record_by_id(b.volume_id).err().map(|_| {
            format!(
                "volume {:?} (id {}) was deleted before its backup finished",
                b.volume, b.volume_id
            )
        });
        let count = b.size.div_ceil(b.chunk_size.max(1));
        let mut todo = Vec::new();
        for (chunk, group_id) in state.volume_chunk_groups(b.volume_id) {
            if chunk >= count || recorded.contains_key(&chunk) {
                continue;
            }
            // A group unknown here has no member to ask: the chunk fails and is retried
            // (never skipped: the backup would miss its data).
            let group = s
                .group_job(group_id, Vec::new(), now)
                .unwrap_or_else(|| GroupJob {
                    group_id,
                    members: Vec::new(),
                    batches: Vec::new(),
                });
            let bytes = b.chunk_size.min(b.size - chunk * b.chunk_size);
            todo.push((chunk, bytes, group));
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
            gone,
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
    group: GroupJob,
    force: bool,
    not_before: Instant,
    failing_since: Option<Instant>,
    backoff: Duration,
}

async fn upload(ctx: Ctx, job: BackupJob) {
    let id = job.id;
    if let Some(error) = job.gone.clone() {
        warn!(backup = id, %error, "backup failed");
        let m = Mutation::BackupFailed {
            id,
            error,
            finished_unix: unix_now(),
        };
        if let Err(e) = commit(&ctx.service, m).await {
            warn!(backup = id, error = %e, "could not record the backup failed; retried");
        }
        return;
    }
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
    let mut todo: BTreeMap<u64, Todo> = job
        .todo
        .iter()
        .map(|(c, bytes, group)| {
            let t = Todo {
                bytes: *bytes,
                group: group.clone(),
                force: false,
                not_before: t,
                failing_since: None,
                backoff: FIRST_BACKOFF,
            };
            (*c, t)
        })
        .collect();
    let mut running: JoinSet<(u64, Result<Attempt, String>)> = JoinSet::new();
    let mut in_flight: BTreeSet<u64> = BTreeSet::new();
    let mut batch: Vec<Uploaded> = Vec::new();
    let mut stats = BackupStats::default();
    let mut batch_since = Instant::now();
    let mut last_error: Option<(Instant, String)> = None;
    loop {
        let t = Instant::now();
        let ready: Vec<u64> = todo
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
            let Some(d) = todo.get(&chunk) else { continue };
            in_flight.insert(chunk);
            let (job, spec, store, pace) = (
                job.clone(),
                ctx.spec.clone(),
                ctx.store.clone(),
                ctx.pace.clone(),
            );
            let (service, window) = (ctx.service.clone(), ctx.settings.window);
            let (bytes, group, force) = (d.bytes, d.group.clone(), d.force);
            running.spawn(async move {
                let req = ChunkReq {
                    job: &job,
                    chunk,
                    bytes,
                    group: &group,
                    force,
                    spec,
                    window,
                };
                let res = back_up_chunk(&service, &store, &pace, req).await;
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
            match record(&ctx.service, job.id, &ctx.store, sent.clone(), st).await? {
                None => return Ok(None),
                Some(recorded) => {
                    for u in sent {
                        if recorded.contains(&u.chunk) {
                            todo.remove(&u.chunk);
                        } else if let Some(d) = todo.get_mut(&u.chunk) {
                            debug!(
                                backup = job.id,
                                chunk = u.chunk,
                                "chunk uploaded across a collection; redone with force"
                            );
                            d.force = true;
                            d.not_before = Instant::now();
                        }
                    }
                }
            }
            batch_since = Instant::now();
        }
        if todo.is_empty() && running.is_empty() {
            break;
        }
        let wake = todo
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
            Ok(Attempt::Empty(st)) => {
                stats = stats.plus(&st);
                todo.remove(&chunk);
            }
            Ok(Attempt::Stored(u, st)) => {
                if batch.is_empty() {
                    batch_since = Instant::now();
                }
                stats = stats.plus(&st);
                batch.push(u);
                if let Some(d) = todo.get_mut(&chunk) {
                    d.failing_since = None;
                    d.backoff = FIRST_BACKOFF;
                    // Not again until recorded (or skipped): far in the future.
                    d.not_before = Instant::now() + Duration::from_secs(3600);
                }
            }
            Err(e) => {
                let Some(d) = todo.get_mut(&chunk) else {
                    continue;
                };
                let now = Instant::now();
                let since = *d.failing_since.get_or_insert(now);
                let error = format!("chunk {chunk}: {e}");
                if now.duration_since(since) >= GIVE_UP {
                    running.abort_all();
                    warn!(backup = job.id, %error, "backup failed");
                    let m = Mutation::BackupFailed {
                        id: job.id,
                        error,
                        finished_unix: unix_now(),
                    };
                    commit(&ctx.service, m).await?;
                    return Ok(None);
                }
                debug!(backup = job.id, %error, "chunk failed; retried");
                d.not_before = now + d.backoff;
                d.backoff = (d.backoff * 2).min(MAX_BACKOFF);
                if last_error
                    .as_ref()
                    .is_none_or(|(at, e)| *e != error && at.elapsed() >= ERROR_EVERY)
                {
                    last_error = Some((now, error.clone()));
                    commit(&ctx.service, Mutation::BackupError { id: job.id, error }).await?;
                }
            }
        }
    }
    finish(ctx, &job).await
}

/// Puts the root of every recorded segment and records the backup ready.
async fn finish(ctx: &Ctx, job: &BackupJob) -> Result<Option<Hash>, String> {
    let id = job.id;
    let segments = locked(&ctx.service, move |s| {
        let st = s.state();
        let uploading = st
            .backup(id)
            .is_some_and(|b| b.state == BackupState::Uploading);
        Ok(uploading.then(|| st.backup_segments(id)))
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
    ctx.store
        .put(&keys::root(&hash), bytes)
        .await
        .map_err(|e| e.to_string())?;
    let m = Mutation::BackupReady {
        id: job.id,
        root: hash,
        finished_unix: unix_now(),
    };
    commit(&ctx.service, m).await?;
    Ok(Some(hash))
}

/// Records a batch: the chunks the state now holds for the backup, or `None` if the backup
/// is no longer uploading.
async fn record(
    service: &Shared,
    id: u64,
    store: &Store,
    batch: Vec<Uploaded>,
    stats: BackupStats,
) -> Result<Option<BTreeSet<u64>>, String> {
    let store = store.name().to_string();
    locked(service, move |s| {
        s.lead()?;
        let state = s.state();
        if !state
            .backup(id)
            .is_some_and(|b| b.state == BackupState::Uploading)
        {
            return Ok(None);
        }
        // One gc_gen per mutation: the batch holds one (see `upload_all`), else the
        // entries of another are skipped and redone.
        let gc_gen = batch.first().map_or(0, |u| u.gc_gen);
        let chunks = batch
            .iter()
            .map(|u| ChunkSegment {
                chunk: u.chunk,
                segment: u.segment,
                objects: (!state.segment_known(&store, &u.segment)).then(|| u.objects.clone()),
            })
            .collect();
        s.commit_led(Mutation::BackupChunks {
            id,
            gc_gen,
            chunks,
            stats,
        })?;
        let recorded = s.state().backup_segments(id);
        Ok(Some(
            batch
                .iter()
                .map(|u| u.chunk)
                .filter(|c| recorded.contains_key(c))
                .collect(),
        ))
    })
    .await
}

/// One chunk's request.
struct ChunkReq<'a> {
    job: &'a BackupJob,
    chunk: u64,
    bytes: u64,
    group: &'a GroupJob,
    force: bool,
    spec: StoreSpec,
    window: u32,
}

/// One attempt at a chunk: uploaded by its group's leader, merged with the base's
/// segment, the segment stored.
async fn back_up_chunk(
    service: &Shared,
    store: &Store,
    pace: &Pace,
    r: ChunkReq<'_>,
) -> Result<Attempt, String> {
    let name = r.spec.name.clone();
    let gc_gen = locked(service, move |s| Ok(s.state().gc_gen(&name))).await?;
    let req = StorageRequest::BackupChunk(BackupChunkRequest {
        group_id: r.group.group_id,
        volume_id: r.job.volume_id,
        chunk: r.chunk,
        chunk_bytes: r.bytes,
        seq: r.job.seq,
        after: r.job.after,
        store: r.spec,
        window: r.window.max(1),
        force: r.force,
    });
    let (reply, _) = call_leader(r.group, &req, 0, CHUNK_TIMEOUT).await?;
    let upload = match reply {
        StorageReply::BackupChunk(u) => u,
        other => return Err(format!("group {} answered {other:?}", r.group.group_id)),
    };
    pace.take(upload.read_bytes).await;
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
        },
        stats,
    ))
}

fn stats_of(u: &ChunkUpload) -> BackupStats {
    BackupStats {
        read_bytes: u.read_bytes,
        uploaded_bytes: u.uploaded_bytes,
        uploaded_objects: u.uploaded_objects,
        present_objects: u.present_objects,
        objects: 0,
    }
}

#[cfg(test)]
#[path = "backup_loop_tests.rs"]
pub(crate) mod tests;

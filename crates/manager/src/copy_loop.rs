//! The leading manager's copies of backups between stores (`backup copy`): every
//! `Uploading` backup with `copied_from` is filled from its source, chunk by chunk: the
//! source's segment read (verified), each of its objects the target lacks fetched from the
//! source, verified (`region::decode`) and put, then the segment put, then recorded in the
//! target (`BackupChunks`, the `gc_gen` rule as for uploads); once every chunk of the
//! source is recorded, the source's root is put unchanged (same name) and `BackupReady`
//! recorded. Paced with the uploads by the bytes copied, each chunk under one of the
//! manager-wide slots the uploads share. `chunks_in_flight` chunks at once, each with the
//! target's `gc_gen` read before it, recorded in batches as they finish; a chunk failing,
//! or skipped by the state (copied across the collection of one of its keys), is backed
//! off and redone (with `force` when skipped), its error recorded (`BackupError`), and
//! fails the copy after `GIVE_UP` in a row; so does a source root that cannot be read.
//!
//! Resumable: a new leader continues with the chunks not recorded; objects already copied
//! are found by `exists`. Must never: record a chunk whose objects and segment are not all
//! in the target; copy an object that does not verify (the copy fails, naming it); hold
//! the service lock across a store call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_backup::manifest::{MAX_MANIFEST_BYTES, Root};
use tessera_backup::{Error as StoreError, Store, keys, region};
use tessera_proto::control::{BackupState, Hash};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::backup_jobs::{
    BATCH, BATCH_WAIT, ERROR_EVERY, FIRST_BACKOFF, GIVE_UP, MAX_BACKOFF, Running, Settings, Shared,
    Stores, TICK, commit, fail, locked, put_root_ready, record_chunks,
};
use crate::pace::Pace;
use crate::state::{BackupStats, ChunkSegment, Mutation};

/// Runs until `stopped` turns true: starts every uploading copy without a task; stops
/// them when this manager stops leading.
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
        let Ok(jobs) = locked(&service, |s| {
            s.lead()?;
            Ok(plan_all(s))
        })
        .await
        else {
            running.abort_all();
            continue;
        };
        // A copy deleted (or failed) meanwhile: its task stops.
        running.keep_only(&jobs.iter().map(|j| j.id).collect());
        for job in jobs {
            let (Some((_, from)), Some((_, to))) = (stores.get(&job.from), stores.get(&job.to))
            else {
                warn!(backup = job.id, from = %job.from, to = %job.to,
                      "a store of the copy is not configured here");
                continue;
            };
            let ctx = Ctx {
                service: service.clone(),
                from: from.clone(),
                to: to.clone(),
                settings: settings.clone(),
                pace: pace.clone(),
            };
            running.start(job.id, copy(ctx, job));
        }
    }
    running.abort_all();
}

struct Ctx {
    service: Shared,
    from: Store,
    to: Store,
    settings: Settings,
    pace: Arc<Pace>,
}

/// One copy as planned from the state.
#[derive(Debug, Clone)]
pub(crate) struct CopyJob {
    pub id: u64,
    /// The source backup's store, and this copy's.
    pub from: String,
    pub to: String,
    /// The source's root (its backup is ready).
    pub root: Hash,
    /// The source's segments not recorded in the copy yet.
    pub todo: BTreeMap<u64, Hash>,
}

fn plan_all(s: &crate::service::Service) -> Vec<CopyJob> {
    let state = s.state();
    let mut out = Vec::new();
    for b in state.backups_uploading() {
        let Some(src_id) = b.copied_from else {
            continue;
        };
        let Some(src) = state.backup(src_id) else {
            continue;
        };
        let (Some(root), BackupState::Ready) = (src.root, src.state) else {
            continue;
        };
        let recorded = state.backup_segments(b.id);
        let todo = state
            .backup_segments(src_id)
            .into_iter()
            .filter(|(c, _)| !recorded.contains_key(c))
            .collect();
        out.push(CopyJob {
            id: b.id,
            from: src.store.clone(),
            to: b.store.clone(),
            root,
            todo,
        });
    }
    out
}

async fn copy(ctx: Ctx, job: CopyJob) {
    match copy_all(&ctx, job.clone()).await {
        Ok(true) => info!(backup = job.id, root = %job.root, "backup copy ready"),
        Ok(false) => debug!(backup = job.id, "copy no longer uploading here"),
        Err(e) => warn!(backup = job.id, error = %e, "backup copy stopped; resumed later"),
    }
}

/// One chunk's outcome: the store's `gc_gen` read before it, the segment's distinct
/// objects and what was moved.
type Copied = (u64, u64, Result<(Vec<Hash>, BackupStats), Failure>);

/// How copying one chunk failed.
enum Failure {
    /// An object or segment of the source is not what its name says: the copy fails.
    Corrupt(String),
    /// Worth retrying.
    Retry(String),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        match e {
            StoreError::Corrupt { .. } => Failure::Corrupt(e.to_string()),
            e => Failure::Retry(e.to_string()),
        }
    }
}

/// A chunk still to copy.
struct Todo {
    seg: Hash,
    force: bool,
    not_before: Instant,
    /// Since when it fails (or is skipped by the state) in a row.
    failing_since: Option<Instant>,
    backoff: Duration,
}

/// The chunks of one copy still to do, and the last error recorded.
struct Progress {
    todo: BTreeMap<u64, Todo>,
    last_error: Option<(Instant, String)>,
}

/// Copies every chunk, `chunks_in_flight` at once, recording them in batches as they
/// finish, then the root: whether `BackupReady` was recorded (false: the copy stopped
/// being this manager's to do, or failed).
async fn copy_all(ctx: &Ctx, job: CopyJob) -> Result<bool, String> {
    let t = Instant::now();
    let mut p = Progress {
        todo: (job.todo.iter())
            .map(|(c, seg)| {
                let d = Todo {
                    seg: *seg,
                    force: false,
                    not_before: t,
                    failing_since: None,
                    backoff: FIRST_BACKOFF,
                };
                (*c, d)
            })
            .collect(),
        last_error: None,
    };
    let mut running: JoinSet<Copied> = JoinSet::new();
    let mut in_flight: BTreeSet<u64> = BTreeSet::new();
    let mut batch: Vec<(ChunkSegment, u64)> = Vec::new();
    let mut stats = BackupStats::default();
    let mut batch_since = Instant::now();
    loop {
        let t = Instant::now();
        let room = ctx
            .settings
            .chunks_in_flight
            .max(1)
            .saturating_sub(running.len());
        let ready: Vec<u64> = (p.todo.iter())
            .filter(|(c, d)| d.not_before <= t && !in_flight.contains(c))
            .map(|(c, _)| *c)
            .take(room)
            .collect();
        for chunk in ready {
            let Some(d) = p.todo.get(&chunk) else {
                continue;
            };
            in_flight.insert(chunk);
            let (from, to, pace) = (ctx.from.clone(), ctx.to.clone(), ctx.pace.clone());
            let (service, settings) = (ctx.service.clone(), ctx.settings.clone());
            let (seg, force) = (d.seg, d.force);
            running.spawn(async move {
                let _slot = settings.slot().await;
                let name = to.name().to_string();
                let Ok(gc_gen) = locked(&service, move |s| Ok(s.state().gc_gen(&name))).await
                else {
                    return (chunk, 0, Err(Failure::Retry("not leading".into())));
                };
                let r = copy_chunk(&from, &to, &pace, chunk, seg, force).await;
                (chunk, gc_gen, r)
            });
        }
        let full = batch.len() >= BATCH
            || batch
                .first()
                .is_some_and(|b| b.1 != batch[batch.len() - 1].1);
        let stale = !batch.is_empty() && batch_since.elapsed() >= BATCH_WAIT;
        let idle = running.is_empty() && (!batch.is_empty() || stats != BackupStats::default());
        if full || stale || idle {
            let sent = std::mem::take(&mut batch);
            // The oldest gc_gen of the batch: chunks finish out of order, and an entry stamped
            // with a newer one than it read could name an object deleted in between. With the
            // oldest, a chunk any of whose keys was collected since is skipped (redone with
            // force); the others are recorded (`Service::record_backup_chunks`).
            let gc_gen = sent.iter().map(|b| b.1).min().unwrap_or(0);
            let chunks: Vec<ChunkSegment> = sent.into_iter().map(|b| b.0).collect();
            let to = ctx.to.name().to_string();
            let st = std::mem::take(&mut stats);
            let r = record_chunks(&ctx.service, job.id, to, gc_gen, chunks.clone(), st, false);
            let Some(recorded) = r.await? else {
                running.abort_all();
                return Ok(false);
            };
            for c in chunks {
                if recorded.contains(&c.chunk) {
                    p.todo.remove(&c.chunk);
                } else if let Some(d) = p.todo.get_mut(&c.chunk) {
                    // Skipped: copied across the collection of one of its keys. Redone
                    // with force, backed off, counted.
                    d.force = true;
                    let why = format!("collector deleting objects; redoing chunk {}", c.chunk);
                    if failed(ctx, job.id, &mut p, c.chunk, why).await? {
                        running.abort_all();
                        return Ok(false);
                    }
                }
            }
            batch_since = Instant::now();
        }
        if p.todo.is_empty() && running.is_empty() {
            break;
        }
        let wake = (p.todo.iter())
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
        let (chunk, gc_gen, r) = done.map_err(|e| format!("a copy task failed: {e}"))?;
        in_flight.remove(&chunk);
        let Some(d) = p.todo.get_mut(&chunk) else {
            continue;
        };
        match r {
            Ok((objects, st)) => {
                if batch.is_empty() {
                    batch_since = Instant::now();
                }
                stats = stats.plus(&st);
                let c = ChunkSegment {
                    chunk,
                    segment: d.seg,
                    objects: Some(objects),
                    // The copy's record keeps its source's access record (made with it).
                    reads: 0,
                };
                batch.push((c, gc_gen));
                // Not again until recorded (or skipped).
                d.not_before = Instant::now() + Duration::from_secs(3600);
            }
            Err(Failure::Corrupt(why)) => {
                running.abort_all();
                let error = format!("chunk {chunk}: {why}");
                locked(&ctx.service, move |s| fail(s, job.id, error)).await?;
                return Err(format!("copy failed: {why}"));
            }
            Err(Failure::Retry(why)) => {
                if failed(ctx, job.id, &mut p, chunk, format!("chunk {chunk}: {why}")).await? {
                    running.abort_all();
                    return Ok(false);
                }
            }
        }
    }
    copy_root(ctx, &job).await
}

/// Puts the source's root in the target and records the copy ready; a root that cannot
/// be read is retried, backed off, and fails the copy after [`GIVE_UP`], naming it.
async fn copy_root(ctx: &Ctx, job: &CopyJob) -> Result<bool, String> {
    let (id, root) = (job.id, job.root);
    let key = keys::root(&root);
    let started = Instant::now();
    let mut backoff = FIRST_BACKOFF;
    let bytes = loop {
        let why = match ctx.from.get_bounded(&key, MAX_MANIFEST_BYTES).await {
            Ok(bytes) => match Root::decode(ctx.from.name(), &root, &bytes) {
                Ok(_) => break bytes,
                Err(e) => {
                    let error = e.to_string();
                    locked(&ctx.service, move |s| fail(s, id, error)).await?;
                    return Ok(false);
                }
            },
            Err(e) => format!("the source's root {key}: {e}"),
        };
        if started.elapsed() >= GIVE_UP {
            locked(&ctx.service, move |s| fail(s, id, why)).await?;
            return Ok(false);
        }
        commit(&ctx.service, Mutation::BackupError { id, error: why }).await?;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    };
    put_root_ready(&ctx.service, &ctx.to, id, root, bytes, false).await
}

/// One failed (or skipped) attempt at `chunk`: backed off, its error recorded now and then;
/// `true` once it has failed for [`GIVE_UP`]: the copy is recorded failed.
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
    if now.duration_since(*d.failing_since.get_or_insert(now)) >= GIVE_UP {
        locked(&ctx.service, move |s| fail(s, id, error)).await?;
        return Ok(true);
    }
    debug!(backup = id, %error, "copy chunk failed; retried");
    d.not_before = now + d.backoff;
    d.backoff = (d.backoff * 2).min(MAX_BACKOFF);
    let due =
        (p.last_error.as_ref()).is_none_or(|(at, e)| *e != error && at.elapsed() >= ERROR_EVERY);
    if due {
        p.last_error = Some((now, error.clone()));
        commit(&ctx.service, Mutation::BackupError { id, error }).await?;
    }
    Ok(false)
}

/// Copies one chunk's objects the target lacks (all of them with `force`), then its
/// segment: the segment's distinct objects and what was moved.
async fn copy_chunk(
    from: &Store,
    to: &Store,
    pace: &Pace,
    chunk: u64,
    seg: Hash,
    force: bool,
) -> Result<(Vec<Hash>, BackupStats), Failure> {
    let seg_bytes = from
        .get_bounded(&keys::segment(&seg), MAX_MANIFEST_BYTES)
        .await?;
    let segment = tessera_backup::manifest::Segment::decode(from.name(), &seg, &seg_bytes)?;
    if segment.chunk != chunk {
        return Err(Failure::Corrupt(format!(
            "segment {seg} names chunk {}, recorded for chunk {chunk}",
            segment.chunk
        )));
    }
    let objects: BTreeSet<Hash> = segment.regions.iter().map(|(_, h)| *h).collect();
    let mut stats = BackupStats {
        objects: segment.regions.len() as u64,
        ..BackupStats::default()
    };
    for h in &objects {
        let key = keys::object(h);
        // Present only at the source's size: a truncated object in the target is copied
        // again (the name is the content's, so a whole one is the same bytes).
        if !force
            && let Some(have) = to.size_of(&key).await?
            && from.size_of(&key).await? == Some(have)
        {
            stats.present_objects += 1;
            continue;
        }
        let bytes = from.get_bounded(&key, region::MAX_OBJECT_BYTES).await?;
        region::decode(from.name(), h, &bytes).map_err(|e| match e {
            StoreError::Corrupt { why, .. } => {
                Failure::Corrupt(format!("object {key} in store {}: {why}", from.name()))
            }
            e => Failure::Retry(e.to_string()),
        })?;
        let len = bytes.len() as u64;
        pace.take(len).await;
        to.put_if_missing(&key, bytes, force).await?;
        stats.uploaded_objects += 1;
        stats.uploaded_bytes = stats.uploaded_bytes.saturating_add(len);
    }
    let len = seg_bytes.len() as u64;
    if to
        .put_if_missing(&keys::segment(&seg), seg_bytes, force)
        .await?
    {
        stats.uploaded_bytes = stats.uploaded_bytes.saturating_add(len);
    }
    Ok((objects.into_iter().collect(), stats))
}

#[cfg(test)]
#[path = "copy_loop_tests.rs"]
pub(crate) mod tests;

//! The leading manager's copies of backups between stores (`backup copy`): every
//! `Uploading` backup with `copied_from` is filled from its source, chunk by chunk: the
//! source's segment read (verified), each of its objects the target lacks fetched from the
//! source, verified (`region::decode`) and put, then the segment put, then recorded in the
//! target (`BackupChunks`, the `gc_gen` rule as for uploads); once every chunk of the
//! source is recorded, the source's root is put unchanged (same name) and `BackupReady`
//! recorded. Paced with the uploads by the bytes copied.
//!
//! Resumable: a new leader continues with the chunks not recorded; objects already copied
//! are found by `exists`. Must never: record a chunk whose objects and segment are not all
//! in the target; copy an object that does not verify (the copy fails, naming it); hold
//! the service lock across a store call.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tessera_backup::manifest::Root;
use tessera_backup::{Error as StoreError, Store, keys, region};
use tessera_proto::control::{BackupState, Hash};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::backup_jobs::{
    GIVE_UP, Running, Settings, Shared, Stores, TICK, commit, locked, unix_now,
};
use crate::pace::Pace;
use crate::state::{BackupStats, ChunkSegment, Mutation};

/// Back-off between passes over a copy's failing chunks.
const BACKOFF: Duration = Duration::from_secs(1);
/// Chunks recorded in one `BackupChunks`.
const BATCH: usize = 64;

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

/// One chunk's outcome: the segment's distinct objects and what was moved.
type Copied = (u64, Hash, Result<(Vec<Hash>, BackupStats), Failure>);

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

/// Copies every chunk, then the root: whether `BackupReady` was recorded (false: the
/// copy stopped being this manager's to do).
async fn copy_all(ctx: &Ctx, mut job: CopyJob) -> Result<bool, String> {
    let mut force: BTreeSet<u64> = BTreeSet::new();
    let mut failing: HashMap<u64, Instant> = HashMap::new();
    while !job.todo.is_empty() {
        let target = ctx.to.name().to_string();
        let gc_gen = locked(&ctx.service, move |s| Ok(s.state().gc_gen(&target))).await?;
        let mut running = JoinSet::new();
        let mut done = Vec::new();
        let mut stats = BackupStats::default();
        let mut last_err = None;
        for (&chunk, &seg) in &job.todo {
            while running.len() >= ctx.settings.chunks_in_flight.max(1) {
                if let Some(r) = running.join_next().await {
                    let r = r.map_err(|e| format!("a copy task failed: {e}"))?;
                    last_err = settle(ctx, &job, r, &mut done, &mut stats, &mut failing)
                        .await?
                        .or(last_err);
                }
            }
            let (from, to, pace) = (ctx.from.clone(), ctx.to.clone(), ctx.pace.clone());
            let f = force.contains(&chunk);
            running.spawn(async move {
                let r = copy_chunk(&from, &to, &pace, chunk, seg, f).await;
                (chunk, seg, r)
            });
        }
        while let Some(r) = running.join_next().await {
            let r = r.map_err(|e| format!("a copy task failed: {e}"))?;
            last_err = settle(ctx, &job, r, &mut done, &mut stats, &mut failing)
                .await?
                .or(last_err);
        }
        let mut stats = Some(stats);
        for batch in done.chunks(BATCH) {
            let Some(recorded) = record(ctx, &job, gc_gen, batch, stats.take()).await? else {
                return Ok(false);
            };
            for c in batch {
                if recorded.contains(&c.chunk) {
                    job.todo.remove(&c.chunk);
                } else {
                    force.insert(c.chunk);
                }
            }
        }
        if let Some(e) = last_err {
            commit(
                &ctx.service,
                Mutation::BackupError {
                    id: job.id,
                    error: e,
                },
            )
            .await?;
            tokio::time::sleep(BACKOFF).await;
        }
    }
    let root_bytes = ctx
        .from
        .get(&keys::root(&job.root))
        .await
        .map_err(|e| e.to_string())?;
    if let Err(e) = Root::decode(ctx.from.name(), &job.root, &root_bytes) {
        fail(ctx, job.id, e.to_string()).await?;
        return Ok(false);
    }
    ctx.to
        .put_if_missing(&keys::root(&job.root), root_bytes, false)
        .await
        .map_err(|e| e.to_string())?;
    let m = Mutation::BackupReady {
        id: job.id,
        root: job.root,
        finished_unix: unix_now(),
    };
    commit(&ctx.service, m).await?;
    Ok(true)
}

/// Takes one chunk's outcome: stored chunks join `done`; a failure is retried (its
/// error returned) unless it is corrupt or has lasted [`GIVE_UP`] (the copy fails).
async fn settle(
    ctx: &Ctx,
    job: &CopyJob,
    (chunk, seg, r): Copied,
    done: &mut Vec<ChunkSegment>,
    stats: &mut BackupStats,
    failing: &mut HashMap<u64, Instant>,
) -> Result<Option<String>, String> {
    let why = match r {
        Ok((objects, st)) => {
            failing.remove(&chunk);
            *stats = stats.plus(&st);
            done.push(ChunkSegment {
                chunk,
                segment: seg,
                objects: Some(objects),
            });
            return Ok(None);
        }
        Err(Failure::Corrupt(why)) => {
            fail(ctx, job.id, format!("chunk {chunk}: {why}")).await?;
            return Err(format!("copy failed: {why}"));
        }
        Err(Failure::Retry(why)) => format!("chunk {chunk}: {why}"),
    };
    let since = *failing.entry(chunk).or_insert_with(Instant::now);
    if since.elapsed() >= GIVE_UP {
        fail(ctx, job.id, why.clone()).await?;
        return Err(format!("copy failed: {why}"));
    }
    Ok(Some(why))
}

async fn fail(ctx: &Ctx, id: u64, error: String) -> Result<(), String> {
    warn!(backup = id, %error, "backup copy failed");
    let m = Mutation::BackupFailed {
        id,
        error,
        finished_unix: unix_now(),
    };
    commit(&ctx.service, m).await
}

/// Records copied chunks in the target: the chunks the copy now holds, or `None` if it is
/// no longer uploading.
async fn record(
    ctx: &Ctx,
    job: &CopyJob,
    gc_gen: u64,
    batch: &[ChunkSegment],
    stats: Option<BackupStats>,
) -> Result<Option<BTreeSet<u64>>, String> {
    let (id, store, batch) = (job.id, ctx.to.name().to_string(), batch.to_vec());
    locked(&ctx.service, move |s| {
        s.lead()?;
        let state = s.state();
        if !state
            .backup(id)
            .is_some_and(|b| b.state == BackupState::Uploading)
        {
            return Ok(None);
        }
        let chunks: Vec<ChunkSegment> = batch
            .iter()
            .map(|c| ChunkSegment {
                objects: c
                    .objects
                    .clone()
                    .filter(|_| !state.segment_known(&store, &c.segment)),
                ..c.clone()
            })
            .collect();
        s.commit_led(Mutation::BackupChunks {
            id,
            gc_gen,
            chunks,
            stats: stats.unwrap_or_default(),
        })?;
        let recorded = s.state().backup_segments(id);
        Ok(Some(
            batch
                .iter()
                .map(|c| c.chunk)
                .filter(|c| recorded.contains_key(c))
                .collect(),
        ))
    })
    .await
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
    let seg_bytes = from.get(&keys::segment(&seg)).await?;
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
        if !force && to.exists(&key).await? {
            stats.present_objects += 1;
            continue;
        }
        let bytes = from.get(&key).await?;
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
mod tests;

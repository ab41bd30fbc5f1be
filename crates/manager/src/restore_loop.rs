//! The leading manager's pre-warm of restored volumes (`volume create --from-backup`, and
//! `volume prewarm`): per restoring volume once linked to its backup, every chunk of the
//! backup's recorded map in the restore's order (`State::restore_order`: the backup's
//! access record, most read chunks first, then by index) from the recorded position on,
//! `backup_chunks_in_flight` at once: the chunk's segment read from the restore's store
//! (verified), a `HydrateChunk` naming its regions sent to the chunk's group leader, paced
//! by region bytes (`restore_bytes_per_sec`), then the chunk unlinked from the backup
//! (`GroupOp::Unlink` through its group; a segment without regions is only unlinked); the
//! progress recorded (`RestoreProgress`: the lowest position not filled and unlinked, which
//! never moves back), then, once every chunk is, every chunk unlinked once more (a `Link`
//! that landed late is undone) and `RestoreDone`.
//!
//! Progress is a position in that order, not a chunk index: the order is a function of the
//! restore's backup record alone, so a new leader resumes at the same chunk; a chunk done
//! past the position recorded is done again (a hydrate of an unlinked chunk does nothing,
//! an unlink again is a no-op). A restore not yet linked is left alone: a hydrate before
//! its link would do nothing, and the chunk would be unlinked unfilled. Nor is a chunk
//! unlinked within [`LINK_SETTLE`] of this leader first seeing its restore linked: a late
//! `Link` still in flight would link a filled chunk again.
//!
//! Each attempt holds one of the restores' manager-wide chunk slots and looks the group's
//! members up again. A chunk failing is retried, backed off, without end; once it has
//! failed for `GIVE_UP` its error is shown by `volume info`. A volume deleted meanwhile
//! stops its task (at the next tick, or at its next progress record).
//!
//! Holds in memory only what `volume info` shows of the fill's speed ([`Rates`], published
//! in the service's restore meters: bytes filled by this leader, the ETA at the rate it
//! sees, a lasting error). Must never unlink a chunk before its group answered that every
//! hydrate entry of it is committed, nor record a chunk filled before it is unlinked;
//! never hold the service lock across a call to a node or a store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_proto::control::{
    ControlError, GroupOp, Hash, HydrateChunkRequest, REGION_BYTES, RegionRef, StorageReply,
    StorageRequest, StoreSpec,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use tessera_backup::Store;

use crate::backup_jobs::{
    GIVE_UP, Running, Settings, Shared, Stores, TICK, call_leader, locked, read_segment, resolve,
};
use crate::group_calls;
use crate::pace::Pace;
use crate::service::{RestoreMeter, RestoreMeters};
use crate::state::Mutation;

/// How long one node gets to fill one chunk.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one node gets to unlink one filled chunk.
const UNLINK_TIMEOUT: Duration = Duration::from_secs(10);
/// Back-off of a failing chunk.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long after this leader first saw a restore linked its chunks may be unlinked: the
/// `Link`s of a request or a background pass that may still be in flight (their jobs give
/// up after 20 s, a call after 5 s more) must land before any `Unlink`, never after it (a
/// chunk linked again once filled would stay linked after the restore is done). The fills
/// themselves start at once.
const LINK_SETTLE: Duration = if cfg!(test) {
    Duration::ZERO
} else {
    Duration::from_secs(30)
};
/// Progress is recorded at most this often (and at the end).
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What this leader saw of each restore's fill, published in the service's restore meters
/// (for `volume info`).
#[derive(Debug, Clone, Default)]
pub struct Rates {
    seen: Arc<Mutex<HashMap<u64, Rate>>>,
    meters: RestoreMeters,
}

#[derive(Debug, Clone)]
struct Rate {
    started: Instant,
    hydrated_bytes: u64,
    /// Chunks filled by this leader, and left to fill.
    chunks_done: u64,
    chunks_left: u64,
    /// A chunk's error once it has failed for [`GIVE_UP`] (cleared by the next fill).
    error: Option<String>,
}

impl Rate {
    /// Bytes filled, and the seconds left at the rate seen (`None`: not known yet).
    fn meter(&self) -> RestoreMeter {
        let secs = self.started.elapsed().as_secs_f64();
        let eta_secs = (self.chunks_done > 0 && secs > 0.0).then(|| {
            let per_sec = self.chunks_done as f64 / secs;
            (self.chunks_left as f64 / per_sec).ceil() as u64
        });
        RestoreMeter {
            hydrated_bytes: self.hydrated_bytes,
            eta_secs,
            error: self.error.clone(),
        }
    }
}

impl Rates {
    pub fn new(meters: RestoreMeters) -> Rates {
        Rates {
            seen: Arc::default(),
            meters,
        }
    }

    fn update(&self, volume_id: u64, f: impl FnOnce(&mut Rate)) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let r = seen.entry(volume_id).or_insert(Rate {
            started: Instant::now(),
            hydrated_bytes: 0,
            chunks_done: 0,
            chunks_left: 0,
            error: None,
        });
        f(r);
        let meter = r.meter();
        drop(seen);
        let mut meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        meters.insert(volume_id, meter);
    }

    fn plan(&self, volume_id: u64, chunks_left: u64) {
        self.update(volume_id, |r| r.chunks_left = chunks_left);
    }

    fn filled(&self, volume_id: u64, bytes: u64) {
        self.update(volume_id, |r| {
            r.hydrated_bytes = r.hydrated_bytes.saturating_add(bytes);
            r.chunks_done += 1;
            r.chunks_left = r.chunks_left.saturating_sub(1);
            r.error = None;
        });
    }

    fn failing(&self, volume_id: u64, error: String) {
        self.update(volume_id, |r| r.error = Some(error));
    }

    fn keep_only(&self, planned: &BTreeSet<u64>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|id, _| planned.contains(id));
        drop(seen);
        let mut meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        meters.retain(|id, _| planned.contains(id));
    }

    fn forget(&self, volume_id: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.remove(&volume_id);
        drop(seen);
        let mut meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        meters.remove(&volume_id);
    }
}

/// Runs until `stopped` turns true: starts the fill of every restoring volume without a
/// task, each tick or at once when the service wakes it (a new restore, `PrewarmVolume`);
/// stops them when this manager stops leading.
pub async fn run(
    service: Shared,
    stores: Stores,
    settings: Settings,
    bytes_per_sec: u64,
    mut stopped: watch::Receiver<bool>,
) {
    let Ok((meters, kick)) = locked(&service, |s| Ok((s.restore_meters(), s.restore_kick()))).await
    else {
        return;
    };
    let rates = Rates::new(meters);
    // The restores' own pool of manager-wide chunk slots (the uploads' is apart).
    let settings = settings.own_slots();
    let pace = Arc::new(Pace::new(bytes_per_sec));
    let mut running = Running::default();
    // When this leader first planned each restore linked (see [`LINK_SETTLE`]).
    let mut linked_seen: HashMap<u64, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tick.tick() => {}
            () = kick.notified() => {}
        }
        let Ok(jobs) = locked(&service, |s| {
            s.lead()?;
            Ok(plan_all(s))
        })
        .await
        else {
            running.abort_all();
            linked_seen.clear();
            continue;
        };
        // A volume deleted (or done) meanwhile: its task stops, its meter goes.
        let planned = jobs.iter().map(|j| j.volume_id).collect();
        running.keep_only(&planned);
        rates.keep_only(&planned);
        linked_seen.retain(|id, _| planned.contains(id));
        for job in jobs {
            let seen = *linked_seen
                .entry(job.volume_id)
                .or_insert_with(Instant::now);
            let Some((spec, store)) = stores.get(&job.store).cloned() else {
                warn!(volume = job.volume_id, store = %job.store,
                      "restore's store is not configured here");
                continue;
            };
            let ctx = Ctx {
                service: service.clone(),
                spec,
                store,
                settings: settings.clone(),
                pace: pace.clone(),
                rates: rates.clone(),
                unlink_after: seen + LINK_SETTLE,
            };
            running.start(job.volume_id, fill(ctx, job));
        }
    }
    running.abort_all();
}

struct Ctx {
    service: Shared,
    spec: StoreSpec,
    store: Store,
    settings: Settings,
    pace: Arc<Pace>,
    rates: Rates,
    /// No chunk is unlinked before this (see [`LINK_SETTLE`]).
    unlink_after: Instant,
}

/// One restoring volume as planned from the state.
#[derive(Debug, Clone)]
pub(crate) struct RestoreJob {
    pub volume_id: u64,
    pub store: String,
    /// `(position, chunk, segment, its group's id)` from the recorded position on, in the
    /// restore's order; a chunk not mapped to a group is left for a later pass. The
    /// group's members are looked up at each attempt.
    pub todo: Vec<(u64, u64, Hash, Option<u64>)>,
}

/// Every linked restore (an unlinked one is linked first, by its request or the
/// background: a hydrate of an unlinked chunk does nothing, and the chunk would then be
/// unlinked, and counted filled, empty).
pub(crate) fn plan_all(s: &crate::service::Service) -> Vec<RestoreJob> {
    let state = s.state();
    let mut out = Vec::new();
    for (volume_id, r) in state.restoring_volumes() {
        if !r.linked {
            continue;
        }
        let groups = state.volume_chunk_groups(volume_id);
        let todo = (0u64..)
            .zip(state.restore_order(r.backup))
            .skip(usize::try_from(r.next_position).unwrap_or(usize::MAX))
            .map(|(p, (c, h))| (p, c, h, groups.get(&c).copied()))
            .collect();
        out.push(RestoreJob {
            volume_id,
            store: r.store.clone(),
            todo,
        });
    }
    out
}

async fn fill(ctx: Ctx, job: RestoreJob) {
    let id = job.volume_id;
    match fill_all(&ctx, &job).await {
        Ok(()) => {
            ctx.rates.forget(id);
            info!(volume = id, "restored volume filled from its backup");
        }
        Err(e) => warn!(volume = id, error = %e, "restore stopped; resumed later"),
    }
}

/// A chunk to fill, by its position in the restore's order.
#[derive(Debug, Clone, Copy)]
struct Left {
    chunk: u64,
    seg: Hash,
    group: Option<u64>,
    /// When to try next, the back-off, since when it fails.
    next_try: Instant,
    backoff: Duration,
    failing_since: Option<Instant>,
}

/// Fills and unlinks every chunk, lowest positions first, recording progress as the
/// lowest position not done moves, then done. A chunk failing is retried, backed off;
/// once it has failed for [`GIVE_UP`] its error is shown in the restore's meter. Stops
/// (`Err`) if the volume is deleted or done.
async fn fill_all(ctx: &Ctx, job: &RestoreJob) -> Result<(), String> {
    ctx.rates.plan(job.volume_id, job.todo.len() as u64);
    let now = Instant::now();
    let mut left: BTreeMap<u64, Left> = job
        .todo
        .iter()
        .map(|&(p, chunk, seg, group)| {
            let l = Left {
                chunk,
                seg,
                group,
                next_try: now,
                backoff: FIRST_BACKOFF,
                failing_since: None,
            };
            (p, l)
        })
        .collect();
    let mut in_flight: BTreeSet<u64> = BTreeSet::new();
    let mut running: JoinSet<(u64, Result<u64, String>)> = JoinSet::new();
    let mut recorded = job.todo.first().map_or(0, |t| t.0);
    let mut recorded_at = Instant::now();
    while !left.is_empty() {
        let t = Instant::now();
        let room = ctx.settings.chunks_in_flight.max(1);
        let ready: Vec<(u64, Left)> = left
            .iter()
            .filter(|(p, l)| l.group.is_some() && l.next_try <= t && !in_flight.contains(p))
            .map(|(p, l)| (*p, *l))
            .take(room.saturating_sub(running.len()))
            .collect();
        for (pos, l) in ready {
            let Some(group_id) = l.group else { continue };
            in_flight.insert(pos);
            let (service, store, spec) = (ctx.service.clone(), ctx.store.clone(), ctx.spec.clone());
            let (pace, settings) = (ctx.pace.clone(), ctx.settings.clone());
            let (volume_id, unlink_after) = (job.volume_id, ctx.unlink_after);
            running.spawn(async move {
                let c = ChunkFill {
                    service: &service,
                    store: &store,
                    spec,
                    pace: &pace,
                    settings: &settings,
                    group_id,
                    unlink_after,
                };
                (pos, fill_chunk(c, volume_id, l.chunk, l.seg).await)
            });
        }
        if running.is_empty() {
            if left.values().all(|l| l.group.is_none()) {
                return Err(format!(
                    "{} chunks have no known group; retried next pass",
                    left.len()
                ));
            }
            let wake = left
                .values()
                .filter(|l| l.group.is_some())
                .map(|l| l.next_try)
                .min()
                .unwrap_or(t);
            tokio::time::sleep_until(wake.into()).await;
            continue;
        }
        let Some(done) = running.join_next().await else {
            continue;
        };
        let (pos, r) = done.map_err(|e| format!("a fill task failed: {e}"))?;
        in_flight.remove(&pos);
        match r {
            Ok(bytes) => {
                left.remove(&pos);
                ctx.rates.filled(job.volume_id, bytes);
            }
            Err(e) => {
                let Some(l) = left.get_mut(&pos) else {
                    continue;
                };
                let chunk = l.chunk;
                warn!(volume = job.volume_id, chunk, error = %e, "chunk not filled; retried");
                let now = Instant::now();
                if now.duration_since(*l.failing_since.get_or_insert(now)) >= GIVE_UP {
                    ctx.rates
                        .failing(job.volume_id, format!("chunk {chunk}: {e}"));
                }
                l.next_try = now + l.backoff;
                l.backoff = (l.backoff * 2).min(MAX_BACKOFF);
            }
        }
        let next = left.keys().next().copied().unwrap_or(u64::MAX);
        if next > recorded && recorded_at.elapsed() >= PROGRESS_EVERY && !left.is_empty() {
            let m = Mutation::RestoreProgress {
                volume_id: job.volume_id,
                next_chunk: 0,
                next_position: next,
            };
            commit_restoring(ctx, job.volume_id, m).await?;
            (recorded, recorded_at) = (next, Instant::now());
        }
    }
    running.abort_all();
    unlink_all(ctx, job.volume_id).await?;
    let m = Mutation::RestoreDone {
        volume_id: job.volume_id,
    };
    commit_restoring(ctx, job.volume_id, m).await
}

/// Unlinks every chunk of the restore once more (one batch per group; idempotent) before
/// it is recorded done: a `Link` that landed after its chunk's own unlink (a request's or
/// a background pass's, late) must not leave a filled chunk linked to the backup.
async fn unlink_all(ctx: &Ctx, volume_id: u64) -> Result<(), String> {
    let jobs = locked(&ctx.service, move |s| {
        let ops = s.state().restore_unlink_ops(volume_id)?;
        s.all_group_jobs(ops, crate::backup_jobs::now())
    })
    .await?;
    let deadline = Instant::now() + UNLINK_TIMEOUT;
    group_calls::apply_all(jobs, deadline)
        .await
        .map_err(|e| format!("unlinking the restore's chunks before it is done: {e}"))
}

/// Commits `m` if volume `id` still exists and is being restored (else `Err`: the job
/// stops).
async fn commit_restoring(ctx: &Ctx, id: u64, m: Mutation) -> Result<(), String> {
    locked(&ctx.service, move |s| {
        let restoring = s
            .state()
            .volume_record_by_id(id)
            .is_ok_and(|v| v.restore.is_some());
        if !restoring {
            return Err(ControlError::NotFound(format!(
                "volume {id} is no longer being restored"
            )));
        }
        s.commit_led(m)
    })
    .await
}

/// What one chunk's fill works with.
struct ChunkFill<'a> {
    service: &'a Shared,
    store: &'a Store,
    spec: StoreSpec,
    pace: &'a Pace,
    settings: &'a Settings,
    group_id: u64,
    unlink_after: Instant,
}

/// Fills one chunk from its segment, then unlinks it from the backup: the bytes of the
/// regions filled. A manager-wide slot is held and the regions' bytes paced before the
/// fill is sent to the group's leader (its members looked up now); the slot is let go
/// before the unlink, which waits for `unlink_after`. A segment without any region
/// (nothing to fill) is only unlinked.
async fn fill_chunk(
    c: ChunkFill<'_>,
    volume_id: u64,
    chunk: u64,
    seg: Hash,
) -> Result<u64, String> {
    let (store, spec, pace) = (c.store, c.spec, c.pace);
    let window = c.settings.window;
    let segment = read_segment(store, &seg).await?;
    if segment.chunk != chunk {
        return Err(format!(
            "segment {seg} names chunk {}, recorded for chunk {chunk}",
            segment.chunk
        ));
    }
    let bytes = segment.regions.len() as u64 * REGION_BYTES;
    let slot = c.settings.slot().await;
    pace.take(bytes).await;
    let mut group = resolve(c.service, c.group_id).await?;
    let mut at = 0;
    if !segment.regions.is_empty() {
        let req = StorageRequest::HydrateChunk(HydrateChunkRequest {
            group_id: group.group_id,
            volume_id,
            chunk,
            store: spec,
            regions: segment
                .regions
                .iter()
                .map(|(region, h)| RegionRef {
                    region: *region,
                    object: Some(*h),
                })
                .collect(),
            window: window.max(1),
        });
        at = match call_leader(&group, &req, 0, CHUNK_TIMEOUT).await? {
            (StorageReply::Done, at) => at,
            (other, _) => return Err(format!("group {} answered {other:?}", group.group_id)),
        };
    }
    drop(slot);
    if Instant::now() < c.unlink_after {
        tokio::time::sleep_until(c.unlink_after.into()).await;
        // Its members may have changed meanwhile.
        (group, at) = (resolve(c.service, c.group_id).await?, 0);
    }
    // Only once every region's entry is committed: unlinked, a block no layer holds reads
    // as zeroes, and a late hydrate of it does nothing.
    let unlink = StorageRequest::Apply {
        group_id: group.group_id,
        ops: vec![GroupOp::Unlink { volume_id, chunk }],
    };
    match call_leader(&group, &unlink, at, UNLINK_TIMEOUT).await? {
        (StorageReply::Done, _) => {
            debug!(volume = volume_id, chunk, "chunk filled and unlinked");
            Ok(bytes)
        }
        (other, _) => Err(format!(
            "group {} answered the unlink with {other:?}",
            group.group_id
        )),
    }
}

#[cfg(test)]
#[path = "restore_loop_tests.rs"]
mod tests;

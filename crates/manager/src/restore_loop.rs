//! The leading manager's pre-warm of restored volumes (`volume create --from-backup`, and
//! `volume prewarm`): per restoring volume once linked to its backup, every chunk of the
//! backup's recorded map in the restore's order (`State::restore_order`: the backup's
//! access record, most read chunks first, then by index) from the recorded position on,
//! `backup_chunks_in_flight` at once: the chunk's segment read from a store of the
//! restore's source (verified), a `HydrateChunk` naming its regions and that store sent
//! to the chunk's group leader, paced
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
//! Each fill holds one of the restores' manager-wide chunk slots and counts against the
//! restore's concurrency; a filled chunk waiting out [`LINK_SETTLE`] and its unlink do
//! neither (they run apart), so fills go on at full concurrency meanwhile. Each attempt
//! looks the group's members up again. A chunk failing is retried, backed off, without
//! end, each attempt from the next store of the restore's source (`State::restore_source`:
//! the restore's store, then the stores of ready copies; those configured here), so a
//! corrupt or missing object, or a store down, does not stop the fill; once it has
//! failed for `GIVE_UP` its error is shown by `volume info`, and at once if no store of
//! the source is configured here. A volume deleted meanwhile stops its task (at the next
//! tick, or at its next progress record).
//!
//! Holds in memory only what `volume info` shows of the fill's speed ([`Rates`], in
//! `restore_rates.rs`, published in the service's restore meters: bytes filled by this
//! leader, the ETA at the rate it sees, a lasting error). Must never unlink a chunk before its group answered that every
//! hydrate entry of it is committed, nor record a chunk filled before it is unlinked;
//! never hold the service lock across a call to a node or a store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
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
use crate::state::Mutation;

#[path = "restore_rates.rs"]
mod rates;
pub use rates::Rates;

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
            let sources: Vec<(StoreSpec, Store)> = job
                .stores
                .iter()
                .filter_map(|n| stores.get(n).cloned())
                .collect();
            if sources.is_empty() {
                let error = format!(
                    "no store holding the backup is configured on this manager ({})",
                    job.stores.join(", ")
                );
                warn!(volume = job.volume_id, %error, "restore cannot be filled");
                rates.failing(job.volume_id, error);
                continue;
            }
            let ctx = Ctx {
                service: service.clone(),
                sources,
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
    /// The stores a chunk is read from, configured here, in the order of the restore's
    /// source (`State::restore_source`: its own store first, then ready copies): a chunk's
    /// attempt `n` reads the `n`th (round), so a store down, or an object missing or
    /// corrupt in it, does not keep the chunk from ever filling.
    sources: Vec<(StoreSpec, Store)>,
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
    /// The stores holding a ready copy of the backup, the restore's own first.
    pub stores: Vec<String>,
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
        let stores = state
            .restore_source(volume_id, 0)
            .map_or_else(|_| vec![r.store.clone()], |(_, _, stores)| stores);
        out.push(RestoreJob {
            volume_id,
            stores,
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
    /// Attempts failed so far: the next reads the store after the last one's.
    failed: usize,
}

/// What a chunk's task ended with.
enum Step {
    /// Its fill was answered (`(bytes, the member that answered)`, or why not).
    Filled(Result<(u64, usize), String>),
    /// Its unlink was answered (the chunk's bytes, or why not).
    Unlinked(Result<u64, String>),
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
                failed: 0,
            };
            (p, l)
        })
        .collect();
    let mut in_flight: BTreeSet<u64> = BTreeSet::new();
    // Fills count against the restore's concurrency; chunks filled and waiting out
    // `unlink_after` (or being unlinked) do not.
    let mut filling: JoinSet<(u64, Step)> = JoinSet::new();
    let mut unlinking: JoinSet<(u64, Step)> = JoinSet::new();
    let mut recorded = job.todo.first().map_or(0, |t| t.0);
    let mut recorded_at = Instant::now();
    while !left.is_empty() {
        let t = Instant::now();
        let room = ctx.settings.chunks_in_flight.max(1);
        let ready: Vec<(u64, Left)> = left
            .iter()
            .filter(|(p, l)| l.group.is_some() && l.next_try <= t && !in_flight.contains(p))
            .map(|(p, l)| (*p, *l))
            .take(room.saturating_sub(filling.len()))
            .collect();
        for (pos, l) in ready {
            let Some(group_id) = l.group else { continue };
            in_flight.insert(pos);
            let (spec, store) = ctx.sources[l.failed % ctx.sources.len()].clone();
            let (service, pace, settings) =
                (ctx.service.clone(), ctx.pace.clone(), ctx.settings.clone());
            let volume_id = job.volume_id;
            filling.spawn(async move {
                let c = ChunkFill {
                    service: &service,
                    store: &store,
                    spec,
                    pace: &pace,
                    settings: &settings,
                    group_id,
                };
                (
                    pos,
                    Step::Filled(fill_chunk(c, volume_id, l.chunk, l.seg).await),
                )
            });
        }
        // The next chunk backed off that may be tried (not one in flight).
        let wake = left
            .iter()
            .filter(|(p, l)| l.group.is_some() && !in_flight.contains(p))
            .map(|(_, l)| l.next_try)
            .min();
        if filling.is_empty() && unlinking.is_empty() {
            let Some(wake) = wake else {
                return Err(format!(
                    "{} chunks have no known group; retried next pass",
                    left.len()
                ));
            };
            tokio::time::sleep_until(wake.into()).await;
            continue;
        }
        let far = t + Duration::from_secs(3600);
        let done = tokio::select! {
            Some(done) = filling.join_next() => done,
            Some(done) = unlinking.join_next() => done,
            () = tokio::time::sleep_until(wake.unwrap_or(far).into()),
                if wake.is_some() && filling.len() < room => continue,
        };
        let (pos, step) = done.map_err(|e| format!("a fill task failed: {e}"))?;
        let r = match step {
            Step::Filled(Ok((bytes, at))) => {
                // Shown filled at once (`volume info`'s bytes and ETA); the chunk counts as
                // done in the recorded progress only once unlinked, which may wait out
                // `unlink_after`.
                ctx.rates.filled(job.volume_id, bytes);
                let (service, unlink_after) = (ctx.service.clone(), ctx.unlink_after);
                let security = ctx.settings.security.clone();
                let (volume_id, chunk) = (job.volume_id, left.get(&pos).map_or(0, |l| l.chunk));
                let group_id = left.get(&pos).and_then(|l| l.group).unwrap_or(0);
                unlinking.spawn(async move {
                    let u = UnlinkAfter {
                        service: &service,
                        group_id,
                        at,
                        unlink_after,
                        security: &security,
                    };
                    let r = unlink_chunk(u, volume_id, chunk).await.map(|()| bytes);
                    (pos, Step::Unlinked(r))
                });
                continue;
            }
            Step::Filled(Err(e)) => Err(e),
            Step::Unlinked(r) => r,
        };
        in_flight.remove(&pos);
        match r {
            Ok(_) => {
                left.remove(&pos);
            }
            Err(e) => {
                let Some(l) = left.get_mut(&pos) else {
                    continue;
                };
                let chunk = l.chunk;
                let store = &ctx.sources[l.failed % ctx.sources.len()].0.name;
                warn!(volume = job.volume_id, chunk, %store, error = %e,
                      "chunk not filled; retried (from the next store of the backup, if any)");
                let now = Instant::now();
                if now.duration_since(*l.failing_since.get_or_insert(now)) >= GIVE_UP {
                    ctx.rates
                        .failing(job.volume_id, format!("chunk {chunk}: {e}"));
                }
                l.failed += 1;
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
    filling.abort_all();
    unlinking.abort_all();
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
    group_calls::apply_all(&ctx.settings.security, jobs, deadline)
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
}

/// Fills one chunk from its segment in `store`: the bytes of the regions filled, and the
/// member that answered. A manager-wide slot is held and the regions' bytes paced while
/// the fill is sent to the group's leader (its members looked up now). A segment without
/// any region (nothing to fill) sends nothing.
async fn fill_chunk(
    c: ChunkFill<'_>,
    volume_id: u64,
    chunk: u64,
    seg: Hash,
) -> Result<(u64, usize), String> {
    let (store, spec, pace) = (c.store, c.spec, c.pace);
    let window = c.settings.window;
    let segment = read_segment(store, &seg)
        .await
        .map_err(|e| format!("store {}: {e}", spec.name))?;
    if segment.chunk != chunk {
        return Err(format!(
            "segment {seg} names chunk {}, recorded for chunk {chunk}",
            segment.chunk
        ));
    }
    let bytes = segment.regions.len() as u64 * REGION_BYTES;
    if segment.regions.is_empty() {
        return Ok((0, 0));
    }
    let _slot = c.settings.slot().await;
    pace.take(bytes).await;
    let group = resolve(c.service, c.group_id).await?;
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
    match call_leader(&c.settings.security, &group, &req, 0, CHUNK_TIMEOUT).await? {
        (StorageReply::Done, at) => Ok((bytes, at)),
        (other, _) => Err(format!("group {} answered {other:?}", group.group_id)),
    }
}

/// What one filled chunk's unlink works with.
struct UnlinkAfter<'a> {
    service: &'a Shared,
    group_id: u64,
    /// The member that answered the fill (asked first).
    at: usize,
    /// Not unlinked before this (see [`LINK_SETTLE`]).
    unlink_after: Instant,
    security: &'a tessera_net::Security,
}

/// Unlinks a filled chunk from the backup, once `unlink_after` has passed. Holds no slot:
/// chunks waiting here do not hold up the fills of others.
async fn unlink_chunk(u: UnlinkAfter<'_>, volume_id: u64, chunk: u64) -> Result<(), String> {
    let mut at = u.at;
    if Instant::now() < u.unlink_after {
        tokio::time::sleep_until(u.unlink_after.into()).await;
        // Its members may have changed meanwhile.
        at = 0;
    }
    let group = resolve(u.service, u.group_id).await?;
    // Only once every region's entry is committed: unlinked, a block no layer holds reads
    // as zeroes, and a late hydrate of it does nothing.
    let unlink = StorageRequest::Apply {
        group_id: group.group_id,
        ops: vec![GroupOp::Unlink { volume_id, chunk }],
    };
    match call_leader(u.security, &group, &unlink, at, UNLINK_TIMEOUT).await? {
        (StorageReply::Done, _) => {
            debug!(volume = volume_id, chunk, "chunk filled and unlinked");
            Ok(())
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

//! The leading manager's background work on snapshots and clones, every `reconcile_ms`:
//! finishing snapshots left `Creating` and clones left linking (a manager failed over
//! mid-request, or a group was unreachable), and carrying every flatten on, one chunk at a
//! time: its `Flatten` pieces ([`FLATTEN_PIECE`] each, paced to `flatten_bytes_per_sec`),
//! then `Unlink`, then the chunk recorded unlinked; and carrying every reclaim of a
//! deleted snapshot's space on: asking each group which chunks have two or more layers in
//! the range (`LayerUsage`), then per such chunk, in chunk order, one batch (a fence at the
//! volume's sequence, the merge passes, see `state::reclaim_ops`) paced to the same rate,
//! then its progress recorded. Everything is planned from the replicated state
//! (`Service::background`), so a new leader continues from there.
//!
//! Holds no state of its own beyond when it first saw each unfinished request (it leaves
//! one alone for [`GRACE`], the time the request itself may still be finishing it; doing
//! it twice would be harmless, only wasteful). Must never hold the service lock while it
//! calls a storage node, nor record a chunk unlinked (or merged) before its group applied
//! the unlink (or the merge).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use std::collections::BTreeMap;

use tessera_proto::BLOCK_SIZE;

use crate::group_calls::{self, GroupJob};
use crate::service::{Finish, FlattenJob, Now, Pending, ReclaimJob, Service, unlink_op};
use crate::state::{FLATTEN_PIECE, flatten_pieces, reclaim_ops};
use crate::usage;

type Shared = Arc<Mutex<Service>>;

/// How long an unfinished snapshot or clone is left to the request that made it.
const GRACE: Duration = Duration::from_secs(25);
/// How long one background finish, one flatten piece or one chunk's merge may take.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long a reclaim waits for its groups' layer usage (then it is retried next round).
const USAGE_DEADLINE: Duration = Duration::from_secs(5);

fn now() -> Now {
    Now {
        instant: Instant::now(),
        unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

/// Runs until `stopped` turns true.
pub async fn run(
    service: Shared,
    every: Duration,
    bytes_per_sec: u64,
    mut stopped: watch::Receiver<bool>,
) {
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut finishing: Option<JoinHandle<()>> = None;
    let mut flattening: Option<JoinHandle<()>> = None;
    let mut reclaiming: Option<JoinHandle<()>> = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tick.tick() => {}
        }
        let s = service.clone();
        let Ok(work) =
            tokio::task::spawn_blocking(move || s.lock().map(|mut s| s.background(now())).ok())
                .await
        else {
            continue;
        };
        let Some(work) = work else { continue };
        let t = Instant::now();
        let keys: Vec<String> = work.finish.iter().map(|p| key(&p.finish)).collect();
        seen.retain(|k, _| keys.contains(k));
        let due: Vec<Pending> = work
            .finish
            .into_iter()
            .zip(keys)
            .filter(|(_, k)| t.duration_since(*seen.entry(k.clone()).or_insert(t)) >= GRACE)
            .map(|(p, _)| p)
            .collect();
        if !due.is_empty() && finishing.as_ref().is_none_or(JoinHandle::is_finished) {
            finishing = Some(tokio::spawn(finish_all(service.clone(), due)));
        }
        if !work.flatten.is_empty() && flattening.as_ref().is_none_or(JoinHandle::is_finished) {
            let s = service.clone();
            flattening = Some(tokio::spawn(flatten_all(s, work.flatten, bytes_per_sec)));
        }
        if !work.reclaim.is_empty() && reclaiming.as_ref().is_none_or(JoinHandle::is_finished) {
            let s = service.clone();
            reclaiming = Some(tokio::spawn(reclaim_all(s, work.reclaim, bytes_per_sec)));
        }
    }
    for task in [finishing, flattening, reclaiming].into_iter().flatten() {
        task.abort();
    }
}

fn key(f: &Finish) -> String {
    format!("{f:?}")
}

async fn finish_all(service: Shared, due: Vec<Pending>) {
    for p in due {
        let what = p.finish.clone();
        match group_calls::finish(&service, p, DEADLINE).await {
            Ok(_) => info!(?what, "finished in the background"),
            Err(e) => warn!(?what, error = %e, "could not finish in the background; retried later"),
        }
    }
}

/// One chunk of each flattening clone, paced together to `bytes_per_sec`.
async fn flatten_all(service: Shared, jobs: Vec<FlattenJob>, bytes_per_sec: u64) {
    let mut pace = Pace::new(bytes_per_sec);
    for job in jobs {
        if let Err(e) = flatten_chunk(&service, &job, &mut pace).await {
            warn!(volume = job.volume_id, chunk = job.chunk, error = %e,
                  "flatten step failed; retried later");
        }
    }
}

async fn flatten_chunk(service: &Shared, job: &FlattenJob, pace: &mut Pace) -> Result<(), String> {
    for op in flatten_pieces(job.volume_id, job.chunk, job.chunk_size) {
        pace.wait().await;
        apply(&job.group, vec![op]).await?;
        pace.copied(FLATTEN_PIECE.min(job.chunk_size));
    }
    apply(&job.group, vec![unlink_op(job)]).await?;
    let s = service.clone();
    let (volume_id, chunk) = (job.volume_id, job.chunk);
    tokio::task::spawn_blocking(move || {
        s.lock()
            .map_err(|_| "manager state is unusable".to_string())?
            .chunk_unlinked(volume_id, chunk)
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    debug!(volume = volume_id, chunk, "chunk flattened and unlinked");
    Ok(())
}

/// Every reclaim that may run, one after the other, paced together to `bytes_per_sec`.
async fn reclaim_all(service: Shared, jobs: Vec<ReclaimJob>, bytes_per_sec: u64) {
    let mut pace = Pace::new(bytes_per_sec);
    for job in jobs {
        match reclaim(&service, &job, &mut pace).await {
            Ok(Some(merged)) => info!(
                volume = job.volume_id,
                low = job.low,
                top = ?job.top,
                chunks_merged = merged,
                "deleted snapshot's space reclaimed"
            ),
            Ok(None) => debug!(
                volume = job.volume_id,
                low = job.low,
                "reclaim changed while it ran; planned again next round"
            ),
            Err(e) => warn!(volume = job.volume_id, low = job.low, error = %e,
                            "reclaim step failed; retried later"),
        }
    }
}

/// One reclaim to its end: `Some(chunks merged)`, or `None` if the state moved on (its
/// range widened by another deletion, or it is gone).
async fn reclaim(
    service: &Shared,
    job: &ReclaimJob,
    pace: &mut Pace,
) -> Result<Option<u64>, String> {
    let groups: Vec<usage::Replicas> = job
        .groups
        .iter()
        .map(|(g, _)| usage::Replicas {
            group_id: g.group_id,
            members: g.members.clone(),
        })
        .collect();
    let mut answers =
        usage::ask_groups(job.volume_id, &groups, Instant::now() + USAGE_DEADLINE).await;
    let mut todo = BTreeMap::new();
    for (at, (group, chunks)) in job.groups.iter().enumerate() {
        let layers = answers
            .remove(&group.group_id)
            .unwrap_or_else(|| Err(format!("group {} not asked", group.group_id)))?;
        for (chunk, bytes) in chunks_to_merge(job, chunks, &layers) {
            todo.insert(chunk, (at, bytes));
        }
    }
    let merged = todo.len() as u64;
    for (chunk, (at, bytes)) in todo {
        pace.wait().await;
        let ops = reclaim_ops(
            job.volume_id,
            chunk,
            job.chunk_size,
            job.low,
            job.top,
            job.seq,
        );
        let group = GroupJob {
            batches: group_calls::batches(ops),
            ..job.groups[at].0.clone()
        };
        group_calls::apply_group(group, Instant::now() + DEADLINE).await?;
        pace.copied(bytes);
        let next = chunk.saturating_add(1);
        if !record(service, job, move |s, j| s.reclaim_progress(j, next, false)).await? {
            return Ok(None);
        }
        debug!(
            volume = job.volume_id,
            low = job.low,
            chunk,
            "chunk's layers merged"
        );
    }
    if !record(service, job, |s, j| s.reclaim_done(j)).await? {
        return Ok(None);
    }
    Ok(Some(merged))
}

/// The chunks of `chunks` from the job's `next_chunk` on with two or more layers in its
/// range, as `layers` (one group's usage answer) says, each with the bytes a merge reads
/// (the range's layers but the lowest; at least a block).
fn chunks_to_merge(
    job: &ReclaimJob,
    chunks: &[u64],
    layers: &[tessera_proto::control::LayerBytes],
) -> Vec<(u64, u64)> {
    let top = job.top.unwrap_or(job.seq);
    let mut in_range: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for l in layers {
        if l.chunk >= job.next_chunk && (job.low..=top).contains(&l.layer) {
            in_range
                .entry(l.chunk)
                .or_default()
                .push((l.layer, l.bytes));
        }
    }
    chunks
        .iter()
        .filter_map(|c| {
            let mut ls = in_range.remove(c)?;
            if ls.len() < 2 {
                return None;
            }
            ls.sort_unstable();
            let bytes = ls[1..]
                .iter()
                .fold(0u64, |sum, (_, b)| sum.saturating_add(*b));
            Some((*c, bytes.max(BLOCK_SIZE)))
        })
        .collect()
}

/// Commits a reclaim's progress under the lock (off the async workers): whether the
/// reclaim is still the job's.
async fn record(
    service: &Shared,
    job: &ReclaimJob,
    commit: impl FnOnce(&mut Service, &ReclaimJob) -> Result<bool, tessera_proto::control::ControlError>
    + Send
    + 'static,
) -> Result<bool, String> {
    let s = service.clone();
    let job = job.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = s
            .lock()
            .map_err(|_| "manager state is unusable".to_string())?;
        commit(&mut s, &job).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn apply(group: &GroupJob, ops: Vec<tessera_proto::control::GroupOp>) -> Result<(), String> {
    let job = GroupJob {
        batches: vec![ops],
        ..group.clone()
    };
    group_calls::apply_group(job, Instant::now() + DEADLINE).await
}

/// Paces copies to a rate: after `n` bytes since `start`, the next waits until
/// `start + n / rate`.
struct Pace {
    start: Instant,
    bytes: u64,
    rate: u64,
}

impl Pace {
    fn new(rate: u64) -> Self {
        Pace {
            start: Instant::now(),
            bytes: 0,
            rate: rate.max(1),
        }
    }

    fn due(&self) -> Instant {
        self.start + Duration::from_secs_f64(self.bytes as f64 / self.rate as f64)
    }

    async fn wait(&self) {
        tokio::time::sleep_until(self.due().into()).await;
    }

    fn copied(&mut self, n: u64) {
        self.bytes = self.bytes.saturating_add(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_spreads_bytes_over_time() {
        let mut p = Pace::new(64 << 20);
        assert!(p.due() <= Instant::now());
        p.copied(32 << 20);
        let ahead = p.due().duration_since(p.start);
        assert_eq!(ahead, Duration::from_millis(500));
    }

    /// A chunk is merged when it has two or more layers in the range and lies at or after
    /// the reclaim's progress in this group; its cost is its range layers but the lowest
    /// (at least a block).
    #[test]
    fn chunks_with_two_layers_in_the_range_are_merged_from_the_progress_on() {
        use tessera_proto::control::LayerBytes;
        let job = ReclaimJob {
            volume_id: 1,
            low: 2,
            top: Some(4),
            seq: 6,
            next_chunk: 1,
            chunk_size: 1 << 20,
            groups: Vec::new(),
        };
        let lb = |chunk, layer, kib: u64| LayerBytes {
            chunk,
            layer,
            bytes: kib << 10,
        };
        let layers = [
            lb(0, 2, 1),
            lb(0, 3, 1),
            lb(1, 1, 7),
            lb(1, 2, 7),
            lb(2, 2, 100),
            lb(2, 3, 50),
            lb(2, 4, 10),
            lb(2, 5, 999),
            lb(3, 3, 0),
            lb(3, 4, 0),
            lb(9, 2, 1),
            lb(9, 3, 1),
        ];
        assert_eq!(
            chunks_to_merge(&job, &[0, 1, 2, 3], &layers),
            [(2, 60 << 10), (3, BLOCK_SIZE)]
        );
        // The live range reaches the volume's sequence.
        let live = ReclaimJob { top: None, ..job };
        assert_eq!(
            chunks_to_merge(&live, &[1, 2], &layers),
            [(2, (50 + 10 + 999) << 10)]
        );
    }
}

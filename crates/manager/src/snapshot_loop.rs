//! The leading manager's background work on snapshots and clones, every `reconcile_ms`:
//! finishing snapshots left `Creating`, clones left linking and restores left unlinked (a
//! manager failed over mid-request, or a group was unreachable), and carrying every flatten on, one chunk at a
//! time: its `Flatten` pieces ([`FLATTEN_PIECE`] each, paced to `flatten_bytes_per_sec`),
//! then `Unlink`, then the chunk recorded unlinked; and starting the reclaims of deleted
//! snapshots' space (`reclaim_loop`), paced with the flattens by one shared [`Pace`].
//! Everything is planned from the replicated state (`Service::background`), so a new
//! leader continues from there; a reclaim is not planned again while a pass runs.
//!
//! Each unfinished request is looked at again under the lock right before its group ops are
//! sent (`Service::still_needed`): a restore's `Link` planned before its request linked it
//! must not reach a chunk the pre-warm already filled and unlinked. A manager that stops
//! leading stops its finishes at once (the pass's task is aborted; each step checks too).
//!
//! Holds no state of its own beyond when it first saw each unfinished request (it leaves
//! one alone for [`GRACE`], the time the request itself may still be finishing it; doing
//! it twice would be harmless, only wasteful) and when each reclaim last needed a retry.
//! Must never hold the service lock while it calls a storage node, nor record a chunk
//! unlinked before its group applied the unlink.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::group_calls::{self, GroupJob};
use crate::pace::Pace;
use crate::reclaim_loop::{self, Retries};
use crate::service::{Finish, FlattenJob, Now, Pending, Service, unlink_op};
use crate::state::{FLATTEN_PIECE, flatten_pieces};

type Shared = Arc<Mutex<Service>>;

/// How long an unfinished snapshot, clone or restore is left to the request that made it.
const GRACE: Duration = Duration::from_secs(25);
/// How long one background finish or one flatten piece may take.
const DEADLINE: Duration = Duration::from_secs(20);

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
    security: tessera_net::Security,
    every: Duration,
    bytes_per_sec: u64,
    mut stopped: watch::Receiver<bool>,
) {
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut finishing: Option<JoinHandle<()>> = None;
    let mut flattening: Option<JoinHandle<()>> = None;
    let mut reclaiming: Option<JoinHandle<()>> = None;
    // Flattens and reclaims run side by side and share the rate.
    let pace = Arc::new(Pace::new(bytes_per_sec));
    let retries = Retries::default();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tick.tick() => {}
        }
        let s = service.clone();
        // A reclaim whose job runs is not planned again (planning copies chunk maps).
        let plan_reclaims = reclaiming.as_ref().is_none_or(JoinHandle::is_finished);
        let Ok(work) = tokio::task::spawn_blocking(move || {
            s.lock().ok().map(|mut s| {
                let leads = s.lead().is_ok();
                leads.then(|| s.background(now(), plan_reclaims))
            })
        })
        .await
        else {
            continue;
        };
        let Some(work) = work else { continue };
        let Some(work) = work else {
            // Deposed (or not leading yet): what an earlier term planned is not sent on.
            for task in [finishing.take(), flattening.take()].into_iter().flatten() {
                task.abort();
            }
            continue;
        };
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
            finishing = Some(tokio::spawn(finish_all(
                service.clone(),
                security.clone(),
                due,
            )));
        }
        if !work.flatten.is_empty() && flattening.as_ref().is_none_or(JoinHandle::is_finished) {
            let s = service.clone();
            flattening = Some(tokio::spawn(flatten_all(
                s,
                security.clone(),
                work.flatten,
                pace.clone(),
            )));
        }
        if !work.reclaim.is_empty() && reclaiming.as_ref().is_none_or(JoinHandle::is_finished) {
            let s = service.clone();
            let (pace, retries) = (pace.clone(), retries.clone());
            let all = reclaim_loop::reclaim_all(s, security.clone(), work.reclaim, pace, retries);
            reclaiming = Some(tokio::spawn(all));
        }
    }
    for task in [finishing, flattening, reclaiming].into_iter().flatten() {
        task.abort();
    }
}

fn key(f: &Finish) -> String {
    format!("{f:?}")
}

/// Finishes every request planned, one after another. Each is looked at again right
/// before its ops are sent (planned at the start, it may wait behind the others for
/// minutes): one finished meanwhile is skipped, and a manager no longer leading stops.
pub(crate) async fn finish_all(
    service: Shared,
    security: tessera_net::Security,
    due: Vec<Pending>,
) {
    for p in due {
        let what = p.finish.clone();
        let s = service.clone();
        let f = what.clone();
        let needed =
            tokio::task::spawn_blocking(move || s.lock().ok().map(|mut s| s.still_needed(&f)))
                .await;
        match needed {
            Ok(Some(Ok(true))) => {}
            Ok(Some(Ok(false))) => {
                debug!(?what, "finished meanwhile; its ops are not sent");
                continue;
            }
            Ok(Some(Err(e))) => {
                info!(error = %e, "no longer leading: the background finishes stop");
                return;
            }
            Ok(None) | Err(_) => return,
        }
        match group_calls::finish(&service, &security, p, DEADLINE).await {
            Ok(_) => info!(?what, "finished in the background"),
            Err(e) => warn!(?what, error = %e, "could not finish in the background; retried later"),
        }
    }
}

/// One chunk of each flattening clone, paced with the reclaims.
async fn flatten_all(
    service: Shared,
    security: tessera_net::Security,
    jobs: Vec<FlattenJob>,
    pace: Arc<Pace>,
) {
    for job in jobs {
        if let Err(e) = flatten_chunk(&service, &security, &job, &pace).await {
            warn!(volume = job.volume_id, chunk = job.chunk, error = %e,
                  "flatten step failed; retried later");
        }
    }
}

async fn flatten_chunk(
    service: &Shared,
    security: &tessera_net::Security,
    job: &FlattenJob,
    pace: &Pace,
) -> Result<(), String> {
    for op in flatten_pieces(job.volume_id, job.chunk, job.chunk_size) {
        pace.take(FLATTEN_PIECE.min(job.chunk_size)).await;
        apply(security, &job.group, vec![op]).await?;
    }
    apply(security, &job.group, vec![unlink_op(job)]).await?;
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

async fn apply(
    security: &tessera_net::Security,
    group: &GroupJob,
    ops: Vec<tessera_proto::control::GroupOp>,
) -> Result<(), String> {
    let job = GroupJob {
        batches: vec![ops],
        ..group.clone()
    };
    group_calls::apply_group(security.clone(), job, Instant::now() + DEADLINE).await
}

//! The leading manager's background work on snapshots and clones, every `reconcile_ms`:
//! finishing snapshots left `Creating` and clones left linking (a manager failed over
//! mid-request, or a group was unreachable), and carrying every flatten on, one chunk at a
//! time: its `Flatten` pieces ([`FLATTEN_PIECE`] each, paced to `flatten_bytes_per_sec`),
//! then `Unlink`, then the chunk recorded unlinked. Everything is planned from the
//! replicated state (`Service::background`), so a new leader continues from there.
//!
//! Holds no state of its own beyond when it first saw each unfinished request (it leaves
//! one alone for [`GRACE`], the time the request itself may still be finishing it; doing
//! it twice would be harmless, only wasteful). Must never hold the service lock while it
//! calls a storage node, nor record a chunk unlinked before its group applied the unlink.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::group_calls::{self, GroupJob};
use crate::service::{Finish, FlattenJob, Now, Pending, Service, unlink_op};
use crate::state::{FLATTEN_PIECE, flatten_pieces};

type Shared = Arc<Mutex<Service>>;

/// How long an unfinished snapshot or clone is left to the request that made it.
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
    every: Duration,
    bytes_per_sec: u64,
    mut stopped: watch::Receiver<bool>,
) {
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut finishing: Option<JoinHandle<()>> = None;
    let mut flattening: Option<JoinHandle<()>> = None;
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
    }
    for task in [finishing, flattening].into_iter().flatten() {
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
}

//! The leading manager's collector of backup objects, one pass per store every few
//! seconds: released segments are read back from the store and their objects released
//! (`SegmentsReleased`); keys a previous pass (or leader) claimed are deleted again;
//! garbage older than `gc_grace_secs` is claimed (`GcClaim`, at most [`BATCH`] keys),
//! deleted in one batch (`delete_many`) and forgotten (`GcDeleted`) as far as the store
//! deleted it (the rest stays claimed and is retried next pass).
//!
//! Holds nothing of its own but when a delete last timed out ([`Collector`]): everything
//! it acts on is in the replicated state, so a new leader carries on. Must never: delete a
//! key that is not claimed in the state (a claim bumps `gc_gen`, and every manager
//! remembers the keys deleted lately, so an upload racing the deletion of one of its keys
//! is redone, never recorded); delete on a manager that does not lead (checked before
//! each batch, each bounded by [`DELETE_TIMEOUT`]); release a segment's objects it could
//! not read. A segment the store
//! says is missing or corrupt is released with no objects (leaked, never deleted too
//! much); one it could not read for another reason (unavailable) stays queued and is read
//! again next pass.
//!
//! Keys a previous leader claimed are deleted again only once this manager has led for
//! [`SETTLE`]: a deposed leader's deletes may still be in flight, and a key deleted and
//! forgotten here could be uploaded and recorded anew, then removed by that late delete.
//! Residual window: a deposed leader's HTTP delete held up (by the network or the store
//! client's own retries) for longer than [`SETTLE`] can still remove such a re-uploaded
//! object; closing it needs fencing at the store (conditional deletes), which stores do
//! not offer. A delete of this manager's own that timed out ([`DELETE_TIMEOUT`]) may reach
//! the store later just the same, so the keys it leaves claimed are deleted again only
//! [`SETTLE`] after the last timeout in that store, with the same residual window.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_backup::{Error as StoreError, Store};
use tessera_proto::control::Hash;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::backup_jobs::{Shared, Stores, TICK, commit, fetch_segment, locked, unix_now};
use crate::state::{GcKey, Mutation};

/// Keys claimed and deleted in one batch; segments released in one mutation.
pub const BATCH: usize = 1000;
/// Batches of garbage one pass deletes per store at most (the next pass goes on).
const BATCHES_PER_PASS: usize = 16;
/// How long one `delete_many` may take; past it the keys stay claimed, retried later.
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a manager leads before it deletes keys a previous leader claimed, and how long
/// after a delete timed out before it deletes the keys that delete left claimed.
pub const SETTLE: Duration = Duration::from_secs(60);

/// One manager's collector: its settings, and when a delete last timed out per store.
#[derive(Debug)]
pub(crate) struct Collector {
    grace_secs: u64,
    settle: Duration,
    delete_timeout: Duration,
    timed_out: Mutex<BTreeMap<String, Instant>>,
    /// Tests: how long each delete waits before it starts (a slow store).
    #[cfg(test)]
    delete_delay: Duration,
}

impl Collector {
    /// Garbage is claimed `grace_secs` after it was released; claimed keys left by an
    /// earlier pass or leader wait `settle` (see the module doc).
    pub(crate) fn new(grace_secs: u64, settle: Duration) -> Self {
        Collector {
            grace_secs,
            settle,
            delete_timeout: DELETE_TIMEOUT,
            timed_out: Mutex::default(),
            #[cfg(test)]
            delete_delay: Duration::ZERO,
        }
    }

    /// The same with deletes that start after `delay` and are bounded by `timeout` (tests:
    /// a slow store).
    #[cfg(test)]
    pub(crate) fn with_slow_deletes(mut self, delay: Duration, timeout: Duration) -> Self {
        self.delete_delay = delay;
        self.delete_timeout = timeout;
        self
    }

    /// Whether no delete in `store` timed out within `settle`.
    fn settled(&self, store: &str) -> bool {
        let timed_out = self.timed_out.lock().unwrap_or_else(|e| e.into_inner());
        timed_out
            .get(store)
            .is_none_or(|t| t.elapsed() >= self.settle)
    }

    fn note_timeout(&self, store: &str) {
        let mut timed_out = self.timed_out.lock().unwrap_or_else(|e| e.into_inner());
        timed_out.insert(store.to_string(), Instant::now());
    }
}

/// Runs until `stopped` turns true: a pass over every store each tick, on the leader.
pub async fn run(
    service: Shared,
    stores: Stores,
    grace_secs: u64,
    mut stopped: watch::Receiver<bool>,
) {
    let collector = Arc::new(Collector::new(grace_secs, SETTLE));
    let mut pass: Option<JoinHandle<()>> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped.changed() => break,
            _ = tick.tick() => {}
        }
        if locked(&service, |s| s.lead()).await.is_err() {
            if let Some(p) = pass.take() {
                p.abort();
            }
            continue;
        }
        if pass.as_ref().is_none_or(JoinHandle::is_finished) {
            let (service, stores) = (service.clone(), stores.clone());
            let collector = collector.clone();
            pass = Some(tokio::spawn(async move {
                for (_, store) in stores.values() {
                    if let Err(e) = collector.collect(&service, store).await {
                        warn!(store = store.name(), error = %e, "backup collection stopped; retried");
                    }
                }
            }));
        }
    }
    if let Some(p) = pass {
        p.abort();
    }
}

/// How long this manager has led (in its current term).
async fn leading_for(service: &Shared) -> Result<Duration, String> {
    locked(service, |s| {
        s.lead()?;
        let since = s.consensus().status().leader_since;
        Ok(since.map_or(Duration::ZERO, |t| t.elapsed()))
    })
    .await
}

impl Collector {
    /// One pass over one store; keys claimed before this pass are deleted only once this
    /// manager has led for `settle`, and `settle` after a delete in this store timed out.
    pub(crate) async fn collect(&self, service: &Shared, store: &Store) -> Result<(), String> {
        let (grace_secs, settle) = (self.grace_secs, self.settle);
        let name = store.name().to_string();
        // A segment that cannot be read now stays queued; the deletions go on meanwhile (a
        // copy may be waiting for a claimed root to go).
        if let Err(e) = release(service, store).await {
            warn!(store = %name, error = %e, "released segments not expanded yet; retried");
        }
        let n = name.clone();
        let leftover = locked(service, move |s| Ok(s.state().claimed(&n))).await?;
        if !leftover.is_empty() && leading_for(service).await? < settle {
            debug!(store = %name, keys = leftover.len(),
               "claimed keys wait until this manager has led long enough");
        } else if !leftover.is_empty() && !self.settled(&name) {
            debug!(store = %name, keys = leftover.len(),
               "claimed keys wait: a delete timed out lately and may still land");
        } else {
            for keys in leftover.chunks(BATCH) {
                self.delete(service, store, keys.to_vec()).await?;
            }
        }
        for _ in 0..BATCHES_PER_PASS {
            let before = unix_now().saturating_sub(grace_secs);
            let n = name.clone();
            let due = locked(service, move |s| {
                Ok(s.state().garbage_due(&n, before, BATCH))
            })
            .await?;
            if due.is_empty() {
                break;
            }
            let full = due.len() >= BATCH;
            let n = name.clone();
            let claimed = locked(service, move |s| {
                s.commit_led(Mutation::GcClaim {
                    store: n.clone(),
                    keys: due.clone(),
                })?;
                let claimed: BTreeSet<GcKey> = s.state().claimed(&n).into_iter().collect();
                Ok(due
                    .into_iter()
                    .filter(|k| claimed.contains(k))
                    .collect::<Vec<_>>())
            })
            .await?;
            self.delete(service, store, claimed).await?;
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// Deletes claimed `keys` (after checking this manager still leads) and forgets those the
    /// store deleted. A delete that times out is noted: it may still land.
    async fn delete(
        &self,
        service: &Shared,
        store: &Store,
        keys: Vec<GcKey>,
    ) -> Result<(), String> {
        if keys.is_empty() {
            return Ok(());
        }
        locked(service, |s| s.lead()).await?;
        let deleting = store.delete_many(keys.iter().map(GcKey::path).collect());
        #[cfg(test)]
        let deleting = async {
            tokio::time::sleep(self.delete_delay).await;
            deleting.await
        };
        let Ok(failed) = tokio::time::timeout(self.delete_timeout, deleting).await else {
            self.note_timeout(store.name());
            return Err(format!(
                "deleting {} keys took over {:?}; retried",
                keys.len(),
                self.delete_timeout
            ));
        };
        forget(service, store, keys, failed).await
    }
}

/// Reads every segment queued for release and releases it with its objects.
async fn release(service: &Shared, store: &Store) -> Result<(), String> {
    let name = store.name().to_string();
    for _ in 0..BATCHES_PER_PASS {
        let n = name.clone();
        let segs: Vec<Hash> = locked(service, move |s| {
            Ok(s.state().segments_to_release(&n, BATCH))
        })
        .await?;
        if segs.is_empty() {
            break;
        }
        let mut out = Vec::with_capacity(segs.len());
        let mut failed = None;
        for h in &segs {
            let objects = match fetch_segment(store, h).await {
                Ok(seg) => {
                    let set: BTreeSet<Hash> = seg.regions.iter().map(|(_, o)| *o).collect();
                    set.into_iter().collect()
                }
                Err(e) if leaks(&e) => {
                    warn!(store = %name, segment = %h, error = %e,
                          "released segment cannot be read: its objects are left in the store");
                    Vec::new()
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    continue;
                }
            };
            out.push((*h, objects));
        }
        let n = out.len();
        if n > 0 {
            let m = Mutation::SegmentsReleased {
                store: name.clone(),
                segs: out,
                now_unix: unix_now(),
            };
            commit(service, m).await?;
            debug!(store = %name, segments = n, "segments released");
        }
        if let Some(e) = failed {
            // Left queued: read again next pass.
            return Err(format!("reading released segments: {e}"));
        }
    }
    Ok(())
}

/// Whether a segment that could not be read is released with no objects (leaking them):
/// only if the store says it is missing or corrupt; any other error may pass.
fn leaks(e: &StoreError) -> bool {
    matches!(e, StoreError::NotFound { .. } | StoreError::Corrupt { .. })
}

/// Forgets the deleted `keys` but those the store `failed` to delete.
async fn forget(
    service: &Shared,
    store: &Store,
    keys: Vec<GcKey>,
    failed: Vec<(String, StoreError)>,
) -> Result<(), String> {
    // Deposed meanwhile: the new leader deletes them again (after its settling time).
    locked(service, |s| s.lead()).await?;
    let failed_keys: BTreeSet<String> = failed.iter().map(|(k, _)| k.clone()).collect();
    if let Some((k, e)) = failed.first() {
        warn!(store = store.name(), key = %k, error = %e, failed = failed.len(),
              "some garbage keys were not deleted; retried next pass");
    }
    let deleted: Vec<GcKey> = keys
        .into_iter()
        .filter(|k| !failed_keys.contains(&k.path()))
        .collect();
    if deleted.is_empty() {
        return Ok(());
    }
    let n = deleted.len();
    let m = Mutation::GcDeleted {
        store: store.name().to_string(),
        keys: deleted,
    };
    commit(service, m).await?;
    info!(
        store = store.name(),
        keys = n,
        "garbage deleted from the backup store"
    );
    Ok(())
}

#[cfg(test)]
#[path = "gc_loop_tests.rs"]
mod tests;

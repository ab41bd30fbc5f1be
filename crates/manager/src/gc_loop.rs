//! The leading manager's collector of backup objects, one pass per store every few
//! seconds: released segments are read back from the store and their objects released
//! (`SegmentsReleased`); keys a previous pass (or leader) claimed are deleted again;
//! garbage older than `gc_grace_secs` is claimed (`GcClaim`, at most [`BATCH`] keys),
//! deleted in one batch (`delete_many`) and forgotten (`GcDeleted`) as far as the store
//! deleted it (the rest stays claimed and is retried next pass).
//!
//! Holds nothing of its own: everything it acts on is in the replicated state, so a new
//! leader carries on. Must never: delete a key that is not claimed in the state (a claim
//! bumps `gc_gen`, and every manager remembers the keys deleted lately, so an upload
//! racing the deletion of one of its keys is redone, never recorded); delete
//! on a manager that does not lead (checked before each batch, each bounded by
//! [`DELETE_TIMEOUT`]); release a segment's objects it could not read. A segment the store
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
//! not offer. So can this manager's own delete that timed out ([`DELETE_TIMEOUT`]) but
//! reaches the store later: the next pass deletes and forgets those keys at once (waiting
//! [`SETTLE`] after a timeout too would narrow that).

use std::collections::BTreeSet;
use std::time::Duration;

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
/// How long a manager leads before it deletes keys a previous leader claimed.
pub const SETTLE: Duration = Duration::from_secs(60);

/// Runs until `stopped` turns true: a pass over every store each tick, on the leader.
pub async fn run(
    service: Shared,
    stores: Stores,
    grace_secs: u64,
    mut stopped: watch::Receiver<bool>,
) {
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
            pass = Some(tokio::spawn(async move {
                for (_, store) in stores.values() {
                    if let Err(e) = collect(&service, store, grace_secs, SETTLE).await {
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

/// One pass over one store; keys claimed before this pass are deleted only once this
/// manager has led for `settle`.
pub(crate) async fn collect(
    service: &Shared,
    store: &Store,
    grace_secs: u64,
    settle: Duration,
) -> Result<(), String> {
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
    } else {
        for keys in leftover.chunks(BATCH) {
            delete(service, store, keys.to_vec()).await?;
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
        delete(service, store, claimed).await?;
        if !full {
            break;
        }
    }
    Ok(())
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

/// Deletes claimed `keys` (after checking this manager still leads) and forgets those the
/// store deleted.
async fn delete(service: &Shared, store: &Store, keys: Vec<GcKey>) -> Result<(), String> {
    if keys.is_empty() {
        return Ok(());
    }
    locked(service, |s| s.lead()).await?;
    let deleting = store.delete_many(keys.iter().map(GcKey::path).collect());
    let failed = tokio::time::timeout(DELETE_TIMEOUT, deleting)
        .await
        .map_err(|_| {
            format!(
                "deleting {} keys took over {DELETE_TIMEOUT:?}; retried",
                keys.len()
            )
        })?;
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

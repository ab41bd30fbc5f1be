//! The leading manager's collector of backup objects, one pass per store every few
//! seconds: released segments are read back from the store and their objects released
//! (`SegmentsReleased`); keys a previous pass (or leader) claimed are deleted again;
//! garbage older than `gc_grace_secs` is claimed (`GcClaim`, at most [`BATCH`] keys),
//! deleted in one batch (`delete_many`) and forgotten (`GcDeleted`) as far as the store
//! deleted it (the rest stays claimed and is retried next pass).
//!
//! Holds nothing of its own: everything it acts on is in the replicated state, so a new
//! leader carries on. Must never: delete a key that is not claimed in the state (a claim
//! bumps `gc_gen`, so an upload racing the deletion is redone, never recorded); delete
//! on a manager that does not lead (checked before each batch); release a segment's
//! objects it could not read (a segment that cannot be read releases none: leaked, never
//! deleted too much).

use std::collections::BTreeSet;

use tessera_backup::Store;
use tessera_proto::control::Hash;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::backup_jobs::{Shared, Stores, TICK, commit, locked, read_segment, unix_now};
use crate::state::{GcKey, Mutation};

/// Keys claimed and deleted in one batch; segments released in one mutation.
pub const BATCH: usize = 1000;
/// Batches of garbage one pass deletes per store at most (the next pass goes on).
const BATCHES_PER_PASS: usize = 16;

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
                    if let Err(e) = collect(&service, store, grace_secs).await {
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

/// One pass over one store.
pub(crate) async fn collect(
    service: &Shared,
    store: &Store,
    grace_secs: u64,
) -> Result<(), String> {
    release(service, store).await?;
    let name = store.name().to_string();
    let n = name.clone();
    let leftover = locked(service, move |s| Ok(s.state().claimed(&n))).await?;
    for keys in leftover.chunks(BATCH) {
        delete(service, store, keys.to_vec()).await?;
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
        for h in &segs {
            let objects = match read_segment(store, h).await {
                Ok(seg) => {
                    let set: BTreeSet<Hash> = seg.regions.iter().map(|(_, o)| *o).collect();
                    set.into_iter().collect()
                }
                Err(e) => {
                    warn!(store = %name, segment = %h, error = %e,
                          "released segment cannot be read: its objects are left in the store");
                    Vec::new()
                }
            };
            out.push((*h, objects));
        }
        let m = Mutation::SegmentsReleased {
            store: name.clone(),
            segs: out,
            now_unix: unix_now(),
        };
        commit(service, m).await?;
        debug!(store = %name, segments = segs.len(), "segments released");
    }
    Ok(())
}

/// Deletes claimed `keys` (after checking this manager still leads) and forgets those the
/// store deleted.
async fn delete(service: &Shared, store: &Store, keys: Vec<GcKey>) -> Result<(), String> {
    if keys.is_empty() {
        return Ok(());
    }
    locked(service, |s| s.lead()).await?;
    let failed = store
        .delete_many(keys.iter().map(GcKey::path).collect())
        .await;
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

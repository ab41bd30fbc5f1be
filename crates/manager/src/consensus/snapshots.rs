//! Raft snapshots of the managers' state: offering one taken off the Raft task to a
//! lagging peer, and installing a leader's under the applier's gate.
//!
//! The blob's format is `crate::state_snapshot`'s; this file only moves snapshots in and out of
//! the Raft group. Must never install a snapshot while committed entries are being applied,
//! nor leave anything older queued behind one.

use std::sync::atomic::Ordering;

use raft::Storage;
use raft::eraftpb::Snapshot;
use tracing::{info, warn};

use crate::error::Error;
use crate::state_snapshot;

use super::RaftLoop;

impl RaftLoop {
    /// Hands out the snapshot just taken, if the log and membership still agree with it.
    pub(super) async fn offer_snapshot(&mut self) -> Result<(), Error> {
        let Some((started, _, task)) = self.taking.take() else {
            return Ok(());
        };
        let taken = task.await.map_err(|e| Error::Task(e.to_string()));
        let (payload, data) = match taken.and_then(|t| t) {
            Ok(t) => t,
            Err(e) => {
                // The peer asks again at its next probe; the Raft group goes on meanwhile.
                warn!(error = %e, "taking a snapshot of the managers' state failed; retried when asked again");
                return Ok(());
            }
        };
        let index = payload.image.applied_index;
        let first = self.storage.first_index().unwrap_or(1);
        if index < self.conf_index || index + 1 < first {
            // Not yet a cut the group's membership and log agree with: asked again soon.
            return Ok(());
        }
        let Ok(term) = self.storage.term(index) else {
            return Ok(());
        };
        let conf_state = self
            .storage
            .initial_state()
            .map(|s| s.conf_state)
            .map_err(|e| Error::Task(format!("raft conf state: {e}")))?;
        let bytes = data.len();
        let mut snap = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        snap.mut_metadata().index = index;
        snap.mut_metadata().term = term;
        snap.mut_metadata().set_conf_state(conf_state);
        self.storage.offer(snap);
        info!(
            index,
            term,
            bytes,
            volumes = payload.image.volumes.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "took a snapshot of the managers' state for a lagging peer"
        );
        Ok(())
    }

    /// Replaces the state with a leader's snapshot (checked when it was received), durably,
    /// with nothing older left queued for the applier.
    pub(super) async fn install(&mut self, snap: Snapshot) -> Result<(), Error> {
        let payload = state_snapshot::decode(&snap.data)
            .map_err(|e| Error::Task(format!("installing a snapshot: {e}")))?;
        let meta = snap.get_metadata().clone();
        let (db, path) = (self.log.database().clone(), self.log.path().to_path_buf());
        let shared = self.shared.clone();
        let managers = payload.managers.clone();
        let volumes = payload.image.volumes.len();
        let (index, term) = (meta.index, meta.term);
        tokio::task::spawn_blocking(move || {
            let _gate = shared
                .apply_gate
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Ok(mut q) = shared.committed.lock() {
                q.clear();
            }
            state_snapshot::install(&db, &path, &payload, &meta)?;
            if let Ok(mut i) = shared.installed.lock() {
                *i = Some((meta.index, meta.term));
            }
            shared.applied.fetch_max(meta.index, Ordering::Relaxed);
            Ok::<_, Error>(())
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
        let cs = snap.get_metadata().get_conf_state().clone();
        self.storage
            .mem
            .wl()
            .apply_snapshot(snap)
            .map_err(|e| Error::Task(format!("raft log in memory: {e}")))?;
        let mut book = managers;
        book.extend(self.configured.clone());
        self.set_addresses(book);
        self.conf_index = index;
        self.blank = cs.voters.is_empty() && cs.learners.is_empty();
        info!(index, term, volumes, voters = ?cs.voters, "installed a snapshot of the managers' state");
        self.shared.more_committed.notify_all();
        self.shared.wake_applier.notify_one();
        Ok(())
    }
}

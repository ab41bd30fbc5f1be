//! The service's side of manager HA: leading before planning, the commit path through the
//! managers' Raft log, and applying committed entries (on every manager, leader or not).
//!
//! Apply is one path for everyone: an entry's mutation goes to the [`Db`] (with the
//! entry's index, in the same transaction) and then to the [`State`], strictly in log order,
//! each entry once: entries at or below the applied index (a restart) are skipped, and an
//! entry that does not follow the applied index stops this manager taking changes.
//!
//! Reads are answered from the leader's applied state without a round to the others: a
//! leader cut off from its majority keeps answering them until check-quorum steps it down
//! (one election timeout, about a second), so they may be that stale; changes cannot be, as
//! they need a majority.
//!
//! [`Db`]: crate::db::Db
//! [`State`]: crate::state::State

use std::time::{Duration, Instant};

use raft::eraftpb::EntryType;
use tessera_proto::control::ControlError;
use tracing::{error, info};

use tessera_proto::control::ManagerReply;

use super::Service;
use super::collected::Collected;
use crate::consensus::Consensus;
use crate::state::Mutation;

/// How long a new leader waits to apply what earlier terms committed before it answers.
const CATCH_UP: Duration = Duration::from_secs(3);
/// How long a proposal may take to be committed and applied.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

impl Service {
    /// Ok if this manager leads and its state holds every change committed before its term
    /// (so plans made now see them). A new term's leadership restarts heartbeat ages: nodes
    /// heartbeat to the leader only, so each gets a full grace period from when this manager
    /// became leader before it can be called suspect or down.
    pub(crate) fn lead(&mut self) -> Result<(), ControlError> {
        let status = self.consensus.status();
        if !status.is_leader {
            return Err(self.consensus.not_leader());
        }
        let deadline = Instant::now() + CATCH_UP;
        loop {
            self.apply_watching(None)?;
            // The leader's first entry of its term commits everything before it.
            if self.applied.1 >= status.term {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Not yet usable: send the caller on (it comes back, with back-off).
                return Err(ControlError::NotLeader(None));
            }
            self.consensus
                .wait_committed(left.min(Duration::from_millis(50)));
        }
        if self.led_term != status.term {
            let since = status.leader_since.unwrap_or_else(Instant::now);
            info!(
                term = status.term,
                applied = self.applied.0,
                "leading the managers; node heartbeat ages restart now"
            );
            self.live.reset(since);
            self.leases.reset();
            self.led_term = status.term;
        }
        Ok(())
    }

    /// Applies every committed entry not applied yet. Returns the applied index and the
    /// number of volumes if anything was applied.
    pub(crate) fn apply_committed(&mut self) -> Result<Option<(u64, u64)>, ControlError> {
        let before = self.applied.0;
        self.apply_watching(None)?;
        Ok((self.applied.0 > before).then(|| (self.applied.0, self.state.volume_count())))
    }

    /// Proposes `m`, then applies committed entries until `m`'s has been applied.
    pub(super) fn replicate(&mut self, m: &Mutation) -> Result<(), ControlError> {
        let data = serde_json::to_vec(m)
            .map_err(|e| ControlError::Internal(format!("encoding a mutation: {e}")))?;
        let (index, term) = self.consensus.propose(data)?;
        let deadline = Instant::now() + COMMIT_TIMEOUT;
        loop {
            match self.apply_watching(Some((index, term)))? {
                Some(true) => return Ok(()),
                // Another leader's entry took the index: ours is lost, never applied.
                Some(false) => return Err(self.consensus.not_leader()),
                None => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ControlError::Unavailable(format!(
                    "change not committed within {COMMIT_TIMEOUT:?} (no majority of managers?)"
                )));
            }
            self.consensus
                .wait_committed(left.min(Duration::from_millis(50)));
        }
    }

    /// Applies the committed entries queued so far. With `watch = (index, term)`: whether
    /// the entry at `index` was applied and had `term` (`None`: not reached yet).
    fn apply_watching(&mut self, watch: Option<(u64, u64)>) -> Result<Option<bool>, ControlError> {
        if let Some(why) = &self.failed {
            return Err(ControlError::Unavailable(format!(
                "manager database failed earlier ({why}); restart the manager"
            )));
        }
        let consensus = self.consensus.clone();
        let _gate = consensus.apply_gate();
        if let Some((index, term)) = self.consensus.take_installed() {
            let Some(db) = self.db.as_ref() else {
                return Err(ControlError::Unavailable("manager is shutting down".into()));
            };
            match db.reload() {
                Ok(state) => {
                    info!(
                        index,
                        volumes = state.volume_count(),
                        "state replaced by a snapshot"
                    );
                    self.collected = Collected::from(&state);
                    self.state = state;
                    self.applied = (index, term);
                }
                Err(err) => return Err(self.fail(format!("reloading after a snapshot: {err}"))),
            }
        }
        let mut seen = None;
        let entries = self.consensus.take_committed();
        for e in entries {
            if e.index <= self.applied.0 {
                continue;
            }
            if e.index != self.applied.0 + 1 {
                // An entry skipped is a change missing from this state for good.
                return Err(self.fail(format!(
                    "log entry {} delivered after entry {}: the entries between are missing",
                    e.index, self.applied.0
                )));
            }
            if let Some((index, term)) = watch
                && e.index == index
            {
                seen = Some(e.term == term);
            }
            if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
                let m: Mutation = match serde_json::from_slice(&e.data) {
                    Ok(m) => m,
                    Err(err) => {
                        return Err(self.fail(format!("log entry {}: {err}", e.index)));
                    }
                };
                let Some(db) = self.db.as_ref() else {
                    return Err(ControlError::Unavailable("manager is shutting down".into()));
                };
                let next = self.state.next_ids().after(&m);
                let backup = self.state.backup_delta(&m);
                if let Err(err) = db.commit_applied(&m, next, backup.as_ref(), e.index) {
                    return Err(self.fail(err.to_string()));
                }
                self.state.apply(&m);
                if let Mutation::GcDeleted { store, keys } = &m {
                    let gc_gen = self.state.gc_gen(store);
                    self.collected.deleted(store, gc_gen, keys);
                }
            } else {
                // Nothing to change, but a snapshot taken from here on must cover it (a
                // membership change's snapshot must hold the new member).
                let Some(db) = self.db.as_ref() else {
                    return Err(ControlError::Unavailable("manager is shutting down".into()));
                };
                if let Err(err) = db.set_applied(e.index) {
                    return Err(self.fail(err.to_string()));
                }
            }
            self.applied = (e.index, e.term);
            self.consensus.set_applied(e.index);
        }
        if seen.is_none()
            && let Some((index, _)) = watch
            && self.applied.0 >= index
        {
            // Applied before this call (cannot happen while the lock is held, but be exact).
            seen = Some(false);
        }
        Ok(seen)
    }

    /// The managers' Raft group, for work done without the service lock.
    pub(crate) fn consensus(&self) -> Consensus {
        self.consensus.clone()
    }

    /// After this the manager takes no more changes: what is on disk is unknown, or the log
    /// holds something this manager cannot apply.
    fn fail(&mut self, why: String) -> ControlError {
        error!(error = %why, "applying the managers' log failed; refusing further changes until restart");
        self.failed = Some(why.clone());
        ControlError::Internal(why)
    }
}

/// Adds manager `id` at `addr` to the managers' group as a learner (the leader promotes it
/// when it has caught up) and answers the members; a member at `addr` already is only
/// reported. Called without the service lock: the wait for the change to commit must not
/// hold up every other request.
pub(crate) fn add_manager(
    consensus: &Consensus,
    id: u64,
    addr: String,
) -> Result<ManagerReply, ControlError> {
    if id == 0 || addr.is_empty() {
        return Err(ControlError::Invalid(
            "a manager needs an id of at least 1 and an address".into(),
        ));
    }
    if let Some((_, term)) = consensus.propose_add(id, addr)? {
        // Applied to the Raft group (not necessarily to the state yet, which is the same
        // for a membership change): the published membership holds it.
        let deadline = Instant::now() + COMMIT_TIMEOUT;
        loop {
            let s = consensus.status();
            if s.voters.contains(&id) || s.learners.contains(&id) {
                break;
            }
            if !s.is_leader || s.term != term {
                // Another leader may have overwritten the change: asking again says.
                return Err(consensus.not_leader());
            }
            if Instant::now() > deadline {
                return Err(ControlError::Unavailable(format!(
                    "adding manager {id} not committed within {COMMIT_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        info!(id, "manager added to the managers' group as a learner");
    }
    Ok(managers(consensus))
}

/// The managers' group as this manager knows it, with addresses (empty when unknown).
pub(crate) fn managers(consensus: &Consensus) -> ManagerReply {
    let addrs = consensus.addresses();
    let status = consensus.status();
    let with_addr = |ids: Vec<u64>| {
        ids.into_iter()
            .map(|v| (v, addrs.get(&v).cloned().unwrap_or_default()))
            .collect()
    };
    ManagerReply::Managers {
        voters: with_addr(status.voters),
        learners: with_addr(status.learners),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use raft::eraftpb::Entry;

    use super::Service;
    use crate::consensus::{Consensus, Options};
    use crate::db::Db;
    use crate::liveness::Liveness;
    use crate::raft_log::RaftLog;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_entry_that_skips_one_is_never_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (db, state) = Db::open(dir.path()).unwrap();
        let (log, loaded) = RaftLog::open(db.database(), db.path()).unwrap();
        let opts = Options {
            id: 1,
            members: vec![crate::config::ManagerPeer {
                id: 1,
                addr: "127.0.0.1:1".into(),
            }],
            join: false,
            log_keep: 10,
            security: Default::default(),
        };
        let (consensus, task) = Consensus::start(opts, log, loaded, 0).unwrap();
        let live = Liveness::new(
            Instant::now(),
            Duration::from_secs(5),
            Duration::from_secs(30),
        );
        let r = consensus.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = Service::new(db, state, live, 1, 1, r.clone(), 0);
            let deadline = Instant::now() + Duration::from_secs(5);
            while s.lead().is_err() {
                assert!(Instant::now() < deadline, "never led");
                std::thread::sleep(Duration::from_millis(20));
            }
            let (index, term) = s.applied;
            r.push_committed(Entry {
                index: index + 2,
                term,
                ..Default::default()
            });
            let err = s.apply_committed().unwrap_err();
            assert!(err.to_string().contains("missing"), "{err}");
            assert_eq!(s.applied.0, index);
        })
        .await
        .unwrap();
        task.stop().await;
    }
}

//! Log compaction: once applied, the log is cut down to `log_keep` entries behind the
//! applied index (wholly when a peer has nothing), in steps, never past a snapshot being
//! taken or sent and not yet matched.
//!
//! Must never compact an entry not yet durable in the state tables, nor stall the Raft
//! task: at most [`COMPACT_ROWS`] rows a tick.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use raft::{StateRole, Storage};
use tracing::debug;

use crate::error::Error;
use crate::state_snapshot;

use super::RaftLoop;

/// How long the log is kept back for a snapshot sent to a peer (so that it can go on from
/// the log once installed) before compaction goes on regardless.
const SNAPSHOT_HOLD: Duration = Duration::from_secs(120);
/// Log rows deleted per tick at most: the first compaction of a long log must not stall the
/// Raft task (and its heartbeats) for seconds.
pub(super) const COMPACT_ROWS: u64 = 10_000;

impl RaftLoop {
    /// Compacts the applied log when it is long, or wholly when a peer has nothing (so that
    /// it is sent a snapshot), and takes a snapshot when a peer asked for one. Every tick:
    /// deciding is a look at a few indexes, derived afresh (a new leader, or one restarted,
    /// knows as much as the one that added the peer).
    pub(super) async fn maintain(&mut self) -> Result<(), Error> {
        let applied = self.shared.applied.load(Ordering::Relaxed);
        let wanted = self.storage.take_wanted();
        if wanted && self.taking.is_none() {
            let (db, path) = (self.log.database().clone(), self.log.path().to_path_buf());
            let task = tokio::task::spawn_blocking(move || {
                let p = state_snapshot::take(&db, &path)?;
                let data = state_snapshot::encode(&p);
                Ok::<_, Error>((p, data))
            });
            self.taking = Some((Instant::now(), applied, task));
        }
        if self
            .taking
            .as_ref()
            .is_some_and(|(_, _, t)| t.is_finished())
        {
            self.offer_snapshot().await?;
        }
        let first = self.storage.first_index().unwrap_or(1);
        let last = self.storage.last_index().unwrap_or(0);
        let needs_all = self.peer_has_nothing();
        let hold = self.snapshot_hold();
        if let Some(upto) = compaction_upto(applied, first, last, self.log_keep, needs_all, hold) {
            let term = self
                .storage
                .term(upto)
                .map_err(|e| Error::Task(format!("term of raft log entry {upto}: {e}")))?;
            let log = self.log.clone();
            tokio::task::spawn_blocking(move || log.compact(upto, term))
                .await
                .map_err(|e| Error::Task(e.to_string()))??;
            self.storage
                .compact(upto, term)
                .map_err(|e| Error::Task(format!("raft log in memory: {e}")))?;
            debug!(upto, applied, "compacted the managers' raft log");
        }
        Ok(())
    }

    /// Leader only: whether a peer rejected the log down to index 1 (a joining manager: see
    /// `blank_may_step`; or a founder with an empty log, which a snapshot serves as well).
    /// The log from 1 would not give a joining manager the membership, so it must be sent a
    /// snapshot, which raft-rs does only once the entry before what it needs is compacted
    /// away.
    pub(super) fn peer_has_nothing(&self) -> bool {
        let r = &self.raw.raft;
        r.state == StateRole::Leader
            && r.prs()
                .iter()
                .any(|(id, p)| *id != self.shared.id && p.matched == 0 && p.next_idx <= 1)
    }

    /// The highest index compaction may reach without invalidating a snapshot being taken
    /// or one sent and not yet matched (a peer installing a large state would otherwise be
    /// sent another, forever).
    pub(super) fn snapshot_hold(&mut self) -> u64 {
        let prs = self.raw.raft.prs();
        self.sent_snapshots
            .retain(|peer, (index, _)| prs.get(*peer).is_some_and(|p| p.matched < *index));
        // Held from the first snapshot sent to a peer that has not matched since: one that
        // keeps failing to install holds the log back no longer than that.
        let sent = self
            .sent_snapshots
            .values()
            .filter(|(_, at)| at.elapsed() < SNAPSHOT_HOLD)
            .map(|(index, _)| *index)
            .min();
        let taking = self.taking.as_ref().map(|(_, from, _)| *from);
        sent.into_iter().chain(taking).min().unwrap_or(u64::MAX)
    }
}

/// Up to which index to compact the log, if at all: the log holds entries `first..=last`,
/// `applied` of them are in the state tables. Down to `keep` entries behind the applied
/// index once more than twice that are applied (everything applied when a peer has
/// `nothing`), never past `hold`, and at most [`COMPACT_ROWS`] entries at once.
pub(super) fn compaction_upto(
    applied: u64,
    first: u64,
    last: u64,
    keep: u64,
    nothing: bool,
    hold: u64,
) -> Option<u64> {
    let start = first.saturating_sub(1);
    let done = applied.min(last);
    let keep = if nothing { 0 } else { keep };
    let upto = done
        .saturating_sub(keep)
        .min(hold)
        .min(start + COMPACT_ROWS);
    (upto > start && (nothing || done - start > 2 * keep)).then_some(upto)
}

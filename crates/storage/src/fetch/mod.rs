//! Copying a replica's chunk data from another node: the receiving half of a Raft catch-up
//! (what raft-rs calls installing a snapshot; not a volume's snapshot).
//!
//! Owns: the node's recovery throttle and its recovery counters. A copy compares block
//! checksums chunk by chunk and fetches only the blocks that differ, so a replica that was
//! away for a while moves what changed, and a brand-new one moves everything once. A block
//! is skipped only if its local bytes also match its local checksum: after a power loss the
//! new checksum may be on disk without the new data.
//!
//! Must never: block the node's runtime on disk I/O (writes and syncs run on the blocking
//! pool), or report a copy done before its data is durable. A failed sync of the copied data
//! is [`CopyError::Fatal`]; the chunk store keeps failing every later sync, so no retry of the
//! copy can report that data durable either. Nor may a copy allocate below the node's
//! free-space floor (where client writes are refused too): it fails, to be retried, rather
//! than fill the disk under the log.
//!
//! - this file: the [`Fetcher`] (a copy task per catch-up, its answer, its counters).
//! - [`copy`]: the copy itself: chunk list pages, checksums compared, differing blocks fetched.
//! - [`source`]: the request/answer connection to the node copied from.
//! - [`throttle`], [`floor`]: what a copy may take of the node: bandwidth, disk space.

mod copy;
mod floor;
mod source;
mod throttle;

#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use tessera_proto::control::RecoveryStats;
use tessera_raft::{FetchError, FetchJob, SnapshotFetcher};

use copy::copy_replica;
pub(crate) use floor::Floor;
pub(crate) use source::{Source, catch_up_req};
pub(crate) use throttle::Throttle;

/// The node's [`SnapshotFetcher`]: each job copied on its own task, paced by one throttle.
pub(crate) struct Fetcher {
    pub(crate) throttle: Arc<Throttle>,
    pub(crate) stats: Arc<Mutex<RecoveryStats>>,
    /// Chunks asked for with one request for the source's chunk list.
    pub(crate) list_page: u32,
    pub(crate) floor: Arc<Floor>,
    /// How the copy dials its source.
    pub(crate) security: tessera_net::Security,
}

impl SnapshotFetcher for Fetcher {
    fn fetch(&self, job: FetchJob, done: Done) {
        let throttle = self.throttle.clone();
        let stats = self.stats.clone();
        let list_page = self.list_page;
        let floor = self.floor.clone();
        let security = self.security.clone();
        lock(&stats).in_progress.push(job.group);
        // Answered even if the copy task dies: the replica waits for this answer.
        let done = Answer(Some(done));
        tokio::spawn(async move {
            let group = job.group;
            let started = Instant::now();
            let mut moved = 0;
            let res = copy_replica(
                &job, &security, &throttle, &floor, &stats, &mut moved, list_page,
            )
            .await;
            {
                let mut s = lock(&stats);
                s.in_progress.retain(|g| *g != group);
                if res.is_ok() {
                    s.snapshots += 1;
                }
            }
            match &res {
                Ok(()) => tracing::info!(
                    group,
                    from = job.from,
                    index = job.index,
                    bytes = moved,
                    secs = started.elapsed().as_secs_f64(),
                    "catch-up copied"
                ),
                Err(e @ CopyError::Fatal(_)) => {
                    tracing::error!(group, from = job.from, "catch-up copy failed: {e}")
                }
                Err(e) => tracing::warn!(group, from = job.from, "catch-up copy failed: {e}"),
            }
            done.send(res.map_err(|e| match e {
                CopyError::Fatal(m) => FetchError::Fatal(m),
                CopyError::Failed(m) => FetchError::Retry(m),
            }));
        });
    }
}

type Done = Box<dyn FnOnce(Result<(), FetchError>) + Send>;

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
enum CopyError {
    /// Worth another try: the source went away or answered wrongly, a local write failed.
    #[error("{0}")]
    Failed(String),
    /// Making the copied data durable failed: the kernel may have dropped its pages, so
    /// this replica's data must never be reported durable, and the node must stop (as after
    /// a failed log fsync; [`tessera_engine::Error::Fatal`]).
    #[error("fatal storage failure, the node must stop: {0}")]
    Fatal(String),
}

impl From<String> for CopyError {
    fn from(msg: String) -> Self {
        CopyError::Failed(msg)
    }
}

struct Answer(Option<Done>);

impl Answer {
    fn send(mut self, res: Result<(), FetchError>) {
        if let Some(f) = self.0.take() {
            f(res);
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(FetchError::Retry(
                "the copy task ended without an answer".into(),
            )));
        }
    }
}

fn lock(s: &Mutex<RecoveryStats>) -> std::sync::MutexGuard<'_, RecoveryStats> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

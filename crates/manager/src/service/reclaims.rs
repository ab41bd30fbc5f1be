//! The leading manager's background reclaim of deleted snapshots' space: the jobs the
//! replicated state asks for ([`ReclaimJob`], planned in `Service::background`), and the
//! commits of their progress, made only while the reclaim is still the one the job was
//! planned for (a deletion may have widened its range and restarted it, or replaced it
//! with a new live layer): checked again in the state (`ReclaimOf`).
//!
//! Must never: record a chunk merged before its group applied the merge; plan work on a
//! manager that does not lead.

use tracing::warn;

use crate::group_calls::GroupJob;
use crate::state::{Mutation, ReclaimOf};

use super::{Now, Service};

/// One reclaim to carry on: merge the layers `low..=top` (`low..=seq` for the live range)
/// of every chunk from `next_chunk` on that has two or more there, in chunk order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReclaimJob {
    pub volume_id: u64,
    pub low: u64,
    /// The next snapshot at or above `low`; `None`: the live range.
    pub top: Option<u64>,
    /// The volume's sequence N when planned: the fence sent first.
    pub seq: u64,
    pub next_chunk: u64,
    pub chunk_size: u64,
    /// Every group of the volume (members leader first, no batches) with the chunks of the
    /// volume it holds, ascending.
    pub groups: Vec<(GroupJob, Vec<u64>)>,
}

impl Service {
    /// The reclaims the state allows now (see `State::reclaim_steps`), with whom to ask.
    pub(super) fn reclaim_jobs(&self, now: Now) -> Vec<ReclaimJob> {
        let mut out = Vec::new();
        'steps: for step in self.state.reclaim_steps() {
            let mut groups = Vec::new();
            for (group_id, chunks) in step.groups {
                let Some(job) = self.group_job(group_id, Vec::new(), now) else {
                    warn!(
                        volume = step.volume_id,
                        group = group_id,
                        "a group of the volume is unknown; its reclaim waits"
                    );
                    continue 'steps;
                };
                groups.push((job, chunks));
            }
            out.push(ReclaimJob {
                volume_id: step.volume_id,
                low: step.low,
                top: step.top,
                seq: step.seq,
                next_chunk: step.next_chunk,
                chunk_size: step.chunk_size,
                groups,
            });
        }
        out
    }

    /// The job's chunks below `next_chunk` are merged: recorded, if the reclaim is still
    /// the job's (see `ReclaimOf`). `retry`: some replica still holds a chunk at
    /// `next_chunk` unmerged, progress moves back to it. `false`: the reclaim is not the
    /// job's any more (gone, or its range changed), the job stops.
    pub fn reclaim_progress(
        &mut self,
        job: &ReclaimJob,
        next_chunk: u64,
        retry: bool,
    ) -> Result<bool, tessera_proto::control::ControlError> {
        self.lead()?;
        if !self.still_current(job) {
            return Ok(false);
        }
        self.commit(Mutation::ReclaimProgress {
            volume_id: job.volume_id,
            low: job.low,
            next_chunk,
            of: job.of(),
            retry,
        })?;
        Ok(true)
    }

    /// Every chunk of the job is merged: the reclaim is forgotten, if it is still the job's.
    pub fn reclaim_done(
        &mut self,
        job: &ReclaimJob,
    ) -> Result<bool, tessera_proto::control::ControlError> {
        self.lead()?;
        if !self.still_current(job) {
            return Ok(false);
        }
        self.commit(Mutation::ReclaimDone {
            volume_id: job.volume_id,
            low: job.low,
            of: job.of(),
        })?;
        Ok(true)
    }

    fn still_current(&self, job: &ReclaimJob) -> bool {
        self.state
            .reclaim_of(job.volume_id, job.low, job.of())
            .is_some()
    }
}

impl ReclaimJob {
    /// The reclaim as the job was planned for it.
    pub fn of(&self) -> ReclaimOf {
        ReclaimOf {
            top: self.top,
            seq: self.seq,
        }
    }
}

//! The leading manager's background reclaim of deleted snapshots' space (run by
//! `snapshot_loop`): per reclaim, asks every replica of each group which chunks have two
//! or more layers in the range (`LayerUsage`; a chunk any replica reports is merged), then
//! per such chunk, in chunk order, its merge pieces one batch each (a fence at the volume's
//! sequence first, see `state::reclaim_ops`), paced with the flattens, then its progress
//! recorded. Before recording the reclaim done it asks every replica again: one that still
//! holds a merged chunk's layers (its merge met a full disk and was skipped, or it counted
//! late) sends progress back to that chunk, for a later pass.
//!
//! Holds in memory only when each reclaim last needed such a retry: at most one retry pass
//! per [`RETRY_EVERY`], so a replica whose disk stays full does not make the loop spin.
//! Must never hold the service lock while it calls a storage node, nor record a chunk
//! merged before its group applied the merge, nor a reclaim done before every replica
//! showed its chunks merged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_proto::BLOCK_SIZE;
use tessera_proto::control::{ControlError, GroupOp, LayerBytes};
use tracing::{debug, info, warn};

use crate::group_calls::{self, GroupJob};
use crate::pace::Pace;
use crate::service::{ReclaimJob, Service};
use crate::state::reclaim_ops;
use crate::usage;

type Shared = Arc<Mutex<Service>>;

/// How long one batch of a chunk's merge may take.
const DEADLINE: Duration = Duration::from_secs(20);
/// How long a reclaim waits for its replicas' layer usage (then it is retried next round).
const USAGE_DEADLINE: Duration = Duration::from_secs(5);
/// How long after its last merge a reclaim asks the replicas again: each node counts its
/// layers at its chunk sync (about every 500 ms).
const SETTLE: Duration = Duration::from_secs(2);
/// A reclaim whose check found a replica's layers unmerged (or a replica silent) is
/// worked on again at most this often.
pub const RETRY_EVERY: Duration = Duration::from_secs(60);

/// When each reclaim (by [`key`]) last needed a retry: the loop's only memory.
pub type Retries = Arc<Mutex<HashMap<(u64, u64, Option<u64>, u64), Instant>>>;

fn key(job: &ReclaimJob) -> (u64, u64, Option<u64>, u64) {
    (job.volume_id, job.low, job.top, job.seq)
}

/// Every reclaim that may run, one after the other, paced with the flattens; a reclaim
/// that needed a retry less than [`RETRY_EVERY`] ago waits.
pub async fn reclaim_all(
    service: Shared,
    security: tessera_net::Security,
    jobs: Vec<ReclaimJob>,
    pace: Arc<Pace>,
    retries: Retries,
) {
    let t = Instant::now();
    let recent = |r: &Retries, job: &ReclaimJob| {
        let mut r = r.lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|_, at| t.duration_since(*at) < RETRY_EVERY);
        r.contains_key(&key(job))
    };
    for job in jobs {
        if recent(&retries, &job) {
            continue;
        }
        let (volume, low) = (job.volume_id, job.low);
        match reclaim(&service, &security, &job, &pace).await {
            Ok(Outcome::Done(merged)) => info!(volume, low, top = ?job.top, chunks_merged = merged,
                                               "deleted snapshot's space reclaimed"),
            Ok(Outcome::Changed) => {
                debug!(
                    volume,
                    low, "reclaim changed while it ran; planned again next round"
                )
            }
            Ok(Outcome::Retry(why)) => {
                warn!(
                    volume,
                    low,
                    "reclaim not done: {why}; retried in {}s",
                    RETRY_EVERY.as_secs()
                );
                let mut r = retries.lock().unwrap_or_else(|e| e.into_inner());
                r.insert(key(&job), Instant::now());
            }
            Err(e) => warn!(volume, low, error = %e, "reclaim step failed; retried later"),
        }
    }
}

/// How a reclaim's pass ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Every replica shows every chunk merged: the reclaim is done (chunks merged).
    Done(u64),
    /// The state moved on (the range widened, or the reclaim is gone).
    Changed,
    /// Not done (a replica still holds a chunk's layers, progress moved back to it; or a
    /// replica did not answer): why.
    Retry(String),
}

/// One pass of a reclaim: merge every chunk that needs it, then check every replica.
async fn reclaim(
    service: &Shared,
    security: &tessera_net::Security,
    job: &ReclaimJob,
    pace: &Pace,
) -> Result<Outcome, String> {
    let groups = replicas(job);
    let answers = usage::ask_replicas(
        security,
        job.volume_id,
        &groups,
        Instant::now() + USAGE_DEADLINE,
    )
    .await;
    let mut todo = BTreeMap::new();
    for (at, (group, chunks)) in job.groups.iter().enumerate() {
        let replies = answers.get(&group.group_id).map_or(&[][..], Vec::as_slice);
        let union = union(replies).ok_or_else(|| {
            let why: Vec<&str> = replies
                .iter()
                .filter_map(|(_, r)| r.as_ref().err())
                .map(String::as_str)
                .collect();
            format!(
                "group {}: no replica answered ({})",
                group.group_id,
                why.join("; ")
            )
        })?;
        for (chunk, cost) in chunks_to_merge(job, chunks, &union) {
            todo.insert(chunk, (at, cost));
        }
    }
    for (&chunk, &(at, cost)) in &todo {
        let batches = piece_batches(reclaim_ops(
            job.volume_id,
            chunk,
            job.chunk_size,
            job.low,
            job.top,
            job.seq,
        ));
        let per_piece = cost / (batches.len() as u64).max(1);
        for ops in batches {
            pace.take(per_piece.max(BLOCK_SIZE)).await;
            let group = GroupJob {
                batches: vec![ops],
                ..job.groups[at].0.clone()
            };
            group_calls::apply_group(security.clone(), group, Instant::now() + DEADLINE).await?;
        }
        let next = chunk.saturating_add(1);
        if !record(service, job, move |s, j| s.reclaim_progress(j, next, false)).await? {
            return Ok(Outcome::Changed);
        }
        debug!(
            volume = job.volume_id,
            low = job.low,
            chunk,
            "chunk's layers merged"
        );
    }
    if !todo.is_empty() {
        tokio::time::sleep(SETTLE).await;
    }
    let answers = usage::ask_replicas(
        security,
        job.volume_id,
        &groups,
        Instant::now() + USAGE_DEADLINE,
    )
    .await;
    let merged: BTreeSet<u64> = todo.keys().copied().collect();
    match leftover(job, &merged, &answers) {
        Check::Clean => {}
        Check::Unanswered(why) => {
            return Ok(Outcome::Retry(format!("cannot check every replica: {why}")));
        }
        Check::Unmerged { chunk, group, node } => {
            if !record(service, job, move |s, j| s.reclaim_progress(j, chunk, true)).await? {
                return Ok(Outcome::Changed);
            }
            return Ok(Outcome::Retry(format!(
                "node {node} (group {group}) still holds chunk {chunk}'s layers unmerged; merged again from there"
            )));
        }
    }
    if !record(service, job, |s, j| s.reclaim_done(j)).await? {
        return Ok(Outcome::Changed);
    }
    Ok(Outcome::Done(todo.len() as u64))
}

fn replicas(job: &ReclaimJob) -> Vec<usage::Replicas> {
    job.groups
        .iter()
        .map(|(g, _)| usage::Replicas {
            group_id: g.group_id,
            members: g.members.clone(),
        })
        .collect()
}

/// Every layer any answering replica reports (per chunk and layer, the largest count);
/// `None`: none answered.
fn union(replies: &[(u64, Result<Vec<LayerBytes>, String>)]) -> Option<Vec<LayerBytes>> {
    let mut any = false;
    let mut most: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for layers in replies.iter().filter_map(|(_, r)| r.as_ref().ok()) {
        any = true;
        for l in layers {
            let b = most.entry((l.chunk, l.layer)).or_default();
            *b = (*b).max(l.bytes);
        }
    }
    any.then(|| {
        most.into_iter()
            .map(|((chunk, layer), bytes)| LayerBytes {
                chunk,
                layer,
                bytes,
            })
            .collect()
    })
}

/// What the check before `ReclaimDone` found.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    Clean,
    /// A replica did not answer: why.
    Unanswered(String),
    /// The lowest chunk some replica still holds unmerged, and which replica.
    Unmerged {
        chunk: u64,
        group: u64,
        node: u64,
    },
}

/// Whether every replica shows the job's work done: no chunk with two or more layers in
/// the frozen part of the range (`low..=top`, or `low..=N-1` for the live range, which no
/// write reaches), nor a chunk merged in this pass with two or more in `low..=N`. (A chunk
/// of the live range first written at N after its pass has its merged layer and N: that
/// is live data, not the deleted snapshot's, and copying it into N is left to a later
/// deletion rather than chased forever on a volume being written.)
fn leftover(job: &ReclaimJob, merged: &BTreeSet<u64>, answers: &usage::PerReplica) -> Check {
    let frozen_top = job.top.unwrap_or(job.seq.saturating_sub(1));
    let top = job.top.unwrap_or(job.seq);
    let mut lowest: Option<(u64, u64, u64)> = None;
    for (group, replies) in answers {
        for (node, reply) in replies {
            let layers = match reply {
                Ok(layers) => layers,
                Err(why) => return Check::Unanswered(format!("group {group}: {why}")),
            };
            let mut frozen: BTreeMap<u64, usize> = BTreeMap::new();
            let mut all: BTreeMap<u64, usize> = BTreeMap::new();
            for l in layers.iter().filter(|l| (job.low..=top).contains(&l.layer)) {
                *all.entry(l.chunk).or_default() += 1;
                if l.layer <= frozen_top {
                    *frozen.entry(l.chunk).or_default() += 1;
                }
            }
            let unmerged = frozen
                .iter()
                .filter(|(_, n)| **n >= 2)
                .chain(all.iter().filter(|(c, n)| **n >= 2 && merged.contains(c)))
                .map(|(c, _)| *c)
                .min();
            if let Some(c) = unmerged
                && lowest.is_none_or(|(l, _, _)| c < l)
            {
                lowest = Some((c, *group, *node));
            }
        }
    }
    match lowest {
        Some((chunk, group, node)) => Check::Unmerged { chunk, group, node },
        None => Check::Clean,
    }
}

/// The chunks of `chunks` from the job's `next_chunk` on with two or more layers in its
/// range, as `layers` (one group's usage) says, each with the bytes its passes copy: the
/// frozen pass the layers of `low..=top` (`low..=N-1` live) above the lowest; the live
/// pass, when layer N exists, the merged layer, counted as every layer of `low..=N-1`.
/// At least a block.
fn chunks_to_merge(job: &ReclaimJob, chunks: &[u64], layers: &[LayerBytes]) -> Vec<(u64, u64)> {
    let top = job.top.unwrap_or(job.seq);
    let mut in_range: BTreeMap<u64, Vec<(u64, u64)>> = BTreeMap::new();
    for l in layers {
        if l.chunk >= job.next_chunk && (job.low..=top).contains(&l.layer) {
            in_range
                .entry(l.chunk)
                .or_default()
                .push((l.layer, l.bytes));
        }
    }
    chunks
        .iter()
        .filter_map(|c| {
            let mut ls = in_range.remove(c)?;
            if ls.len() < 2 {
                return None;
            }
            ls.sort_unstable();
            let sum = |ls: &[(u64, u64)]| ls.iter().fold(0u64, |s, (_, b)| s.saturating_add(*b));
            let below: Vec<(u64, u64)> = ls
                .iter()
                .copied()
                .filter(|(l, _)| *l < job.seq || job.top.is_some())
                .collect();
            let frozen = below.get(1..).map_or(0, sum);
            let live = if job.top.is_none() && ls.iter().any(|(l, _)| *l == job.seq) {
                sum(&below)
            } else {
                0
            };
            Some((*c, frozen.saturating_add(live).max(BLOCK_SIZE)))
        })
        .collect()
}

/// A chunk's ops as one batch per `Merge` piece, each behind the fence that leads them
/// (so any batch may reach a new group leader on its own), a `DropMerged` with the piece
/// before it: one group's apply loop gets one piece of copying at a time.
fn piece_batches(ops: Vec<GroupOp>) -> Vec<Vec<GroupOp>> {
    let mut ops = ops.into_iter();
    let Some(fence) = ops.next() else {
        return Vec::new();
    };
    let mut out: Vec<Vec<GroupOp>> = Vec::new();
    for op in ops {
        match out.last_mut() {
            Some(last) if !matches!(op, GroupOp::Merge { .. }) => last.push(op),
            _ => out.push(vec![fence.clone(), op]),
        }
    }
    out
}

/// Commits a reclaim's progress under the lock (off the async workers): whether the
/// reclaim is still the job's.
async fn record(
    service: &Shared,
    job: &ReclaimJob,
    commit: impl FnOnce(&mut Service, &ReclaimJob) -> Result<bool, ControlError> + Send + 'static,
) -> Result<bool, String> {
    let s = service.clone();
    let job = job.clone();
    tokio::task::spawn_blocking(move || {
        let mut s = s
            .lock()
            .map_err(|_| "manager state is unusable".to_string())?;
        commit(&mut s, &job).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

#[cfg(test)]
#[path = "reclaim_loop_tests.rs"]
mod tests;

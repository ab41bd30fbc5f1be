//! Proposing [`GroupOp`]s in replica groups: [`StorageRequest::Apply`] sent to each group's
//! leader, for snapshots (fences), clones (links), rollbacks and flattens. Async, off the
//! service lock; the same transport as the reconcile loop's calls (`tessera_net::call`).
//!
//! Owns finding a group's leader (the one heartbeats named first, then `NotLeader` hints,
//! then every member in turn) and retrying with back-off until a deadline. Every op is
//! idempotent in its group, so a batch whose answer was lost is simply sent again. Must
//! never: send a batch of a group before the one before it was applied (their order is
//! the log's); give up on a group before the deadline; hold the service lock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_net::{Expect, NetError};
use tessera_proto::control::{
    ControlError, GroupOp, MAX_GROUP_OPS, ManagerReply, StorageReply, StorageRequest,
};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::service::{DropOrder, Pending, Service};

/// How long one storage node gets to answer one `Apply` (it answers once the ops are
/// applied by the group's leader).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Groups asked at once by one job.
const PARALLEL_GROUPS: usize = 32;
/// Back-off between rounds over a group's members.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The ops to propose in one group, in order, with whom to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupJob {
    pub group_id: u64,
    /// `(node id, address)` of the group's members (and nodes joining it): the leader
    /// heartbeats named first, if any.
    pub members: Vec<(u64, String)>,
    /// The ops in `Apply` requests of at most [`MAX_GROUP_OPS`], in order.
    pub batches: Vec<Vec<GroupOp>>,
}

/// `ops` split into the `Apply` batches of one group.
pub fn batches(ops: Vec<GroupOp>) -> Vec<Vec<GroupOp>> {
    ops.chunks(MAX_GROUP_OPS).map(<[GroupOp]>::to_vec).collect()
}

/// Applies every job (each group's batches in order, groups in parallel) before
/// `deadline`. The error names the first group that could not be reached in time.
pub async fn apply_all(
    security: &tessera_net::Security,
    jobs: Vec<GroupJob>,
    deadline: Instant,
) -> Result<(), String> {
    let mut running = JoinSet::new();
    let mut first_err = None;
    for job in jobs {
        if running.len() >= PARALLEL_GROUPS
            && let Some(done) = running.join_next().await
        {
            note(&mut first_err, done);
        }
        running.spawn(apply_group(security.clone(), job, deadline));
    }
    while let Some(done) = running.join_next().await {
        note(&mut first_err, done);
    }
    first_err.map_or(Ok(()), Err)
}

fn note(first: &mut Option<String>, done: Result<Result<(), String>, tokio::task::JoinError>) {
    let err = match done {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e,
        Err(e) => format!("a group call failed: {e}"),
    };
    first.get_or_insert(err);
}

/// Applies one group's batches in order, each at its leader.
pub async fn apply_group(
    security: tessera_net::Security,
    job: GroupJob,
    deadline: Instant,
) -> Result<(), String> {
    if job.members.is_empty() {
        return Err(format!("group {} has no known member", job.group_id));
    }
    let mut at = 0;
    for ops in &job.batches {
        let req = StorageRequest::Apply {
            group_id: job.group_id,
            ops: ops.clone(),
        };
        at = apply_one(&security, &job, &req, at, deadline).await?;
    }
    Ok(())
}

/// Sends `req` until the group's leader applied it; returns the index of the member that
/// did (asked first next time).
async fn apply_one(
    security: &tessera_net::Security,
    job: &GroupJob,
    req: &StorageRequest,
    mut at: usize,
    deadline: Instant,
) -> Result<usize, String> {
    let n = job.members.len();
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::from("not asked");
    loop {
        // One round: every member at most once, following hints.
        for _ in 0..n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "group {} did not apply the request in time (last: {last})",
                    job.group_id
                ));
            }
            let (node, addr) = &job.members[at % n];
            let res = tessera_net::call::<StorageRequest, StorageReply>(
                security,
                addr,
                Expect::Node(*node),
                req,
                CALL_TIMEOUT.min(left),
            )
            .await;
            match res {
                Ok(StorageReply::Done) => return Ok(at % n),
                Ok(StorageReply::NotLeader { hint }) => {
                    last = format!("node {node} does not lead it (hint {hint})");
                    match job
                        .members
                        .iter()
                        .position(|(id, _)| *id == hint && hint != 0)
                    {
                        Some(i) if i != at % n => at = i,
                        _ => at += 1,
                    }
                    continue;
                }
                Ok(other) => last = format!("node {node} answered {other:?}"),
                Err(NetError::Control(e)) => last = format!("node {node}: {e}"),
                Err(e) => last = format!("node {node} at {addr}: {e}"),
            }
            debug!(group = job.group_id, %last, "group op not applied; trying the next member");
            at += 1;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(backoff.min(left)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sends a request's pending group ops (without the service lock), then completes it under
/// the lock; `Unavailable` if a group did not apply them in time.
pub(crate) async fn finish(
    service: &Arc<Mutex<Service>>,
    security: &tessera_net::Security,
    pending: Pending,
    deadline: Duration,
) -> Result<ManagerReply, ControlError> {
    let Pending { jobs, finish } = pending;
    if let Err(e) = apply_all(security, jobs, Instant::now() + deadline).await {
        warn!(error = %e, ?finish, "group ops not applied in time");
        return Err(ControlError::Unavailable(format!(
            "{e}; {}",
            finish.unfinished()
        )));
    }
    let service = service.clone();
    let done = tokio::task::spawn_blocking(move || {
        let mut s = service.lock().map_err(|_| {
            ControlError::Internal("manager state is unusable after an internal error".into())
        })?;
        s.lead()?;
        s.finish(&finish)
    })
    .await;
    done.unwrap_or_else(|e| {
        Err(ControlError::Internal(format!(
            "request handler failed: {e}"
        )))
    })
}

/// How long one storage node gets to acknowledge a drop order.
const DROP_TIMEOUT: Duration = Duration::from_secs(5);

/// Tells one replica of the group (the leader first) to drop the chunks. Best effort: the
/// deleted volume's id is never reused, so leftovers are garbage, never wrong data.
pub(crate) async fn deliver_drop(security: tessera_net::Security, order: DropOrder) {
    let req = StorageRequest::DropChunks {
        group_id: order.group_id,
        volume_id: order.volume_id,
        chunks: order.chunks.clone(),
    };
    for (node, addr) in &order.peers {
        let expect = Expect::Node(*node);
        match tessera_net::call::<_, StorageReply>(&security, addr, expect, &req, DROP_TIMEOUT)
            .await
        {
            Ok(_) => {
                debug!(group = order.group_id, volume = order.volume_id, %addr, "chunks dropped");
                return;
            }
            Err(e) => {
                warn!(group = order.group_id, volume = order.volume_id, %addr, error = %e,
                      "drop order not delivered");
            }
        }
    }
    warn!(
        group = order.group_id,
        volume = order.volume_id,
        chunks = order.chunks.len(),
        "no replica took the drop order; its chunks stay as garbage"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_split_into_bounded_batches_in_order() {
        let ops: Vec<GroupOp> = (0..(MAX_GROUP_OPS as u64 * 2 + 1))
            .map(|chunk| GroupOp::Unlink {
                volume_id: 1,
                chunk,
            })
            .collect();
        let b = batches(ops.clone());
        assert_eq!(
            b.iter().map(Vec::len).collect::<Vec<_>>(),
            [MAX_GROUP_OPS, MAX_GROUP_OPS, 1]
        );
        assert_eq!(b.concat(), ops);
        assert!(batches(Vec::new()).is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_group_fails_at_the_deadline() {
        let job = GroupJob {
            group_id: 7,
            // Nothing listens on port 1 of loopback.
            members: vec![(1, "127.0.0.1:1".into())],
            batches: vec![vec![GroupOp::Unlink {
                volume_id: 1,
                chunk: 0,
            }]],
        };
        let t = Instant::now();
        let err = apply_all(
            &Default::default(),
            vec![job],
            t + Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert!(err.contains("group 7"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}

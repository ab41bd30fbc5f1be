//! What a volume's layers hold on disk, asked of its groups' replicas
//! ([`StorageRequest::LayerUsage`]): for `ManagerRequest::VolumeUsage` (bytes per snapshot
//! and live) and for the background reclaim (which chunks have layers to merge). Async,
//! off the service lock: the service fills a [`UsageQuery`] under it, the server answers
//! it here.
//!
//! Any replica answers (the leader is asked first, then the other members in turn); a
//! group none of whose replicas answers before the deadline is reported as such, never
//! counted as empty. Must never hold the service lock.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tessera_net::Expect;
use tessera_proto::control::{
    ControlError, LayerBytes, ManagerReply, SnapshotUsage, StorageReply, StorageRequest,
    VolumeUsage,
};
use tokio::task::JoinSet;
use tracing::debug;

/// How long one replica gets to answer (then the next member is asked).
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Calls to storage nodes one query makes at once.
const PARALLEL_CALLS: usize = 32;
/// How long a `VolumeUsage` request waits for all its groups.
pub const USAGE_DEADLINE: Duration = Duration::from_secs(5);

/// A `VolumeUsage` request as planned under the service lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub volume: String,
    pub volume_id: u64,
    /// `(name, sequence)` of its snapshots, oldest first.
    pub snapshots: Vec<(String, u64)>,
    /// Its groups, with whom to ask.
    pub groups: Vec<Replicas>,
    /// Its groups with nobody known to ask: reported unreported.
    pub unknown: Vec<u64>,
}

/// A group and its members to ask in turn: `(node id, address)`, the leader first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicas {
    pub group_id: u64,
    pub members: Vec<(u64, String)>,
}

/// Asks every group (at most [`PARALLEL_CALLS`] at once) for the layers of `volume_id` it
/// holds: group id → the answer of the first replica that gave one, or why none did before
/// `deadline`.
pub async fn ask_groups(
    security: &tessera_net::Security,
    volume_id: u64,
    groups: &[Replicas],
    deadline: Instant,
) -> BTreeMap<u64, Result<Vec<LayerBytes>, String>> {
    let calls = groups.iter().cloned().map(|g| {
        let security = security.clone();
        async move {
            let answer = ask_group(&security, &g, volume_id, deadline).await;
            (g.group_id, answer)
        }
    });
    let mut out: BTreeMap<_, _> = bounded(calls).await.into_iter().collect();
    for g in groups {
        out.entry(g.group_id)
            .or_insert_with(|| Err("the query task failed".into()));
    }
    out
}

/// One group's layers of `volume_id`, from its members in order.
async fn ask_group(
    security: &tessera_net::Security,
    group: &Replicas,
    volume_id: u64,
    deadline: Instant,
) -> Result<Vec<LayerBytes>, String> {
    let req = StorageRequest::LayerUsage {
        group_id: group.group_id,
        volume_id,
    };
    let mut last = String::from("it has no known member");
    for (node, addr) in &group.members {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last = format!("no answer in time (last: {last})");
            break;
        }
        match tessera_net::call::<StorageRequest, StorageReply>(
            security,
            addr,
            Expect::Node(*node),
            &req,
            CALL_TIMEOUT.min(left),
        )
        .await
        {
            Ok(StorageReply::LayerUsage(layers)) => return Ok(layers),
            Ok(other) => last = format!("node {node} answered {other:?}"),
            Err(e) => last = format!("node {node} at {addr}: {e}"),
        }
        debug!(group = group.group_id, %last, "layer usage not answered; asking the next member");
    }
    Err(format!("group {}: {last}", group.group_id))
}

/// Group id → `(node id, its layers or why it did not answer)` per member.
pub type PerReplica = BTreeMap<u64, Vec<(u64, Result<Vec<LayerBytes>, String>)>>;

/// Every replica's answer (at most [`PARALLEL_CALLS`] calls at once): group id → `(node
/// id, its layers or why it did not answer)` per member, in the members' order. For the
/// reclaim, which must see a merge skipped on one replica (full disk) or counted late.
pub async fn ask_replicas(
    security: &tessera_net::Security,
    volume_id: u64,
    groups: &[Replicas],
    deadline: Instant,
) -> PerReplica {
    let mut calls = Vec::new();
    for g in groups {
        for (at, (node, addr)) in g.members.iter().enumerate() {
            let req = StorageRequest::LayerUsage {
                group_id: g.group_id,
                volume_id,
            };
            let (group_id, node, addr) = (g.group_id, *node, addr.clone());
            let security = security.clone();
            calls.push(async move {
                let left = deadline.saturating_duration_since(Instant::now());
                let answer = if left.is_zero() {
                    Err(format!("node {node}: no time left to ask"))
                } else {
                    match tessera_net::call::<StorageRequest, StorageReply>(
                        &security,
                        &addr,
                        Expect::Node(node),
                        &req,
                        left,
                    )
                    .await
                    {
                        Ok(StorageReply::LayerUsage(layers)) => Ok(layers),
                        Ok(other) => Err(format!("node {node} answered {other:?}")),
                        Err(e) => Err(format!("node {node} at {addr}: {e}")),
                    }
                };
                ((group_id, at), (node, answer))
            });
        }
    }
    let mut answers = bounded(calls).await;
    answers.sort_by_key(|(k, _)| *k);
    let mut out: BTreeMap<u64, Vec<_>> = groups.iter().map(|g| (g.group_id, Vec::new())).collect();
    for ((group_id, _), answer) in answers {
        out.entry(group_id).or_default().push(answer);
    }
    out
}

/// Runs `calls` with at most [`PARALLEL_CALLS`] at once; a call whose task failed is left
/// out.
async fn bounded<T: Send + 'static>(
    calls: impl IntoIterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let mut running = JoinSet::new();
    let mut out = Vec::new();
    for call in calls {
        if running.len() >= PARALLEL_CALLS
            && let Some(Ok(done)) = running.join_next().await
        {
            out.push(done);
        }
        running.spawn(call);
    }
    while let Some(done) = running.join_next().await {
        if let Ok(done) = done {
            out.push(done);
        }
    }
    out
}

/// Answers a `VolumeUsage` request: asks every group, then sums.
pub async fn answer(
    security: &tessera_net::Security,
    q: UsageQuery,
) -> Result<ManagerReply, ControlError> {
    let answers = ask_groups(
        security,
        q.volume_id,
        &q.groups,
        Instant::now() + USAGE_DEADLINE,
    )
    .await;
    Ok(ManagerReply::Usage(sum(&q, &answers)))
}

/// Bytes per layer over every chunk of every group that answered, then per snapshot: the
/// layers above the snapshot before it up to its own sequence; live: the layers above the
/// newest snapshot.
pub fn sum(
    q: &UsageQuery,
    answers: &BTreeMap<u64, Result<Vec<LayerBytes>, String>>,
) -> VolumeUsage {
    let mut per_layer: BTreeMap<u64, u64> = BTreeMap::new();
    let mut unreported = q.unknown.clone();
    for (group_id, answer) in answers {
        match answer {
            Ok(layers) => {
                for l in layers {
                    let b = per_layer.entry(l.layer).or_default();
                    *b = b.saturating_add(l.bytes);
                }
            }
            Err(_) => unreported.push(*group_id),
        }
    }
    let mut below = 0u64;
    let mut snapshots = Vec::new();
    for (name, seq) in &q.snapshots {
        let bytes = layers_bytes(&per_layer, below, *seq);
        snapshots.push(SnapshotUsage {
            name: name.clone(),
            seq: *seq,
            bytes,
        });
        below = below.max(*seq);
    }
    VolumeUsage {
        volume: q.volume.clone(),
        snapshots,
        live_bytes: layers_bytes(&per_layer, below, u64::MAX),
        unreported_groups: {
            unreported.sort_unstable();
            unreported.dedup();
            unreported
        },
    }
}

/// The bytes of the layers in `(above, upto]`.
fn layers_bytes(per_layer: &BTreeMap<u64, u64>, above: u64, upto: u64) -> u64 {
    if above >= upto {
        return 0;
    }
    per_layer
        .range(above.saturating_add(1)..=upto)
        .fold(0u64, |sum, (_, b)| sum.saturating_add(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lb(chunk: u64, layer: u64, bytes: u64) -> LayerBytes {
        LayerBytes {
            chunk,
            layer,
            bytes,
        }
    }

    /// Snapshots at 2 and 5: the first holds layers 1..=2, the second 3..=5, live 6 and
    /// up, summed over chunks and groups; a group that did not answer, or had nobody to ask,
    /// is named.
    #[test]
    fn each_snapshot_holds_the_layers_since_the_one_before_it() {
        let q = UsageQuery {
            volume: "v".into(),
            volume_id: 1,
            snapshots: vec![("a".into(), 2), ("b".into(), 5)],
            groups: Vec::new(),
            unknown: vec![5],
        };
        let answers = BTreeMap::from([
            (1, Ok(vec![lb(0, 1, 100), lb(0, 3, 10), lb(0, 6, 1)])),
            (2, Ok(vec![lb(1, 2, 200), lb(1, 5, 20), lb(1, 7, 2)])),
            (3, Err("down".to_string())),
        ]);
        let u = sum(&q, &answers);
        assert_eq!(
            u.snapshots,
            [
                SnapshotUsage {
                    name: "a".into(),
                    seq: 2,
                    bytes: 300
                },
                SnapshotUsage {
                    name: "b".into(),
                    seq: 5,
                    bytes: 30
                }
            ]
        );
        assert_eq!(u.live_bytes, 3);
        assert_eq!(u.unreported_groups, [3, 5], "silent, and nobody to ask");
        // No snapshot: everything is live.
        let none = UsageQuery {
            snapshots: Vec::new(),
            ..q
        };
        assert_eq!(sum(&none, &answers).live_bytes, 333);
    }

    #[tokio::test]
    async fn a_group_no_replica_answers_is_unreported_at_the_deadline() {
        let g = Replicas {
            group_id: 4,
            // Nothing listens on port 1 of loopback.
            members: vec![(1, "127.0.0.1:1".into()), (2, "127.0.0.1:1".into())],
        };
        let t = Instant::now();
        let answers = ask_groups(
            &tessera_net::Security::insecure(),
            9,
            &[g],
            t + Duration::from_millis(300),
        )
        .await;
        assert!(answers[&4].as_ref().unwrap_err().contains("group 4"));
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}

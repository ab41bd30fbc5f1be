//! The cluster status answer: nodes, groups and their replicas as the state and heartbeats
//! show them.
//!
//! Read-only: must never change the state or the liveness it reads.

use std::time::Duration;

use tessera_proto::control::{ClusterStatus, GroupStatus, NodeStatus, ReplicaStatus};

use crate::liveness::Health;

use super::{Now, Service};

impl Service {
    pub(super) fn status(&self, now: Now) -> ClusterStatus {
        let t = now.instant;
        let counts = self.state.replica_counts();
        let groups: Vec<GroupStatus> = self
            .state
            .groups()
            .map(|g| GroupStatus {
                group_id: g.id,
                leader: self.live.leader(g, t),
                replicas: g
                    .members
                    .iter()
                    .map(|m| {
                        let report = self.live.report(*m, g.id);
                        ReplicaStatus {
                            node_id: *m,
                            rack: self
                                .state
                                .node(*m)
                                .map(|n| n.rack.clone())
                                .unwrap_or_default(),
                            node_state: self.live.health(*m, t).as_str().to_string(),
                            role: report.map(|r| r.role),
                            commit: report.map_or(0, |r| r.commit),
                            applied: report.map_or(0, |r| r.applied),
                            stuck: report.and_then(|r| r.stuck.clone()),
                        }
                    })
                    .collect(),
                chunks: self.state.group_chunks(g.id),
                degraded: g.members.len() < self.replicas
                    || g.members.iter().any(|m| {
                        self.live.health(*m, t) != Health::Up
                            || (self.live.last_heartbeat_ago(*m, t).is_some()
                                && self.live.report(*m, g.id).is_none_or(|r| r.stuck.is_some()))
                    }),
                moving_to: g.target.clone(),
            })
            .collect();
        let nodes = self
            .state
            .nodes()
            .map(|n| {
                let (capacity_bytes, used_bytes) = self
                    .live
                    .usage(n.id)
                    .unwrap_or((n.capacity_bytes, n.used_bytes));
                NodeStatus {
                    node_id: n.id,
                    zone: n.zone.clone(),
                    rack: n.rack.clone(),
                    addr: n.addr.clone(),
                    state: self.live.health(n.id, t).as_str().to_string(),
                    capacity_bytes,
                    used_bytes,
                    last_heartbeat_ms_ago: self.live.last_heartbeat_ago(n.id, t).map(millis),
                    replicas: counts.get(&n.id).copied().unwrap_or(0),
                    leaders: groups.iter().filter(|g| g.leader == Some(n.id)).count() as u64,
                    draining: n.draining,
                    descriptors: self.live.descriptors(n.id),
                }
            })
            .collect();
        ClusterStatus {
            nodes,
            groups,
            volumes: self.state.volume_count(),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

//! The scrub requests under the service lock: `ScrubStatus` answered from what heartbeats
//! said (`liveness`), `ScrubControl` planned as a [`ScrubCall`] to the node, which the
//! server makes without the lock (`crate::scrub`).
//!
//! Read-only; must never call a storage node here.

use tessera_proto::control::{ControlError, ManagerReply, NodeScrub, ScrubAction};

use crate::scrub::ScrubCall;

use super::Service;

impl Service {
    /// Every registered node, by id, with its scrubbing from its latest heartbeat (`None`
    /// for a node not heard from since it registered or since this manager leads).
    pub(super) fn scrub_status(&self) -> ManagerReply {
        let mut nodes: Vec<NodeScrub> = self
            .state
            .nodes()
            .map(|n| NodeScrub {
                node_id: n.id,
                addr: n.addr.clone(),
                stats: self.live.scrub(n.id).cloned(),
            })
            .collect();
        nodes.sort_by_key(|n| n.node_id);
        ManagerReply::Scrub(nodes)
    }

    /// Whom to tell `action`: `NotFound` for a node never registered.
    pub(super) fn scrub_call(
        &self,
        node_id: u64,
        action: ScrubAction,
    ) -> Result<ScrubCall, ControlError> {
        let node = self
            .state
            .node(node_id)
            .ok_or_else(|| ControlError::NotFound(format!("node {node_id} not found")))?;
        Ok(ScrubCall {
            node_id,
            addr: node.addr.clone(),
            action,
        })
    }
}

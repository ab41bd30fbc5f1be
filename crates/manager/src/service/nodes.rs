//! Requests from and about storage nodes: registration (and placing new groups), heartbeats
//! (and what their acks order), draining.
//!
//! Every change goes through `commit`. Must never answer a heartbeat before what it proved
//! for good (established groups) is committed.

use tessera_proto::control::{ControlError, ManagerReply, NodeHeartbeat, NodeRegistration};
use tracing::{info, warn};

use crate::reconcile;
use crate::state::Mutation;

use super::{Now, Service};

impl Service {
    pub(super) fn register(
        &mut self,
        reg: &NodeRegistration,
        now: Now,
    ) -> Result<ManagerReply, ControlError> {
        let (id, m) = self.state.plan_register(reg)?;
        if let Some(old) = self.state.node(id) {
            if old.rack != reg.rack || old.zone != reg.zone {
                // Existing groups keep their members; moving them is a membership change.
                warn!(
                    node = id,
                    old_rack = %old.rack,
                    new_rack = %reg.rack,
                    "node changed location; its groups are not re-placed"
                );
            }
        } else {
            info!(node = id, rack = %reg.rack, addr = %reg.addr, "node registered");
        }
        self.commit(m)?;
        self.live.registered(id, now.instant);
        self.place(now)?;
        Ok(ManagerReply::Registered { node_id: id })
    }

    /// Creates groups until every node that is not down hosts its share of replicas.
    pub(super) fn place(&mut self, now: Now) -> Result<(), ControlError> {
        let (live, state) = (&self.live, &self.state);
        let Some(m) = self.state.plan_groups(
            |n| !live.is_down(n, now.instant) && !state.node(n).is_some_and(|n| n.draining),
            self.replicas,
            self.groups_per_node,
        ) else {
            return Ok(());
        };
        if let Mutation::AddGroups(gs) = &m {
            info!(count = gs.len(), "placing new replica groups");
        }
        self.commit(m)
    }

    pub(super) fn heartbeat(
        &mut self,
        hb: &NodeHeartbeat,
        now: Now,
    ) -> Result<ManagerReply, ControlError> {
        if self.state.node(hb.node_id).is_none() {
            return Err(ControlError::NotFound(format!(
                "node {} is not registered",
                hb.node_id
            )));
        }
        self.live.heartbeat(hb, now.instant);
        self.record_established(hb)?;
        let reported = self.live.reported(hb.node_id).collect();
        let (create_groups, remove_groups) =
            reconcile::heartbeat_orders(&self.state, hb.node_id, &reported);
        if !remove_groups.is_empty() {
            info!(node = hb.node_id, groups = ?remove_groups,
                  "telling node to destroy replicas of groups it no longer belongs to");
        }
        Ok(ManagerReply::HeartbeatAck {
            create_groups,
            remove_groups,
            crl_version: self.crl_version(),
        })
    }

    /// Records the groups `hb` shows with a leader as established, together with any an
    /// earlier heartbeat showed but that could not be recorded then. Until that commit
    /// succeeds no heartbeat is answered: a node told nothing is safe, one told to start a
    /// replica of such a group as a fresh voter is not.
    pub(super) fn record_established(&mut self, hb: &NodeHeartbeat) -> Result<(), ControlError> {
        let state = &self.state;
        self.unrecorded
            .extend(reconcile::newly_established(state, hb));
        self.unrecorded
            .retain(|id| state.group(*id).is_some_and(|g| !g.established));
        if self.unrecorded.is_empty() {
            return Ok(());
        }
        let group_ids: Vec<u64> = self.unrecorded.iter().copied().collect();
        info!(
            count = group_ids.len(),
            "groups have had a leader: recording them as established"
        );
        self.commit(Mutation::SetGroupsEstablished { group_ids })?;
        self.unrecorded.clear();
        Ok(())
    }

    pub(super) fn drain(
        &mut self,
        node_id: u64,
        draining: bool,
        now: Now,
    ) -> Result<ManagerReply, ControlError> {
        if let Some(m) = self.state.plan_drain(node_id, draining, self.replicas)? {
            self.commit(m)?;
            if draining {
                info!(
                    node = node_id,
                    "draining: its replicas and leaderships will move off"
                );
            } else {
                info!(node = node_id, "drain stopped");
            }
        }
        Ok(ManagerReply::Status(self.status(now)))
    }
}

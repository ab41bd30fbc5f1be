//! The service's side of reconciliation: one pass under the service lock (plan, commit the
//! moves, return the storage calls) and recording a move the group's leader reports done.
//!
//! Plans only on the leader. Must never call a storage node itself (the reconcile loop does)
//! nor record members the group's leader has not confirmed.

use tessera_proto::control::{ControlError, StorageRequest};
use tracing::{info, warn};

use crate::reconcile;
use crate::state::Mutation;

use super::{Now, Service, StorageCall};

impl Service {
    /// One reconcile pass: plans moves and hand-overs, commits the moves, and returns the
    /// calls to make to storage nodes. Stops at the first failed commit.
    pub fn reconcile(
        &mut self,
        now: Now,
        memory: &mut reconcile::Memory,
        limits: reconcile::Limits,
    ) -> Vec<StorageCall> {
        // Only the leading manager hears heartbeats: to any other, every node looks down.
        if self.lead().is_err() {
            return Vec::new();
        }
        if memory.term != self.led_term {
            *memory = reconcile::Memory::default();
            memory.term = self.led_term;
        }
        let t = now.instant;
        memory.lost.update(&self.state, &self.live, t);
        let lost = memory.lost.lost(t, self.live.down_after());
        let settling = memory.settling(t);
        let plan = reconcile::plan(
            &reconcile::Facts {
                state: &self.state,
                live: &self.live,
                now: t,
                lost: &lost,
                settling: &settling,
            },
            limits,
        );
        for m in &plan.moves {
            for (from, to, why) in &m.swaps {
                info!(group = m.group_id, from, to, %why, voters = ?m.from, target = ?m.target,
                      "moving a replica");
            }
            if let Err(e) = self.commit(m.mutation()) {
                warn!(group = m.group_id, error = %e, "could not record a move");
                return Vec::new();
            }
        }
        let mut calls = Vec::new();
        for tr in &plan.transfers {
            let why = if tr.drain {
                "node draining"
            } else {
                "leader balance"
            };
            info!(
                group = tr.group_id,
                from = tr.from,
                to = tr.to,
                why,
                "transferring leadership"
            );
            memory.settle(tr.group_id, t);
            calls.extend(self.call(
                tr.group_id,
                tr.from,
                StorageRequest::TransferLeader {
                    group_id: tr.group_id,
                    to: tr.to,
                },
                None,
            ));
        }
        let hints = memory.take_hints();
        for d in reconcile::drive(&self.state, &self.live, t, &hints) {
            let reconcile::Drive::ChangeMembers {
                group_id,
                leader,
                target,
            } = d;
            let ids = target.iter().map(|p| p.node_id).collect();
            calls.extend(self.call(
                group_id,
                leader,
                StorageRequest::ChangeMembers {
                    group_id,
                    peers: target,
                },
                Some(ids),
            ));
        }
        calls
    }

    pub(super) fn call(
        &self,
        group_id: u64,
        node: u64,
        req: StorageRequest,
        target: Option<Vec<u64>>,
    ) -> Option<StorageCall> {
        let addr = self.state.node(node)?.addr.clone();
        Some(StorageCall {
            group_id,
            node,
            addr,
            req,
            target,
        })
    }

    /// The leader of `term` reported a move done: the group's voters are `voters`. Ignored
    /// unless the group is still moving to exactly those nodes (it may have been re-aimed
    /// meanwhile).
    pub fn move_done(
        &mut self,
        group_id: u64,
        voters: &[u64],
        term: u64,
    ) -> Result<(), ControlError> {
        let Some(g) = self.state.group(group_id) else {
            return Ok(());
        };
        if g.target.is_empty() || !reconcile::same_nodes(&g.target, voters) {
            return Ok(());
        }
        let (from, target) = (g.members.clone(), g.target.clone());
        self.commit(Mutation::SetGroupMembers {
            group_id,
            members: target.clone(),
            term,
        })?;
        info!(group = group_id, from = ?from, to = ?target, "membership change done");
        Ok(())
    }
}

//! Volume requests: deleting (with the drop orders it leaves), routing and provisioning
//! chunks, and the group routes of an open, with leaders.
//!
//! Must never delete a volume under a live writer, nor answer a route before the mapping is
//! committed.

use tessera_proto::control::{
    ChunkRoute, ControlError, MAX_DROP_CHUNKS, MAX_ROUTES_PER_PAGE, ManagerReply, RoutePage,
};
use tracing::info;

use super::{DropOrder, Now, Service};

impl Service {
    pub(super) fn delete(
        &mut self,
        name: &str,
        now: Now,
        orders: &mut Vec<DropOrder>,
    ) -> Result<ManagerReply, ControlError> {
        // A volume being written is not deleted under its writer (`rbd rm` refuses an image
        // with watchers too): the holder detaches, or its lease runs out, or an operator
        // ends it with a forced detach first.
        let rec = self.state.volume_record(name)?;
        if let Some(a) = &rec.attachment {
            let left = self.leases.left(rec.id, now.instant);
            if !left.is_zero() {
                return Err(ControlError::Conflict(format!(
                    "volume {name:?} is attached read-write by {} (epoch {}); detach it \
                     first (`tessera volume detach {name} --force` ends it)",
                    a.client, a.epoch
                )));
            }
        }
        let (m, dropped) = self.state.plan_delete_volume(name)?;
        self.commit(m)?;
        self.leases.ended(dropped.volume_id);
        info!(volume = %name, id = dropped.volume_id, "volume deleted");
        for (group_id, chunks) in dropped.by_group {
            let Some(g) = self.state.group(group_id) else {
                continue;
            };
            let leader = self.live.leader(g, now.instant);
            let mut members = g.members.clone();
            members.sort_by_key(|m| Some(*m) != leader);
            let peers: Vec<(u64, String)> = members
                .iter()
                .filter_map(|m| self.state.node(*m).map(|n| (*m, n.addr.clone())))
                .collect();
            // Bounded requests, whatever the volume held in the group.
            for part in chunks.chunks(MAX_DROP_CHUNKS) {
                orders.push(DropOrder {
                    group_id,
                    volume_id: dropped.volume_id,
                    chunks: part.to_vec(),
                    peers: peers.clone(),
                });
            }
        }
        Ok(ManagerReply::Deleted)
    }

    pub(super) fn route(
        &mut self,
        volume_id: u64,
        chunk: u64,
        allocate: bool,
        now: Now,
    ) -> Result<ManagerReply, ControlError> {
        if let Some(mut r) = self.state.route(volume_id, chunk)? {
            r.leader = self.leader(r.group_id, now);
            return Ok(ManagerReply::Route(Some(r)));
        }
        if !allocate {
            return Ok(ManagerReply::Route(None));
        }
        let live = &self.live;
        let Some(m) = self
            .state
            .plan_map_chunk(volume_id, chunk, |g| live.has_quorum(g, now.instant))
        else {
            let racks = self.state.racks(|n| !live.is_down(n, now.instant));
            return Err(ControlError::Unavailable(if racks < self.replicas {
                format!("need {} racks, have {racks}", self.replicas)
            } else {
                "no replica group has a majority of its nodes up".to_string()
            }));
        };
        self.commit(m)?;
        let mut r = self.state.route(volume_id, chunk)?;
        if let Some(r) = &mut r {
            r.leader = self.leader(r.group_id, now);
        }
        Ok(ManagerReply::Route(r))
    }

    /// Maps the unmapped chunks of a range in one change (see
    /// [`ManagerRequest::ProvisionChunks`]) and answers the range's routes.
    pub(super) fn provision(
        &mut self,
        volume_id: u64,
        first_chunk: u64,
        count: u32,
        now: Now,
    ) -> Result<ManagerReply, ControlError> {
        let live = &self.live;
        let m = self
            .state
            .plan_map_chunks(volume_id, first_chunk, count, |g| {
                live.has_quorum(g, now.instant)
            })?;
        if let Some(m) = m {
            self.commit(m)?;
        }
        let mut page = self.state.route_page(volume_id, first_chunk, count)?;
        page.routes
            .retain(|r| r.chunk < first_chunk.saturating_add(u64::from(count)));
        Ok(ManagerReply::Routes(self.with_leaders(page, now)))
    }

    /// The groups of an open or attach answer, with leaders. A client from before paging
    /// (`paged` false) fences exactly the groups it is given: a volume with more groups
    /// than one answer holds is refused to it rather than fenced in part.
    pub(super) fn first_groups(
        &self,
        name: &str,
        page: RoutePage,
        paged: bool,
        now: Now,
    ) -> Result<(Vec<ChunkRoute>, bool), ControlError> {
        let more = page.next.is_some();
        if more && !paged {
            return Err(ControlError::Invalid(format!(
                "volume {name:?} spans more than {MAX_ROUTES_PER_PAGE} replica groups, more \
                 than this client can be told at once; upgrade the client"
            )));
        }
        Ok((self.with_leaders(page, now).routes, more))
    }

    pub(super) fn with_leaders(&self, mut page: RoutePage, now: Now) -> RoutePage {
        for r in &mut page.routes {
            r.leader = self.leader(r.group_id, now);
        }
        page
    }

    pub(super) fn leader(&self, group_id: u64, now: Now) -> Option<u64> {
        self.live.leader(self.state.group(group_id)?, now.instant)
    }
}

//! Read-write attachments: attach, detach, and each volume's lease as this manager sees it.
//! The rules are `crate::attach`'s; this file commits what they plan.
//!
//! Leases live in the leader's memory only. Must never grant an attachment without
//! committing its new writer epoch first.

use std::time::Instant;

use tessera_proto::control::{ControlError, ManagerReply, VolumeInfo};
use tracing::info;

use crate::attach;

use super::{Now, Service};

impl Service {
    /// Grants `client` the read-write attachment of `name` (see `attach.rs`).
    pub(super) fn attach(
        &mut self,
        name: &str,
        client: &str,
        holder: &str,
        paged: bool,
        now: Now,
    ) -> Result<ManagerReply, ControlError> {
        // Refused before anything is granted (see `first_groups`).
        let (_, groups) = self.state.open_volume(name)?;
        self.first_groups(name, groups, paged, now)?;
        let leases = &mut self.leases;
        let (m, epoch) = attach::plan_attach(&self.state, name, client, holder, now.unix, |id| {
            leases.left(id, now.instant)
        })?;
        if let Some(m) = m {
            self.commit(m)?;
            info!(volume = %name, client, epoch, "volume attached read-write");
        }
        let (mut volume, groups) = self.state.open_volume(name)?;
        let (chunks, more_groups) = self.first_groups(name, groups, paged, now)?;
        self.leases.renewed(volume.id, now.instant);
        self.add_lease(&mut volume, now);
        Ok(ManagerReply::Attached {
            volume,
            chunks,
            more_groups,
            epoch,
            lease_ms: attach::LEASE.as_millis() as u64,
        })
    }

    pub(super) fn detach(
        &mut self,
        name: &str,
        epoch: u64,
        force: bool,
    ) -> Result<ManagerReply, ControlError> {
        let leases = &mut self.leases;
        let now = Instant::now();
        let (m, fence_epoch) =
            attach::plan_detach(&self.state, name, epoch, force, |id| leases.left(id, now))?;
        if let Some(m) = m {
            let id = self.state.volume_record(name)?.id;
            let holder = self.state.volume_record(name)?.attachment.clone();
            self.commit(m)?;
            self.leases.ended(id);
            if let Some(a) = holder {
                info!(volume = %name, client = %a.client, epoch = a.epoch, force,
                      "volume detached");
            }
        }
        Ok(ManagerReply::Detached { fence_epoch })
    }

    /// The attachment's lease as this manager sees it, into a volume's info.
    pub(super) fn add_lease(&self, v: &mut VolumeInfo, now: Now) {
        if let Some(a) = &mut v.attachment {
            a.lease_left_ms = self
                .leases
                .peek(v.id, now.instant)
                .map(|d| d.as_millis() as u64);
        }
    }
}

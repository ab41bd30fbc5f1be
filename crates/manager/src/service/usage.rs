//! The `VolumeUsage` request under the service lock: what to ask whom ([`UsageQuery`]);
//! the server asks the storage nodes without the lock (`crate::usage`).
//!
//! Must never call a storage node here.

use tessera_proto::control::ControlError;

use crate::usage::{Replicas, UsageQuery};

use super::{Now, Service};

impl Service {
    /// The volume's snapshots and groups (members leader first): `NotFound` for an unknown
    /// volume.
    pub(super) fn usage_query(&self, name: &str, now: Now) -> Result<UsageQuery, ControlError> {
        let rec = self.state.volume_record(name)?;
        let volume_id = rec.id;
        let snapshots = rec
            .snapshots
            .iter()
            .map(|s| (s.name.clone(), s.seq))
            .collect();
        let groups = self
            .state
            .groups_of_volume(volume_id)?
            .into_iter()
            .filter_map(|g| self.group_job(g, Vec::new(), now))
            .map(|j| Replicas {
                group_id: j.group_id,
                members: j.members,
            })
            .collect();
        Ok(UsageQuery {
            volume: rec.name.clone(),
            volume_id,
            snapshots,
            groups,
        })
    }
}

//! The `VolumeUsage` request under the service lock: what to ask whom ([`UsageQuery`]);
//! the server asks the storage nodes without the lock (`crate::usage`).
//!
//! Must never call a storage node here.

use tessera_proto::control::ControlError;

use crate::usage::{Replicas, UsageQuery};

use super::{Now, Service};

impl Service {
    /// The volume's snapshots and groups (members leader first; a group with nobody to ask
    /// in `unknown`): `NotFound` for an unknown volume.
    pub(super) fn usage_query(&self, name: &str, now: Now) -> Result<UsageQuery, ControlError> {
        let rec = self.state.volume_record(name)?;
        let volume_id = rec.id;
        let snapshots = rec
            .snapshots
            .iter()
            .map(|s| (s.name.clone(), s.seq))
            .collect();
        let mut groups = Vec::new();
        let mut unknown = Vec::new();
        for g in self.state.groups_of_volume(volume_id)? {
            match self.group_job(g, Vec::new(), now) {
                Some(j) => groups.push(Replicas {
                    group_id: j.group_id,
                    members: j.members,
                }),
                // Nobody to ask: reported, never counted as empty.
                None => unknown.push(g),
            }
        }
        Ok(UsageQuery {
            volume: rec.name.clone(),
            volume_id,
            snapshots,
            groups,
            unknown,
        })
    }
}

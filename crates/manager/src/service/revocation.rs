//! The certificate revocation lists in force across the cluster: published by an admin
//! (`tessera cert revoke`), replicated like every other change, handed to storage nodes
//! whose heartbeat shows an older version (`crl_version` of the heartbeat's answer).
//!
//! The lists' signatures are checked by the server against the CAs this manager trusts
//! before they reach [`Service::publish_crl`] (the service holds no certificates); here
//! only their order: a publication replaces the lists in force whole, so it must carry
//! the list of every CA in force, none older. Must never put in force a list that would
//! undo a revocation.

use tessera_proto::control::{ControlError, ManagerReply};
use tracing::info;

use crate::state::{CrlRecord, Mutation};

use super::Service;

impl Service {
    /// The lists in force (version 0: none).
    pub(super) fn crl_reply(&self) -> ManagerReply {
        let c = self.state.crl();
        ManagerReply::Crl {
            version: c.map_or(0, |c| c.version),
            pem: c.map(|c| c.pem.clone()).unwrap_or_default(),
        }
    }

    /// The version of the lists in force (0: none), for heartbeats' answers.
    pub(super) fn crl_version(&self) -> u64 {
        self.state.crl().map_or(0, |c| c.version)
    }

    /// Puts the lists the server checked in force: refused if it drops the list in force of
    /// a CA still trusted, or carries an older one; the same lists again change nothing.
    pub(crate) fn publish_crl(
        &mut self,
        checked: crate::revocation::Checked,
    ) -> Result<ManagerReply, ControlError> {
        self.lead()?;
        let crate::revocation::Checked {
            pem,
            lists,
            trusted,
        } = checked;
        if lists.is_empty() {
            return Err(ControlError::Invalid(
                "no revocation list of a CA this cluster trusts in it".into(),
            ));
        }
        let mut in_force = self
            .state
            .crl()
            .map(|c| c.lists.clone())
            .unwrap_or_default();
        // A CA removed from the bundle: its list is no longer needed.
        in_force.retain(|(issuer, _)| trusted.contains(issuer));
        let mut newer = false;
        for (issuer, number) in &lists {
            match in_force.iter().find(|(i, _)| i == issuer) {
                Some((_, n)) if n > number => {
                    return Err(ControlError::Invalid(format!(
                        "its list number {number} is older than the one in force ({n}) for \
                         the same CA: revocations would be undone"
                    )));
                }
                Some((_, n)) => newer |= number > n,
                None => newer = true,
            }
        }
        if let Some((_, n)) = in_force
            .iter()
            .find(|(i, _)| !lists.iter().any(|(g, _)| g == i))
        {
            return Err(ControlError::Invalid(format!(
                "it lacks the list of a CA in force (number {n}): publish every CA's list \
                 (the whole ca.crl)"
            )));
        }
        if !newer {
            return Ok(self.crl_reply());
        }
        let version = self.crl_version() + 1;
        self.commit(Mutation::SetCrl(CrlRecord {
            version,
            pem,
            lists,
        }))?;
        info!(version, "certificate revocation lists published");
        Ok(self.crl_reply())
    }
}

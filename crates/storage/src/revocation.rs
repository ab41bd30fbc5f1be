//! A storage node's side of certificate revocation: when a heartbeat's answer shows the
//! managers' revocation lists at a version this node has not put in force, it fetches them
//! and puts them in its TLS ([`tessera_net::Security::apply_crls`]): from then on the
//! revoked certificates' handshakes are refused and their open connections end at their
//! next request. A failure is tried again at the next heartbeat.

use tessera_proto::control::{ManagerReply, ManagerRequest};

use crate::StorageConfig;

/// Puts the managers' lists in force if `version` (from a heartbeat's answer) is not the
/// one `applied` holds; `applied` moves once they are.
pub(crate) async fn follow(cfg: &StorageConfig, version: u64, applied: &mut u64) {
    if version == *applied || !cfg.security.is_secure() {
        return;
    }
    let pem = match crate::call_manager(cfg, &ManagerRequest::Crl).await {
        Ok(ManagerReply::Crl { version: v, pem }) if v >= version => pem,
        Ok(ManagerReply::Crl { .. }) => return,
        Ok(other) => {
            tracing::warn!("unexpected answer to a revocation lists request: {other:?}");
            return;
        }
        Err(e) => {
            tracing::debug!("fetching the revocation lists: {e}");
            return;
        }
    };
    match cfg.security.apply_crls(pem.as_bytes()) {
        Ok(changed) => {
            *applied = version;
            if changed {
                tracing::info!(version, "revocation lists put in force");
            }
        }
        Err(e) => tracing::warn!(version, "revocation lists not put in force: {e}"),
    }
}

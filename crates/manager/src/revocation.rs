//! A manager's side of certificate revocation: checking the lists an admin publishes
//! against the CAs this manager trusts ([`checked_lists`]), and putting the lists in force
//! in this manager's own TLS as it applies them from the log, leader or not ([`run`]):
//! from then on it refuses the revoked certificates' handshakes and ends their open
//! connections at their next request.
//!
//! Must never hold the service lock while it rebuilds its TLS configuration.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tessera_net::Security;
use tessera_proto::control::ControlError;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::service::Service;

/// How often the lists in the state are compared with those in force here.
const EVERY: Duration = Duration::from_secs(1);

/// The lists of a published PEM, each signed by a CA this manager trusts: each one's CA
/// (its subject, DER in hex) and number.
pub(crate) fn checked_lists(
    security: &Security,
    pem: &str,
) -> Result<Vec<(String, u64)>, ControlError> {
    let lists = security
        .check_crls(pem.as_bytes())
        .map_err(|e| ControlError::Invalid(format!("revocation lists refused: {e}")))?;
    Ok(lists
        .iter()
        .map(|c| (tessera_proto::hex::encode(&c.issuer), c.number))
        .collect())
}

/// Puts the state's lists in force in `security` whenever their version moves, until
/// `stopped`.
pub(crate) async fn run(
    service: Arc<Mutex<Service>>,
    security: Security,
    mut stopped: watch::Receiver<bool>,
) {
    if !security.is_secure() {
        return;
    }
    let mut applied = 0;
    loop {
        let published = service
            .lock()
            .ok()
            .and_then(|s| s.state().crl().map(|c| (c.version, c.pem.clone())));
        if let Some((version, pem)) = published.filter(|(v, _)| *v != applied) {
            match security.apply_crls(pem.as_bytes()) {
                Ok(changed) => {
                    applied = version;
                    if changed {
                        info!(version, "revocation lists put in force");
                    }
                }
                // Tried again each round: another CA bundle here than the leader's.
                Err(e) => warn!(version, error = %e, "revocation lists not put in force"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stopped.changed() => return,
        }
    }
}

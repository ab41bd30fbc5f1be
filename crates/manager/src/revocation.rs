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

/// The largest PEM a publication may carry: a list of thousands of revoked certificates
/// is well under it, and every node fetches the whole.
pub(crate) const MAX_PEM: usize = 256 << 10;

/// A publication checked against the CAs this manager trusts.
pub(crate) struct Checked {
    /// Its lists of trusted CAs only, re-encoded (nothing else of the text is kept).
    pub pem: String,
    /// Each list's CA (its subject, DER in hex) and number.
    pub lists: Vec<(String, u64)>,
    /// The subjects (hex) of every CA trusted here: a list in force of any other CA (one
    /// removed from the bundle) is dropped, not required.
    pub trusted: Vec<String>,
}

/// `pem`'s lists signed by the CAs this manager trusts (lists of other CAs are left out).
pub(crate) fn check(security: &Security, pem: &str) -> Result<Checked, ControlError> {
    if pem.len() > MAX_PEM {
        return Err(ControlError::Invalid(format!(
            "revocation lists of {} bytes: at most {MAX_PEM}",
            pem.len()
        )));
    }
    let lists = security
        .check_crls(pem.as_bytes())
        .map_err(|e| ControlError::Invalid(format!("revocation lists refused: {e}")))?;
    Ok(Checked {
        pem: tessera_net::tls::crl::to_pem(&lists),
        lists: lists
            .iter()
            .map(|c| (tessera_proto::hex::encode(&c.issuer), c.number))
            .collect(),
        trusted: security
            .ca_subjects()
            .iter()
            .map(|s| tessera_proto::hex::encode(s))
            .collect(),
    })
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

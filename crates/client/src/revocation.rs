//! A secure client follows the cluster's certificate revocation lists: every
//! [`EVERY`] it asks the managers for them and puts newer ones in force in its TLS, so it
//! stops trusting a revoked node or manager certificate (a stolen key on an impostor's
//! address), and a gateway built on the library (the NBD gateway) refuses its own revoked
//! clients, without a restart.
//!
//! The task holds the client weakly and ends with it; a short-lived client (the CLI) never
//! asks. Failures are retried at the next round, quietly.

use std::sync::Weak;
use std::time::Duration;

use tessera_proto::control::{ManagerReply, ManagerRequest};

use crate::{Client, ClientInner};

/// How often a client asks for the lists.
pub const EVERY: Duration = Duration::from_secs(5);

/// Starts following the lists for `inner`, if it speaks TLS.
pub(crate) fn follow(inner: Weak<ClientInner>) {
    tokio::spawn(async move {
        let mut applied = 0;
        loop {
            tokio::time::sleep(EVERY).await;
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let client = Client { inner };
            if !client.inner.security.is_secure() {
                return;
            }
            match client.call(&ManagerRequest::Crl).await {
                Ok(ManagerReply::Crl { version, pem }) if version != applied => {
                    match client.inner.security.apply_crls(pem.as_bytes()) {
                        Ok(changed) => {
                            applied = version;
                            if changed {
                                tracing::info!(version, "revocation lists put in force");
                            }
                        }
                        Err(e) => tracing::warn!(version, "revocation lists not put in force: {e}"),
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("asking for the revocation lists: {e}"),
            }
        }
    });
}

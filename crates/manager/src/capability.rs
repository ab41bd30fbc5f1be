//! Signing the capabilities clients present to storage nodes ([`tessera_proto::capability`]):
//! the service decides that the caller may have one (the volume exists and the caller may
//! open it; for writes, it holds the volume's current writer epoch), and this signs it for
//! the caller's certificate name with the manager's own key.
//!
//! Must never: sign for anyone but a client certificate's name, or for longer than
//! [`LIFETIME`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tessera_net::{Identity, Security};
use tessera_proto::capability::{Capability, MAX_HOLDER};
use tessera_proto::control::{ControlError, ManagerReply};

/// How long a capability lasts. Clients fetch the next one at half of it; a client whose
/// access ends (its attachment taken over, its certificate revoked) keeps what it was given
/// at most this long.
pub const LIFETIME: Duration = Duration::from_secs(300);

/// A capability of volume `volume_id` at writer epoch `epoch` (0: reads) for `who`, signed
/// by this manager. Only clients have certificates names to hold one; an insecure manager
/// has nothing to sign with.
pub(crate) fn sign(
    security: &Security,
    who: Option<&Identity>,
    volume_id: u64,
    epoch: u64,
    fence_only: bool,
) -> Result<ManagerReply, ControlError> {
    let holder = match who {
        Some(Identity::Client { name, .. }) if name.len() > MAX_HOLDER => {
            return Err(ControlError::Invalid(format!(
                "a client name over {MAX_HOLDER} bytes cannot hold a capability"
            )));
        }
        Some(Identity::Client { name, .. }) => name.clone(),
        Some(other) => {
            return Err(ControlError::Invalid(format!(
                "{other} needs no capability: only clients present them"
            )));
        }
        None => {
            return Err(ControlError::Invalid(
                "an insecure cluster has no capabilities".into(),
            ));
        }
    };
    let issuer = match security.identity() {
        Some(Identity::Manager(id)) => *id,
        _ => 0,
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let cap = Capability {
        volume: volume_id,
        epoch,
        holder,
        expires_ms: now_ms + LIFETIME.as_millis() as u64,
        issuer,
        fence_only,
    };
    let expires_ms = cap.expires_ms;
    let signed = security
        .sign(cap.encode())
        .map_err(|e| ControlError::Internal(format!("signing a capability: {e}")))?;
    Ok(ManagerReply::Capability {
        signed: signed.to_hex(),
        expires_ms,
        lifetime_ms: LIFETIME.as_millis() as u64,
    })
}

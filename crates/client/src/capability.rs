//! The capabilities this client presents to storage nodes (see
//! [`tessera_proto::capability`]): one per volume and writer epoch (0: reads), fetched from
//! the manager, shared by every handle, fetched again at half its life, and presented once
//! on each node connection before the first request that needs it (the node reads a
//! connection's frames in order, so the request never waits for the answer).
//!
//! Must never: send a request of a secure client without first presenting, on that
//! connection, a capability that covers it; stop using a capability that has not expired
//! because the manager could not be reached for the next (an unsettled write must still be
//! able to learn its outcome).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tessera_proto::capability::Signed;
use tessera_proto::control::{ManagerReply, ManagerRequest};

use crate::error::unexpected;
use crate::{Client, Error, Result};

/// How much earlier than its expiry (by the manager's clock) a capability stops being
/// used: room for the node's clock to run ahead of the manager's.
const MARGIN: Duration = Duration::from_secs(10);

/// After a failed fetch, how long a held capability is used before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One signed capability, as presented.
pub(crate) struct Cap {
    /// The `Capability` frame's body.
    pub(crate) body: Bytes,
    /// Unique to this fetch: what a connection remembers having been given.
    pub(crate) serial: u64,
    /// When to fetch the next one.
    refresh_at: Instant,
    /// When to stop presenting this one.
    usable_until: Instant,
    /// Not before then, after a fetch of the next one failed.
    retry_at: Mutex<Option<Instant>>,
}

impl Cap {
    /// Whether it is time to fetch the next one.
    fn stale(&self, now: Instant) -> bool {
        now >= self.refresh_at
            && self
                .retry_at
                .lock()
                .map_or(true, |t| t.is_none_or(|t| now >= t))
    }
}

/// This client's capabilities by (volume id, writer epoch).
#[derive(Default)]
pub(crate) struct Caps {
    held: Mutex<HashMap<(u64, u64), Arc<Cap>>>,
    /// One fetch at a time; a task that holds a usable capability never waits for it.
    fetching: tokio::sync::Mutex<()>,
}

impl Caps {
    fn get(&self, key: (u64, u64)) -> Option<Arc<Cap>> {
        self.held.lock().ok().and_then(|m| m.get(&key).cloned())
    }
}

impl Client {
    /// The capability to present for I/O to volume `volume` at writer epoch `epoch` (0:
    /// reads); `None` when this client is insecure (nodes then check nothing). `refused`:
    /// the serial a node just refused, fetched again unless another task did already.
    /// One still usable is returned at once while another task fetches its successor, or
    /// when the manager cannot give one (it may be electing a leader).
    pub(crate) async fn capability(
        &self,
        volume: u64,
        epoch: u64,
        refused: Option<u64>,
    ) -> Result<Option<Arc<Cap>>> {
        if !self.inner.security.is_secure() {
            return Ok(None);
        }
        let caps = &self.inner.caps;
        let key = (volume, epoch);
        let held = || {
            let now = Instant::now();
            caps.get(key)
                .filter(|c| Some(c.serial) != refused && now < c.usable_until)
        };
        let cached = held();
        if let Some(c) = &cached
            && !c.stale(Instant::now())
        {
            return Ok(cached);
        }
        let _one = match (&cached, caps.fetching.try_lock()) {
            (_, Ok(one)) => one,
            (Some(_), Err(_)) => return Ok(cached),
            (None, Err(_)) => caps.fetching.lock().await,
        };
        // Another task may have fetched it meanwhile.
        let cached = held();
        if let Some(c) = &cached
            && !c.stale(Instant::now())
        {
            return Ok(cached);
        }
        match self.fetch_capability(volume, epoch).await {
            Ok(c) => {
                if let Ok(mut m) = caps.held.lock() {
                    // Drop those no longer usable, so the map does not grow with volumes
                    // closed long ago.
                    let now = Instant::now();
                    m.retain(|_, c| now < c.usable_until);
                    m.insert(key, c.clone());
                }
                Ok(Some(c))
            }
            Err(e) => match cached {
                Some(c) => {
                    tracing::debug!(volume, "could not fetch a new capability: {e}");
                    if let Ok(mut t) = c.retry_at.lock() {
                        *t = Some(Instant::now() + RETRY_AFTER);
                    }
                    Ok(Some(c))
                }
                None => Err(e),
            },
        }
    }

    async fn fetch_capability(&self, volume_id: u64, epoch: u64) -> Result<Arc<Cap>> {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        let asked = Instant::now();
        let req = ManagerRequest::Capability {
            volume_id,
            epoch,
            holder: String::new(),
        };
        let (signed, expires_ms, lifetime_ms) = match self.call(&req).await? {
            ManagerReply::Capability {
                signed,
                expires_ms,
                lifetime_ms,
            } => (signed, expires_ms, lifetime_ms),
            other => return Err(unexpected("Capability", &other)),
        };
        let body = Signed::from_hex(&signed)
            .map_err(|e| Error::Io(format!("a malformed capability from the manager: {e}")))?
            .encode();
        // Counted on this client's clock from when it was asked for; a manager from before
        // lifetimes were sent gives its expiry only.
        let life = match lifetime_ms {
            0 => {
                let now_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                expires_ms.saturating_sub(now_ms)
            }
            ms => ms,
        };
        let life = Duration::from_millis(life);
        Ok(Arc::new(Cap {
            body: Bytes::from(body),
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            refresh_at: asked + life / 2,
            usable_until: asked + life.saturating_sub(MARGIN),
            retry_at: Mutex::new(None),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_net::tls::issue;
    use tessera_net::{Identity, Role, Security};

    /// A secure client of no cluster: every fetch fails at once (no manager).
    fn client() -> Client {
        let ca = issue::new_ca(1).unwrap();
        let who = Identity::Client {
            name: "c".into(),
            role: Role::Admin,
        };
        let me = issue::issue(&ca.cert_pem, &ca.key_pem, &who, &[], 1).unwrap();
        let pem = |s: &String| s.as_bytes().to_vec();
        let security =
            Security::from_pem(&pem(&ca.cert_pem), &pem(&me.cert_pem), &pem(&me.key_pem)).unwrap();
        Client::offline_as(security)
    }

    fn hold(c: &Client, key: (u64, u64), serial: u64, refresh_in: i64) -> Arc<Cap> {
        let now = Instant::now();
        let refresh_at = if refresh_in >= 0 {
            now + Duration::from_secs(refresh_in as u64)
        } else {
            now - Duration::from_secs(refresh_in.unsigned_abs())
        };
        let cap = Arc::new(Cap {
            body: Bytes::from_static(b"cap"),
            serial,
            refresh_at,
            usable_until: now + Duration::from_secs(60),
            retry_at: Mutex::new(None),
        });
        c.inner.caps.held.lock().unwrap().insert(key, cap.clone());
        cap
    }

    #[tokio::test]
    async fn a_usable_capability_serves_while_the_next_cannot_be_fetched() {
        let c = client();
        // Fresh: served without a fetch.
        hold(&c, (1, 0), 7, 30);
        assert_eq!(c.capability(1, 0, None).await.unwrap().unwrap().serial, 7);
        // Past half its life, and the manager unreachable: still served, and not asked
        // for again before a second has passed.
        let stale = hold(&c, (2, 0), 8, -1);
        assert_eq!(c.capability(2, 0, None).await.unwrap().unwrap().serial, 8);
        assert!(stale.retry_at.lock().unwrap().is_some());
        assert!(!stale.stale(Instant::now()));
        // Refused by a node: never presented again; with no other to fetch, an error.
        hold(&c, (3, 0), 9, 30);
        assert!(c.capability(3, 0, Some(9)).await.is_err());
        // None held: an error, not a wait.
        assert!(c.capability(4, 0, None).await.is_err());
        // An insecure client presents none.
        assert!(
            Client::offline()
                .capability(1, 0, None)
                .await
                .unwrap()
                .is_none()
        );
    }
}

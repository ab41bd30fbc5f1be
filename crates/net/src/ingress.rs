//! Ingress limits of a server: how many connections it holds (in all, per peer address,
//! and still in their TLS handshake), how long a connection may stay silent or take to send
//! one frame, and how many bytes of requests and answers its connections may hold at once.
//!
//! Owns the counts ([`Ingress`], one per listening port) and the byte budget ([`Budget`]).
//! A connection past a cap is closed at once, before its handshake (a stranger's
//! connection costs an accept and a close); the caller counts it. Must never: block the
//! accept loop, or let the counts drift (every admission is released by dropping its
//! guard, whatever ends the connection).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits, from a process's configuration (`[ingress]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngressLimits {
    /// Connections held at once, every peer together; more are closed at once.
    pub max_connections: usize,
    /// Connections from one IP address at once.
    pub max_connections_per_address: usize,
    /// Connections still in their TLS handshake at once (a stranger's connection never
    /// gets past it, and is dropped at its deadline).
    pub max_handshakes: usize,
    /// Connections from one IP address still in their handshake at once.
    pub max_handshakes_per_address: usize,
    /// The process's memory budget: requests being read or served and answers not yet
    /// sent take at most three quarters of it, every connection together (a connection
    /// waits for its share); the rest is left to everything else the process holds.
    pub memory_bytes: u64,
    /// A connection that begins no frame for this long is closed (clients reconnect); at
    /// least 300.
    pub idle_secs: u64,
    /// A frame begun must have arrived whole within this.
    pub frame_secs: u64,
}

impl Default for IngressLimits {
    fn default() -> Self {
        IngressLimits {
            max_connections: 16_384,
            max_connections_per_address: 4_096,
            max_handshakes: 1_024,
            max_handshakes_per_address: 128,
            memory_bytes: 1 << 30,
            idle_secs: 900,
            frame_secs: 60,
        }
    }
}

impl IngressLimits {
    /// How long a connection may stay silent between frames: at least five minutes, as
    /// a quiet connection may be waiting on long work it asked for (a chunk's backup).
    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.idle_secs.max(300))
    }

    /// How long one frame may take to arrive once begun.
    pub fn frame(&self) -> Duration {
        Duration::from_secs(self.frame_secs.max(1))
    }
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crowded {
    /// [`IngressLimits::max_connections`] reached.
    Connections,
    /// [`IngressLimits::max_connections_per_address`] reached for its address.
    PerAddress,
    /// [`IngressLimits::max_handshakes`] reached.
    Handshakes,
    /// [`IngressLimits::max_handshakes_per_address`] reached for its address.
    HandshakesPerAddress,
}

impl std::fmt::Display for Crowded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Crowded::Connections => "too many connections",
            Crowded::PerAddress => "too many connections from this address",
            Crowded::Handshakes => "too many TLS handshakes under way",
            Crowded::HandshakesPerAddress => "too many TLS handshakes from this address",
        })
    }
}

/// The connections of one listening port.
pub struct Ingress {
    limits: IngressLimits,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    connections: usize,
    handshakes: usize,
    /// Per address: (connections, of which in their handshake). Entries at zero are removed.
    per_address: HashMap<IpAddr, (usize, usize)>,
}

impl Ingress {
    /// The counts of a port under `limits`.
    pub fn new(limits: IngressLimits) -> Arc<Ingress> {
        Arc::new(Ingress {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &IngressLimits {
        &self.limits
    }

    /// Admits a connection just accepted from `peer`, in its handshake until
    /// [`Admitted::handshake_done`]; or says why not (close it, count it).
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Admitted, Crowded> {
        let l = &self.limits;
        let ip = peer.ip();
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (conns, shaking) = c.per_address.get(&ip).copied().unwrap_or((0, 0));
        if c.connections >= l.max_connections {
            return Err(Crowded::Connections);
        }
        if conns >= l.max_connections_per_address {
            return Err(Crowded::PerAddress);
        }
        if c.handshakes >= l.max_handshakes {
            return Err(Crowded::Handshakes);
        }
        if shaking >= l.max_handshakes_per_address {
            return Err(Crowded::HandshakesPerAddress);
        }
        c.connections += 1;
        c.handshakes += 1;
        c.per_address.insert(ip, (conns + 1, shaking + 1));
        Ok(Admitted {
            ingress: self.clone(),
            ip,
            shaking: true,
        })
    }

    /// Connections held now, and of them in their handshake.
    pub fn held(&self) -> (usize, usize) {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        (c.connections, c.handshakes)
    }

    fn release(&self, ip: IpAddr, shaking: bool) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.connections = c.connections.saturating_sub(1);
        if shaking {
            c.handshakes = c.handshakes.saturating_sub(1);
        }
        if let Some(e) = c.per_address.get_mut(&ip) {
            e.0 = e.0.saturating_sub(1);
            if shaking {
                e.1 = e.1.saturating_sub(1);
            }
            if e.0 == 0 {
                c.per_address.remove(&ip);
            }
        }
    }

    fn shaken(&self, ip: IpAddr) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.handshakes = c.handshakes.saturating_sub(1);
        if let Some(e) = c.per_address.get_mut(&ip) {
            e.1 = e.1.saturating_sub(1);
        }
    }
}

/// A connection counted against its port's caps until dropped.
pub struct Admitted {
    ingress: Arc<Ingress>,
    ip: IpAddr,
    shaking: bool,
}

impl Admitted {
    /// The handshake finished: the connection no longer counts as one in its handshake.
    pub fn handshake_done(&mut self) {
        if std::mem::take(&mut self.shaking) {
            self.ingress.shaken(self.ip);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.ingress.release(self.ip, self.shaking);
    }
}

/// Bytes the connections of a process may hold at once, in 4 KiB units: what a request
/// takes is given back when its answer has been written. Cheap to clone.
#[derive(Clone)]
pub struct Budget {
    units: Arc<Semaphore>,
    total: u32,
}

/// One unit of a [`Budget`].
pub const BUDGET_UNIT: u64 = 4096;

impl Budget {
    /// A budget of `bytes` (at least one 4 KiB unit per `max_one` bytes a single request
    /// may need, so that the largest request can always be served).
    pub fn new(bytes: u64, max_one: u64) -> Budget {
        let want = bytes.max(max_one) / BUDGET_UNIT;
        let total = u32::try_from(want).unwrap_or(u32::MAX).max(1);
        Budget {
            units: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// The units `bytes` take (at least one: every request and answer holds something).
    pub fn units(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(BUDGET_UNIT))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total)
    }

    /// Waits for `bytes` of the budget.
    pub async fn take(&self, bytes: u64) -> OwnedSemaphorePermit {
        let n = self.units(bytes);
        self.units
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("a budget's semaphore is never closed")
    }

    /// Bytes free now.
    pub fn free_bytes(&self) -> u64 {
        self.units.available_permits() as u64 * BUDGET_UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ip: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, ip], 1000))
    }

    #[test]
    fn caps_hold_per_address_and_in_all_and_free_up_when_connections_end() {
        let ing = Ingress::new(IngressLimits {
            max_connections: 5,
            max_connections_per_address: 3,
            max_handshakes: 3,
            max_handshakes_per_address: 2,
            ..IngressLimits::default()
        });
        let (a, b, c, d) = (at(2), at(3), at(4), at(5));
        let mut a1 = ing.admit(a).unwrap();
        let a2 = ing.admit(a).unwrap();
        assert_eq!(ing.admit(a).err(), Some(Crowded::HandshakesPerAddress));
        let mut b1 = ing.admit(b).unwrap();
        assert_eq!(ing.admit(c).err(), Some(Crowded::Handshakes));
        a1.handshake_done();
        b1.handshake_done();
        let a3 = ing.admit(a).unwrap();
        assert_eq!(ing.admit(a).err(), Some(Crowded::PerAddress));
        let c1 = ing.admit(c).unwrap();
        assert_eq!(ing.admit(d).err(), Some(Crowded::Connections));
        assert_eq!(ing.held(), (5, 3));
        drop((a2, a3, c1));
        assert_eq!(ing.held(), (2, 0));
        drop(ing.admit(a).unwrap());
        drop((a1, b1));
        assert_eq!(ing.held(), (0, 0));
        assert!(ing.counts.lock().unwrap().per_address.is_empty());
    }

    #[tokio::test]
    async fn a_budget_serves_the_largest_request_and_gives_back_what_was_taken() {
        let b = Budget::new(16 * 1024, 64 * 1024);
        assert_eq!(b.free_bytes(), 64 * 1024, "raised to the largest request");
        let big = b.take(64 * 1024).await;
        assert_eq!(b.free_bytes(), 0);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.take(1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(big);
        let one = waiting.await.unwrap();
        assert_eq!(b.free_bytes(), 60 * 1024);
        drop(one);
        assert_eq!(b.units(0), 1);
        assert_eq!(b.units(u64::MAX), 16, "never more than the whole");
    }
}

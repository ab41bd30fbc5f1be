//! The recovery throttle: paces the bytes copies bring into this node.
//! Owns the node's one pacing clock; must never let idle time bank more than a short burst.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Paces recovery traffic: at most `rate` bytes a second into this node, so rebuilding
/// replicas leaves the disk to client I/O.
pub(crate) struct Throttle {
    bytes_per_sec: f64,
    next: Mutex<Instant>,
    /// How much idle time may be banked as a burst.
    burst: Duration,
}

impl Throttle {
    pub(crate) fn new(bytes_per_sec: u64) -> Throttle {
        Throttle::with_burst(bytes_per_sec, Duration::from_millis(250))
    }

    /// A throttle banking at most `burst` of idle time (the scrubber's: a short one, so
    /// that its reads come as a steady trickle, never as a burst a client's I/O queues
    /// behind).
    pub(crate) fn with_burst(bytes_per_sec: u64, burst: Duration) -> Throttle {
        Throttle {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            next: Mutex::new(Instant::now()),
            burst,
        }
    }

    pub(crate) async fn take(&self, bytes: u64) {
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            // Idle time does not bank more than `burst` (a quarter second for recovery).
            // (`checked_sub`: near boot the monotonic clock may be younger than that.)
            let floor = now.checked_sub(self.burst).unwrap_or(now);
            let start = (*next).max(floor);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
            next.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

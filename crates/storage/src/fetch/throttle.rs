//! The recovery throttle: paces the bytes copies bring into this node.
//! Owns the node's one pacing clock; must never let idle time bank more than a short burst.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Paces recovery traffic: at most `rate` bytes a second into this node, so rebuilding
/// replicas leaves the disk to client I/O.
pub(crate) struct Throttle {
    bytes_per_sec: f64,
    next: Mutex<Instant>,
}

impl Throttle {
    pub(crate) fn new(bytes_per_sec: u64) -> Throttle {
        Throttle {
            bytes_per_sec: bytes_per_sec.max(1) as f64,
            next: Mutex::new(Instant::now()),
        }
    }

    pub(super) async fn take(&self, bytes: u64) {
        let wait = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            // Idle time does not bank more than a quarter second of burst.
            let start = (*next).max(now - Duration::from_millis(250));
            *next = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec);
            next.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

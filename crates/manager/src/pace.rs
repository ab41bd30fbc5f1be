//! Pacing the background copies (flatten pieces, reclaim merges) to `flatten_bytes_per_sec`
//! together: one [`Pace`] shared by every copying task of the leading manager.
//!
//! Must never give credit for idle time (a burst after a quiet hour would copy unpaced).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Copies start no faster than the rate allows: a copy of `n` bytes makes the next one
/// wait `n / rate` after its own start.
#[derive(Debug)]
pub struct Pace {
    rate: u64,
    next: Mutex<Option<Instant>>,
}

impl Pace {
    pub fn new(rate: u64) -> Self {
        Pace {
            rate: rate.max(1),
            next: Mutex::new(None),
        }
    }

    /// Waits for the turn of a copy of `n` bytes.
    pub async fn take(&self, n: u64) {
        let at = self.reserve(n, Instant::now());
        tokio::time::sleep_until(at.into()).await;
    }

    /// When a copy of `n` bytes asked for at `now` may start; the next starts `n / rate`
    /// later.
    fn reserve(&self, n: u64, now: Instant) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let start = next.map_or(now, |t| t.max(now));
        *next = Some(start + Duration::from_secs_f64(n as f64 / self.rate as f64));
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 32 MiB at 64 MiB/s: the next copy waits half a second after the first started;
    /// after a long quiet time the next starts at once, with no credit saved up.
    #[test]
    fn the_pace_spreads_bytes_over_time_without_credit_for_idle_time() {
        let p = Pace::new(64 << 20);
        let t = Instant::now();
        assert_eq!(p.reserve(32 << 20, t), t);
        assert_eq!(p.reserve(32 << 20, t), t + Duration::from_millis(500));
        assert_eq!(p.reserve(0, t), t + Duration::from_secs(1));
        let later = t + Duration::from_secs(60);
        assert_eq!(p.reserve(32 << 20, later), later);
        assert_eq!(
            p.reserve(1, later + Duration::from_millis(100)),
            later + Duration::from_millis(500)
        );
    }
}

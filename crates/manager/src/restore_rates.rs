//! What the pre-warm measured of each restore's fill on this leader ([`Rates`]): bytes
//! filled, the ETA at the rate seen, a lasting error, published in the service's restore
//! meters for `volume info`. Memory only: a new leader starts counting afresh.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::service::{RestoreMeter, RestoreMeters};

/// What this leader saw of each restore's fill, published in the service's restore meters
/// (for `volume info`).
#[derive(Debug, Clone, Default)]
pub struct Rates {
    seen: Arc<Mutex<HashMap<u64, Rate>>>,
    meters: RestoreMeters,
}

#[derive(Debug, Clone)]
struct Rate {
    started: Instant,
    hydrated_bytes: u64,
    /// Chunks filled by this leader, and left to fill.
    chunks_done: u64,
    chunks_left: u64,
    /// A chunk's error once it has failed for `GIVE_UP` (cleared by the next fill).
    error: Option<String>,
}

impl Rate {
    /// Bytes filled, and the seconds left at the rate seen (`None`: not known yet).
    fn meter(&self) -> RestoreMeter {
        let secs = self.started.elapsed().as_secs_f64();
        let eta_secs = (self.chunks_done > 0 && secs > 0.0).then(|| {
            let per_sec = self.chunks_done as f64 / secs;
            (self.chunks_left as f64 / per_sec).ceil() as u64
        });
        RestoreMeter {
            hydrated_bytes: self.hydrated_bytes,
            eta_secs,
            error: self.error.clone(),
        }
    }
}

impl Rates {
    pub fn new(meters: RestoreMeters) -> Rates {
        Rates {
            seen: Arc::default(),
            meters,
        }
    }

    fn update(&self, volume_id: u64, f: impl FnOnce(&mut Rate)) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let r = seen.entry(volume_id).or_insert(Rate {
            started: Instant::now(),
            hydrated_bytes: 0,
            chunks_done: 0,
            chunks_left: 0,
            error: None,
        });
        f(r);
        let meter = r.meter();
        drop(seen);
        let mut meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        meters.insert(volume_id, meter);
    }

    pub(super) fn plan(&self, volume_id: u64, chunks_left: u64) {
        self.update(volume_id, |r| r.chunks_left = chunks_left);
    }

    pub(super) fn filled(&self, volume_id: u64, bytes: u64) {
        self.update(volume_id, |r| {
            r.hydrated_bytes = r.hydrated_bytes.saturating_add(bytes);
            r.chunks_done += 1;
            r.chunks_left = r.chunks_left.saturating_sub(1);
            r.error = None;
        });
    }

    pub(super) fn failing(&self, volume_id: u64, error: String) {
        self.update(volume_id, |r| r.error = Some(error));
    }

    pub(super) fn keep_only(&self, planned: &BTreeSet<u64>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|id, _| planned.contains(id));
        drop(seen);
        let mut meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        meters.retain(|id, _| planned.contains(id));
    }

    pub(super) fn forget(&self, volume_id: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.remove(&volume_id);
        drop(seen);
        let mut meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        meters.remove(&volume_id);
    }
}

//! What the leading manager saw of each restore's fill, for `volume info`: bytes filled by
//! this leader and the ETA at the rate it sees. Memory only (a new leader starts over);
//! written by `restore_loop`, read by the service when it answers a volume's info.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tessera_proto::control::VolumeInfo;

/// What this leader saw of each restore's fill: for `volume info`.
#[derive(Debug, Clone, Default)]
pub struct Rates(Arc<Mutex<HashMap<u64, Rate>>>);

#[derive(Debug, Clone, Copy)]
struct Rate {
    started: Instant,
    hydrated_bytes: u64,
    /// Chunks filled by this leader, and left to fill.
    chunks_done: u64,
    chunks_left: u64,
}

impl Rates {
    /// Bytes filled by this leader, and the seconds left at the rate it sees (`None`: not
    /// known yet).
    pub fn progress(&self, volume_id: u64) -> Option<(u64, Option<u64>)> {
        let r = *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&volume_id)?;
        let secs = r.started.elapsed().as_secs_f64();
        let eta = (r.chunks_done > 0 && secs > 0.0).then(|| {
            let per_sec = r.chunks_done as f64 / secs;
            (r.chunks_left as f64 / per_sec).ceil() as u64
        });
        Some((r.hydrated_bytes, eta))
    }

    /// Adds what this leader saw to a restoring volume's `restore` (bytes filled, ETA).
    pub fn fill(&self, v: &mut VolumeInfo) {
        if let (Some(r), Some((bytes, eta))) = (v.restore.as_mut(), self.progress(v.id)) {
            r.hydrated_bytes = bytes;
            r.eta_secs = eta;
        }
    }

    pub(crate) fn plan(&self, volume_id: u64, chunks_left: u64) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(volume_id)
            .or_insert(Rate {
                started: Instant::now(),
                hydrated_bytes: 0,
                chunks_done: 0,
                chunks_left,
            })
            .chunks_left = chunks_left;
    }

    pub(crate) fn filled(&self, volume_id: u64, bytes: u64) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = m.get_mut(&volume_id) {
            r.hydrated_bytes = r.hydrated_bytes.saturating_add(bytes);
            r.chunks_done += 1;
            r.chunks_left = r.chunks_left.saturating_sub(1);
        }
    }

    pub(crate) fn forget(&self, volume_id: u64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&volume_id);
    }
}

//! The scrubber's persisted state, `<data_dir>/scrub.json`: the pass, its cursor, the
//! paused flag and the counters ([`ScrubStats`]), so that a restarted node resumes its pass
//! where it was and keeps its totals.
//!
//! Owns the file: written atomically (and synced), at most every [`SAVE_EVERY`] unless the
//! caller forces it (a pass's start or end, a pause). Must never fail a start over it: a
//! missing or unreadable file starts afresh (logged).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_proto::control::ScrubStats;

/// The least time between two writes of the file, but for forced ones.
pub(crate) const SAVE_EVERY: Duration = Duration::from_secs(5);

/// The file's name in the data directory.
pub(crate) const FILE: &str = "scrub.json";

/// The persisted state and when it was last written.
pub(crate) struct Cursor {
    path: PathBuf,
    saved: Option<Instant>,
    /// Numbers the bodies taken (see [`Save`]).
    taken: u64,
    /// The writer: held while a body is written (one at a time), the number of the last
    /// body written.
    written: Arc<Mutex<u64>>,
}

/// A body to write, taken under the scrubber's lock by [`Cursor::take`] and written
/// outside it ([`Save::write`], blocking: three fsyncs). Writes are one at a time, and a
/// body older than one written already is dropped, so the file only ever moves forward.
#[must_use = "a save does nothing until written"]
pub(crate) struct Save {
    path: PathBuf,
    body: Vec<u8>,
    seq: u64,
    written: Arc<Mutex<u64>>,
}

impl Save {
    /// Writes the body (blocking) unless a newer one is written already. A failure is
    /// logged (the next save tries again): losing the cursor costs a rescan, nothing else.
    pub(crate) fn write(self) {
        let mut last = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if *last >= self.seq {
            return;
        }
        match tessera_engine::fsutil::write_file_atomic(&self.path, &self.body) {
            Ok(()) => *last = self.seq,
            Err(e) => tracing::warn!(path = %self.path.display(), "saving the scrub cursor: {e}"),
        }
    }

    /// Writes the body on a blocking thread, and waits for it.
    pub(crate) async fn write_off_runtime(self) {
        if let Err(e) = tokio::task::spawn_blocking(move || self.write()).await {
            tracing::warn!("saving the scrub cursor: {e}");
        }
    }
}

impl Cursor {
    /// The state kept in `data_dir` (fresh if there is none or it cannot be read), and the
    /// file it lives in.
    pub(crate) fn load(data_dir: &Path) -> (Cursor, ScrubStats) {
        let path = data_dir.join(FILE);
        let stats = match std::fs::read(&path) {
            Ok(b) => match serde_json::from_slice::<ScrubStats>(&b) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(
                        path = %path.display(),
                        "scrub cursor unreadable ({e}); starting afresh"
                    );
                    ScrubStats::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "no scrub cursor; starting afresh");
                ScrubStats::default()
            }
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    "scrub cursor unreadable ({e}); starting afresh"
                );
                ScrubStats::default()
            }
        };
        let cursor = Cursor {
            path,
            saved: None,
            taken: 0,
            written: Arc::new(Mutex::new(0)),
        };
        (cursor, stats)
    }

    /// The body to write for `stats` if `force`, or if the last one was taken
    /// [`SAVE_EVERY`] ago; cheap (no I/O): called under the scrubber's lock, the body
    /// written outside it.
    pub(crate) fn take(&mut self, stats: &ScrubStats, force: bool) -> Option<Save> {
        if !force && self.saved.is_some_and(|t| t.elapsed() < SAVE_EVERY) {
            return None;
        }
        let body = match serde_json::to_vec_pretty(stats) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("encoding the scrub cursor: {e}");
                return None;
            }
        };
        self.saved = Some(Instant::now());
        self.taken += 1;
        Some(Save {
            path: self.path.clone(),
            body,
            seq: self.taken,
            written: self.written.clone(),
        })
    }

    /// Writes `stats` now if `force` or due (see [`Cursor::take`]), blocking the caller.
    pub(crate) fn save(&mut self, stats: &ScrubStats, force: bool) {
        if let Some(s) = self.take(stats, force) {
            s.write();
        }
    }
}

#[cfg(test)]
mod tests {
    use tessera_proto::control::ScrubCursor;

    use super::*;

    #[test]
    fn the_cursor_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut c, fresh) = Cursor::load(dir.path());
        assert_eq!(fresh, ScrubStats::default());
        let stats = ScrubStats {
            paused: true,
            pass: 4,
            pass_started_ms: 1_000,
            last_pass_done_ms: 900,
            cursor: ScrubCursor {
                group: 3,
                volume: 2,
                chunk: 7,
                block: 2048,
            },
            bytes_checked: 1 << 30,
            blocks_checked: 1 << 18,
            regions: 12,
            bad_blocks: 1,
            divergent_blocks: 2,
            repaired: 3,
            unrepairable: 4,
            ..ScrubStats::default()
        };
        c.save(&stats, true);
        let (_, back) = Cursor::load(dir.path());
        assert_eq!(back, stats);
    }

    #[test]
    fn saves_are_spaced_unless_forced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut c, _) = Cursor::load(dir.path());
        c.save(
            &ScrubStats {
                pass: 1,
                ..Default::default()
            },
            false,
        );
        c.save(
            &ScrubStats {
                pass: 2,
                ..Default::default()
            },
            false,
        );
        assert_eq!(Cursor::load(dir.path()).1.pass, 1);
        c.save(
            &ScrubStats {
                pass: 3,
                ..Default::default()
            },
            true,
        );
        assert_eq!(Cursor::load(dir.path()).1.pass, 3);
    }

    #[test]
    fn a_body_taken_earlier_never_overwrites_a_later_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut c, _) = Cursor::load(dir.path());
        let stats = |pass| ScrubStats {
            pass,
            ..Default::default()
        };
        let first = c.take(&stats(1), true).expect("forced");
        let second = c.take(&stats(2), true).expect("forced");
        // Taken under the lock, but written outside it in the other order.
        second.write();
        first.write();
        assert_eq!(Cursor::load(dir.path()).1.pass, 2);
        // Spaced like saves; nothing written until a body is.
        assert!(c.take(&stats(3), false).is_none());
        assert_eq!(Cursor::load(dir.path()).1.pass, 2);
    }

    #[test]
    fn a_corrupt_cursor_starts_afresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), b"{\"pass\": 3, \"cursor\": ").expect("write");
        let (mut c, stats) = Cursor::load(dir.path());
        assert_eq!(stats, ScrubStats::default());
        // And the next save replaces it.
        c.save(
            &ScrubStats {
                pass: 1,
                ..Default::default()
            },
            true,
        );
        assert_eq!(Cursor::load(dir.path()).1.pass, 1);
    }
}

//! The storage node's scrubber: finds blocks that rotted on disk (fail their checksum) or
//! replicas that silently diverged, in the groups this node leads, and repairs them through
//! the group's log from the majority of replicas.
//!
//! Owns: the node's [`Scrubber`] (configuration, pacing, counters, the persisted cursor,
//! start/pause), the passes over the groups it leads (`pass`), one region's scrub step as
//! its group's leader (`region`: mark, scans, comparison, repair), a replica's scan of a
//! region for a leader (`replica`), repairing a leader's read that met a corrupt block
//! (`read_repair`).
//!
//! Must never: change a block itself (every repair is a `CmdOp::Repair` entry through the
//! log, which rewrites only blocks unchanged since the mark); take a `Bad` block, or a
//! state fewer than a majority of the voters hold, for the truth; compare a block some
//! replica changed since the mark; panic on a peer's answer or a file it reads.
//!
//! - `compare`: the pure decision for a region's scans (truths, fixes, unrepairable).
//! - `plan`: the pure order and timing of passes.
//! - `cursor`: `<data_dir>/scrub.json`.
//! - `idle`: the thread paced scans hash on, at idle CPU and I/O priority.
//! - `repair`: the data of the fixes, read and verified, proposed as Repair entries.
//! - `metrics`: `tessera_scrub_*`.

mod compare;
mod cursor;
mod idle;
mod metrics;
mod pass;
mod plan;
mod read_repair;
mod region;
mod repair;
mod replica;

#[cfg(test)]
mod node_tests;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_proto::control::{ControlError, ScrubAction, ScrubStats};
use tessera_raft::scrub::Watches;
use tokio::sync::{Notify, Semaphore};

use crate::fetch::Throttle;
use crate::transport::TcpTransport;

pub(crate) use pass::run;
pub(crate) use read_repair::repair_read;
pub(crate) use replica::scan_region;

/// Idle time the scrub pace banks: a few milliseconds, so that scans read a steady trickle
/// (measured: 4 MiB read at once per region, after the pause between regions, raised the
/// clients' write p99 by a third at 16 MiB/s).
const SCAN_BURST: std::time::Duration = std::time::Duration::from_millis(10);

/// Blocks a scan reads at once (256 KiB), each piece paced on its own.
pub(crate) const SCAN_SLICE: u64 = 64;

/// `[scrub]` of `storage.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScrubConfig {
    /// Bytes a second this node's scrub scans read (its passes, and the scans leaders of
    /// the groups it follows ask of it); 0 turns scrubbing off (passes do not run; scans
    /// other leaders ask for are answered unpaced). Default 4 MiB/s (2.4 TiB of replicas a
    /// week): measured with three nodes on one 2-core machine (`bench/scrub.sh`), client
    /// QD1 write p99 +9 % and read p99 +12 % while every node scrubs at it with scans on
    /// the blocking pool; at most +4 % and +1.3 % with their hashing on the idle thread (`idle`).
    pub bytes_per_sec: u64,
    /// Seconds from the start of one pass to the start of the next.
    pub period_secs: u64,
}

impl Default for ScrubConfig {
    fn default() -> ScrubConfig {
        ScrubConfig {
            bytes_per_sec: 4 << 20,
            period_secs: 7 * 24 * 3600,
        }
    }
}

/// The node's scrubber, shared by the pass task, the scan handler and read repairs.
pub(crate) struct Scrubber {
    cfg: ScrubConfig,
    /// Paces every scan this node reads (`None`: scrubbing is off, scans run unpaced).
    throttle: Option<Throttle>,
    state: Mutex<State>,
    /// Wakes the pass task (started, paused).
    wake: Notify,
    /// Where peer nodes listen (learned from group membership).
    peers: Arc<TcpTransport>,
    /// Read repairs running now (see `read_repair`).
    flights: read_repair::Flights,
    /// Slots of the scans this node serves at once (see `replica`).
    scans: Arc<Semaphore>,
    /// Where paced scans hash what they read (see `idle`).
    idle: idle::IdleThread,
}

struct State {
    stats: ScrubStats,
    cursor: cursor::Cursor,
    /// An operator asked for a pass now.
    start_now: bool,
}

impl Scrubber {
    /// The scrubber of the node whose data directory is `data_dir` (its cursor loaded).
    pub(crate) fn new(
        cfg: ScrubConfig,
        data_dir: &Path,
        peers: Arc<TcpTransport>,
    ) -> Arc<Scrubber> {
        let (cursor, mut stats) = cursor::Cursor::load(data_dir);
        stats.running = false;
        stats.repair_blocks_applied = 0;
        if stats.behind {
            metrics::BEHIND.add(1);
        }
        Arc::new(Scrubber {
            throttle: (cfg.bytes_per_sec > 0)
                .then(|| Throttle::with_burst(cfg.bytes_per_sec, SCAN_BURST)),
            cfg,
            state: Mutex::new(State {
                stats,
                cursor,
                start_now: false,
            }),
            wake: Notify::new(),
            peers,
            flights: Default::default(),
            scans: Arc::new(Semaphore::new(replica::MAX_SCANS)),
            idle: idle::IdleThread::default(),
        })
    }

    /// A scrubber for tests of other modules: off, knowing no peers.
    #[cfg(test)]
    pub(crate) fn detached(data_dir: &Path) -> Arc<Scrubber> {
        let cfg = ScrubConfig {
            bytes_per_sec: 0,
            ..ScrubConfig::default()
        };
        let peers = TcpTransport::new(
            tokio::runtime::Handle::current(),
            tessera_net::Security::insecure(),
        );
        Scrubber::new(cfg, data_dir, Arc::new(peers))
    }

    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The node's scrubbing now, as heartbeats and `tessera scrub status` report it.
    pub(crate) fn stats(&self, watches: &Watches) -> ScrubStats {
        let mut s = self.with(|st| st.stats.clone());
        s.bytes_per_sec = self.cfg.bytes_per_sec;
        s.period_secs = self.cfg.period_secs;
        s.repair_blocks_applied = watches.repair_blocks_applied();
        s
    }

    /// An operator's start or pause (see [`ScrubAction`]). A start where scrubbing is off
    /// is refused: no pass would run.
    pub(crate) fn act(&self, action: ScrubAction) -> Result<(), ControlError> {
        if action == ScrubAction::Start && self.cfg.bytes_per_sec == 0 {
            return Err(ControlError::Invalid(
                "scrubbing is off on this node (scrub.bytes_per_sec = 0)".into(),
            ));
        }
        self.with(|st| {
            match action {
                ScrubAction::Pause => st.stats.paused = true,
                // A pass running already just goes on.
                ScrubAction::Start => {
                    st.stats.paused = false;
                    st.start_now = !st.stats.running;
                }
            }
            st.cursor.save(&st.stats, true);
        });
        tracing::info!(
            ?action,
            "scrub {}",
            match action {
                ScrubAction::Pause => "paused",
                ScrubAction::Start => "started",
            }
        );
        self.wake.notify_one();
        Ok(())
    }

    /// Waits until `bytes` more may be read (at once when scrubbing is off).
    async fn pace(&self, bytes: u64) {
        if let Some(t) = &self.throttle {
            t.take(bytes).await;
        }
    }

    /// The data-plane address of node `node`, if known.
    fn addr_of(&self, node: u64) -> Option<String> {
        self.peers.addr_of(node)
    }

    /// Counts blocks this node read and verified.
    fn checked(&self, blocks: u64) {
        metrics::BLOCKS_CHECKED.add(blocks);
        metrics::BYTES_CHECKED.add(blocks * 4096);
        self.with(|st| {
            st.stats.blocks_checked += blocks;
            st.stats.bytes_checked += blocks * 4096;
        });
    }

    /// The period of a pass.
    fn period(&self) -> Duration {
        Duration::from_secs(self.cfg.period_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scrub_section_defaults_and_refuses_unknown_keys() {
        let c: ScrubConfig = serde_json::from_str(r#"{"bytes_per_sec": 0}"#).expect("parse");
        assert_eq!(c.bytes_per_sec, 0);
        assert_eq!(c.period_secs, 7 * 24 * 3600);
        assert_eq!(ScrubConfig::default().bytes_per_sec, 4 << 20);
        assert!(serde_json::from_str::<ScrubConfig>(r#"{"rate": 1}"#).is_err());
    }

    #[tokio::test]
    async fn a_start_where_scrubbing_is_off_says_so() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let off = Scrubber::detached(tmp.path());
        match off.act(ScrubAction::Start) {
            Err(ControlError::Invalid(m)) => {
                assert!(m.contains("scrub.bytes_per_sec = 0"), "{m}")
            }
            other => panic!("start: {other:?}"),
        }
        assert!(off.act(ScrubAction::Pause).is_ok());
    }
}

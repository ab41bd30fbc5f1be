//! Reads never fail for rot: a leader's read answered `Corrupt` runs the scrub step over
//! the [`SCRUB_REGION_BLOCKS`]-aligned regions its blocks lie in (unpaced: a client waits),
//! then is submitted once more. Reads inside the same region meanwhile share one repair
//! (single flight).
//!
//! Bounded against a storm of reads of rotten blocks: at most [`PER_GROUP`] repair steps
//! run per group at once (others wait for a slot); past [`MAX_WAITING`] reads waiting
//! node-wide, a read is answered `Corrupt` at once; a block found unrepairable answers the
//! reads touching it `Corrupt` at once for [`UNREPAIRABLE_FOR`]; the warning is logged at
//! most once per [`WARN_EVERY`].
//!
//! Must never answer a read with bytes that did not come through the engine's verified
//! read; a block still bad after the repair (no majority) fails only the reads touching it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera_proto::control::SCRUB_REGION_BLOCKS;
use tessera_proto::data::{Reply, Request};
use tokio::sync::{OnceCell, Semaphore, oneshot};

use super::plan::{Region, blocks_of, now_ms};
use crate::server::Shared;

/// Repair steps one group runs at once for reads.
pub(crate) const PER_GROUP: usize = 4;

/// Reads waiting for a repair node-wide past which a read is answered `Corrupt` at once.
pub(crate) const MAX_WAITING: usize = 64;

/// How long blocks found unrepairable answer reads `Corrupt` without a new repair.
pub(crate) const UNREPAIRABLE_FOR: Duration = Duration::from_secs(30);

/// The least time between two read-repair warnings.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// `(group, volume, chunk, first block)` of a region (its first block a multiple of
/// [`SCRUB_REGION_BLOCKS`]).
type Key = (u64, u64, u64, u64);

/// Blocks found unrepairable, `(group, volume, chunk)` → `(block, until)`.
type Unrepairable = HashMap<(u64, u64, u64), Vec<(u64, Instant)>>;

/// The node's read repairs.
#[derive(Default)]
pub(crate) struct Flights {
    /// Repairs running now, by region; a read inside it waits for the running one.
    running: Mutex<HashMap<Key, Arc<OnceCell<()>>>>,
    /// Each group's repair slots.
    slots: Mutex<HashMap<u64, Arc<Semaphore>>>,
    /// Reads waiting for a repair now.
    waiting: AtomicUsize,
    /// Blocks found unrepairable lately.
    unrepairable: Mutex<Unrepairable>,
    /// When a warning was last logged (Unix ms), and warnings left out since.
    warned_ms: AtomicU64,
    quiet: AtomicU64,
}

impl Flights {
    /// Whether a block of `first..first + count` of the chunk was found unrepairable less
    /// than [`UNREPAIRABLE_FOR`] ago (expired entries are dropped).
    fn known_unrepairable(&self, chunk: (u64, u64, u64), first: u64, count: u64) -> bool {
        let mut u = self.unrepairable.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let Some(blocks) = u.get_mut(&chunk) else {
            return false;
        };
        blocks.retain(|&(_, until)| until > now);
        let hit = blocks
            .iter()
            .any(|&(b, _)| b >= first && b < first.saturating_add(count));
        if blocks.is_empty() {
            u.remove(&chunk);
        }
        hit
    }

    /// Remembers blocks of the chunk found unrepairable.
    fn remember_unrepairable(&self, chunk: (u64, u64, u64), blocks: impl Iterator<Item = u64>) {
        let until = Instant::now() + UNREPAIRABLE_FOR;
        let mut u = self.unrepairable.lock().unwrap_or_else(|e| e.into_inner());
        let e = u.entry(chunk).or_default();
        for b in blocks {
            match e.iter_mut().find(|(x, _)| *x == b) {
                Some(x) => x.1 = until,
                None => e.push((b, until)),
            }
        }
    }

    /// The group's repair slots.
    fn slots(&self, group: u64) -> Arc<Semaphore> {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        s.entry(group)
            .or_insert_with(|| Arc::new(Semaphore::new(PER_GROUP)))
            .clone()
    }

    /// Whether to log a warning now (at most one per [`WARN_EVERY`]), and how many were
    /// left out since the last one.
    fn may_warn(&self) -> Option<u64> {
        let now = now_ms();
        let last = self.warned_ms.load(Ordering::Relaxed);
        let every = u64::try_from(WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if now.saturating_sub(last) < every
            || self
                .warned_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            self.quiet.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.quiet.swap(0, Ordering::Relaxed))
    }
}

/// Decrements the node's waiting reads when dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The aligned regions `first..first + count` lies in: their first blocks.
pub(crate) fn regions_of(first: u64, count: u64) -> impl Iterator<Item = u64> {
    let start = first - first % SCRUB_REGION_BLOCKS;
    let end = first.saturating_add(count.max(1));
    (start..end).step_by(usize::try_from(SCRUB_REGION_BLOCKS).unwrap_or(1024))
}

/// A leader read `req` answered `Corrupt` (`msg`): repairs its blocks on a task of `rt`,
/// reads again, and answers with `send` (`Corrupt` again if a block stays bad). Called on
/// the Raft poller: returns at once.
pub(crate) fn repair_read(
    shared: Arc<Shared>,
    rt: &tokio::runtime::Handle,
    req: Request,
    msg: String,
    send: Box<dyn FnOnce(Reply) + Send>,
) {
    rt.spawn(async move {
        let (first, count) = blocks_of(u64::from(req.offset), u64::from(req.len));
        let (a, offset) = (req.addr, req.offset);
        let f = &shared.scrub.flights;
        let chunk = (a.group, a.volume, a.chunk);
        let corrupt = |why: &str| {
            Reply::Corrupt(format!(
                "{msg} (volume {} chunk {} blocks {first}..{}: {why})",
                a.volume,
                a.chunk,
                first + count
            ))
        };
        if f.known_unrepairable(chunk, first, count) {
            send(corrupt("unrepairable, no majority of replicas agrees"));
            return;
        }
        let waiting = Waiting(&f.waiting);
        if f.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING {
            drop(waiting);
            send(corrupt("too many reads waiting for repair; try again"));
            return;
        }
        if let Some(quiet) = f.may_warn() {
            tracing::warn!(
                group = a.group,
                volume = a.volume,
                chunk = a.chunk,
                first,
                count,
                quiet,
                "scrub: read met a corrupt block ({msg}); repairing"
            );
        }
        for region in regions_of(first, count) {
            repair_once(&shared, (a.group, a.volume, a.chunk, region)).await;
        }
        drop(waiting);
        let (tx, rx) = oneshot::channel();
        shared.raft.submit(
            req,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        let reply = rx
            .await
            .unwrap_or_else(|_| Reply::Unavailable("storage node is shutting down".into()));
        let reply = match reply {
            Reply::Corrupt(m) => Reply::Corrupt(format!(
                "{m} (volume {} chunk {} blocks {first}..{}: still corrupt after read repair)",
                a.volume,
                a.chunk,
                first + count
            )),
            Reply::Unfilled { data, blocks } => {
                shared.lazy.count_read(a.volume, a.chunk);
                shared
                    .lazy
                    .complete_read(&shared.raft, a, offset, data, blocks)
                    .await
            }
            other => {
                if matches!(other, Reply::Ok(_)) {
                    shared.lazy.count_read(a.volume, a.chunk);
                }
                other
            }
        };
        send(reply);
    });
}

/// The region's repair, run once for every read inside it asking at the same time.
async fn repair_once(shared: &Shared, key: Key) {
    let running = &shared.scrub.flights.running;
    let cell = {
        let mut f = running.lock().unwrap_or_else(|e| e.into_inner());
        f.entry(key).or_default().clone()
    };
    cell.get_or_init(|| repair_region(shared, key)).await;
    let mut f = running.lock().unwrap_or_else(|e| e.into_inner());
    if f.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
        f.remove(&key);
    }
}

/// The scrub step over the region, once one of its group's slots is free.
async fn repair_region(shared: &Shared, (group, volume, chunk, first): Key) {
    let slots = shared.scrub.flights.slots(group);
    let Ok(_slot) = slots.acquire().await else {
        return;
    };
    let led = super::pass::led_groups(shared).await;
    let Some((_, voters)) = led.into_iter().find(|(g, _)| *g == group) else {
        tracing::warn!(
            group,
            volume,
            chunk,
            "scrub: read repair: not the leader, or the group's membership is changing"
        );
        return;
    };
    {
        let r = Region {
            group,
            volume,
            chunk,
            first,
            count: SCRUB_REGION_BLOCKS,
        };
        match super::region::step(shared, r, &voters, false).await {
            Ok(o) => {
                tracing::info!(
                    group,
                    volume,
                    chunk,
                    first = r.first,
                    count = r.count,
                    answered = o.answered,
                    repaired = o.repaired,
                    unrepairable = o.findings.unrepairable.len(),
                    "scrub: read repair done"
                );
                shared.scrub.flights.remember_unrepairable(
                    (group, volume, chunk),
                    o.findings.unrepairable.iter().map(|u| u.block),
                );
            }
            Err(e) => tracing::warn!(
                group,
                volume,
                chunk,
                first = r.first,
                "scrub: read repair: {e}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_is_repaired_by_the_aligned_regions_it_touches() {
        let r: Vec<u64> = regions_of(1000, 100).collect();
        assert_eq!(r, [0, 1024]);
        let r: Vec<u64> = regions_of(1024, 1).collect();
        assert_eq!(r, [1024]);
        let r: Vec<u64> = regions_of(2047, 0).collect();
        assert_eq!(r, [1024]);
    }

    #[test]
    fn unrepairable_blocks_fail_only_reads_touching_them_for_a_while() {
        let f = Flights::default();
        let c = (1, 2, 3);
        assert!(!f.known_unrepairable(c, 0, 1024));
        f.remember_unrepairable(c, [7u64].into_iter());
        assert!(f.known_unrepairable(c, 7, 1));
        assert!(f.known_unrepairable(c, 0, 8));
        assert!(!f.known_unrepairable(c, 8, 100));
        assert!(!f.known_unrepairable((1, 2, 4), 7, 1));
        // Expired: forgotten.
        f.unrepairable
            .lock()
            .expect("lock")
            .get_mut(&c)
            .expect("kept")[0]
            .1 = Instant::now();
        assert!(!f.known_unrepairable(c, 7, 1));
        assert!(f.unrepairable.lock().expect("lock").is_empty());
    }

    #[test]
    fn a_groups_repairs_share_four_slots_and_warnings_are_spaced() {
        let f = Flights::default();
        let s = f.slots(9);
        assert!(Arc::ptr_eq(&s, &f.slots(9)));
        let held: Vec<_> = (0..PER_GROUP)
            .map(|_| s.clone().try_acquire_owned().expect("slot"))
            .collect();
        assert!(s.try_acquire().is_err());
        assert!(f.slots(10).try_acquire().is_ok());
        drop(held);
        assert_eq!(f.may_warn(), Some(0));
        assert_eq!(f.may_warn(), None);
        assert_eq!(f.may_warn(), None);
        f.warned_ms.store(0, Ordering::Relaxed);
        assert_eq!(f.may_warn(), Some(2));
    }
}

//! Where a pass goes next and when the next pass starts: pure functions of the cursor, the
//! groups this node leads and a group's chunks, so that the order (groups ascending, then
//! chunks `(volume, chunk)` ascending, then regions ascending) and the period are tested
//! without a node.

use std::collections::BTreeMap;
use std::time::Duration;

use tessera_proto::control::{SCRUB_REGION_BLOCKS, ScrubCursor, ScrubStats};
use tessera_proto::copy::ChunkListPage;

/// The shortest period a pass may have: a shorter one (a typo, a test value) would start a
/// pass after another without pause.
pub(crate) const MIN_PERIOD_SECS: u64 = 60;

/// The longest the pass task sleeps before looking at the clock again: a wall clock set
/// back, or a persisted pass start in the future, delays a pass by at most this much more.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(600);

/// Tries of one region (a failed step, or its group joint or with learners) before the
/// pass gives up on it.
pub(crate) const REGION_TRIES: u32 = 5;

/// `period_secs` as used, and whether it was raised to [`MIN_PERIOD_SECS`].
pub(crate) fn clamp_period(secs: u64) -> (u64, bool) {
    (secs.max(MIN_PERIOD_SECS), secs < MIN_PERIOD_SECS)
}

/// How long to sleep until `due` (Unix ms) at `now`: at most [`MAX_SLEEP`], so that a
/// clock that jumps is looked at again.
pub(crate) fn sleep_until(now: u64, due: u64) -> Duration {
    Duration::from_millis(due.saturating_sub(now)).min(MAX_SLEEP)
}

/// The wait before the `tries`-th retry (1-based) of a region: 1 s doubling, at most 30 s.
pub(crate) fn backoff(tries: u32) -> Duration {
    Duration::from_secs(1u64 << tries.saturating_sub(1).min(5)).min(Duration::from_secs(30))
}

/// What a pass does after a region could not be scrubbed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    /// Wait this long, then try the same region again.
    Retry(Duration),
    /// Give up on it (logged and counted incomplete), go on after it.
    Skip,
    /// This node no longer leads the group: go on (its leader scrubs it).
    MoveOn,
}

/// After the `tries`-th failed try (1-based) of a region of a group this node still leads
/// (`leads`) or not.
pub(crate) fn on_failure(tries: u32, leads: bool) -> Failed {
    if !leads {
        Failed::MoveOn
    } else if tries >= REGION_TRIES {
        Failed::Skip
    } else {
        Failed::Retry(backoff(tries))
    }
}

/// One region of one chunk of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    /// The group.
    pub(crate) group: u64,
    /// The volume.
    pub(crate) volume: u64,
    /// The chunk.
    pub(crate) chunk: u64,
    /// The first block.
    pub(crate) first: u64,
    /// Blocks in it (at most [`SCRUB_REGION_BLOCKS`]).
    pub(crate) count: u64,
}

/// The first group of `led` (ascending) at or after `from`.
pub(crate) fn next_group(from: u64, led: &[u64]) -> Option<u64> {
    led.iter().copied().find(|&g| g >= from)
}

/// The region of `group` at or after `at` (the cursor inside the group), given the group's
/// chunks as `(volume, chunk, blocks)` sorted ascending (`blocks`: the largest layer's).
pub(crate) fn next_region(
    group: u64,
    at: &ScrubCursor,
    chunks: &[(u64, u64, u64)],
) -> Option<Region> {
    chunks
        .iter()
        .filter(|&&(v, c, _)| (v, c) >= (at.volume, at.chunk))
        .find_map(|&(volume, chunk, blocks)| {
            let first = if (volume, chunk) == (at.volume, at.chunk) {
                at.block
            } else {
                0
            };
            (first < blocks).then(|| Region {
                group,
                volume,
                chunk,
                first,
                count: (blocks - first).min(SCRUB_REGION_BLOCKS),
            })
        })
}

/// Adds a page of a voter's listing of the group's layers, asked from `from`, to the
/// union of the voters' chunks `(volume, chunk)` → blocks (the largest layer any voter
/// lists: a chunk held by followers only is scrubbed as far as they hold it). `Err` if the
/// page lists entries before `from` (a confused peer: its listing is dropped from there).
pub(crate) fn merge_page(
    chunks: &mut BTreeMap<(u64, u64), u64>,
    page: &ChunkListPage,
    from: (u64, u64, u64),
) -> Result<(), String> {
    let before = |k: (u64, u64, u64)| {
        if page.layers {
            k < from
        } else {
            (k.0, k.1) < (from.0, from.1)
        }
    };
    if page.entries.iter().any(|e| before(e.key())) {
        return Err(format!("listed chunks before {from:?}"));
    }
    // No chunk holds more blocks than the engine's largest (a peer saying more is confused:
    // its regions past that would only fail, each after its retries).
    let most = tessera_engine::chunk::MAX_CHUNK / tessera_engine::chunk::BLOCK_SIZE;
    for e in &page.entries {
        let b = chunks.entry((e.volume, e.chunk)).or_default();
        *b = (*b).max(e.blocks.min(most));
    }
    Ok(())
}

/// The cursor after `r`.
pub(crate) fn after(r: &Region) -> ScrubCursor {
    ScrubCursor {
        group: r.group,
        volume: r.volume,
        chunk: r.chunk,
        block: r.first + r.count,
    }
}

/// Whether a pass is under way (started and not ended; a paused one still is).
pub(crate) fn in_pass(s: &ScrubStats) -> bool {
    s.pass_started_ms != 0 && s.last_pass_done_ms < s.pass_started_ms
}

/// When the next pass is due (Unix ms) once none is under way, at `now`: `period` after
/// the last one started (at once if it overran, if none ever ran, or if the last start is
/// in the future: the clock was set back, and waiting for it could take years).
pub(crate) fn next_pass_at(s: &ScrubStats, period_ms: u64, now: u64) -> u64 {
    if s.pass_started_ms == 0 || s.pass_started_ms > now {
        return 0;
    }
    s.pass_started_ms.saturating_add(period_ms)
}

/// Whether a pass started at `started_ms` has run past its period at `now_ms`.
pub(crate) fn behind(started_ms: u64, now_ms: u64, period_ms: u64) -> bool {
    started_ms != 0 && now_ms > started_ms.saturating_add(period_ms)
}

/// The blocks a byte range touches: `(first, count)`.
pub(crate) fn blocks_of(offset: u64, len: u64) -> (u64, u64) {
    const BLOCK: u64 = 4096;
    let first = offset / BLOCK;
    let end = offset.saturating_add(len).div_ceil(BLOCK).max(first + 1);
    (first, end - first)
}

/// Unix milliseconds now.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(volume: u64, chunk: u64, block: u64) -> ScrubCursor {
        ScrubCursor {
            group: 5,
            volume,
            chunk,
            block,
        }
    }

    #[test]
    fn groups_are_taken_in_ascending_order_from_the_cursor() {
        let led = [2, 5, 9];
        assert_eq!(next_group(0, &led), Some(2));
        assert_eq!(next_group(3, &led), Some(5));
        assert_eq!(next_group(5, &led), Some(5));
        assert_eq!(next_group(10, &led), None);
    }

    #[test]
    fn regions_go_by_chunk_then_block_and_resume_at_the_cursor() {
        let chunks = [(1, 0, 2500), (1, 3, 0), (2, 1, 10)];
        let r = next_region(5, &at(0, 0, 0), &chunks).expect("region");
        assert_eq!((r.volume, r.chunk, r.first, r.count), (1, 0, 0, 1024));
        let r = next_region(5, &after(&r), &chunks).expect("region");
        assert_eq!((r.first, r.count), (1024, 1024));
        let r = next_region(5, &after(&r), &chunks).expect("region");
        assert_eq!((r.first, r.count), (2048, 452));
        // The end of the chunk: the next chunk with blocks (an empty one is skipped).
        let r = next_region(5, &after(&r), &chunks).expect("region");
        assert_eq!((r.volume, r.chunk, r.first, r.count), (2, 1, 0, 10));
        assert_eq!(next_region(5, &after(&r), &chunks), None);
        // A cursor at a chunk since dropped goes on with the next one.
        let r = next_region(5, &at(1, 2, 700), &chunks).expect("region");
        assert_eq!((r.volume, r.chunk, r.first), (2, 1, 0));
    }

    #[test]
    fn the_next_pass_starts_a_period_after_the_last_started() {
        let mut s = ScrubStats::default();
        assert!(!in_pass(&s));
        assert_eq!(next_pass_at(&s, 1000, 100), 0);
        s.pass_started_ms = 5000;
        assert!(in_pass(&s));
        s.last_pass_done_ms = 5600;
        assert!(!in_pass(&s));
        assert_eq!(next_pass_at(&s, 1000, 5600), 6000);
        // Overran: due at once (in the past).
        s.last_pass_done_ms = 7000;
        assert!(next_pass_at(&s, 1000, 7000) < s.last_pass_done_ms);
    }

    #[test]
    fn the_voters_listings_are_united_at_the_largest_layer() {
        use tessera_proto::copy::ChunkEntry;
        let e = |volume, chunk, layer, blocks| ChunkEntry {
            volume,
            chunk,
            layer,
            blocks,
            link: None,
        };
        let mut u = BTreeMap::from([((1, 0), 100), ((1, 2), 50)]);
        let page = ChunkListPage {
            entries: vec![
                e(1, 0, 1, 40),
                e(1, 1, 1, 3000),
                e(1, 2, 1, 50),
                e(1, 2, 2, 80),
                e(1, 3, 1, u64::MAX),
            ],
            more: false,
            layers: true,
        };
        merge_page(&mut u, &page, (0, 0, 1)).expect("in order");
        let got: Vec<_> = u.iter().map(|(&(v, c), &b)| (v, c, b)).collect();
        // A chunk only the follower holds is listed, at its size there; a size past the
        // largest chunk is taken as that.
        let most = tessera_engine::chunk::MAX_CHUNK / tessera_engine::chunk::BLOCK_SIZE;
        assert_eq!(got, [(1, 0, 100), (1, 1, 3000), (1, 2, 80), (1, 3, most)]);
        let r = next_region(5, &at(1, 0, 100), &got).expect("region");
        assert_eq!((r.volume, r.chunk, r.first), (1, 1, 0));
        // A page going back before its cursor is refused, nothing taken from it.
        let back = ChunkListPage {
            entries: vec![e(0, 9, 1, 7)],
            more: false,
            layers: true,
        };
        assert!(merge_page(&mut u, &back, (1, 0, 1)).is_err());
        assert_eq!(u.len(), 4);
    }

    #[test]
    fn a_clock_set_back_neither_stalls_nor_oversleeps_the_next_pass() {
        // The last pass started "in the future" (clock set back a year): due now.
        let s = ScrubStats {
            pass_started_ms: 40_000_000_000,
            last_pass_done_ms: 40_000_000_001,
            ..ScrubStats::default()
        };
        assert_eq!(next_pass_at(&s, 7 * 86_400_000, 1_000), 0);
        // A due date far off is slept towards at most MAX_SLEEP at a time.
        assert_eq!(sleep_until(0, u64::MAX), MAX_SLEEP);
        assert_eq!(sleep_until(1_000, 1_500), Duration::from_millis(500));
        assert_eq!(sleep_until(2_000, 1_500), Duration::ZERO);
    }

    #[test]
    fn a_period_is_at_least_a_minute() {
        assert_eq!(clamp_period(0), (MIN_PERIOD_SECS, true));
        assert_eq!(clamp_period(59), (MIN_PERIOD_SECS, true));
        assert_eq!(clamp_period(3600), (3600, false));
    }

    #[test]
    fn a_failed_region_is_retried_with_backoff_then_skipped_unless_led_elsewhere() {
        assert_eq!(on_failure(1, true), Failed::Retry(Duration::from_secs(1)));
        assert_eq!(on_failure(2, true), Failed::Retry(Duration::from_secs(2)));
        assert_eq!(on_failure(4, true), Failed::Retry(Duration::from_secs(8)));
        assert_eq!(on_failure(REGION_TRIES, true), Failed::Skip);
        assert_eq!(on_failure(1, false), Failed::MoveOn);
        assert_eq!(backoff(6), Duration::from_secs(30));
        assert_eq!(backoff(60), Duration::from_secs(30));
    }

    #[test]
    fn a_pass_past_its_period_is_behind() {
        assert!(!behind(1000, 1500, 1000));
        assert!(!behind(1000, 2000, 1000));
        assert!(behind(1000, 2001, 1000));
        assert!(!behind(0, 5000, 1000));
    }

    #[test]
    fn a_reads_blocks_cover_its_partial_ends() {
        assert_eq!(blocks_of(0, 4096), (0, 1));
        assert_eq!(blocks_of(4095, 2), (0, 2));
        assert_eq!(blocks_of(8192, 12288), (2, 3));
        assert_eq!(blocks_of(4096, 0), (1, 1));
    }
}

//! The pass task: one pass after another over the groups this node leads (groups
//! ascending, then chunks, then regions, from the persisted cursor), a region at a time,
//! paced; the next pass `period` after the last one started; idle while paused.
//!
//! Must never run two regions at once, nor scrub a group it does not lead (its leader
//! does; a group lost meanwhile is passed over), nor one whose membership is changing
//! (joint, or with learners: tried again later); never record a pass done that led
//! nothing, nor fsync under the scrubber's lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tessera_proto::control::{Role, ScrubCursor};
use tessera_proto::copy::{ChunkListPage, MAX_LAYER_PAGE};

use super::cursor::Save;
use super::plan::{
    Failed, REGION_TRIES, after, behind, clamp_period, in_pass, merge_page, next_group,
    next_pass_at, next_region, now_ms, on_failure, sleep_until,
};
use super::{State, metrics};
use crate::server::Shared;

/// A group's chunks, `(volume, chunk, blocks)` ascending (see [`chunks_of`]).
type Chunks = Vec<(u64, u64, u64)>;

/// How long the pass task waits after the node starts before its first step: until the
/// groups' elections settle, a node leads nothing, and a pass would find nothing to do.
#[cfg(not(test))]
const SETTLE: Duration = Duration::from_secs(20);
#[cfg(test)]
const SETTLE: Duration = Duration::from_millis(50);

/// How long a pass that found no group led waits before it looks again (it stays under
/// way: neither recorded done nor its cursor reset).
#[cfg(not(test))]
const RETRY_LED_NOTHING: Duration = Duration::from_secs(30);
#[cfg(test)]
const RETRY_LED_NOTHING: Duration = Duration::from_millis(200);

/// How a call of [`run_pass`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Every group it leads is scrubbed to its end.
    Done,
    /// Paused by an operator.
    Paused,
    /// It led no group at all (an election under way, or all lost): not a pass.
    LedNothing,
}

/// Writes a cursor body taken under the lock, off the runtime's workers.
async fn persist(save: Option<Save>) {
    if let Some(s) = save {
        s.write_off_runtime().await;
    }
}

/// Runs the node's passes until the node stops (a task of its own).
pub(crate) async fn run(shared: Arc<Shared>) {
    let s = &shared.scrub;
    if s.cfg.bytes_per_sec == 0 {
        tracing::info!("scrubbing off (scrub.bytes_per_sec = 0)");
        return;
    }
    let (period_secs, clamped) = clamp_period(s.period().as_secs());
    if clamped {
        tracing::warn!(
            configured = s.cfg.period_secs,
            used = period_secs,
            "scrub.period_secs too short; raised"
        );
    }
    let period_ms = period_secs.saturating_mul(1000);
    tokio::time::sleep(SETTLE).await;
    loop {
        let now = now_ms();
        let (paused, under_way, start_now, due) = s.with(|st| {
            (
                st.stats.paused,
                in_pass(&st.stats),
                st.start_now,
                next_pass_at(&st.stats, period_ms, now),
            )
        });
        if paused {
            s.wake.notified().await;
            continue;
        }
        if !under_way {
            if !start_now && now < due {
                tokio::select! {
                    _ = tokio::time::sleep(sleep_until(now, due)) => {}
                    _ = s.wake.notified() => {}
                }
                continue;
            }
            let (pass, save) = s.with(|st| {
                st.stats.pass += 1;
                st.stats.pass_started_ms = now_ms();
                st.stats.cursor = ScrubCursor::default();
                set_behind(st, false);
                (st.stats.pass, st.cursor.take(&st.stats, true))
            });
            persist(save).await;
            tracing::info!(pass, "scrub pass started");
        }
        s.with(|st| {
            st.start_now = false;
            st.stats.running = true;
        });
        let end = run_pass(&shared, period_ms).await;
        let (stats, save) = s.with(|st| {
            if end == End::Done {
                st.stats.last_pass_done_ms = now_ms().max(st.stats.pass_started_ms);
                st.stats.cursor = ScrubCursor::default();
            }
            (st.stats.clone(), st.cursor.take(&st.stats, true))
        });
        // Saved before the pass is shown stopped, so that whoever sees it stopped finds it
        // on disk (the file's `running` is ignored at load).
        persist(save).await;
        s.with(|st| st.stats.running = false);
        match end {
            End::Done => {
                metrics::PASSES.add(1);
                tracing::info!(
                    pass = stats.pass,
                    behind = stats.behind,
                    regions = stats.regions,
                    bad_blocks = stats.bad_blocks,
                    divergent_blocks = stats.divergent_blocks,
                    repaired = stats.repaired,
                    unrepairable = stats.unrepairable,
                    "scrub pass done"
                );
            }
            End::Paused => {
                tracing::info!(pass = stats.pass, cursor = ?stats.cursor, "scrub pass paused");
            }
            End::LedNothing => {
                tracing::info!(
                    pass = stats.pass,
                    "scrub pass found no group this node leads; looking again shortly"
                );
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_LED_NOTHING) => {}
                    _ = s.wake.notified() => {}
                }
            }
        }
    }
}

/// Reports (or stops reporting) the pass as behind, in the stats and the gauge.
pub(super) fn set_behind(st: &mut State, b: bool) {
    if st.stats.behind != b {
        metrics::BEHIND.add(if b { 1 } else { -1 });
        if b {
            tracing::warn!(
                pass = st.stats.pass,
                "scrub pass behind: it has run past its period (raise scrub.bytes_per_sec)"
            );
        }
    }
    st.stats.behind = b;
}

/// The rest of the current pass from its cursor, until it is done, paused, or finds no
/// group led at all.
///
/// A region that cannot be scrubbed now (its step failed, or its group's membership is
/// changing: joint, or with learners, where a majority of the voters listed is not one of
/// each configuration) is tried again after a backoff while this node leads the group, up
/// to [`REGION_TRIES`] times, then skipped (logged, counted incomplete); a group no longer
/// led is passed over (its leader scrubs it).
async fn run_pass(shared: &Shared, period_ms: u64) -> End {
    let s = &shared.scrub;
    let mut listing: Option<(u64, Chunks)> = None;
    let mut led_any = false;
    // Failed tries of the region at the cursor, and regions given up on in this run.
    let mut tries = 0u32;
    let mut incomplete = 0u64;
    loop {
        let (paused, cursor) = s.with(|st| (st.stats.paused, st.stats.cursor));
        if paused {
            return End::Paused;
        }
        let led = led_states(shared).await;
        led_any |= !led.is_empty();
        let ids: Vec<u64> = led.iter().map(|l| l.group).collect();
        let Some(g) = next_group(cursor.group, &ids) else {
            if incomplete > 0 {
                tracing::warn!(incomplete, "scrub pass: regions left unscrubbed");
            }
            return if led_any { End::Done } else { End::LedNothing };
        };
        let cursor = if g == cursor.group {
            cursor
        } else {
            tries = 0;
            ScrubCursor {
                group: g,
                ..ScrubCursor::default()
            }
        };
        if listing.as_ref().is_none_or(|(lg, _)| *lg != g) {
            let voters = led
                .iter()
                .find(|l| l.group == g)
                .map_or(&[][..], |l| &l.voters);
            listing = Some((g, chunks_of(shared, g, voters).await));
        }
        let chunks = listing.as_ref().map_or(&[][..], |(_, c)| &c[..]);
        let Some(r) = next_region(g, &cursor, chunks) else {
            let Some(next) = g.checked_add(1) else {
                return End::Done;
            };
            tries = 0;
            s.with(|st| {
                st.stats.cursor = ScrubCursor {
                    group: next,
                    ..ScrubCursor::default()
                }
            });
            continue;
        };
        let Some(this) = led.iter().find(|l| l.group == g) else {
            continue;
        };
        let result = if this.settled {
            let voters = this.voters.clone();
            super::region::step(shared, r, &voters, true)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        } else {
            Err("the group's membership is changing (joint or with learners)".to_string())
        };
        if let Err(why) = result {
            tries += 1;
            let leads = led_states(shared).await.iter().any(|l| l.group == g);
            match on_failure(tries, leads) {
                Failed::Retry(wait) => {
                    tracing::info!(
                        group = r.group,
                        volume = r.volume,
                        chunk = r.chunk,
                        first = r.first,
                        tries,
                        "scrub: region not scrubbed ({why}); trying again in {wait:?}"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = s.wake.notified() => {}
                    }
                    continue;
                }
                Failed::Skip => {
                    incomplete += 1;
                    tracing::warn!(
                        group = r.group,
                        volume = r.volume,
                        chunk = r.chunk,
                        first = r.first,
                        tries = REGION_TRIES,
                        incomplete,
                        "scrub: region skipped, incomplete this pass: {why}"
                    );
                }
                Failed::MoveOn => tracing::info!(
                    group = r.group,
                    "scrub: group no longer led here; its leader scrubs it"
                ),
            }
        }
        tries = 0;
        let save = s.with(|st| {
            st.stats.cursor = after(&r);
            let late = behind(st.stats.pass_started_ms, now_ms(), period_ms);
            if late && !st.stats.behind {
                set_behind(st, true);
            }
            st.cursor.take(&st.stats, false)
        });
        persist(save).await;
    }
}

/// A group this node leads now (see [`led_states`]).
pub(crate) struct Led {
    /// The group.
    pub(crate) group: u64,
    /// Its voters (both configurations' while joint).
    pub(crate) voters: Vec<u64>,
    /// Whether its membership is settled: not joint, no learners. Only then is a majority
    /// of `voters` a majority of the group.
    pub(crate) settled: bool,
}

/// The groups this node leads now, ascending.
pub(crate) async fn led_states(shared: &Shared) -> Vec<Led> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    shared.raft.status(Box::new(move |s| {
        let _ = tx.send(s);
    }));
    let mut led: Vec<Led> = rx
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|g| g.role == Role::Leader && g.stuck.is_none())
        .map(|g| Led {
            group: g.group_id,
            settled: !g.joint && g.learners.is_empty(),
            voters: g.voters,
        })
        .collect();
    led.sort_unstable_by_key(|l| l.group);
    led
}

/// The groups this node leads now whose membership is settled (see [`Led::settled`]),
/// ascending, with their voters.
pub(crate) async fn led_groups(shared: &Shared) -> Vec<(u64, Vec<u64>)> {
    led_states(shared)
        .await
        .into_iter()
        .filter(|l| l.settled)
        .map(|l| (l.group, l.voters))
        .collect()
}

/// The chunks of `group`, `(volume, chunk, blocks)` ascending: the union of this node's
/// replica's layers and every other voter's (listed through the data plane's catch-up
/// listing, a page at a time), `blocks` the largest layer any of them lists. A chunk only
/// followers hold is thus scrubbed as far as they hold it (the listing reports each
/// layer's exact length; nothing is guessed). A voter that cannot be listed is left out
/// (logged): its chunks held nowhere else wait for a later pass. Memory: one entry per
/// chunk of the union, as the local listing alone took one per chunk.
async fn chunks_of(shared: &Shared, group: u64, voters: &[u64]) -> Chunks {
    let mut union: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    if let Some(store) = shared.chunks.existing(group) {
        let listed = tokio::task::spawn_blocking(move || {
            let mut out: BTreeMap<(u64, u64), u64> = BTreeMap::new();
            for k in store.list_layers()? {
                let blocks = store.chunk_blocks_in(k.volume, k.chunk, k.layer)?;
                let b = out.entry((k.volume, k.chunk)).or_default();
                *b = (*b).max(blocks);
            }
            Ok::<_, tessera_engine::Error>(out)
        })
        .await;
        match listed {
            Ok(Ok(c)) => union = c,
            Ok(Err(e)) => tracing::warn!(group, "scrub: listing the group's chunks: {e}"),
            Err(e) => tracing::warn!(group, "scrub: listing the group's chunks: {e}"),
        }
    }
    for &node in voters.iter().filter(|&&n| n != shared.node_id) {
        if let Err(e) = list_peer(shared, group, node, &mut union).await {
            tracing::warn!(
                group,
                node,
                "scrub: listing a voter's chunks failed ({e}); going on with the others'"
            );
        }
    }
    union.into_iter().map(|((v, c), b)| (v, c, b)).collect()
}

/// Adds voter `node`'s layers of `group` to `union`, a page at a time.
async fn list_peer(
    shared: &Shared,
    group: u64,
    node: u64,
    union: &mut BTreeMap<(u64, u64), u64>,
) -> Result<(), String> {
    let addr = shared
        .scrub
        .addr_of(node)
        .ok_or_else(|| "its address is not known".to_string())?;
    let mut src = crate::fetch::Source::connect(&shared.security, node, &addr).await?;
    let mut cursor = Some((0, 0, 1));
    while let Some(from) = cursor {
        let answer = src
            .ask(ChunkListPage::request(group, from, MAX_LAYER_PAGE))
            .await?;
        let page = ChunkListPage::decode(&answer).map_err(|e| e.to_string())?;
        merge_page(union, &page, from)?;
        cursor = page.next_cursor();
    }
    Ok(())
}

//! One scrub step of one region, as its group's leader: a mark through the log, every
//! voter's scan of the region as of it (this node's own and the others' over
//! `StorageRequest::ScrubRegion`, at once), the comparison, every finding logged and
//! counted (replicas holding different layers of the chunk once per region), and the
//! repairs proposed.
//!
//! Must never propose a repair without a committed mark, nor decide on a voter's behalf
//! when it did not answer (its blocks are left out; the region counts as incomplete).

use std::time::Duration;

use tessera_proto::command::{CmdOp, Command};
use tessera_proto::control::{RegionScan, RegionScanRequest, StorageReply, StorageRequest};
use tessera_proto::data::Reply;
use tokio::sync::oneshot;

use super::compare::{Findings, Held, compare};
use super::metrics;
use super::plan::Region;
use crate::server::Shared;

/// How long a voter has to answer a scan (its wait for the mark, then its paced reads).
const SCAN_TIMEOUT: Duration = Duration::from_secs(60);

/// What a step did, for read repair and tests.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Voters that answered.
    pub(crate) answered: usize,
    /// Blocks repaired (entries committed).
    pub(crate) repaired: u64,
    /// What the comparison found.
    pub(crate) findings: Findings,
}

/// Proposes a scrub command through the group's log; its answer.
pub(crate) async fn propose(shared: &Shared, group: u64, cmd: Command) -> Reply {
    let (tx, rx) = oneshot::channel();
    shared.raft.propose_scrub(
        group,
        cmd,
        Box::new(move |r| {
            let _ = tx.send(r);
        }),
    );
    rx.await
        .unwrap_or_else(|_| Reply::Unavailable("storage node is shutting down".into()))
}

/// Scrubs region `r` of a group this node leads, whose voters are `voters` (the group's
/// voters only); `paced` (passes) or not (read repair: every replica's scan is asked as
/// urgent). `Err`: the mark did not commit (no longer leader...).
pub(crate) async fn step(
    shared: &Shared,
    r: Region,
    voters: &[u64],
    paced: bool,
) -> Result<Outcome, String> {
    let mark = rand::random::<u64>().max(1);
    let bytes = |blocks: u64| blocks.checked_mul(4096).and_then(|b| u32::try_from(b).ok());
    let (Some(offset), Some(len)) = (bytes(r.first), bytes(r.count)) else {
        return Err(format!("region {r:?} lies outside what a chunk can hold"));
    };
    let cmd = Command {
        op: CmdOp::ScrubMark,
        volume: r.volume,
        chunk: r.chunk,
        offset,
        len,
        id: 0,
        epoch: 0,
        seq: 0,
        data: Command::scrub_mark_data(mark),
    };
    match propose(shared, r.group, cmd).await {
        Reply::Ok(_) => {}
        other => return Err(format!("scrub mark not committed: {other:?}")),
    }
    let req = RegionScanRequest {
        group_id: r.group,
        mark,
        volume: r.volume,
        chunk: r.chunk,
        first: r.first,
        count: r.count,
        node_id: 0,
        urgent: !paced,
    };
    // Each voter asked (and counted) once.
    let mut voters = voters.to_vec();
    voters.sort_unstable();
    voters.dedup();
    let scans = futures::future::join_all(
        voters
            .iter()
            .map(|&n| async move { (n, scan_of(shared, n, req).await) }),
    )
    .await;
    let mut answers: Vec<(u64, RegionScan)> = Vec::new();
    for (node, scan) in scans {
        match scan {
            Ok(mut s) => {
                // A block outside the region is no answer to this step (a confused peer).
                let before = s.blocks.len();
                s.blocks
                    .retain(|b| b.block >= r.first && b.block - r.first < r.count);
                if s.blocks.len() != before {
                    tracing::warn!(
                        group = r.group,
                        node,
                        "scrub: a scan listed blocks outside the region; ignored"
                    );
                }
                answers.push((node, s));
            }
            Err(e) => tracing::warn!(
                group = r.group,
                volume = r.volume,
                chunk = r.chunk,
                first = r.first,
                node,
                "scrub: replica's scan missing, region incomplete: {e}"
            ),
        }
    }
    let findings = compare(&voters, &answers);
    report(shared, &r, &findings);
    let repaired = super::repair::repair(shared, &r, mark, &findings.fixes).await;
    metrics::REPAIRED_BLOCKS.add(repaired);
    shared.scrub.with(|st| st.stats.repaired += repaired);
    Ok(Outcome {
        answered: answers.len(),
        repaired,
        findings,
    })
}

/// Node `node`'s scan of the region (this node's own without the network).
async fn scan_of(shared: &Shared, node: u64, req: RegionScanRequest) -> Result<RegionScan, String> {
    // Meant for `node`: another node at its address (a stale one) refuses it.
    let req = RegionScanRequest {
        node_id: node,
        ..req
    };
    if node == shared.node_id {
        return super::replica::scan_region(shared, req)
            .await
            .map_err(|e| e.to_string());
    }
    let addr = shared
        .scrub
        .addr_of(node)
        .ok_or_else(|| format!("address of node {node} unknown"))?;
    let reply: StorageReply = tessera_net::call(
        &shared.security,
        &addr,
        tessera_net::Expect::Node(node),
        &StorageRequest::ScrubRegion(req),
        SCAN_TIMEOUT,
    )
    .await
    .map_err(|e| e.to_string())?;
    match reply {
        StorageReply::ScrubRegion(s) => Ok(s),
        other => Err(format!("unexpected answer {other:?}")),
    }
}

/// Logs and counts a region's findings.
fn report(shared: &Shared, r: &Region, f: &Findings) {
    for &(node, layer, block) in &f.bad {
        tracing::warn!(
            group = r.group,
            volume = r.volume,
            chunk = r.chunk,
            layer,
            block,
            node,
            "scrub: bad block (fails its checksum)"
        );
    }
    for fix in &f.fixes {
        tracing::warn!(
            group = r.group,
            volume = r.volume,
            chunk = r.chunk,
            layer = fix.layer,
            block = fix.block,
            nodes = ?fix.wrong,
            truth = ?fix.truth,
            "scrub: replicas differ from the majority; repairing"
        );
    }
    for u in f.unrepairable.iter().filter(|u| u.absent_on_majority) {
        let held_by: Vec<(u64, Held)> = u
            .states
            .iter()
            .copied()
            .filter(|&(_, h)| h != Held::Absent && h != Held::Bad)
            .collect();
        tracing::warn!(
            group = r.group,
            volume = r.volume,
            chunk = r.chunk,
            layer = u.layer,
            block = u.block,
            states = ?u.states,
            "scrub: block absent on a majority, held by {held_by:?}; not cleared"
        );
    }
    for u in f.unrepairable.iter().filter(|u| !u.absent_on_majority) {
        tracing::error!(
            group = r.group,
            volume = r.volume,
            chunk = r.chunk,
            layer = u.layer,
            block = u.block,
            states = ?u.states,
            "scrub: unrepairable block (no majority of replicas agrees)"
        );
    }
    if f.incomplete {
        tracing::warn!(
            group = r.group,
            volume = r.volume,
            chunk = r.chunk,
            first = r.first,
            "scrub: region incomplete (a replica's scan missing, blocks left undecided)"
        );
    }
    if let Some(links) = &f.links {
        tracing::error!(
            group = r.group,
            volume = r.volume,
            chunk = r.chunk,
            links = ?links,
            "scrub: replicas disagree on the chunk's link (not repaired by scrubbing)"
        );
    }
    if let Some(layers) = &f.layers {
        // A finding, not a rot: the manager's reclaim merges again; scrubbing repairs
        // nothing of it.
        tracing::warn!(
            group = r.group,
            volume = r.volume,
            chunk = r.chunk,
            first = r.first,
            layers = ?layers,
            "replicas hold different layers (a merge skipped on a full disk?): {layers:?} \
             (node, layers); compared only where a majority has the layer, not repaired"
        );
    }
    let unrepairable = f.unrepairable.len() as u64 + u64::from(f.links.is_some());
    metrics::REGIONS.add(1);
    metrics::BAD_BLOCKS.add(f.bad.len() as u64);
    metrics::DIVERGENT_BLOCKS.add(f.divergent.len() as u64);
    metrics::UNREPAIRABLE_BLOCKS.add(unrepairable);
    metrics::LAYER_DIFFERENCES.add(u64::from(f.layers.is_some()));
    shared.scrub.with(|st| {
        st.stats.regions += 1;
        st.stats.bad_blocks += f.bad.len() as u64;
        st.stats.divergent_blocks += f.divergent.len() as u64;
        st.stats.unrepairable += unrepairable;
        st.stats.incomplete_regions += u64::from(f.incomplete);
        st.stats.layer_differences += u64::from(f.layers.is_some());
    });
}

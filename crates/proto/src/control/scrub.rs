//! Scrubbing: what a storage node reports of its background scan of its replicas
//! ([`ScrubStats`], in every heartbeat), what one replica tells the group leader driving a
//! scrub step about a region of a chunk ([`RegionScanRequest`] → [`RegionScan`]), and how
//! an operator starts or pauses a node's scrubbing ([`ScrubAction`]).
//!
//! Owns these messages only; the scrubber is the storage crate's, the marks and repairs in
//! a group's log the raft crate's (see `crate::command::CmdOp::ScrubMark`).

use serde::{Deserialize, Serialize};

/// Blocks of one chunk one scrub step covers (4 MiB of 4 KiB blocks), every layer.
pub const SCRUB_REGION_BLOCKS: u64 = 1024;

/// A node's scrubbing, as its heartbeat reports it and `tessera scrub status` shows it.
/// Counters are since the node's data directory was created (they are kept in its
/// persisted cursor).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubStats {
    /// Whether an operator paused it (`tessera scrub pause`).
    #[serde(default)]
    pub paused: bool,
    /// Whether a pass is running now (false between passes and while paused).
    #[serde(default)]
    pub running: bool,
    /// The configured rate in bytes a second (0: scrubbing is off).
    #[serde(default)]
    pub bytes_per_sec: u64,
    /// The configured period of a full pass, in seconds.
    #[serde(default)]
    pub period_secs: u64,
    /// The current (or last) pass's number, from 1.
    #[serde(default)]
    pub pass: u64,
    /// When the current (or last) pass started, Unix milliseconds (0: never).
    #[serde(default)]
    pub pass_started_ms: u64,
    /// When the last full pass ended, Unix milliseconds (0: none yet).
    #[serde(default)]
    pub last_pass_done_ms: u64,
    /// Whether the current pass has run past its period (the rate is too low for the data
    /// this node leads): reported, and the next pass starts as soon as this one ends.
    #[serde(default)]
    pub behind: bool,
    /// Where the pass is: the group, volume, chunk and block of the next region.
    #[serde(default)]
    pub cursor: ScrubCursor,
    /// Bytes of blocks read and verified by this node (its own replicas' blocks, for
    /// every group it leads or follows).
    #[serde(default)]
    pub bytes_checked: u64,
    /// Blocks read and verified by this node.
    #[serde(default)]
    pub blocks_checked: u64,
    /// Regions this node drove (as the group's leader).
    #[serde(default)]
    pub regions: u64,
    /// Findings in the regions it drove: blocks failing their checksum on some replica.
    #[serde(default)]
    pub bad_blocks: u64,
    /// Findings in the regions it drove: blocks whose replicas disagree with valid
    /// checksums (a lost or misplaced write).
    #[serde(default)]
    pub divergent_blocks: u64,
    /// Blocks it proposed repairs for (through the group's log) that committed.
    #[serde(default)]
    pub repaired: u64,
    /// Blocks no majority of replicas agreed on (every voter answered), or that a majority
    /// lacks while another replica holds a valid copy: reported, never "fixed".
    #[serde(default)]
    pub unrepairable: u64,
    /// Regions it drove where some voter's scan was missing and the answers that came left
    /// blocks undecided (not called unrepairable: the next pass looks again). Also counted
    /// in `regions`.
    #[serde(default)]
    pub incomplete_regions: u64,
    /// Regions it drove whose replicas hold different sets of the chunk's layers (a layer
    /// one voter has and another lacks: a `Merge` skipped on a full disk, its
    /// `DropMerged` refused there): reported once per region, neither unrepairable nor
    /// repaired by scrubbing (the manager's reclaim merges again). Also counted in
    /// `regions`.
    #[serde(default)]
    pub layer_differences: u64,
    /// Blocks a repair entry rewrote in this node's own replicas (applied here).
    #[serde(default)]
    pub repair_blocks_applied: u64,
}

/// A position in a node's scrub pass: the next region to scrub.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScrubCursor {
    /// The group (0: the pass has not reached one yet).
    pub group: u64,
    /// The volume.
    pub volume: u64,
    /// The chunk.
    pub chunk: u64,
    /// The first block of the region.
    pub block: u64,
}

/// What an operator asks of a node's scrubber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScrubAction {
    /// Start a pass now, or resume a paused one.
    Start,
    /// Stop scrubbing until started again (the cursor is kept).
    Pause,
}

/// A group leader's request to one replica: scan `count` blocks from `first` of every
/// layer of the chunk as of the scrub mark `mark` (the replica waits, briefly, to apply
/// it). Answered with [`RegionScan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionScanRequest {
    /// The group.
    pub group_id: u64,
    /// The mark's id (a `CmdOp::ScrubMark` entry's).
    pub mark: u64,
    /// The volume.
    pub volume: u64,
    /// The chunk.
    pub chunk: u64,
    /// The region's first block.
    pub first: u64,
    /// Blocks in the region (at most [`SCRUB_REGION_BLOCKS`]).
    pub count: u64,
    /// The replica the leader means (a node answering for another is refused); 0: not
    /// checked (a leader from before this field).
    #[serde(default)]
    pub node_id: u64,
    /// A read repair's scan (a client waits): read at once, not paced by the replica's
    /// scrub rate.
    #[serde(default)]
    pub urgent: bool,
}

/// One replica's scan of a region.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionScan {
    /// Whether the replica has any file or link for the chunk.
    pub holds_chunk: bool,
    /// The chunk's link, `(parent volume, parent seq)`, if it has one.
    #[serde(default)]
    pub link: Option<(u64, u64)>,
    /// Every block some layer holds in the region, sorted by (layer, block).
    pub blocks: Vec<ScannedBlock>,
    /// Every layer of the chunk this replica has (1: the base files), ascending, whether
    /// or not it holds a block in the region. A `(layer, block)` is compared only among
    /// the voters having the layer: replicas may legitimately hold the same data in
    /// different layers (a merge skipped on one of them), and that is no block
    /// difference. Empty from a node from before this field (and from a replica with no
    /// layer): the leader then takes the layers it lists blocks of.
    #[serde(default)]
    pub layers: Vec<u64>,
    /// Blocks (indexes in the chunk) changed since the mark on this replica: left out of
    /// the comparison.
    pub dirty: Vec<u64>,
    /// The whole region changed since the mark (a whole-chunk operation): nothing of it
    /// can be compared.
    #[serde(default)]
    pub all_dirty: bool,
}

/// One held block of a layer, as a scan found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScannedBlock {
    /// The layer (1: the chunk's base files).
    pub layer: u64,
    /// The block's index in the chunk.
    pub block: u64,
    /// What it holds.
    pub state: BlockCheck,
}

/// What one held block holds, as a scan found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockCheck {
    /// Written as zero.
    Zero,
    /// Data whose checksum verifies; `hash`: the first 8 bytes of its BLAKE3, LE.
    Data {
        /// The block's hash.
        hash: u64,
    },
    /// Fails its checksum.
    Bad,
}

/// One node's scrubbing in `tessera scrub status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeScrub {
    /// The node.
    pub node_id: u64,
    /// Its data-plane address.
    pub addr: String,
    /// Its last reported state (`None`: no heartbeat with it since the manager started).
    pub stats: Option<ScrubStats>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::codec::{assert_round_trips, decode};

    #[test]
    fn a_scan_request_and_stats_of_an_older_node_still_decode() {
        let old = br#"{"group_id":1,"mark":2,"volume":3,"chunk":4,"first":0,"count":8}"#;
        let req: RegionScanRequest = decode(old).unwrap();
        assert_eq!((req.node_id, req.urgent), (0, false));
        let stats: ScrubStats = decode(br#"{"unrepairable":2}"#).unwrap();
        assert_eq!(
            (
                stats.unrepairable,
                stats.incomplete_regions,
                stats.layer_differences
            ),
            (2, 0, 0)
        );
        assert_round_trips(&RegionScanRequest {
            node_id: 5,
            urgent: true,
            ..req
        });
        assert_round_trips(&ScrubStats {
            incomplete_regions: 3,
            layer_differences: 1,
            ..stats
        });
    }

    #[test]
    fn a_scan_of_an_older_node_decodes_without_layers_and_layers_round_trip() {
        let old =
            br#"{"holds_chunk":true,"blocks":[{"layer":2,"block":5,"state":"zero"}],"dirty":[]}"#;
        let scan: RegionScan = decode(old).unwrap();
        assert!(scan.holds_chunk && scan.layers.is_empty() && scan.blocks.len() == 1);
        assert_round_trips(&RegionScan {
            layers: vec![1, 2, 7],
            ..scan
        });
    }
}

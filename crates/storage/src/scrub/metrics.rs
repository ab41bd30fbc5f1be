//! The scrubber's Prometheus metrics (`tessera_scrub_*`), process-wide: every storage node
//! of a process (a dev cluster) adds to the same ones.

use tessera_metrics::{LazyCounter, LazyGauge};

pub(crate) static BYTES_CHECKED: LazyCounter = LazyCounter::new(
    "tessera_scrub_bytes_checked_total",
    "Bytes of blocks read and verified by scrub scans of this node's replicas",
);
pub(crate) static BLOCKS_CHECKED: LazyCounter = LazyCounter::new(
    "tessera_scrub_blocks_checked_total",
    "Blocks read and verified by scrub scans of this node's replicas",
);
pub(crate) static REGIONS: LazyCounter = LazyCounter::new(
    "tessera_scrub_regions_total",
    "Scrub regions this node drove as its group's leader (passes and read repairs)",
);
pub(crate) static BAD_BLOCKS: LazyCounter = LazyCounter::new(
    "tessera_scrub_bad_blocks_total",
    "Block copies found failing their checksum in regions this node drove",
);
pub(crate) static DIVERGENT_BLOCKS: LazyCounter = LazyCounter::new(
    "tessera_scrub_divergent_blocks_total",
    "Blocks whose replicas held different valid contents in regions this node drove",
);
pub(crate) static REPAIRED_BLOCKS: LazyCounter = LazyCounter::new(
    "tessera_scrub_repaired_blocks_total",
    "Blocks in repair entries this node proposed that committed",
);
pub(crate) static UNREPAIRABLE_BLOCKS: LazyCounter = LazyCounter::new(
    "tessera_scrub_unrepairable_blocks_total",
    "Blocks no majority of replicas agreed on (and chunks whose links differ)",
);
pub(crate) static LAYER_DIFFERENCES: LazyCounter = LazyCounter::new(
    "tessera_scrub_layer_differences_total",
    "Regions this node drove whose replicas hold different layers of the chunk (not repaired)",
);
pub(crate) static PASSES: LazyCounter = LazyCounter::new(
    "tessera_scrub_passes_total",
    "Full scrub passes this node finished",
);
pub(crate) static BEHIND: LazyGauge = LazyGauge::new(
    "tessera_scrub_behind",
    "Storage nodes whose current scrub pass has run past its period",
);

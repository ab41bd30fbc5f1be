//! Stage latencies of a replicated request on this node, apply stalls and scrub repairs
//! (see `/metrics`).

use tessera_metrics::Lazy;

pub(crate) static QUEUE: Lazy = Lazy::new(
    "tessera_raft_queue_seconds",
    "From a request's arrival on the data port to the poller picking it up",
);
pub(crate) static COMMIT: Lazy = Lazy::new(
    "tessera_raft_commit_seconds",
    "From proposing a write to its entry being committed and durable locally, ready to apply",
);
pub(crate) static APPLY: Lazy = Lazy::new(
    "tessera_raft_apply_seconds",
    "Applying one committed entry to the chunk store",
);
pub(crate) static LOG_WRITE: Lazy = Lazy::new(
    "tessera_log_write_seconds",
    "From handing a round's writes to the shared log to their fdatasync completing",
);
pub(crate) static REFUSED_MESSAGES: tessera_metrics::LazyCounter =
    tessera_metrics::LazyCounter::new(
        "tessera_raft_refused_messages_total",
        "Raft messages from the network dropped before reaching raft-rs (not for this node, not \
     from a member, local-only types, or contents that cannot apply)",
    );
pub(crate) static STUCK_REPLICAS: tessera_metrics::LazyGauge = tessera_metrics::LazyGauge::new(
    "tessera_raft_stuck_replicas",
    "Replicas hosted here that cannot apply (stalled past the node's threshold on a full disk \
     or a corrupt block, or quarantined at start): they serve nothing and wait to be replaced",
);
pub(crate) static APPLY_STALLS: tessera_metrics::LazyCounter = tessera_metrics::LazyCounter::new(
    "tessera_raft_apply_stalls_total",
    "Times a replica's apply stopped at a committed entry it could not apply (full disk, \
     corrupt block); it retries, never skips",
);
pub(crate) static REPAIR_BLOCKS: tessera_metrics::LazyCounter = tessera_metrics::LazyCounter::new(
    "tessera_scrub_repair_blocks_applied_total",
    "Blocks a scrub's Repair entry rewrote in this node's replicas (bad or divergent, \
     unchanged since the scrub's mark)",
);

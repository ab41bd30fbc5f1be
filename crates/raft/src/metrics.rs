//! Stage latencies of a replicated request on this node (see `/metrics`).

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

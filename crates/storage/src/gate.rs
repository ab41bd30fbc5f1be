//! The storage node's door: who gets a connection, how long a peer may stall, and the
//! memory its connections may hold ([`Gate`], from `[ingress]` in storage.toml).
//!
//! Three quarters of the memory budget are split in two halves so that one kind of load
//! cannot starve the other (the last quarter is left to the rest of the process): frame
//! bodies being read (writes over 64 KiB, taken when their header arrives, so a
//! slow sender waits rather than buffers) and requests in flight with their answers
//! (released once the answer is written, so a client that stops reading stops being
//! served). Each connection may hold at most an eighth of the in-flight half (8 to 64 MiB);
//! one whose peer takes no answer bytes for [`IngressLimits::frame_secs`] is dropped, and
//! its budget given back. Must never: buffer a body before its budget is
//! taken, or queue an answer without its share.

use std::sync::Arc;

use tessera_net::{Budget, Ingress, IngressLimits, ReadLimits};
use tokio::sync::OwnedSemaphorePermit as Permit;

/// The largest request a connection may have in flight (a read of this much).
const MAX_REQUEST: u64 = tessera_proto::frame::MAX_BODY as u64;

/// One listening port's caps and budgets.
pub(crate) struct Gate {
    pub(crate) ingress: Arc<Ingress>,
    bodies: Budget,
    in_flight: Budget,
    /// Bytes one connection may have in flight.
    per_connection: u64,
}

impl Gate {
    pub(crate) fn new(limits: IngressLimits) -> Gate {
        // Three eighths each: a quarter of the process's budget is left to everything
        // else it holds (connections' state, the runtime, open chunks, Raft's queues).
        let half = limits.memory_bytes / 8 * 3;
        Gate {
            bodies: Budget::new(half, MAX_REQUEST),
            in_flight: Budget::new(half, MAX_REQUEST),
            per_connection: (half / 8).clamp(MAX_REQUEST, 64 << 20),
            ingress: Ingress::new(limits),
        }
    }

    /// What the reader of a connection from `who` is held to. Bodies of other nodes and of
    /// managers are not held to the bodies' budget: replication must not wait behind
    /// clients (a write's commit needs its followers to read the batch), and its volume is
    /// bounded by Raft's own flow control. Without TLS no one is known: Raft batches and
    /// catch-up frames are exempt by kind.
    pub(crate) fn read_limits(&self, who: Option<&tessera_net::Identity>) -> ReadLimits {
        use tessera_net::Identity;
        use tessera_proto::frame::Kind;
        let l = self.ingress.limits();
        let peer = matches!(who, Some(Identity::Node(_) | Identity::Manager(_)));
        ReadLimits {
            idle: l.idle(),
            frame: l.frame(),
            budget: (!peer).then(|| self.bodies.clone()),
            exempt: if who.is_none() {
                &[
                    Kind::RaftBatch,
                    Kind::CatchUpList,
                    Kind::CatchUpChecksums,
                    Kind::CatchUpRead,
                ]
            } else {
                &[]
            },
        }
    }

    /// A new connection's own share of the in-flight budget.
    pub(crate) fn connection_budget(&self) -> Budget {
        Budget::new(self.per_connection, MAX_REQUEST)
    }

    /// Takes `bytes` of the in-flight budget of the node (waiting as long as it takes:
    /// that wait is the node's load, not the client's fault).
    pub(crate) async fn in_flight(&self, bytes: u64) -> Permit {
        self.in_flight.take(bytes).await
    }

    /// How long a connection's peer may take no answer bytes before it is dropped.
    pub(crate) fn patience(&self) -> std::time::Duration {
        self.ingress.limits().frame()
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new(IngressLimits::default())
    }
}

/// What an answer holds until it is written: its connection's share, and the node's
/// budget it took (in flight, or the body it was read with).
#[derive(Default)]
pub(crate) struct Held {
    _share: Option<Permit>,
    _node: Option<Permit>,
}

impl Held {
    pub(crate) fn new(share: Permit, node: Option<Permit>) -> Held {
        Held {
            _share: Some(share),
            _node: node,
        }
    }
}

/// A test's permit stands for both.
impl From<Permit> for Held {
    fn from(p: Permit) -> Held {
        Held {
            _share: Some(p),
            _node: None,
        }
    }
}

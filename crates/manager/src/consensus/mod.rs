//! The managers' own Raft group (raft-rs `RawNode`): replicates every `state::Mutation` to
//! all managers before it is applied anywhere. A manager with no configured peers is a group
//! of one and elects itself at start.
//!
//! Owns the Raft task (one tokio task: a 100 ms tick, elections after 1–2 s, pre-vote and
//! check-quorum) and its durability through `raft_log`; messages to the other managers go
//! through `peer` ([`tessera_proto::frame::Kind::ManagerRaft`] frames). It never touches
//! the state: committed entries are queued in commit order for whoever applies them — the
//! service, under its lock, on every manager (see `service::replicated`).
//!
//! Rules kept here:
//! - entries and hard state are durable (`RaftLog::save`, fsync) before the messages raft-rs
//!   marks as "after persistence" are sent, and before the Ready is advanced;
//! - the Raft task never waits on the network: each peer has its own task fed by a bounded
//!   queue, and a message that does not fit is dropped (Raft retransmits);
//! - the log is compacted once applied: at every tick where it holds more than twice
//!   `log_keep` entries past the applied index's predecessor, everything up to `log_keep`
//!   entries behind the applied index is deleted (on disk, then in the raft-rs `MemStorage`
//!   mirror the `RawNode` reads), at most `COMPACT_ROWS` a tick, and never past a snapshot
//!   being taken or sent. A peer needing entries that are gone gets a snapshot,
//!   taken on demand (`state_snapshot`) and installed in one transaction on the receiving side,
//!   with the committed queue emptied under the applier's gate so that nothing older is
//!   applied on top of it;
//! - membership starts as the configured peers (or this manager alone) and then changes only
//!   through the log: [`Consensus::propose_add`] adds a learner whose address rides in the
//!   change's context, and the leader promotes it to voter once it has caught up (a voter
//!   added before it runs would leave a single manager unable to commit anything). A
//!   manager with no membership (started to `join`, its database empty) steps nothing but
//!   a snapshot and heartbeats until the leader's snapshot gives it one: it votes for no
//!   one, and rejects appends down to index 1 (a log replayed from there would not hold the
//!   founding members). Any leader seeing a peer probed down to 1 compacts its whole
//!   applied log, so that peer is sent a snapshot; nothing about it is remembered.
//!
//! One idea per file: `start` (restoring the group and spawning the Raft task), `handle`
//! (what the rest of the manager asks of it), `commit_queue` (committed entries to the
//! applier), `task` (the Raft task and its Ready), `membership` (adding and promoting
//! managers, conf changes), `compaction` (cutting the applied log), `snapshots` (sending
//! and installing them), `logger` (raft-rs's slog to tracing). The types they share are
//! here.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use raft::eraftpb::{Entry, Message};
use raft::{RawNode, SnapshotStatus};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use tessera_proto::control::ControlError;

use crate::config::ManagerPeer;
use crate::error::Error;
use crate::raft_log::RaftLog;
use crate::state_snapshot::{self, LogStorage};

mod commit_queue;
mod compaction;
mod handle;
mod logger;
mod membership;
mod snapshots;
mod start;
mod task;

#[cfg(test)]
mod tests;

/// What this manager knows of the group's leadership.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub term: u64,
    /// Leader's id, if known.
    pub leader: Option<u64>,
    /// This manager leads `term`.
    pub is_leader: bool,
    /// When this manager became leader of `term`.
    pub leader_since: Option<Instant>,
    /// The group's voters as this manager last applied them.
    pub voters: Vec<u64>,
    /// Members being added: they receive the log but count for no majority yet.
    pub learners: Vec<u64>,
}

enum Input {
    Step(Box<Message>),
    Propose {
        data: Vec<u8>,
        reply: oneshot::Sender<Result<(u64, u64), ControlError>>,
    },
    ProposeAdd {
        id: u64,
        addr: String,
        reply: oneshot::Sender<Result<Option<(u64, u64)>, ControlError>>,
    },
}

struct Shared {
    id: u64,
    /// Every member's address, this manager's included.
    members: Mutex<BTreeMap<u64, String>>,
    inbox: mpsc::UnboundedSender<Input>,
    /// Committed entries not yet taken by the applier, in log order.
    committed: Mutex<VecDeque<Entry>>,
    more_committed: Condvar,
    wake_applier: Notify,
    status: Mutex<Status>,
    /// Held while committed entries are applied, and while a snapshot replaces the state.
    apply_gate: Mutex<()>,
    /// A snapshot installed under the state: (index, term); taken by the applier.
    installed: Mutex<Option<(u64, u64)>>,
    /// The highest index whose effect is durable in the state tables (the applier says).
    applied: AtomicU64,
    /// How messages to the other managers are dialled.
    security: tessera_net::Security,
}

/// How the managers' Raft group is started.
pub struct Options {
    pub id: u64,
    /// From the configuration: the founding members, and addresses that override stored ones.
    pub members: Vec<ManagerPeer>,
    /// Wait for a leader's snapshot instead of founding a group (a manager being added).
    pub join: bool,
    /// Entries kept behind the applied index for lagging peers.
    pub log_keep: u64,
    /// How messages to the other managers are dialled.
    pub security: tessera_net::Security,
}

/// Handle on the Raft group. Cheap to clone.
#[derive(Clone)]
pub struct Consensus {
    shared: Arc<Shared>,
}

/// The running Raft task; stop it with [`RaftTask::stop`].
pub struct RaftTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

struct RaftLoop {
    raw: RawNode<LogStorage>,
    storage: LogStorage,
    log: Arc<RaftLog>,
    shared: Arc<Shared>,
    peers: HashMap<u64, mpsc::Sender<Message>>,
    /// Addresses from the configuration: they win over replicated ones.
    configured: BTreeMap<u64, String>,
    /// Index of the last membership change applied (or snapshot installed).
    conf_index: u64,
    /// Snapshots handed to peers: peer → (index, when). The log after `index` is kept until
    /// the peer matches it (or [`SNAPSHOT_HOLD`] passes), so it goes on from the log.
    sent_snapshots: HashMap<u64, (u64, Instant)>,
    log_keep: u64,
    ticks: u64,
    /// No membership yet (joining): take no log entries before a snapshot.
    blank: bool,
    /// Snapshots handed to (or refused by) the transport, to tell raft-rs after `advance`.
    snap_reports: Vec<(u64, SnapshotStatus)>,
    /// A snapshot being taken off the Raft task (reading a large state takes seconds, and
    /// the leader must keep heartbeating meanwhile): when it started, the applied index
    /// then (the snapshot's index is at least that: the log is kept from there), and the task.
    taking: Option<(Instant, u64, Taking)>,
}

/// A snapshot's content and its encoding.
type Taken = (state_snapshot::Payload, Vec<u8>);
/// The task reading and encoding a snapshot.
type Taking = JoinHandle<Result<Taken, Error>>;

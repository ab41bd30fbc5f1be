//! Multi-Raft for a storage node, on raft-rs: a small batch system after TiKV's raftstore.
//!
//! Owns: every replica group hosted by this node, driving each group's `RawNode`, handing
//! every Ready's entries and hard state to the node's shared log (one group commit — one
//! fdatasync — covers every group's writes of a poll round), applying committed entries to
//! the chunk store, and batching outgoing Raft messages per peer node.
//!
//! Must never: block its poller on the network or on an fsync (the log writer and the
//! flusher threads do that; the chunk store's few syncs inside an apply excepted: a link,
//! a partial write over a zeroed block, a hydrate that filled blocks: two fdatasyncs per
//! entry of up to 4 MiB, which also wait for a flusher's sync of the same group's chunk
//! store running meanwhile, as it holds the store's sync lock); apply an entry out of
//! order or skip one a read could see (a
//! manager op the chunk store refuses, or a merge of layers meeting a full disk, is
//! skipped); answer a write before its entry is committed (it is applied before any later
//! read is served); carry on after the log reported a failed fsync; acknowledge a write, as
//! a leader that cannot apply, whose read it could not serve (such a replica hands over and
//! is reported stuck: `poller/stuck.rs`).
//!
//! Where to start reading: [`RaftNode`] (the handle), then `poller.rs` (the loop). The map:
//! - `poller.rs` and `poller/`: the loop and its events; Readies to the log and the wire
//!   (`ready.rs`), snapshot copies (`catchup.rs`), replicas created, recovered and destroyed
//!   (`lifecycle.rs`), ticks and flushes (`tick.rs`), stuck replicas (`stuck.rs`), messages
//!   batched per peer (`outbox.rs`); its tests (`tests.rs`, `tests/`) and the deterministic
//!   simulation (`sim.rs`, `sim/`; `sim/hydrate.rs` a fill on three replicas).
//! - `group.rs` and `group/`: one group (its RawNode and state); client requests and the
//!   manager's proposals, a restore's fill of a chunk among them ([`RaftNode::hydrate`],
//!   `CmdOp::Hydrate`: no writer epoch, no sequence, so no fence refuses it) (`request.rs`),
//!   applying committed entries (`apply.rs`), the read lease (`lease.rs`).
//! - `membership.rs`: conf changes, snapshots installed, leadership transfers;
//!   `group/election.rs`: elections decided by the newest configuration in the log.
//! - `admit.rs`: which network messages may reach raft-rs; `dedup.rs`: a retried write
//!   takes effect once; `fence.rs`: writer epoch and snapshot sequence floors.
//! - `log_tail.rs`: raft-rs `Storage` over the in-memory tail of the log; `slots.rs`: the
//!   on-disk format of a group's slots (hard state, applied point, configuration,
//!   membership).
//! - `clock.rs` (real or simulated time), `logger.rs` (raft-rs logs to `tracing`),
//!   `metrics.rs`.
//!
//! New code goes beside the idea it extends; a new idea gets a file of its own.
//!
//! Reads are served by the leader from its applied state without a round trip
//! (`ReadOnlyOption::LeaseBased` with `check_quorum`): a leader that cannot hear a quorum
//! steps down within an election timeout, before followers will vote for anyone else.
//!
//! The leader sends entries to its followers in the same poll round as it hands them to its
//! own log (Raft thesis §10.2.1): commit needs any majority's fsync, not the leader's first.

#![warn(missing_docs)]

mod admit;
mod clock;
mod dedup;
mod fence;
mod group;
mod log_tail;
mod logger;
mod membership;
mod metrics;
mod poller;
pub mod scrub;
mod slots;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use tessera_engine::{ChunkStore, ChunkStores, Log, Recovered};
use tessera_proto::control::{GroupOp, GroupSpec, GroupState, MembershipState, PeerInfo};
use tessera_proto::data::{RaftBatch, Reply, Request};

/// How a request's answer is delivered (called exactly once, from the poller task).
pub type Respond = Box<dyn FnOnce(Reply) + Send>;

/// Sends Raft messages to other storage nodes. Best effort and non-blocking: Raft retries
/// whatever is lost. A trait because messages cross a real network in production and a
/// faulty one in tests.
pub trait Transport: Send + Sync + 'static {
    /// Queue `batch` for node `to`.
    fn send(&self, to: u64, batch: RaftBatch);
    /// Where node `node` listens (learned from group membership).
    fn set_peer(&self, node: u64, addr: &str);
}

/// Copies a group's chunk data from the node that sent this replica a snapshot. The receiver
/// compares block checksums and moves only the blocks that differ, so a replica that was
/// away briefly pays for what changed, not for everything it holds.
pub trait SnapshotFetcher: Send + Sync + 'static {
    /// Bring `job.store` to (at least) the state of `job.from`'s replica at `job.index`,
    /// make it durable, then call `done` (from any thread).
    fn fetch(&self, job: FetchJob, done: Box<dyn FnOnce(Result<(), FetchError>) + Send>);
}

/// Why a snapshot copy failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// Worth another try (the source went away, a local write failed): the leader is told
    /// at once, and offers a new snapshot.
    #[error("{0}")]
    Retry(String),
    /// Making the copied data durable failed: the kernel may have dropped its pages, so the
    /// node must stop, as after a failed log fsync.
    #[error("fatal storage failure: {0}")]
    Fatal(String),
}

/// Why a node's Raft poller stopped for good: the storage under it failed, and carrying on
/// could acknowledge what is not durable or serve what is not there. The node must stop
/// (its process exits; the manager re-replicates its groups).
#[derive(Debug, thiserror::Error)]
pub enum Fatal {
    /// A write or fdatasync of the shared log failed.
    #[error("shared log write failed: {0}")]
    Log(tessera_engine::Error),
    /// Flushing chunk files (so the log behind them can be compacted) failed.
    #[error("flushing chunk files: {0}")]
    Flush(tessera_engine::Error),
    /// An entry could not be applied for a reason other than a full disk or a corrupt
    /// block (those stall the group instead).
    #[error("applying entry {index} of group {group}: {source}")]
    Apply {
        /// The group whose entry it was.
        group: u64,
        /// The entry's log index.
        index: u64,
        /// What the chunk store answered.
        source: tessera_engine::Error,
    },
    /// A snapshot copy could not make its data durable.
    #[error("copying a snapshot of group {group}: {source}")]
    Copy {
        /// The group whose snapshot was being copied.
        group: u64,
        /// Why the copy failed.
        source: FetchError,
    },
    /// The log could not record a destroyed replica's tombstone.
    #[error("removing group {group}: {source}")]
    Remove {
        /// The destroyed replica's group.
        group: u64,
        /// What the shared log answered.
        source: tessera_engine::Error,
    },
    /// raft-rs asserted one of its invariants.
    #[error("the raft poller panicked")]
    Panicked,
}

/// Called once, from the poller, when the node must stop.
pub type OnFatal = Arc<dyn Fn(&Fatal) + Send + Sync>;

/// One snapshot to copy.
pub struct FetchJob {
    /// The group whose chunk data is copied.
    pub group: u64,
    /// The node that sent the snapshot (it has applied at least `index`).
    pub from: u64,
    /// Where `from` serves its chunk data.
    pub from_addr: String,
    /// The snapshot's log index: the copy must reach at least the sender's state there.
    pub index: u64,
    /// This replica's chunk store, to be made a copy of the sender's.
    pub store: Arc<ChunkStore>,
}

/// The answer to a membership change request.
pub type MembersAnswer = Box<dyn FnOnce(Result<MembershipState, MembershipError>) + Send>;

/// Why a membership change or leadership transfer was not taken up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipError {
    /// This node does not lead the group; the leader it knows of (0: none).
    NotLeader(u64),
    /// This node hosts no replica of the group.
    GroupNotFound,
    /// The node is stopping.
    ShuttingDown,
}

/// How a node's Raft machinery runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This storage node's id (its Raft peer id in every group).
    pub node_id: u64,
    /// The directory whose free space decides whether writes are accepted.
    pub data_dir: PathBuf,
    /// One tick of every group's Raft clock.
    pub tick: Duration,
    /// Ticks without a leader before a follower campaigns.
    pub election_ticks: usize,
    /// How often applied chunk data is flushed so the log behind it can be recycled.
    pub flush_interval: Duration,
    /// Below this much free space, writes and write-zeroes (everything that allocates) are
    /// refused with `DiskFull`; discards, which free space, are not.
    pub min_free_bytes: u64,
    /// How long a replica's apply may stay stopped at an entry it cannot apply (full disk,
    /// corrupt block) before it is reported stuck to the manager, which then replaces it.
    /// (A stalled leader hands its leadership over at once, whatever this says.)
    pub stuck_after: Duration,
}

impl NodeConfig {
    /// The defaults for node `node_id` whose data lives under `data_dir`: a 100 ms tick, a
    /// ten-tick election timeout, 64 MiB of free space kept, stuck after 10 s.
    pub fn new(node_id: u64, data_dir: PathBuf) -> Self {
        NodeConfig {
            node_id,
            data_dir,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            flush_interval: Duration::from_millis(500),
            min_free_bytes: 64 << 20,
            stuck_after: Duration::from_secs(10),
        }
    }
}

pub(crate) enum Event {
    Raft(RaftBatch),
    Request(Request, Respond, std::time::Instant),
    Persisted(Vec<(u64, u64)>),
    Flushed(Vec<(u64, u64, u64)>),
    /// What makes the compacted entries unnecessary (a checkpoint of the applied index,
    /// an installed snapshot) is durable: the log may be compacted up to these indexes.
    Compact(Vec<(u64, u64)>),
    CreateGroup(GroupSpec),
    /// The manager says this replica is no longer a member: destroy it.
    RemoveGroup(u64),
    /// The log dropped a destroyed group: its chunk files can go.
    Destroyed(u64),
    /// A destroyed group's chunk files are gone.
    DestroyDone(u64),
    SnapshotFetched {
        group: u64,
        msg: Box<raft::eraftpb::Message>,
        result: Result<(), FetchError>,
    },
    SnapshotActivity(u64),
    ChangeMembers {
        group: u64,
        peers: Vec<PeerInfo>,
        respond: MembersAnswer,
    },
    TransferLeader {
        group: u64,
        to: u64,
        respond: MembersAnswer,
    },
    DropChunks {
        group: u64,
        volume: u64,
        chunks: Vec<u64>,
        respond: Respond,
    },
    GroupOps {
        group: u64,
        ops: Vec<GroupOp>,
        respond: Respond,
    },
    Hydrate {
        group: u64,
        volume: u64,
        chunk: u64,
        offset: u32,
        data: bytes::Bytes,
        respond: Respond,
    },
    Status(Box<dyn FnOnce(Vec<GroupState>) + Send>),
    /// A scrub mark or repair to propose (see [`RaftNode::propose_scrub`]).
    Scrub {
        group: u64,
        cmd: tessera_proto::command::Command,
        respond: Respond,
    },
    UnfilledHook(UnfilledHook),
    Fatal(Fatal),
    Shutdown,
}

/// Called on the poller (it must not block: hand the work to a task) when a replica's
/// apply stops at an entry that needs blocks of a restored chunk not filled yet, as
/// `(group, volume, chunk, blocks)` (block indexes in the chunk). Such an entry was
/// committed (and acknowledged at commit), so no later entry can fill its blocks first: the
/// storage node fills them outside the log (`ChunkStore::hydrate` of the backup's verified
/// bytes, which only fills blocks no layer holds, alike on every replica) and the apply is
/// retried. Called again while the stall lasts (at most once a second per group).
pub type UnfilledHook = Arc<dyn Fn(u64, u64, u64, Vec<u32>) + Send + Sync>;

/// Handle to the node's multi-Raft machinery. Cheap to clone; every method only queues an
/// event for the poller.
///
/// The poller is a task on the caller's tokio runtime, beside the node's network tasks: on a
/// current-thread runtime a request reaches Raft and its answer reaches the socket without
/// waking another thread. Only the log writer and the chunk flusher, which block on fsync,
/// are threads of their own.
#[derive(Clone)]
pub struct RaftNode {
    tx: mpsc::UnboundedSender<Event>,
    watches: Arc<scrub::Watches>,
    task: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl RaftNode {
    /// Rebuilds every group the log recovered and starts the poller on the current tokio
    /// runtime (must be called from within one). `on_fatal` is called (once) if the log
    /// fails: the node must stop.
    pub fn start(
        config: NodeConfig,
        log: Log,
        recovered: Recovered,
        chunks: Arc<ChunkStores>,
        transport: Arc<dyn Transport>,
        fetcher: Arc<dyn SnapshotFetcher>,
        on_fatal: OnFatal,
    ) -> std::io::Result<RaftNode> {
        let (tx, rx) = mpsc::unbounded_channel();
        let watches = scrub::Watches::new();
        let mut p = poller::Poller::new(
            config,
            log,
            (chunks, watches.clone()),
            transport,
            fetcher,
            tx.clone(),
            on_fatal.clone(),
        )?;
        p.recover(recovered);
        let poller = tokio::spawn(async move { p.run(rx).await });
        // A panic in the poller (raft-rs asserts its invariants) must stop the node, not
        // leave it heartbeating with no groups.
        let task = tokio::spawn(async move {
            if let Err(e) = poller.await
                && e.is_panic()
            {
                on_fatal(&Fatal::Panicked);
            }
        });
        Ok(RaftNode {
            tx,
            watches,
            task: Arc::new(std::sync::Mutex::new(Some(task))),
        })
    }

    /// Installs the hook called when an apply stops at blocks of a restored chunk not
    /// filled yet (see [`UnfilledHook`]); replaces an earlier one.
    pub fn on_unfilled(&self, hook: UnfilledHook) {
        let _ = self.tx.send(Event::UnfilledHook(hook));
    }

    /// A data-plane request; `respond` gets the answer.
    pub fn submit(&self, req: Request, respond: Respond) {
        if let Err(mpsc::error::SendError(Event::Request(_, respond, _))) = self
            .tx
            .send(Event::Request(req, respond, std::time::Instant::now()))
        {
            respond(Reply::Unavailable("storage node is shutting down".into()));
        }
    }

    /// Raft messages from another node.
    pub fn step(&self, batch: RaftBatch) {
        let _ = self.tx.send(Event::Raft(batch));
    }

    /// Host a replica of this group (no-op if it is already hosted).
    pub fn create_group(&self, spec: GroupSpec) {
        let _ = self.tx.send(Event::CreateGroup(spec));
    }

    /// Drop chunks of a deleted volume, through the group's log. Answers once proposed.
    pub fn drop_chunks(&self, group: u64, volume: u64, chunks: Vec<u64>, respond: Respond) {
        if let Err(mpsc::error::SendError(Event::DropChunks { respond, .. })) =
            self.tx.send(Event::DropChunks {
                group,
                volume,
                chunks,
                respond,
            })
        {
            respond(Reply::Unavailable("storage node is shutting down".into()));
        }
    }

    /// Leader only: propose the manager's `ops` (fences, links, flattens, unlinks,
    /// rollbacks, merges of layers) through the group's log, in order. Answers `Ok` once the
    /// last one is committed (reads that follow are served only after it is applied),
    /// `NotLeader`, `GroupNotFound`, `BadRequest` for an op that could never apply (or a
    /// rollback or merge not behind the fence it needs), or `Unavailable`.
    /// A fence raises the group's floors at once, as a request's does.
    pub fn apply_ops(&self, group: u64, ops: Vec<GroupOp>, respond: Respond) {
        if let Err(mpsc::error::SendError(Event::GroupOps { respond, .. })) =
            self.tx.send(Event::GroupOps {
                group,
                ops,
                respond,
            })
        {
            respond(Reply::Unavailable("storage node is shutting down".into()));
        }
    }

    /// Leader only: propose filling blocks of a restored chunk with a backup's bytes
    /// (`CmdOp::Hydrate`: `data` at `offset`, whole blocks, at most `MAX_IO`; written only
    /// where no layer of the chunk holds the block). Answers `Ok` once committed,
    /// `NotLeader`, `GroupNotFound`, `BadRequest` (not whole blocks, out of the chunk, more
    /// than `MAX_IO`), `DiskFull` (the node is below its free-space floor, as for writes)
    /// or `Unavailable`. Not fenced: carries no writer epoch or sequence, so no attachment
    /// and no snapshot refuses it.
    pub fn hydrate(
        &self,
        group: u64,
        volume: u64,
        chunk: u64,
        offset: u32,
        data: bytes::Bytes,
        respond: Respond,
    ) {
        if let Err(mpsc::error::SendError(Event::Hydrate { respond, .. })) =
            self.tx.send(Event::Hydrate {
                group,
                volume,
                chunk,
                offset,
                data,
                respond,
            })
        {
            respond(Reply::Unavailable("storage node is shutting down".into()));
        }
    }

    /// Leader only: propose a scrub step's `CmdOp::ScrubMark` or `CmdOp::Repair` (built by
    /// the caller: no id, no writer epoch, no sequence) through the group's log. Answers
    /// `Ok` once committed, `NotLeader`, `GroupNotFound`, `BadRequest` (another op, a mark
    /// of 0, a repair whose data does not decode or lies outside the chunk), `DiskFull` (a
    /// repair while the node is below its free-space floor) or `Unavailable`. Not fenced.
    pub fn propose_scrub(
        &self,
        group: u64,
        cmd: tessera_proto::command::Command,
        respond: Respond,
    ) {
        if let Err(mpsc::error::SendError(Event::Scrub { respond, .. })) =
            self.tx.send(Event::Scrub {
                group,
                cmd,
                respond,
            })
        {
            respond(Reply::Unavailable("storage node is shutting down".into()));
        }
    }

    /// The node's scrub watches (see [`scrub::Watches`]).
    pub fn watches(&self) -> Arc<scrub::Watches> {
        self.watches.clone()
    }

    /// Destroy this node's replica of `group` (it is no longer a member) and its data.
    pub fn remove_group(&self, group: u64) {
        let _ = self.tx.send(Event::RemoveGroup(group));
    }

    /// A peer is copying `group`'s chunk data from this node (keeps its snapshot alive).
    pub fn snapshot_activity(&self, group: u64) {
        let _ = self.tx.send(Event::SnapshotActivity(group));
    }

    /// Leader only: one step towards the group's voters being exactly `peers` (see
    /// `membership.rs`); answers with the membership as it stands.
    pub fn change_members(&self, group: u64, peers: Vec<PeerInfo>, respond: MembersAnswer) {
        if let Err(mpsc::error::SendError(Event::ChangeMembers { respond, .. })) =
            self.tx.send(Event::ChangeMembers {
                group,
                peers,
                respond,
            })
        {
            respond(Err(MembershipError::ShuttingDown));
        }
    }

    /// Leader only: hand the group's leadership to node `to`.
    pub fn transfer_leader(&self, group: u64, to: u64, respond: MembersAnswer) {
        if let Err(mpsc::error::SendError(Event::TransferLeader { respond, .. })) =
            self.tx.send(Event::TransferLeader { group, to, respond })
        {
            respond(Err(MembershipError::ShuttingDown));
        }
    }

    /// The state of every hosted group.
    pub fn status(&self, respond: Box<dyn FnOnce(Vec<GroupState>) + Send>) {
        let _ = self.tx.send(Event::Status(respond));
    }

    /// Stops the poller (pending requests are answered `Unavailable`) and waits for it.
    pub async fn shutdown(&self) {
        let _ = self.tx.send(Event::Shutdown);
        let handle = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.await;
        }
    }
}

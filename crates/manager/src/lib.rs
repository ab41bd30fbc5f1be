//! The control plane: topology, volumes, placement of replica groups, routes, persisted in an
//! embedded database and replicated by the managers' own Raft group.
//!
//! Start with [`Manager::start`]; the protocol is [`tessera_proto::control::ManagerRequest`]
//! in `Rpc` frames. Modules, from the wire inwards (each depends only on those below it):
//!
//! Async (tokio tasks):
//! - `server`: connections, frames, shutdown, delivery of drop orders after a delete, the
//!   applier task. Wiring: no rule of its own.
//! - `reconcile_loop`: runs a reconcile pass every `reconcile_ms` and makes its calls to
//!   storage nodes (`ChangeMembers`, `TransferLeader`), off the request path.
//! - `snapshot_loop`: on the leading manager, finishes snapshots, clones and restores'
//!   links left unfinished and carries every flatten and every reclaim of deleted snapshots' space
//!   (`reclaim_loop`) on, chunk by chunk, rate limited together (`pace`).
//! - `backup_loop`, `copy_loop`, `gc_loop`, `restore_loop`: on the leading manager, the
//!   backups' background jobs (uploads through the group leaders' `BackupChunk`, copies
//!   between stores, the collector of unreferenced objects, the pre-warm of restored
//!   volumes through `HydrateChunk` then `Unlink`), planned from the replicated state so a new leader resumes
//!   them; `backup_jobs` holds what they share.
//! - `group_calls`: proposing `GroupOp`s in replica groups (`StorageRequest::Apply` to
//!   each group's leader, retried until a deadline), for snapshots, clones, restores,
//!   rollbacks, flattens, reclaims.
//! - `usage`: asking a volume's groups what its layers hold (`LayerUsage`), for
//!   `VolumeUsage` and the reclaim.
//! - `scrub`: forwarding an operator's scrub start or pause to the node
//!   (`StorageRequest::Scrub`); the nodes' scrubbing itself is what heartbeats report.
//! - `consensus/`: the managers' own Raft group (raft-rs `RawNode` in one tokio task), one
//!   file per idea: `start`, `handle`, `commit_queue`, `task`, `membership`, `compaction`,
//!   `snapshots`, `logger`. Only the leader plans; followers answer `NotLeader`.
//! - `peer`: the manager-to-manager transport of Raft messages.
//!
//! Synchronous:
//! - `service/`: one request → plan, commit, apply, answer, combining the durable state
//!   with what heartbeats tell. `mod.rs` dispatches; one file per request family (`nodes`,
//!   `volumes`, `attachments`, `moves`, `status`, `snapshots`, `clones`); `replicated` is
//!   its HA side: lead
//!   before planning, commit through the Raft log, apply committed entries in log order (on
//!   every manager).
//! - `state_snapshot`: the state tables as one checksummed blob, for a manager the compacted log
//!   no longer reaches (a lagging or new one), and its install in one transaction.
//! - `raft_log`: the Raft log, hard state, conf state and member addresses, in tables of the
//!   same database; compacted once applied.
//! - `db`: the redb database of the state (with `raft_log`, the only code that touches
//!   disk).
//! - `config`: `manager.toml` and the settings derived from it.
//! - `stores`: the backup stores of `manager.toml`, opened and checked at start
//!   (`Arc<Stores>`, shared by requests and the backup jobs).
//!
//! Pure (no I/O, no clocks):
//! - `reconcile/`: which groups change membership and which leaderships move, one pass at
//!   a time: re-replication, draining, rebalancing, leader balance, under throttles; and
//!   what heartbeat acks tell nodes to create or destroy. New recovery policy goes in
//!   `reconcile/planner.rs`.
//! - `attach`: read-write attachments, writer epochs and leases.
//! - `authz`: who may send which request (the caller's certificate against it).
//! - `liveness`: heartbeat ages, node health, reported group leaders. Memory only.
//! - `state/`: the durable state and every rule that changes it. All changes are
//!   `state::Mutation`s applied by one function (`state/apply.rs`), with the Raft log
//!   between planning and applying; plans and queries per entity in `nodes`, `volumes`,
//!   `routes`.
//! - `placement`: which nodes new replica groups get (distinct racks, least-loaded nodes).
//! - `volume`: volume names, sizes, chunk sizes.
//! - `error`: the crate's [`Error`].
//!
//! Where new code goes: a new request → its family's file in `service/` and, if it changes
//! the state, a `Mutation` and its plan in `state/`; a new recovery rule → `reconcile/`;
//! anything touching disk → `db` or `raft_log`.
//!
//! A membership change is a persisted `target` on the group (`state::Mutation::SetGroupTarget`)
//! carried out by the group's leader and recorded with `SetGroupMembers` once the leader says
//! it is done; `members` are only ever the voters the leader confirmed. A node is never told to
//! destroy a replica of a group whose members or target include it.
//!
//! Must not depend on the storage engine or the `tessera-raft` crate: the manager sees groups
//! only through heartbeats and control messages, and drives its own Raft group with raft-rs
//! directly. Node liveness stays in the leader's memory, never replicated: a new leader
//! gives every node a full grace period from when it took over. What heartbeats prove for
//! good is replicated state instead: a group some replica reported a leader of is recorded
//! as established (`SetGroupsEstablished`) before the heartbeat is answered, and from then
//! on every manager tells a member that lost its replica to rejoin, never to start over as
//! a fresh voter.

#![warn(missing_docs)]

mod attach;
mod authz;
mod backup_jobs;
mod backup_loop;
mod capability;
mod config;
mod consensus;
mod copy_loop;
mod db;
mod error;
/// The manager as the `manager` fuzz target drives it; never part of the product.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod gc_loop;
mod group_calls;
mod liveness;
mod pace;
mod peer;
mod placement;
mod raft_log;
mod reclaim_loop;
mod reconcile;
mod reconcile_loop;
mod restore_loop;
mod revocation;
mod scrub;
mod server;
mod service;
mod snapshot_loop;
mod state;
mod state_snapshot;
mod stores;
mod usage;
mod volume;

pub use config::{
    DEFAULT_BACKUP_BYTES_PER_SEC, DEFAULT_LISTEN, DEFAULT_RESTORE_BYTES_PER_SEC, ManagerConfig,
    ManagerConfigFile, ManagerPeer,
};
pub use error::Error;
pub use server::Manager;
pub use stores::{S3Config, StoreConfig};

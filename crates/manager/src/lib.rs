//! The control plane: topology, volumes, placement of replica groups, routes, persisted in an
//! embedded database.
//!
//! Start with [`Manager::start`]; the protocol is [`tessera_proto::control::ManagerRequest`]
//! in `Rpc` frames. Modules, from the wire inwards:
//!
//! - `server`: connections, frames, shutdown, delivery of drop orders after a delete, the
//!   applier task. Async, like `replica` and `reconcile_loop`; the rest is synchronous.
//! - `service`: one request → plan, commit, apply, answer. Combines the durable state with
//!   what heartbeats tell. `service::replicated` is its HA side: lead before planning, commit
//!   through the Raft log, apply committed entries in log order (on every manager).
//! - `replica`: the managers' own Raft group (raft-rs `RawNode` in one tokio task) and the
//!   commit queue. Only the leader plans; followers answer `NotLeader`.
//! - `peer`: the manager-to-manager transport of Raft messages.
//! - `raft_log`: the Raft log, hard state, conf state and member addresses, in tables of the
//!   same database; compacted once applied.
//! - `snapshot`: the state tables as one checksummed blob, for a manager the compacted log
//!   no longer reaches (a lagging or new one), and its install in one transaction.
//! - `state`: the durable state and every rule that changes it, as pure code. All changes
//!   are `state::Mutation`s applied by one function, with the Raft log between planning and
//!   applying.
//! - `placement`: where new replica groups go (distinct racks, least-loaded nodes).
//! - `reconcile`: which groups change membership and which leaderships move, one pass at a
//!   time: re-replication, draining, rebalancing, leader balance, under throttles; and what
//!   heartbeat acks tell nodes to create or destroy. Pure; new recovery policy goes here.
//! - `reconcile_loop`: the async loop running a reconcile pass every `reconcile_ms` and calling the
//!   storage nodes (`ChangeMembers`, `TransferLeader`) off the request path.
//! - `volume`: volume names, sizes, chunk sizes.
//! - `liveness`: heartbeat ages, node health, reported group leaders. Memory only.
//! - `db`: the redb database (with `raft_log`, the only code that touches disk).
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

mod attach;
mod config;
mod consensus;
mod db;
mod error;
mod liveness;
mod peer;
mod placement;
mod raft_log;
mod reconcile;
mod reconcile_loop;
mod server;
mod service;
mod snapshot;
mod state;
mod volume;

pub use config::{DEFAULT_LISTEN, ManagerConfig, ManagerConfigFile, ManagerPeer};
pub use error::Error;
pub use server::Manager;

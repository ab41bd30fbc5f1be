//! The control plane: topology, volumes, placement of replica groups, routes, persisted in an
//! embedded database.
//!
//! Start with [`Manager::start`]; the protocol is [`tessera_proto::control::ManagerRequest`]
//! in `Rpc` frames. Modules, from the wire inwards:
//!
//! - `server`: connections, frames, shutdown, delivery of drop orders after a delete. Async,
//!   with `mover`.
//! - `service`: one request → plan, commit, apply, answer. Combines the durable state with
//!   what heartbeats tell.
//! - `state`: the durable state and every rule that changes it, as pure code. All changes
//!   are `state::Mutation`s applied by one function, so a Raft log can later sit between
//!   planning and applying (manager HA).
//! - `placement`: where new replica groups go (distinct racks, least-loaded nodes).
//! - `reconcile`: which groups change membership and which leaderships move, one pass at a
//!   time: re-replication, draining, rebalancing, leader balance, under throttles; and what
//!   heartbeat acks tell nodes to create or destroy. Pure; new recovery policy goes here.
//! - `mover`: the async loop running a reconcile pass every `reconcile_ms` and calling the
//!   storage nodes (`ChangeMembers`, `TransferLeader`) off the request path.
//! - `volume`: volume names, sizes, chunk sizes.
//! - `liveness`: heartbeat ages, node health, reported group leaders. Memory only.
//! - `store`: the redb database; the only code that touches disk.
//!
//! Must not depend on the storage engine or Raft crates: the manager sees groups only through
//! heartbeats and control messages.
//!
//! A membership change is a persisted `target` on the group (`state::Mutation::SetGroupTarget`)
//! carried out by the group's leader and recorded with `SetGroupMembers` once the leader says
//! it is done; `members` are only ever the voters the leader confirmed. A node is never told to
//! destroy a replica of a group whose members or target include it.

mod config;
mod error;
mod liveness;
mod mover;
mod placement;
mod reconcile;
mod server;
mod service;
mod state;
mod store;
mod volume;

pub use config::{DEFAULT_LISTEN, ManagerConfig, ManagerConfigFile};
pub use error::Error;
pub use server::Manager;

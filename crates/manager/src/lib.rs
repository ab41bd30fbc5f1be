//! The control plane: topology, volumes, placement of replica groups, routes, persisted in an
//! embedded database.
//!
//! Start with [`Manager::start`]; the protocol is [`tessera_proto::control::ManagerRequest`]
//! in `Rpc` frames. Modules, from the wire inwards:
//!
//! - `server`: connections, frames, shutdown, delivery of drop orders after a delete. The
//!   only async code.
//! - `service`: one request → plan, commit, apply, answer. Combines the durable state with
//!   what heartbeats tell.
//! - `state`: the durable state and every rule that changes it, as pure code. All changes
//!   are `state::Mutation`s applied by one function, so a Raft log can later sit between
//!   planning and applying (manager HA).
//! - `placement`: where new replica groups go (distinct racks, least-loaded nodes).
//! - `volume`: volume names, sizes, chunk sizes.
//! - `liveness`: heartbeat ages, node health, reported group leaders. Memory only.
//! - `store`: the redb database; the only code that touches disk.
//!
//! Must not depend on the storage engine or Raft crates: the manager sees groups only through
//! heartbeats and control messages.

mod config;
mod error;
mod liveness;
mod placement;
mod raft_log;
mod replica;
mod server;
mod service;
mod state;
mod store;
mod volume;

pub use config::{DEFAULT_LISTEN, ManagerConfig, ManagerConfigFile, ManagerPeer};
pub use error::Error;
pub use server::Manager;

//! Keeping every group on three healthy racks: re-replication, draining, rebalancing and
//! leader balance, as pure planning. No I/O and no clocks: the caller passes the state, what
//! heartbeats tell ([`Liveness`](crate::liveness::Liveness)) and the time;
//! `crate::reconcile_loop` runs a pass every `reconcile_ms`, commits the moves planned here
//! as [`Mutation::SetGroupTarget`](crate::state::Mutation::SetGroupTarget) and sends the
//! storage calls.
//!
//! A *move* is a membership change of one group from its `members` to its persisted
//! `target`, carried out by the group's leader (`StorageRequest::ChangeMembers`): new nodes
//! first host the group as joining replicas (told in heartbeat acks), catch up as learners,
//! then a joint-consensus change makes `target` the voters. When the leader answers `done`,
//! `SetGroupMembers` records the new members and the removed nodes are told to destroy their
//! replica. One move per group at a time; a move is re-aimed (its target changed) only when
//! a node of its target goes down, loses the group or is drained.
//!
//! Priorities, one pass: (1) replace members that are down, lost their replica, or report it
//! stuck (it cannot apply: see `tessera_raft`'s `poller/stuck.rs`), groups missing the most
//! first; (2) move replicas off draining nodes, leaders first; (3) when
//! nothing else is moving, even out replica counts; (4) even out leaderships. Throttles bound
//! the moves in flight in total and per receiving node, so recovery traffic leaves room for
//! client I/O.
//!
//! One idea per file:
//!
//! - `vocabulary`: what a pass talks about: [`Limits`], `Why`, `Move`, `Transfer`, `Plan`,
//!   [`Facts`], and membership helpers ([`same_nodes`]).
//! - `memory`: what the reconciler remembers between passes ([`Memory`], `LostTracker`).
//! - `planner`: one pass, [`plan`]: replacements, draining, rebalancing, leader balance,
//!   under the throttles. New recovery policy goes here.
//! - `heartbeat`: what a heartbeat proves ([`newly_established`]) and what its ack orders
//!   ([`heartbeat_orders`]).
//! - `drive`: which storage calls carry the moves on ([`drive()`]).
//!
//! Must never do I/O, read a clock or commit anything: every file here is pure, so every
//! rule can be tested with a made-up cluster (`tests`).

mod drive;
mod heartbeat;
mod memory;
mod planner;
mod vocabulary;

#[cfg(test)]
mod tests;

pub use drive::{Drive, drive};
pub use heartbeat::{heartbeat_orders, newly_established};
pub use memory::Memory;
pub use planner::plan;
pub use vocabulary::{Facts, Limits, same_nodes};

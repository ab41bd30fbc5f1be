//! Framed TCP (or TLS) connections and control-plane RPC, shared by every Tessera process.
//!
//! Owns: reading and writing [`tessera_proto::frame::Frame`]s on async streams, the
//! one-request control-plane call ([`call`]) with a deadline, and the call to whichever of
//! several managers leads ([`call_managers`]). Must not know what any message means beyond
//! its frame kind and the manager's not-leader answer.
//!
//! - [`tls`]: plain TCP or mutual TLS ([`Security`]): dialling the server expected
//!   ([`Expect`]), accepting, the peer's [`Identity`]; making certificates.
//! - [`conn`]: a connection either way ([`Conn`]) and its halves.
//! - [`stream`]: frames on a byte stream ([`FrameReader`], [`write_frame`]).
//! - [`rpc`]: control-plane calls ([`call`], [`call_managers`]) and their replies
//!   ([`rpc_reply`]).
//! - [`writer`]: the batched frame writer every connection that sends more than one frame
//!   at a time goes through ([`FrameWriter`]), and the queues it drains.
//! - [`link`]: a reconnecting one-way connection to a peer, with a bounded queue
//!   ([`PeerLink`]): Raft messages between storage nodes and between managers.
//! - [`ingress`]: a server's connection caps, deadlines and byte budget ([`Ingress`],
//!   [`IngressLimits`], [`Budget`]).
//! - [`error`]: what went wrong ([`NetError`]).

#![warn(missing_docs)]

pub mod conn;
pub mod error;
pub mod ingress;
pub mod link;
pub mod rpc;
pub mod stream;
pub mod tls;
pub mod writer;

pub use conn::{Conn, ConnRead, ConnWrite};
pub use error::NetError;
pub use ingress::{Admitted, Budget, Crowded, Ingress, IngressLimits};
pub use link::{LinkOptions, PeerLink};
pub use rpc::{MANAGER_RETRY_FOR, call, call_managers, rpc_reply};
pub use stream::{FrameReader, ReadLimits, SMALL_BODY, write_frame};
pub use tls::{Expect, Identity, Role, Security};
pub use writer::{FrameWriter, Outgoing, Queue};

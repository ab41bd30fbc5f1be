//! The crate's error: what went wrong talking to a peer, named by what the caller can do
//! (retry elsewhere on a transport failure, act on a definite [`NetError::Control`] answer).

use std::time::Duration;

use tessera_proto::DecodeError;
use tessera_proto::control::ControlError;
use tessera_proto::frame::Kind;

use crate::rpc::MANAGER_RETRY_FOR;
use crate::tls::{Expect, Identity};

/// Why a connection, a frame or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The connection could not be opened: the peer is down or unreachable.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// The TLS handshake failed for TLS's own reasons: one side's certificate is not from
    /// the other's CA, names no one, or expired. Definite until an operator changes
    /// certificates (a connection lost mid-handshake is [`NetError::Connect`]).
    #[error("tls handshake with {addr} failed: {reason}")]
    Handshake {
        /// The peer.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The server's certificate is the cluster's but names another process than the one
    /// dialled (a stale address, or one taken over): nothing was sent to it. Transient
    /// for the caller, like an unreachable peer (the address may be fixed, or the process
    /// move back); [`Security::connect`] logs it.
    ///
    /// [`Security::connect`]: crate::Security::connect
    #[error(
        "the server at {addr} is {}, not {expected}: refused",
        found.as_ref().map_or_else(|| "no one".to_string(), ToString::to_string)
    )]
    WrongPeer {
        /// The address dialled.
        addr: String,
        /// Who was expected there.
        expected: Expect,
        /// Who the server's certificate names (`None`: no one).
        found: Option<Identity>,
    },
    /// The peer answered plain frames with TLS: it is secure and this side runs
    /// `--insecure`. Definite, like a refused handshake.
    #[error(
        "the peer speaks TLS: it expects a certificate, and this side runs --insecure (pass \
         --certs-dir)"
    )]
    SpeaksTls,
    /// Reading or writing an open connection failed: it is unusable.
    #[error("i/o with peer: {0}")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that are not a valid frame (or answer): the connection is
    /// dropped, as it is not speaking Tessera.
    #[error("peer sent a bad frame: {0}")]
    Decode(#[from] DecodeError),
    /// The peer closed the connection before it answered.
    #[error("peer closed the connection")]
    Closed,
    /// Connecting, or the whole call, took longer than allowed.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The peer that did not answer.
        addr: String,
        /// How long it was given.
        timeout: Duration,
    },
    /// The peer sent nothing for too long, or took too long over one frame: a server
    /// closes such a connection (clients reconnect).
    #[error("the peer did not send {what} within {after:?}: closed")]
    Stalled {
        /// What was awaited: "anything" (idle) or "the rest of a frame" (slow).
        what: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// The peer answered with a frame of a kind that does not answer the request.
    #[error("unexpected frame kind {0:?}")]
    UnexpectedKind(Kind),
    /// The peer answered the call with an error: a definite answer, not a transport failure.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// No manager answered as leader before [`MANAGER_RETRY_FOR`] ran out: they are down,
    /// unreachable, or electing. Transient, like a connection failure.
    #[error("no manager leader among {managers} within {MANAGER_RETRY_FOR:?}; last: {last}")]
    NoLeader {
        /// The manager addresses tried, comma-separated.
        managers: String,
        /// The last failure seen.
        last: Box<NetError>,
    },
}

//! NBD over TLS (`NBD_OPT_STARTTLS`, x509, as qemu's `tls-creds-x509` and libnbd's
//! `nbds://` speak it) in the spec's TLS-only mode: before the upgrade the server takes
//! only `NBD_OPT_STARTTLS` and `NBD_OPT_ABORT`, answers every other option
//! `NBD_REP_ERR_TLS_REQD`, and hangs up on `NBD_OPT_EXPORT_NAME` (which cannot be refused
//! politely). After the upgrade haggling goes on as on a plain connection, under the
//! [`Grant`](crate::grant::Grant) of the client's certificate.
//!
//! Must never: read past the `NBD_OPT_STARTTLS` option before the TLS handshake (reads here
//! are unbuffered: the client's handshake bytes belong to TLS), or let a client without a
//! certificate of the gateway's cluster CA naming a Tessera identity reach an export.

use tessera_net::Identity;
use tessera_net::tls::{ServerTlsStream, TlsAcceptor, peer_identity};
use tokio::net::TcpStream;

use crate::consts::*;
use crate::handshake::{HandshakeError, greet, read_option, reply};

/// Counted once per connection refused, at its first refusal.
pub(crate) static REFUSED: tessera_metrics::LazyCounter = tessera_metrics::LazyCounter::new(
    "tessera_nbd_refused_connections_total",
    "NBD connections refused before an export: an option sent without the TLS this server \
     requires, a failed TLS handshake, a certificate naming no one",
);

/// A connection upgraded to TLS: the stream, who the client is, and whether it asked for
/// no zeroes in the greeting.
pub(crate) struct Secured {
    pub stream: ServerTlsStream<TcpStream>,
    pub who: Identity,
    pub no_zeroes: bool,
}

/// Greets the client, waits for `NBD_OPT_STARTTLS` and runs the TLS handshake. `Ok(None)`:
/// the client aborted politely.
pub(crate) async fn upgrade(
    mut tcp: TcpStream,
    acceptor: &TlsAcceptor,
) -> Result<Option<Secured>, HandshakeError> {
    let no_zeroes = {
        let (mut r, mut w) = tcp.split();
        greet(&mut r, &mut w).await?
    };
    // Whether this connection was already counted as refused (told to start TLS).
    let mut told = false;
    loop {
        let (opt, data) = read_option(&mut tcp).await?;
        match opt {
            OPT_STARTTLS if data.is_empty() => {
                reply(&mut tcp, opt, REP_ACK, &[]).await?;
                break;
            }
            OPT_STARTTLS => {
                reply(
                    &mut tcp,
                    opt,
                    REP_ERR_INVALID,
                    b"NBD_OPT_STARTTLS takes no data",
                )
                .await?;
            }
            OPT_ABORT => {
                // The client may already have hung up; the reply is best effort.
                let _ = reply(&mut tcp, opt, REP_ACK, &[]).await;
                return Ok(None);
            }
            OPT_EXPORT_NAME => {
                let why = "NBD_OPT_EXPORT_NAME without TLS, which this server requires";
                return Err(refuse(told, why.into()));
            }
            _ => {
                if !told {
                    REFUSED.add(1);
                    told = true;
                }
                let msg = b"this server requires TLS: send NBD_OPT_STARTTLS first";
                reply(&mut tcp, opt, REP_ERR_TLS_REQD, msg).await?;
            }
        }
    }
    let stream = match acceptor.accept(tcp).await {
        Ok(s) => s,
        Err(e) => return Err(refuse(told, format!("TLS handshake: {e}"))),
    };
    let Some(who) = peer_identity(stream.get_ref().1.peer_certificates()) else {
        let why = "the client's certificate names no Tessera identity";
        return Err(refuse(told, why.into()));
    };
    Ok(Some(Secured {
        stream,
        who,
        no_zeroes,
    }))
}

/// The refusal `why`, counted unless the connection was counted already (`told`).
fn refuse(told: bool, why: String) -> HandshakeError {
    if !told {
        REFUSED.add(1);
    }
    HandshakeError::Refused(why)
}

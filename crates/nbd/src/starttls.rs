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

/// Counted once per connection refused.
pub(crate) static REFUSED: tessera_metrics::LazyCounter = tessera_metrics::LazyCounter::new(
    "tessera_nbd_refused_connections_total",
    "NBD connections refused before an export: gone without the TLS this server requires \
     (after being told), a failed TLS handshake, a certificate naming no one",
);

/// A connection upgraded to TLS: the stream, who the client is, and whether it asked for
/// no zeroes in the greeting.
pub(crate) struct Secured {
    pub stream: ServerTlsStream<TcpStream>,
    pub who: Identity,
    pub no_zeroes: bool,
}

/// Option data a client may send before TLS: only STARTTLS and ABORT (no data) are of
/// use then, and anything else is refused; a longer option hangs up before it is read.
const MAX_PLAIN_OPTION: u32 = 4096;

/// Greets the client, waits for `NBD_OPT_STARTTLS` and runs the TLS handshake. `Ok(None)`:
/// the client aborted politely without having been refused. A connection that ends without
/// TLS after being told it needs it, or whose handshake fails, is counted once.
pub(crate) async fn upgrade(
    mut tcp: TcpStream,
    acceptor: &TlsAcceptor,
) -> Result<Option<Secured>, HandshakeError> {
    let no_zeroes = {
        let (mut r, mut w) = tcp.split();
        greet(&mut r, &mut w).await?
    };
    // Whether the client was told TLS is required (it is refused if it then goes away).
    let mut told = false;
    match until_starttls(&mut tcp, &mut told).await {
        Ok(true) => {}
        Ok(false) if told => return Err(refuse("aborted without the TLS it was told to start")),
        Ok(false) => return Ok(None),
        Err(HandshakeError::Io(e)) if told => {
            return Err(refuse(&format!("gone without starting TLS ({e})")));
        }
        Err(e @ HandshakeError::Refused(_)) => {
            REFUSED.add(1);
            return Err(e);
        }
        Err(e) => return Err(e),
    }
    let stream = match acceptor.accept(tcp).await {
        Ok(s) => s,
        Err(e) => return Err(refuse(&format!("TLS handshake: {e}"))),
    };
    let Some(who) = peer_identity(stream.get_ref().1.peer_certificates()) else {
        return Err(refuse("the client's certificate names no Tessera identity"));
    };
    Ok(Some(Secured {
        stream,
        who,
        no_zeroes,
    }))
}

/// Options before TLS: `Ok(true)` once `NBD_OPT_STARTTLS` was acknowledged (nothing more is
/// read: the TLS handshake follows), `Ok(false)` on `NBD_OPT_ABORT`. `told` is set once the
/// client was answered `NBD_REP_ERR_TLS_REQD`.
async fn until_starttls(tcp: &mut TcpStream, told: &mut bool) -> Result<bool, HandshakeError> {
    loop {
        let (opt, data) = read_option(&mut *tcp, MAX_PLAIN_OPTION).await?;
        match opt {
            OPT_STARTTLS if data.is_empty() => {
                reply(&mut *tcp, opt, REP_ACK, &[]).await?;
                return Ok(true);
            }
            OPT_STARTTLS => {
                let msg = b"NBD_OPT_STARTTLS takes no data";
                reply(&mut *tcp, opt, REP_ERR_INVALID, msg).await?;
            }
            OPT_ABORT => {
                // The client may already have hung up; the reply is best effort.
                let _ = reply(&mut *tcp, opt, REP_ACK, &[]).await;
                return Ok(false);
            }
            OPT_EXPORT_NAME => {
                return Err(HandshakeError::Refused(
                    "NBD_OPT_EXPORT_NAME without TLS, which this server requires".into(),
                ));
            }
            _ => {
                *told = true;
                let msg = b"this server requires TLS: send NBD_OPT_STARTTLS first";
                reply(&mut *tcp, opt, REP_ERR_TLS_REQD, msg).await?;
            }
        }
    }
}

/// The refusal `why`, counted.
fn refuse(why: &str) -> HandshakeError {
    REFUSED.add(1);
    HandshakeError::Refused(why.to_string())
}

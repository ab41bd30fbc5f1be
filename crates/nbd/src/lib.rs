//! An NBD server exporting every Tessera volume by name.
//!
//! Owns the NBD protocol (newstyle fixed handshake, simple and structured replies) and
//! nothing below it: block storage is reached only through the [`Backend`] / [`Export`]
//! traits, implemented for [`tessera_client::Client`] and [`tessera_client::Volume`].
//! This crate must never interpret volume data, cache it across requests, or reach
//! storage nodes by any other path than the client library; nor may anything a client
//! sends make the server panic or disturb another connection.
//!
//! Map, in the order a connection meets them:
//! - [`NbdServer`] (this file): the accept loop; one task per connection.
//! - `handshake.rs`: option haggling up to `NBD_OPT_GO` / `NBD_OPT_EXPORT_NAME`.
//! - `transmission.rs`: requests, concurrent execution, replies; NBD error numbers.
//! - [`backend`]: the storage seam; `tessera_backend.rs` its Tessera implementation.
//! - `consts.rs`: protocol numbers from the NBD specification (`doc/proto.md`).
//! - `testing.rs`: the NBD client of the tests, here and in the `tessera` binary's tier-2
//!   tests (feature `test-client`); hidden, not part of the API.
//!
//! Behaviour worth knowing:
//! - The empty export name selects the default export: the volume whose name sorts first.
//! - Advertised limits: any byte granularity (minimum block 1), preferred 4 KiB, at most
//!   32 MiB per READ or WRITE; TRIM and WRITE_ZEROES may be longer.
//! - Metadata contexts: `base:allocation` only (with structured replies), so
//!   `NBD_CMD_BLOCK_STATUS` tells holes (`NBD_STATE_HOLE | NBD_STATE_ZERO`), zeroes
//!   (`NBD_STATE_ZERO`) and data (0) apart; at most 256 MiB described per request.
//! - An export named `VOL@SNAP` is snapshot `SNAP` of volume `VOL`, read-only (writes get
//!   `EPERM`); `NBD_OPT_LIST` lists volumes only.
//! - TLS ([`NbdServer::with_tls`], `starttls.rs`): required of every client once given;
//!   the client's certificate then decides what it sees and opens ([`Grant`]).
//! - Not offered: extended headers.

#![warn(missing_docs)]

pub mod backend;
mod consts;
mod grant;
mod handshake;
mod starttls;
mod tessera_backend;
mod transmission;

#[cfg(any(test, feature = "test-client"))]
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tessera_net::Security;
use tessera_net::tls::{Checked, TlsAcceptor};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub use backend::{Allocation, Backend, BackendError, Export, Extent};
pub use grant::Grant;
pub use tessera_backend::ReadOnlyClient;
pub use transmission::{MAX_IN_FLIGHT, MAX_IN_FLIGHT_BYTES};

/// How long a client may take to choose an export before it is dropped, so idle
/// half-open connections do not pile up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);

/// An NBD server bound to a TCP address, serving the exports of one [`Backend`].
pub struct NbdServer<B: Backend> {
    listener: TcpListener,
    local_addr: SocketAddr,
    backend: Arc<B>,
    tls: Option<(TlsAcceptor, Security)>,
}

impl<B: Backend> NbdServer<B> {
    /// Binds `listen` (`host:port`; port 0 picks a free port). NBD's registered port is
    /// 10809.
    pub async fn bind(listen: &str, backend: Arc<B>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        Ok(NbdServer {
            listener,
            local_addr,
            backend,
            tls: None,
        })
    }

    /// Requires TLS (`NBD_OPT_STARTTLS`) of every client, with a client certificate
    /// `security` verifies (as it verifies now: a certificate revoked since ends its
    /// connection at its next request); the certificate's identity then limits the exports
    /// ([`Grant::of`]). Without it every client is granted every export. Refused for an
    /// insecure `security`.
    pub fn with_tls(mut self, security: &Security) -> std::io::Result<Self> {
        let acceptor = security.acceptor().cloned().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "NBD over TLS needs certificates, not an insecure transport",
            )
        })?;
        self.tls = Some((acceptor, security.clone()));
        Ok(self)
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Accepts connections until `shutdown` completes, then stops accepting, lets every
    /// connection answer the requests it has in flight, and returns once all are closed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut connections = JoinSet::new();
        info!(addr = %self.local_addr, "NBD server listening");
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        connections.spawn(connection(
                            stream,
                            peer,
                            self.backend.clone(),
                            self.tls.clone(),
                            stop_rx.clone(),
                        ));
                    }
                    Err(e) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(done) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(e) = done {
                        warn!("connection task failed: {e}");
                    }
                }
            }
        }
        info!(addr = %self.local_addr, "NBD server stopping");
        drop(self.listener);
        let _ = stop_tx.send(true);
        while let Some(done) = connections.join_next().await {
            if let Err(e) = done {
                warn!("connection task failed: {e}");
            }
        }
    }
}

/// One client connection: TLS if required, the handshake, then transmission.
async fn connection<B: Backend>(
    stream: TcpStream,
    peer: SocketAddr,
    backend: Arc<B>,
    tls: Option<(TlsAcceptor, Security)>,
    mut stop: watch::Receiver<bool>,
) {
    debug!(%peer, "connection accepted");
    // Replies are batched by the writer; small ones must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let Some((tls, security)) = tls else {
        let (r, w) = stream.into_split();
        let (r, w) = (BufReader::new(r), BufWriter::new(w));
        return plain(&*backend, r, w, deadline, peer, stop).await;
    };
    // Before the handshake: a revocation put in force during it is checked at the first
    // read.
    let since = security.generation();
    let upgraded = tokio::select! {
        res = tokio::time::timeout_at(deadline, starttls::upgrade(stream, &tls)) => res,
        _ = stop.wait_for(|&s| s) => return,
    };
    let secured = match upgraded {
        Ok(Ok(Some(s))) => s,
        Ok(Ok(None)) => return debug!(%peer, "client aborted the handshake"),
        other => return ended(peer, other.map(|r| r.map(|_| ()))),
    };
    debug!(%peer, who = %secured.who, "TLS established");
    let grant = Grant::of(&secured.who);
    let check = security.peer_check(secured.stream.get_ref().1.peer_certificates(), since);
    let (r, w) = tokio::io::split(secured.stream);
    let (r, w) = (BufReader::new(Checked::new(r, check)), BufWriter::new(w));
    let terms = handshake::Terms {
        grant: &grant,
        tls: true,
    };
    proceed(
        &*backend,
        r,
        w,
        secured.no_zeroes,
        terms,
        deadline,
        peer,
        stop,
    )
    .await;
}

/// A connection without TLS, granted every export: the greeting, then [`proceed`].
async fn plain<B, R, W>(
    backend: &B,
    mut r: R,
    mut w: W,
    deadline: tokio::time::Instant,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) where
    B: Backend,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let no_zeroes = tokio::select! {
        res = tokio::time::timeout_at(deadline, handshake::greet(&mut r, &mut w)) => res,
        _ = stop.wait_for(|&s| s) => return,
    };
    let no_zeroes = match no_zeroes {
        Ok(Ok(z)) => z,
        other => return ended(peer, other.map(|r| r.map(|_| ()))),
    };
    let terms = handshake::Terms {
        grant: &Grant::All,
        tls: false,
    };
    proceed(backend, r, w, no_zeroes, terms, deadline, peer, stop).await;
}

/// Serves one connection over any byte stream exactly as [`NbdServer`] serves a TCP
/// connection without TLS, and returns once it has ended. For the fuzz targets (`fuzz/`),
/// which drive it over an in-memory stream; not part of the API.
#[doc(hidden)]
pub async fn serve_stream<B, S>(backend: &B, stream: S)
where
    B: Backend,
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    // Never stopped: the sender lives as long as the connection.
    let (_never, stop) = watch::channel(false);
    let peer = SocketAddr::from(([127, 0, 0, 1], 0));
    plain(
        backend,
        BufReader::new(r),
        BufWriter::new(w),
        deadline,
        peer,
        stop,
    )
    .await;
}

/// Option haggling within the handshake's `deadline`, then transmission.
#[allow(clippy::too_many_arguments)]
async fn proceed<B, R, W>(
    backend: &B,
    mut r: R,
    mut w: W,
    no_zeroes: bool,
    terms: handshake::Terms<'_>,
    deadline: tokio::time::Instant,
    peer: SocketAddr,
    mut stop: watch::Receiver<bool>,
) where
    B: Backend,
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let negotiated = tokio::select! {
        res = tokio::time::timeout_at(
            deadline,
            handshake::haggle(backend, &mut r, &mut w, no_zeroes, terms),
        ) => res,
        _ = stop.wait_for(|&s| s) => {
            debug!(%peer, "server shutting down during the handshake");
            return;
        }
    };
    let negotiated = match negotiated {
        Ok(Ok(Some(n))) => n,
        Ok(Ok(None)) => return debug!(%peer, "client aborted the handshake"),
        other => return ended(peer, other.map(|r| r.map(|_| ()))),
    };
    debug!(%peer, export = %negotiated.name, structured = negotiated.structured,
        block_status = negotiated.block_status, "entering transmission");
    let mode = transmission::Mode {
        structured: negotiated.structured,
        block_status: negotiated.block_status,
    };
    transmission::serve(negotiated.export, mode, r, w, peer, stop).await;
    debug!(%peer, "connection closed");
}

/// Logs why a handshake ended before transmission (refusals were counted where made).
fn ended(
    peer: SocketAddr,
    why: Result<Result<(), handshake::HandshakeError>, tokio::time::error::Elapsed>,
) {
    match why {
        Ok(Ok(())) => {}
        Err(_) => warn!(%peer, "handshake not finished within {HANDSHAKE_TIMEOUT:?}; dropping"),
        Ok(Err(handshake::HandshakeError::Io(e))) => {
            debug!(%peer, "connection lost during the handshake: {e}");
        }
        Ok(Err(e @ handshake::HandshakeError::Refused(_))) => warn!(%peer, "{e}"),
        Ok(Err(e)) => warn!(%peer, "dropping connection: {e}"),
    }
}

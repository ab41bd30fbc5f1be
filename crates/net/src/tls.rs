//! Transport security: whether a process speaks mutual TLS or plain TCP, and who the peer
//! at the other end of a connection is ([`Security`]).
//!
//! Owns: the process's certificate, key and cluster CA, loaded from a certificates
//! directory ([`Security::load`]); dialling ([`Security::connect`]) and accepting
//! ([`Security::accept`]) with a handshake deadline; the peer's [`Identity`] read from its
//! verified certificate. A secure process requires a certificate signed by the cluster CA
//! from every peer, both ways, and checks servers against [`issue::SERVER_NAME`] (node and
//! manager addresses change; the CA and the identity in the certificate are what bind)
//! and against who it dialled ([`Expect`]).
//!
//! Must never: accept a connection whose handshake did not finish within
//! [`HANDSHAKE_TIMEOUT`] (a stranger holding sockets open costs a task, not a node),
//! accept a peer certificate not signed by the cluster CA, send anything to a server whose
//! certificate names another process than the one dialled, or decide what an identity may
//! do (that is the server's, per request).
//!
//! - [`identity`]: who a certificate names ([`Identity`], [`Role`]).
//! - [`issue`]: making a CA and certificates (`tessera cert`, `tessera dev`, tests).
//! - `sign`: signing with this process's key, and checking what another process of the
//!   cluster signed ([`Security::sign`], [`Security::verify`]).

pub mod crl;
pub mod describe;
pub mod identity;
pub mod issue;
mod live;
mod sign;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, TlsStream};

pub use identity::{Expect, Identity, Role};
pub use live::{CRL_FILE, Checked, PeerCheck};
/// For protocols that start TLS themselves (NBD's `NBD_OPT_STARTTLS`): [`Security::acceptor`].
pub use tokio_rustls::TlsAcceptor;
pub use tokio_rustls::server::TlsStream as ServerTlsStream;

use crate::{Conn, NetError};

/// Longest a peer may take to finish the TLS handshake after connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why certificates could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file held no usable certificate or key, or they do not go together.
    #[error("{0}")]
    Invalid(String),
    /// rustls refused the configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// A certificate could not be made.
    #[error("making a certificate: {0}")]
    Issue(#[from] rcgen::Error),
}

/// How this process talks to its peers: mutual TLS with its own identity, or plain TCP
/// (`--insecure`). Cheap to clone.
#[derive(Clone)]
pub struct Security {
    tls: Option<Arc<Tls>>,
}

struct Tls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
    /// What is presented and trusted now (see `live`).
    live: Arc<live::Live>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tls {
            None => f.write_str("Security(insecure)"),
            Some(t) => write!(f, "Security({})", t.live.me()),
        }
    }
}

/// Insecure: what a configuration holds until its certificates are loaded.
impl Default for Security {
    fn default() -> Self {
        Security::insecure()
    }
}

/// The same identity loaded once (or both insecure): for configurations compared whole.
impl PartialEq for Security {
    fn eq(&self, other: &Self) -> bool {
        match (&self.tls, &other.tls) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Security {}

impl Security {
    /// Plain TCP, no identities: every peer is anonymous.
    pub fn insecure() -> Security {
        Security { tls: None }
    }

    /// Mutual TLS as the identity in `certs_dir/STEM.crt` (key `STEM.key`), trusting the
    /// cluster CAs in `certs_dir/ca.crt` less what `certs_dir/ca.crl` revokes (if there is
    /// one). [`Security::reload`] reads them again.
    pub fn load(certs_dir: &Path, stem: &str) -> Result<Security, TlsError> {
        let files = live::Files {
            dir: certs_dir.to_path_buf(),
            stem: stem.to_string(),
        };
        let stamp = files.stamp();
        Security::with(files.read()?, Some((files, stamp)))
    }

    /// Mutual TLS from PEM: the cluster CA's certificate, this process's certificate
    /// (chain) and its private key.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Security, TlsError> {
        let m = live::Material {
            ca: ca.to_vec(),
            cert: cert.to_vec(),
            key: key.to_vec(),
            crl: Vec::new(),
        };
        Security::with(m, None)
    }

    fn with(
        m: live::Material,
        files: Option<(live::Files, live::Stamp)>,
    ) -> Result<Security, TlsError> {
        let live = Arc::new(live::Live::new(m, files)?);
        let provider = live.provider().clone();
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(live::Dyn(live.clone())))
            .with_cert_resolver(Arc::new(live::Dyn(live.clone())));
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(live::Dyn(live.clone())))
            .with_client_cert_resolver(Arc::new(live::Dyn(live.clone())));
        // No session resumption: a resumed session skips the certificate checks, so a
        // revoked or replaced certificate would go on being taken. Connections live long;
        // a full handshake per connection costs little.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        client.resumption = rustls::client::Resumption::disabled();
        Ok(Security {
            tls: Some(Arc::new(Tls {
                connector: TlsConnector::from(Arc::new(client)),
                acceptor: TlsAcceptor::from(Arc::new(server)),
                live,
            })),
        })
    }

    /// Reads the certificates directory again if a file changed (a renewed certificate or
    /// key, a CA added to or removed from the bundle, a new revocation list) and puts it in
    /// force for new handshakes; open connections whose peer no longer verifies end at
    /// their next read. Whether anything changed. On an error (a file half written, a
    /// certificate naming another identity) what was in force stays, and the same files
    /// are not tried again until they change. Nothing to do when loaded from PEM or
    /// insecure.
    pub fn reload(&self) -> Result<bool, TlsError> {
        match &self.tls {
            Some(t) => t.live.reload(),
            None => Ok(false),
        }
    }

    /// Checks the certificates directory every `every` ([`Security::reload`]), logging
    /// what changed and what was refused, for as long as a clone of this `Security`
    /// lives. Needs a tokio runtime.
    pub fn watch_files(&self, every: Duration) {
        let Some(t) = &self.tls else {
            return;
        };
        let live = Arc::downgrade(&t.live);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(live) = live.upgrade() else {
                    return;
                };
                match live.reload() {
                    Ok(true) => tracing::info!("certificates reloaded from disk"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("certificates not reloaded, the old stay: {e}"),
                }
            }
        });
    }

    /// Moves with every change of what this process trusts (0 when insecure): read it
    /// before a handshake this process runs itself, for [`Security::peer_check`].
    pub fn generation(&self) -> u64 {
        self.tls.as_ref().map_or(0, |t| t.live.generation())
    }

    /// The check of a connection this process accepted itself (a protocol that starts TLS
    /// on its own: NBD): the client's chain `peer`, whose handshake started at generation
    /// `since` ([`Security::generation`]); `None` when insecure.
    pub fn peer_check(&self, peer: Option<&[CertificateDer<'_>]>, since: u64) -> Option<PeerCheck> {
        self.tls
            .as_ref()
            .map(|t| PeerCheck::new(&t.live, peer, false, since))
    }

    /// The subjects (DER) of the CAs this process trusts; none when insecure.
    pub fn ca_subjects(&self) -> Vec<Vec<u8>> {
        self.tls
            .as_ref()
            .map(|t| t.live.ca_subjects())
            .unwrap_or_default()
    }

    /// The revocation lists of `pem` of the CAs this process trusts, each checked against
    /// its CA (well formed, signed by it; lists of other CAs skipped); fails when insecure.
    pub fn check_crls(&self, pem: &[u8]) -> Result<Vec<crl::Crl>, TlsError> {
        match &self.tls {
            Some(t) => t.live.check_crls(pem),
            None => Err(TlsError::Invalid(
                "insecure: no certificates, nothing to revoke".into(),
            )),
        }
    }

    /// Puts in force the revocation lists in `pem` (the manager's) that a trusted CA
    /// signed and that are newer than those in force; whether any was. A list no trusted
    /// CA signed is refused. Insecure: nothing to do.
    pub fn apply_crls(&self, pem: &[u8]) -> Result<bool, TlsError> {
        match &self.tls {
            Some(t) => t.live.apply_crls(pem),
            None => Ok(false),
        }
    }

    /// Whether connections are TLS.
    pub fn is_secure(&self) -> bool {
        self.tls.is_some()
    }

    /// This process's identity; `None` when insecure.
    pub fn identity(&self) -> Option<&Identity> {
        self.tls.as_ref().map(|t| t.live.me())
    }

    /// The server side of TLS, for a protocol that starts it itself (NBD's STARTTLS);
    /// `None` when insecure.
    pub fn acceptor(&self) -> Option<&TlsAcceptor> {
        self.tls.as_ref().map(|t| &t.acceptor)
    }

    /// Opens a connection to `addr` (TCP with `TCP_NODELAY`, then the TLS handshake),
    /// within `timeout` for the whole, to the server `expect` says: one whose certificate
    /// names another process is dropped before anything is sent to it
    /// ([`NetError::WrongPeer`], logged). Insecure: no identities, no check.
    pub async fn connect(
        &self,
        addr: &str,
        expect: Expect,
        timeout: Duration,
    ) -> Result<Conn, NetError> {
        let work = async {
            let tcp = crate::stream::connect_tcp(addr).await?;
            let Some(tls) = &self.tls else {
                return Ok(Conn::Plain(tcp));
            };
            let name =
                ServerName::try_from(issue::SERVER_NAME).map_err(|e| NetError::Handshake {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })?;
            let since = tls.live.generation();
            let s = tls
                .connector
                .connect(name, tcp)
                .await
                .map_err(|e| handshake_error(addr, e))?;
            let found = peer_identity(s.get_ref().1.peer_certificates());
            if !expect.admits(found.as_ref()) {
                let e = NetError::WrongPeer {
                    addr: addr.to_string(),
                    expected: expect,
                    found,
                };
                tracing::warn!("{e}");
                return Err(e);
            }
            let check = PeerCheck::new(&tls.live, s.get_ref().1.peer_certificates(), true, since);
            Ok(Conn::Tls(Box::new(TlsStream::Client(s)), check))
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| NetError::Timeout {
                addr: addr.to_string(),
                timeout,
            })?
    }

    /// The server side of a connection just accepted: the TLS handshake (within
    /// [`HANDSHAKE_TIMEOUT`]) and the peer's identity, `None` when insecure.
    pub async fn accept(&self, tcp: TcpStream) -> Result<(Conn, Option<Identity>), NetError> {
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok((Conn::Plain(tcp), None));
        };
        let addr = tcp
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string());
        let since = tls.live.generation();
        let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(tcp))
            .await
            .map_err(|_| NetError::Timeout {
                addr: addr.clone(),
                timeout: HANDSHAKE_TIMEOUT,
            })?
            .map_err(|e| NetError::Handshake {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let who = peer_identity(s.get_ref().1.peer_certificates()).ok_or_else(|| {
            NetError::Handshake {
                addr,
                reason: "the peer's certificate names no Tessera identity".into(),
            }
        })?;
        let check = PeerCheck::new(&tls.live, s.get_ref().1.peer_certificates(), false, since);
        Ok((Conn::Tls(Box::new(TlsStream::Server(s)), check), Some(who)))
    }
}

/// A failed client handshake: refused if TLS itself failed (a certificate the other side
/// or this one rejects), a connection failure (transient, as a peer restarting) otherwise.
fn handshake_error(addr: &str, e: std::io::Error) -> NetError {
    if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        NetError::Handshake {
            addr: addr.to_string(),
            reason: tls.to_string(),
        }
    } else {
        NetError::Connect {
            addr: addr.to_string(),
            source: e,
        }
    }
}

/// The identity the first of a verified chain names.
pub fn peer_identity(chain: Option<&[CertificateDer<'_>]>) -> Option<Identity> {
    Identity::from_der(chain?.first()?)
}

#[cfg(test)]
mod tests;

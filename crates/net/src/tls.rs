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

pub mod identity;
pub mod issue;
mod sign;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::{TlsConnector, TlsStream};

pub use identity::{Expect, Identity, Role};
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
    me: Identity,
    connector: TlsConnector,
    acceptor: TlsAcceptor,
    /// What [`Security::sign`] and [`Security::verify`] use (see `sign`).
    signing: sign::Signing,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.tls {
            None => f.write_str("Security(insecure)"),
            Some(t) => write!(f, "Security({})", t.me),
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
    /// cluster CA in `certs_dir/ca.crt`.
    pub fn load(certs_dir: &Path, stem: &str) -> Result<Security, TlsError> {
        let read =
            |path: PathBuf| std::fs::read(&path).map_err(|source| TlsError::File { path, source });
        let (crt, key) = issue::pair_paths(certs_dir, stem);
        Security::from_pem(&read(certs_dir.join("ca.crt"))?, &read(crt)?, &read(key)?)
    }

    /// Mutual TLS from PEM: the cluster CA's certificate, this process's certificate
    /// (chain) and its private key.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Security, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca) {
            let c = c.map_err(|e| TlsError::Invalid(format!("the CA certificate: {e}")))?;
            roots.add(c)?;
        }
        if roots.is_empty() {
            return Err(TlsError::Invalid("no CA certificate found".into()));
        }
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Invalid(format!("the certificate: {e}")))?;
        let me = chain
            .first()
            .and_then(|c| Identity::from_der(c))
            .ok_or_else(|| TlsError::Invalid("the certificate names no Tessera identity".into()))?;
        let key = PrivateKeyDer::from_pem_slice(key)
            .map_err(|e| TlsError::Invalid(format!("the private key: {e}")))?;

        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Invalid(format!("client verifier: {e}")))?;
        let signing = sign::Signing::new(&provider, &chain, &key, verifier.clone())?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(Security {
            tls: Some(Arc::new(Tls {
                me,
                connector: TlsConnector::from(Arc::new(client)),
                acceptor: TlsAcceptor::from(Arc::new(server)),
                signing,
            })),
        })
    }

    /// Whether connections are TLS.
    pub fn is_secure(&self) -> bool {
        self.tls.is_some()
    }

    /// This process's identity; `None` when insecure.
    pub fn identity(&self) -> Option<&Identity> {
        self.tls.as_ref().map(|t| &t.me)
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
            Ok(Conn::Tls(Box::new(TlsStream::Client(s))))
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
        Ok((Conn::Tls(Box::new(TlsStream::Server(s))), Some(who)))
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

//! What a secure process presents and trusts *now*, and changing it while it runs: a
//! rotated certificate or key, a CA bundle with a new CA added (or an old one removed), a
//! revocation list from its certificates directory ([`Live::reload`], polled by
//! [`Security::watch_files`](super::Security::watch_files)) or handed to it by the manager
//! ([`Live::apply_crls`]).
//!
//! Owns the current [`Current`] (certificate, key, verifiers, signing, lists in force) and
//! a generation counter moved by every change. rustls reaches it through [`Dyn`] at every
//! handshake, so connectors and acceptors made once (and copied into the NBD gateway) see
//! each change; connections already open are checked again at their next read after a
//! change ([`PeerCheck`]): one whose peer's certificate no longer verifies (revoked, its
//! CA gone, expired) fails that read, so nothing more it sends is served.
//!
//! Must never: let a reload change who this process is (a certificate naming another
//! identity is refused and the old one kept), or put in force anything that did not
//! verify (a bad file leaves the old configuration serving, and says why).

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use super::crl::{self, Crl};
use super::sign::Signing;
use super::{Identity, TlsError, issue};

static UNTRUSTED: tessera_metrics::LazyCounter = tessera_metrics::LazyCounter::new(
    "tessera_connections_untrusted_total",
    "Open connections ended because the peer's certificate stopped verifying (revoked, \
     its CA no longer trusted, or expired)",
);

/// The files a process loaded its identity from, read again on a reload.
#[derive(Debug, Clone)]
pub(super) struct Files {
    pub(super) dir: PathBuf,
    pub(super) stem: String,
}

/// The CA bundle, this process's certificate chain and key, and the revocation lists of
/// its certificates directory, all PEM.
#[derive(Clone, Default)]
pub(super) struct Material {
    pub(super) ca: Vec<u8>,
    pub(super) cert: Vec<u8>,
    pub(super) key: Vec<u8>,
    pub(super) crl: Vec<u8>,
}

/// The revocation list file of a certificates directory (optional).
pub const CRL_FILE: &str = "ca.crl";

impl Files {
    fn paths(&self) -> [PathBuf; 4] {
        let (crt, key) = issue::pair_paths(&self.dir, &self.stem);
        [self.dir.join("ca.crt"), crt, key, self.dir.join(CRL_FILE)]
    }

    /// What the files say now (the revocation list may be missing).
    pub(super) fn read(&self) -> Result<Material, TlsError> {
        let [ca, crt, key, crl] = self.paths();
        let read =
            |path: PathBuf| std::fs::read(&path).map_err(|source| TlsError::File { path, source });
        let crl = match std::fs::read(&crl) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(TlsError::File { path: crl, source }),
        };
        Ok(Material {
            ca: read(ca)?,
            cert: read(crt)?,
            key: read(key)?,
            crl,
        })
    }

    /// Each file's modification time, size and inode: a change of any means read again.
    /// Taken before the files are read, so a change while they are read is seen next time.
    pub(super) fn stamp(&self) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        self.paths().map(|p| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len(), m.ino()))
        })
    }
}

pub(super) type Stamp = [Option<(Option<SystemTime>, u64, u64)>; 4];

/// What is in force.
pub(super) struct Current {
    certified: Arc<CertifiedKey>,
    clients: Arc<dyn ClientCertVerifier>,
    servers: Arc<WebPkiServerVerifier>,
    pub(super) signing: Signing,
    cas: Vec<CertificateDer<'static>>,
    /// The newest revocation list of each CA, from the directory and the manager.
    crls: Vec<Crl>,
}

impl Current {
    /// Checks and assembles `m`, with the lists `pushed` by the manager that a CA of `m`
    /// signed; and who `m`'s certificate names.
    fn build(
        provider: &Arc<CryptoProvider>,
        m: &Material,
        pushed: &[Crl],
    ) -> Result<(Identity, Current), TlsError> {
        let mut roots = RootCertStore::empty();
        let mut cas = Vec::new();
        for c in CertificateDer::pem_slice_iter(&m.ca) {
            let c = c.map_err(|e| TlsError::Invalid(format!("the CA certificate: {e}")))?;
            roots.add(c.clone())?;
            cas.push(c);
        }
        if roots.is_empty() {
            return Err(TlsError::Invalid("no CA certificate found".into()));
        }
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&m.cert)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Invalid(format!("the certificate: {e}")))?;
        let me = chain
            .first()
            .and_then(|c| Identity::from_der(c))
            .ok_or_else(|| TlsError::Invalid("the certificate names no Tessera identity".into()))?;
        let key = PrivateKeyDer::from_pem_slice(&m.key)
            .map_err(|e| TlsError::Invalid(format!("the private key: {e}")))?;

        let mut all = crl::parse(&m.crl, &cas)?;
        // The manager's lists were checked when they came; again here, as the CAs may
        // have changed since.
        all.extend(
            pushed
                .iter()
                .filter_map(|c| crl::parse_der(c.der.clone(), &cas).ok()),
        );
        let crls = crl::newest(all);
        let ders = || crls.iter().map(|c| c.der.clone()).collect::<Vec<_>>();
        // Only a certificate's own revocation is looked up (a cluster's chains are CA and
        // certificate), and a CA with no list revokes nothing.
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .with_crls(ders())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| TlsError::Invalid(format!("client verifier: {e}")))?;
        let servers = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .with_crls(ders())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| TlsError::Invalid(format!("server verifier: {e}")))?;
        let signing = Signing::new(provider, &chain, &key, clients.clone())?;
        let signer = provider.key_provider.load_private_key(key)?;
        let certified = Arc::new(CertifiedKey::new(chain, signer));
        certified.keys_match().or_else(|e| match e {
            // A key type whose public half rustls cannot derive: the handshake will tell.
            rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown) => Ok(()),
            e => Err(TlsError::Invalid(format!("the certificate and key: {e}"))),
        })?;
        Ok((
            me,
            Current {
                certified,
                clients,
                servers,
                signing,
                cas,
                crls,
            },
        ))
    }
}

/// A secure process's changing trust: see the module doc.
pub(super) struct Live {
    provider: Arc<CryptoProvider>,
    me: Identity,
    files: Option<Files>,
    current: RwLock<Arc<Current>>,
    generation: AtomicU64,
    /// What `current` was built from, to build again with the manager's lists.
    material: Mutex<Material>,
    /// The lists the manager handed over and put in force, kept across reloads of the
    /// files.
    pushed: Mutex<Vec<Crl>>,
    /// Held by whoever builds and installs a new [`Current`] (a reload of the files, lists
    /// from the manager): each builds from what the other installed, never from a copy
    /// taken before it.
    installing: Mutex<()>,
    /// The files as last read (or last found unreadable, not to say so every poll).
    stamp: Mutex<Option<Stamp>>,
    /// The CAs' subjects, hinted to clients (rustls borrows them from the verifier for as
    /// long as it lives; a changed bundle leaks the old hints, a few hundred bytes).
    hints: RwLock<&'static [DistinguishedName]>,
}

impl Live {
    /// What `m` says in force; `files` (with their `stamp` taken before `m` was read) to
    /// read again on a reload.
    pub(super) fn new(m: Material, files: Option<(Files, Stamp)>) -> Result<Live, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (files, stamp) = match files {
            Some((f, s)) => (Some(f), Some(s)),
            None => (None, None),
        };
        let (me, current) = Current::build(&provider, &m, &[])?;
        let hints: &'static [DistinguishedName] = Box::leak(
            current
                .clients
                .root_hint_subjects()
                .to_vec()
                .into_boxed_slice(),
        );
        Ok(Live {
            provider,
            me,
            files,
            current: RwLock::new(Arc::new(current)),
            generation: AtomicU64::new(0),
            material: Mutex::new(m),
            pushed: Mutex::new(Vec::new()),
            installing: Mutex::new(()),
            stamp: Mutex::new(stamp),
            hints: RwLock::new(hints),
        })
    }

    pub(super) fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    pub(super) fn me(&self) -> &Identity {
        &self.me
    }

    /// Moves with every change put in force.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(super) fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the files again if any changed since last read, and puts them in force;
    /// whether anything changed. On an error the old configuration stays.
    pub(super) fn reload(&self) -> Result<bool, TlsError> {
        let Some(files) = &self.files else {
            return Ok(false);
        };
        let _installing = self.installing.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = files.stamp();
        {
            let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
            if last.as_ref() == Some(&stamp) {
                return Ok(false);
            }
            // Whatever the outcome, these files are not looked at again until they change
            // (the manager's lists, the other input, were checked as rustls reads them).
            *last = Some(stamp);
        }
        let m = files.read()?;
        let pushed = self
            .pushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.install(m, &pushed)?;
        Ok(true)
    }

    /// Puts in force the lists of `pem` the cluster's CAs signed, where newer than those in
    /// force; whether anything changed. A list no trusted CA signed is refused.
    pub(super) fn apply_crls(&self, pem: &[u8]) -> Result<bool, TlsError> {
        let _installing = self.installing.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.current();
        let given = crl::parse(pem, &current.cas)?;
        if given.is_empty() {
            return Ok(false);
        }
        let newer: Vec<Crl> = given
            .into_iter()
            .filter(|g| {
                !current
                    .crls
                    .iter()
                    .any(|c| c.issuer == g.issuer && c.number >= g.number)
            })
            .collect();
        if newer.is_empty() {
            return Ok(false);
        }
        let pushed = {
            let p = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
            crl::newest(p.iter().cloned().chain(newer))
        };
        let m = self
            .material
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.install(m, &pushed)?;
        *self.pushed.lock().unwrap_or_else(|p| p.into_inner()) = pushed;
        Ok(true)
    }

    /// The subjects (DER) of the CAs trusted now.
    pub(super) fn ca_subjects(&self) -> Vec<Vec<u8>> {
        self.current()
            .cas
            .iter()
            .filter_map(|c| {
                x509_parser::parse_x509_certificate(c)
                    .ok()
                    .map(|(_, c)| c.subject().as_raw().to_vec())
            })
            .collect()
    }

    /// The lists of `pem`, each checked against the CAs trusted now.
    pub(super) fn check_crls(&self, pem: &[u8]) -> Result<Vec<Crl>, TlsError> {
        crl::parse(pem, &self.current().cas)
    }

    fn install(&self, m: Material, pushed: &[Crl]) -> Result<(), TlsError> {
        let (me, current) = Current::build(&self.provider, &m, pushed)?;
        if me != self.me {
            return Err(TlsError::Invalid(format!(
                "the new certificate names {me}, not {}: this process keeps its old one",
                self.me
            )));
        }
        let hints = current.clients.root_hint_subjects();
        {
            let mut h = self.hints.write().unwrap_or_else(|p| p.into_inner());
            let same = h.len() == hints.len()
                && h.iter().zip(hints).all(|(a, b)| a.as_ref() == b.as_ref());
            if !same {
                *h = Box::leak(hints.to_vec().into_boxed_slice());
            }
        }
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(current);
        *self.material.lock().unwrap_or_else(|p| p.into_inner()) = m;
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// rustls's way to what is in force at each handshake.
pub(super) struct Dyn(pub(super) Arc<Live>);

impl fmt::Debug for Dyn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dyn({})", self.0.me)
    }
}

impl ResolvesServerCert for Dyn {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }
}

impl ResolvesClientCert for Dyn {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for Dyn {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        *self.0.hints.read().unwrap_or_else(|p| p.into_inner())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .current()
            .clients
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .clients
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .clients
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().clients.supported_verify_schemes()
    }
}

impl ServerCertVerifier for Dyn {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.current().servers.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .servers
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .current()
            .servers
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.current().servers.supported_verify_schemes()
    }
}

/// One open connection's peer, checked again after every change of what is in force.
pub struct PeerCheck {
    live: Arc<Live>,
    chain: Vec<CertificateDer<'static>>,
    /// This side dialled: the peer is a server.
    dialled: bool,
    seen: u64,
    lost: bool,
}

impl fmt::Debug for PeerCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerCheck(lost: {})", self.lost)
    }
}

impl PeerCheck {
    /// The check of a peer whose handshake started at generation `since` (read before it:
    /// a change during the handshake is checked at the first read).
    pub(super) fn new(
        live: &Arc<Live>,
        chain: Option<&[CertificateDer<'_>]>,
        dialled: bool,
        since: u64,
    ) -> PeerCheck {
        PeerCheck {
            seen: since,
            live: live.clone(),
            chain: chain
                .unwrap_or_default()
                .iter()
                .map(|c| c.clone().into_owned())
                .collect(),
            dialled,
            lost: false,
        }
    }

    /// `Ok` while the peer's certificate verifies as it did at the handshake; an error
    /// from the first change that makes it fail (revoked, its CA removed, expired), for
    /// good. One atomic load while nothing changes.
    pub fn still(&mut self) -> std::io::Result<()> {
        if !self.lost {
            let now = self.live.generation.load(Ordering::Acquire);
            if now == self.seen {
                return Ok(());
            }
            self.seen = now;
            if self.verifies() {
                return Ok(());
            }
            self.lost = true;
            UNTRUSTED.add(1);
            let who = self
                .chain
                .first()
                .and_then(|c| Identity::from_der(c))
                .map_or_else(|| "?".to_string(), |w| w.to_string());
            tracing::warn!("closing a connection of {who}: its certificate is no longer trusted");
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "the peer's certificate is no longer trusted (revoked, or its CA removed)",
        ))
    }

    fn verifies(&self) -> bool {
        let Some((ee, rest)) = self.chain.split_first() else {
            return false;
        };
        let current = self.live.current();
        let now = UnixTime::now();
        if self.dialled {
            let Ok(name) = ServerName::try_from(issue::SERVER_NAME) else {
                return false;
            };
            current
                .servers
                .verify_server_cert(ee, rest, &name, &[], now)
                .is_ok()
        } else {
            current.clients.verify_client_cert(ee, rest, now).is_ok()
        }
    }
}

/// A reading half whose peer is checked as [`PeerCheck`] says before every read: for
/// streams a protocol upgraded to TLS itself (NBD's `NBD_OPT_STARTTLS`), which are no
/// [`Conn`](crate::Conn).
pub struct Checked<R> {
    inner: R,
    check: Option<PeerCheck>,
}

impl<R> Checked<R> {
    /// `inner`, checked by `check` (`None`: not checked, as on a plain connection).
    pub fn new(inner: R, check: Option<PeerCheck>) -> Checked<R> {
        Checked { inner, check }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Checked<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let me = self.get_mut();
        if let Some(c) = &mut me.check {
            c.still()?;
        }
        std::pin::Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests;

//! Signing with this process's certificate key, and checking what another process of the
//! cluster signed: the manager signs capabilities ([`tessera_proto::capability`]) that
//! storage nodes check without asking it.
//!
//! A signature travels with the signer's certificate, so no key is distributed: the
//! checker verifies that certificate against the cluster CA exactly as its TLS handshakes
//! verify a peer's (the same verifier: chain, validity period, client use), then the
//! signature with the certificate's key. Must never: accept a signature whose certificate
//! the cluster CA did not sign, or report an identity the certificate does not name.

use std::sync::Arc;

use rustls::SignatureScheme;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::SigningKey;
use tessera_proto::capability::Signed;

use super::{Identity, Security, TlsError};

/// The schemes this process signs with, by preference (its key decides which applies).
const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ED25519,
    SignatureScheme::RSA_PSS_SHA256,
];

/// A process's key and certificate, and how it checks others' signatures.
pub(crate) struct Signing {
    key: Arc<dyn SigningKey>,
    cert: CertificateDer<'static>,
    verifier: Arc<dyn ClientCertVerifier>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Signing {
    pub(crate) fn new(
        provider: &CryptoProvider,
        chain: &[CertificateDer<'static>],
        key: &PrivateKeyDer<'static>,
        verifier: Arc<dyn ClientCertVerifier>,
    ) -> Result<Signing, TlsError> {
        Ok(Signing {
            key: provider.key_provider.load_private_key(key.clone_key())?,
            cert: chain
                .first()
                .cloned()
                .ok_or_else(|| TlsError::Invalid("no certificate".into()))?,
            verifier,
            algorithms: provider.signature_verification_algorithms,
        })
    }
}

impl Security {
    /// `body` signed with this process's key, with its certificate. Fails when insecure.
    pub fn sign(&self, body: Vec<u8>) -> Result<Signed, TlsError> {
        let current = self.tls()?.live.current();
        let s = &current.signing;
        let signer = s
            .key
            .choose_scheme(SCHEMES)
            .ok_or_else(|| TlsError::Invalid("this key signs with no scheme offered".into()))?;
        let signature = signer.sign(&body)?;
        Ok(Signed {
            body,
            scheme: u16::from(signer.scheme()),
            signature,
            signer: s.cert.to_vec(),
        })
    }

    /// Who signed `signed`, if its certificate is the cluster CA's, valid now, and its key
    /// made the signature over the body. Fails when insecure.
    pub fn verify(&self, signed: &Signed) -> Result<Identity, TlsError> {
        let current = self.tls()?.live.current();
        let s = &current.signing;
        let cert = CertificateDer::from(signed.signer.as_slice());
        s.verifier
            .verify_client_cert(&cert, &[], UnixTime::now())
            .map_err(|e| TlsError::Invalid(format!("the signer's certificate: {e}")))?;
        let scheme = SignatureScheme::from(signed.scheme);
        let algorithms = s
            .algorithms
            .mapping
            .iter()
            .find(|(m, _)| *m == scheme)
            .map(|(_, algs)| *algs)
            .ok_or_else(|| TlsError::Invalid(format!("unknown signature scheme {scheme:?}")))?;
        let ee = webpki::EndEntityCert::try_from(&cert)
            .map_err(|e| TlsError::Invalid(format!("the signer's certificate: {e}")))?;
        if !algorithms.iter().any(|a| {
            ee.verify_signature(*a, &signed.body, &signed.signature)
                .is_ok()
        }) {
            return Err(TlsError::Invalid("bad signature".into()));
        }
        Identity::from_der(&cert)
            .ok_or_else(|| TlsError::Invalid("the signer's certificate names no one".into()))
    }

    fn tls(&self) -> Result<&super::Tls, TlsError> {
        self.tls
            .as_deref()
            .ok_or_else(|| TlsError::Invalid("insecure: nothing is signed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::issue;

    fn pair(ca: &issue::Issued, who: Identity) -> Security {
        let me = issue::issue(&ca.cert_pem, &ca.key_pem, &who, &[], 30).unwrap();
        Security::from_pem(
            ca.cert_pem.as_bytes(),
            me.cert_pem.as_bytes(),
            me.key_pem.as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn a_signature_names_its_signer_and_nothing_else_passes() {
        let ca = issue::new_ca(30).unwrap();
        let manager = pair(&ca, Identity::Manager(1));
        let node = pair(&ca, Identity::Node(2));
        let signed = manager.sign(b"capability".to_vec()).unwrap();
        assert_eq!(node.verify(&signed).unwrap(), Identity::Manager(1));

        let mut body = signed.clone();
        body.body[0] ^= 1;
        assert!(node.verify(&body).is_err(), "a changed body");
        let mut sig = signed.clone();
        let last = sig.signature.len() - 1;
        sig.signature[last] ^= 1;
        assert!(node.verify(&sig).is_err(), "a changed signature");
        let mut scheme = signed.clone();
        scheme.scheme = u16::from(SignatureScheme::ED25519);
        assert!(node.verify(&scheme).is_err(), "another scheme");

        // Signed by a key of another CA, whatever its certificate says.
        let stranger = pair(&issue::new_ca(30).unwrap(), Identity::Manager(1));
        assert!(
            node.verify(&stranger.sign(b"capability".to_vec()).unwrap())
                .is_err()
        );
        // A signature of another member, presented with the manager's certificate.
        let mut swapped = node.sign(b"capability".to_vec()).unwrap();
        swapped.signer = signed.signer.clone();
        assert!(node.verify(&swapped).is_err());

        assert!(Security::insecure().sign(vec![1]).is_err());
        assert!(Security::insecure().verify(&signed).is_err());
    }
}

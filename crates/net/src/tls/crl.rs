//! Certificate revocation lists: reading and checking one before anything trusts it
//! ([`parse`]), and making the cluster CA's ([`make`], for `tessera cert revoke`).
//!
//! A CRL names the serials its CA revoked, under an increasing number; each is cumulative,
//! so the newest of a CA replaces the older. Must never: take a list its CA did not sign
//! (handed to rustls, a bad one would fail every handshake: a revocation list must not be
//! a way to stop a cluster), or one of a CA this process does not trust.

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};

use super::TlsError;

/// One checked revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    /// As signed.
    pub der: CertificateRevocationListDer<'static>,
    /// Its CA's subject (DER): lists of one CA replace each other.
    pub issuer: Vec<u8>,
    /// Its number: the higher replaces the lower.
    pub number: u64,
    /// The serials it revokes (DER integer contents, as in the certificates), with when.
    pub revoked: Vec<Revoked>,
}

/// One revoked certificate of a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Its serial (the DER integer's bytes).
    pub serial: Vec<u8>,
    /// When it was revoked (Unix seconds).
    pub at: i64,
}

/// The revocation lists of a PEM file (none if it holds none) whose CA is among `cas`,
/// each checked against it: refused if one is malformed or its signature does not verify.
/// A list of a CA not trusted (any more, or not yet, during a rotation) is skipped: it
/// revokes nothing this process would take.
pub fn parse(pem: &[u8], cas: &[CertificateDer<'_>]) -> Result<Vec<Crl>, TlsError> {
    let mut out = Vec::new();
    for der in CertificateRevocationListDer::pem_slice_iter(pem) {
        let der = der.map_err(|e| TlsError::Invalid(format!("a revocation list: {e}")))?;
        match check(der, cas)? {
            Some(crl) => out.push(crl),
            None => tracing::debug!("skipped a revocation list of a CA not trusted here"),
        }
    }
    Ok(out)
}

/// The lists, in PEM, as this process writes them (nothing but the lists).
pub fn to_pem(crls: &[Crl]) -> String {
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    crls.iter()
        .map(|c| pem::encode_config(&pem::Pem::new("X509 CRL", c.der.to_vec()), lf))
        .collect()
}

/// One revocation list (DER), checked as [`parse`] does; its CA must be among `cas`.
pub fn parse_der(
    der: CertificateRevocationListDer<'static>,
    cas: &[CertificateDer<'_>],
) -> Result<Crl, TlsError> {
    check(der, cas)?.ok_or_else(|| {
        TlsError::Invalid("a revocation list: its issuer is not a trusted CA".into())
    })
}

/// `None`: no CA of `cas` issued it.
fn check(
    der: CertificateRevocationListDer<'static>,
    cas: &[CertificateDer<'_>],
) -> Result<Option<Crl>, TlsError> {
    let bad = |why: String| TlsError::Invalid(format!("a revocation list: {why}"));
    // What rustls will read it with: a list it cannot take (a delta list, an unknown
    // critical extension) must be refused here, not fail every handshake later.
    webpki::OwnedCertRevocationList::from_der(&der).map_err(|e| bad(format!("{e:?}")))?;
    let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|e| bad(e.to_string()))?;
    let issuer = crl.tbs_cert_list.issuer.as_raw().to_vec();
    let Some(ca) = cas.iter().find(|c| {
        x509_parser::parse_x509_certificate(c)
            .is_ok_and(|(_, c)| c.subject().as_raw() == issuer.as_slice())
    }) else {
        return Ok(None);
    };
    let ca = webpki::EndEntityCert::try_from(ca).map_err(|e| bad(format!("its CA: {e}")))?;
    let algorithms = rustls::crypto::ring::default_provider()
        .signature_verification_algorithms
        .all;
    let tbs: &[u8] = crl.tbs_cert_list.as_ref();
    let signature: &[u8] = &crl.signature_value.data;
    if !algorithms
        .iter()
        .any(|a| ca.verify_signature(*a, tbs, signature).is_ok())
    {
        return Err(bad(format!("not signed by its issuer ({})", crl.issuer())));
    }
    let number = match crl.crl_number().map(|n| n.to_u64_digits()) {
        Some(d) if d.len() <= 1 => d.first().copied().unwrap_or(0),
        Some(_) => return Err(bad("its number is beyond 64 bits".into())),
        None => return Err(bad("it has no number".into())),
    };
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| Revoked {
            serial: r.raw_serial().to_vec(),
            at: r.revocation_date.timestamp(),
        })
        .collect();
    Ok(Some(Crl {
        issuer,
        number,
        revoked,
        der: der.clone(),
    }))
}

/// Of `crls`, the newest of each CA (the highest number).
pub fn newest(crls: impl IntoIterator<Item = Crl>) -> Vec<Crl> {
    let mut out: Vec<Crl> = Vec::new();
    for c in crls {
        match out.iter_mut().find(|o| o.issuer == c.issuer) {
            Some(o) if o.number < c.number => *o = c,
            Some(_) => {}
            None => out.push(c),
        }
    }
    out
}

/// A revocation list numbered `number` of the CA (`ca_cert_pem`, its key `ca_key_pem`)
/// revoking `revoked`, in PEM.
pub fn make(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    number: u64,
    revoked: &[Revoked],
) -> Result<String, TlsError> {
    let key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, key)?;
    let now = time::OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now,
        // Not enforced by Tessera (a list stays in force until a newer replaces it); a
        // year, for other readers of the file.
        next_update: now + time::Duration::days(365),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .map(|r| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&r.serial),
                revocation_time: time::OffsetDateTime::from_unix_timestamp(r.at).unwrap_or(now),
                reason_code: None,
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    Ok(params.signed_by(&issuer)?.pem()?)
}

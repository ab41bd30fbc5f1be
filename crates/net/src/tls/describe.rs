//! Reading the files of a certificates directory as `tessera cert` needs them: the PEM
//! sections of a file, each as written and decoded ([`sections`]), every certificate of a
//! file or CA bundle described ([`certificates`]), and which CA of a bundle a private key
//! is the key of ([`ca_of_key`]).
//!
//! Decoding is pki-types' (the PEM reader rustls and [`super::Security::load`] use) and
//! x509-parser's ([`issue::describe_der`]): what the CLI reads of a file is what a process
//! loading it reads. Owns no policy: callers decide what a CA, a host or a section means.
//! Must never: decode PEM, base64 or DER itself, or panic on a damaged file (anything
//! malformed is an error naming the section).

use rcgen::{KeyPair, PublicKeyData};
use rustls::pki_types::CertificateDer;
/// The kinds of PEM section [`sections`] picks.
pub use rustls::pki_types::pem::SectionKind;

use super::TlsError;
use super::issue::{self, Described};

/// One PEM section of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// As written, from its `-----BEGIN` line to the end of its `-----END` line. Kept so
    /// that a file is rewritten with its sections verbatim: none of this crate's
    /// dependencies writes PEM for DER that rcgen did not make, and a list of another CA
    /// is best copied byte for byte as it was checked.
    pub text: String,
    /// What it holds (DER).
    pub der: Vec<u8>,
}

/// The sections of `kind` in PEM `pem`, in order, decoded as rustls decodes them. When
/// `strict`, anything else in it (text between sections, a section of another kind) is
/// an error: a file that must hold nothing else. Otherwise that is skipped (bundles often
/// carry comments). A section cut short or not base64 is an error either way.
pub fn sections(pem: &[u8], kind: SectionKind, strict: bool) -> Result<Vec<Section>, TlsError> {
    let what = label(kind);
    let mut out = Vec::new();
    let mut seen = 0;
    let mut rest = pem;
    loop {
        let before = rest;
        let found = rustls::pki_types::pem::from_buf(&mut rest)
            .map_err(|e| invalid(format!("PEM section {}: {e}", seen + 1)))?;
        // What this read took: any text, sections of labels pki-types does not know, and
        // the section it returned, whose BEGIN line is the last of them.
        let took = &before[..before.len() - rest.len()];
        let Some((found_kind, der)) = found else {
            if strict && !blank(took) {
                return Err(invalid(format!("text after its last {what}")));
            }
            return Ok(out);
        };
        seen += 1;
        let start = begin_line(took);
        if strict && found_kind != kind {
            return Err(invalid(format!("PEM section {seen} is not a {what}")));
        }
        if strict && !blank(&took[..start]) {
            return Err(invalid(format!(
                "text that is not a {what} before PEM section {seen}"
            )));
        }
        if found_kind != kind {
            continue;
        }
        let text = String::from_utf8_lossy(took[start..].trim_ascii_end()).into_owned();
        // A BEGIN line with no END line before it would have given its base64 to this
        // section: the text kept must read alone as what was decoded.
        let alone = rustls::pki_types::pem::from_buf(&mut text.as_bytes())
            .ok()
            .flatten();
        if alone.is_none_or(|(_, d)| d != der) {
            return Err(invalid(format!(
                "PEM section {seen} follows a BEGIN line with no END line"
            )));
        }
        out.push(Section { text, der });
    }
}

fn invalid(why: String) -> TlsError {
    TlsError::Invalid(why)
}

fn label(kind: SectionKind) -> &'static str {
    match kind {
        SectionKind::Certificate => "certificate",
        SectionKind::Crl => "revocation list",
        _ => "PEM section of the kind asked",
    }
}

fn blank(b: &[u8]) -> bool {
    b.iter().all(u8::is_ascii_whitespace)
}

/// Where the last line of `b` that opens a PEM section starts.
fn begin_line(b: &[u8]) -> usize {
    (0..b.len())
        .rev()
        .find(|&i| {
            (i == 0 || matches!(b[i - 1], b'\n' | b'\r')) && b[i..].starts_with(b"-----BEGIN ")
        })
        .unwrap_or(0)
}

/// One certificate of a PEM file.
#[derive(Debug, Clone)]
pub struct Cert {
    /// Its PEM section, as written (see [`Section::text`]).
    pub pem: String,
    /// The certificate.
    pub der: CertificateDer<'static>,
    /// What it says.
    pub info: Described,
}

/// Every certificate of PEM `pem` (a certificate file, a chain, a CA bundle), in order,
/// each described; other text is skipped. None if it holds none.
pub fn certificates(pem: &[u8]) -> Result<Vec<Cert>, TlsError> {
    sections(pem, SectionKind::Certificate, false)?
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let info = issue::describe_der(&s.der)
                .map_err(|e| invalid(format!("certificate {}: {e}", i + 1)))?;
            Ok(Cert {
                pem: s.text,
                der: s.der.into(),
                info,
            })
        })
        .collect()
}

/// The CA certificate of `cas` whose public key is that of the private key `key_pem`
/// (PEM): the CA that what the key signs verifies against. `None` if no CA of `cas` has
/// it (certificates that are not a CA's are passed over); an error if `key_pem` holds no
/// private key.
pub fn ca_of_key<'a>(cas: &'a [Cert], key_pem: &str) -> Result<Option<&'a Cert>, TlsError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| invalid(format!("not a private key: {e}")))?;
    // Like with like: the whole SubjectPublicKeyInfo (algorithm and key) on both sides,
    // as rcgen writes it into the certificates it makes.
    let spki = key.subject_public_key_info();
    Ok(cas.iter().filter(|c| c.info.is_ca).find(|c| {
        x509_parser::parse_x509_certificate(&c.der).is_ok_and(|(_, x)| x.public_key().raw == spki)
    }))
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::pem::PemObject;

    use super::*;
    use crate::tls::crl;
    use crate::tls::{Identity, Role};

    fn one(pem: &str) -> Cert {
        let mut c = certificates(pem.as_bytes()).expect("PEM");
        assert_eq!(c.len(), 1);
        c.remove(0)
    }

    fn der_of(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("a certificate")
    }

    #[test]
    fn a_node_certificate_reads_back_its_extra_hosts_its_serial_and_its_signer() {
        let ca = issue::new_ca(1).expect("CA");
        let hosts = ["nbd.example".to_string(), "10.0.0.5".into(), "::1".into()];
        let issued =
            issue::issue(&ca.cert_pem, &ca.key_pem, &Identity::Node(3), &hosts, 1).expect("issue");
        let node = one(&issued.cert_pem);
        assert_eq!(Identity::from_der(&node.der), Some(Identity::Node(3)));
        assert_eq!(node.info.names, Identity::Node(3).to_string());
        // SERVER_NAME is issue's own, not a host it was asked for.
        assert_eq!(node.info.hosts, hosts);
        assert!(!node.info.is_ca);
        assert_eq!(
            tessera_proto::hex::encode(&node.info.raw_serial),
            node.info.serial
        );
        let ca = one(&ca.cert_pem);
        assert!(ca.info.is_ca);
        assert!(ca.info.hosts.is_empty());
        assert!(ca.info.key_id.is_some());
        assert_eq!(node.info.signer_key_id, ca.info.key_id);
        assert_ne!(node.info.key_id, ca.info.key_id);
    }

    #[test]
    fn reissuing_with_the_hosts_read_back_gives_the_same_names() {
        let ca = issue::new_ca(1).expect("CA");
        for (who, hosts) in [
            (Identity::Manager(1), vec![]),
            (Identity::Node(2), vec!["n2.example".to_string()]),
            (
                Identity::Client {
                    name: "gw".into(),
                    role: Role::Volumes(vec!["a".into(), "b".into()]),
                },
                vec!["gw.example".to_string(), "192.0.2.7".into()],
            ),
            (
                Identity::Client {
                    name: "alice".into(),
                    role: Role::Admin,
                },
                vec![],
            ),
        ] {
            let old = one(&issue::issue(&ca.cert_pem, &ca.key_pem, &who, &hosts, 1)
                .unwrap()
                .cert_pem);
            assert_eq!(old.info.hosts, hosts, "{who}");
            let new =
                issue::issue(&ca.cert_pem, &ca.key_pem, &who, &old.info.hosts, 1).expect("renewed");
            let new = one(&new.cert_pem);
            assert_eq!(new.info.hosts, hosts, "{who}");
            assert_eq!(Identity::from_der(&new.der), Some(who));
        }
    }

    #[test]
    fn a_bundle_gives_every_certificate_in_order_with_its_text() {
        let a = issue::new_ca(1).expect("CA").cert_pem;
        let b = issue::new_ca(1).expect("CA").cert_pem;
        let bundle = format!("# the new CA\n{a}\n{b}");
        let cas = certificates(bundle.as_bytes()).expect("two");
        assert_eq!(cas.len(), 2);
        assert_eq!(cas[0].pem, a.trim_end());
        assert_eq!(cas[1].pem, b.trim_end());
        assert_eq!(cas[0].der, der_of(&a));
        assert_eq!(cas[1].der, der_of(&b));
        assert!(cas.iter().all(|c| c.info.is_ca));
        let crlf = certificates(bundle.replace('\n', "\r\n").as_bytes()).expect("CRLF");
        assert_eq!(crlf.len(), 2);
        assert_eq!(crlf[1].der, cas[1].der);
        assert!(certificates(b"").expect("empty").is_empty());
    }

    #[test]
    fn the_ca_of_a_key_is_found_wherever_it_is_in_the_bundle() {
        let (old, new) = (issue::new_ca(1).expect("CA"), issue::new_ca(1).expect("CA"));
        let node =
            issue::issue(&old.cert_pem, &old.key_pem, &Identity::Node(1), &[], 1).expect("node");
        for bundle in [
            format!("{}{}", old.cert_pem, new.cert_pem),
            format!("{}{}{}", node.cert_pem, new.cert_pem, old.cert_pem),
        ] {
            let cas = certificates(bundle.as_bytes()).expect("bundle");
            let found = |key: &str| ca_of_key(&cas, key).expect("a key").map(|c| c.der.clone());
            assert_eq!(found(&old.key_pem), Some(der_of(&old.cert_pem)));
            assert_eq!(found(&new.key_pem), Some(der_of(&new.cert_pem)));
            let stranger = issue::new_ca(1).expect("CA");
            assert_eq!(found(&stranger.key_pem), None);
            // A certificate that is not a CA's signs nothing, even given its own key.
            assert_eq!(found(&node.key_pem), None);
            assert!(ca_of_key(&cas, &old.cert_pem).is_err(), "not a key");
            assert!(ca_of_key(&cas, "").is_err(), "not a key");
        }
    }

    #[test]
    fn strict_sections_refuse_anything_but_their_kind() {
        let ca = issue::new_ca(1).expect("CA");
        let list = crl::make(&ca.cert_pem, &ca.key_pem, 1, &[]).expect("a list");
        let strict = |text: &str| sections(text.as_bytes(), SectionKind::Crl, true);
        let lenient = |text: &str| sections(text.as_bytes(), SectionKind::Crl, false);
        let s = strict(&format!("{list}\n{list}")).expect("two lists");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].text, list.trim_end());
        assert_eq!(s[0].der, s[1].der);
        for bad in [
            format!("# a note\n{list}"),
            format!("{list}trailing"),
            format!("{}{list}", ca.cert_pem),
            "-----BEGIN SOMETHING-----\nAAAA\n-----END SOMETHING-----\n".to_string() + &list,
        ] {
            assert!(strict(&bad).is_err(), "{bad}");
            assert_eq!(lenient(&bad).expect("skipped").len(), 1, "{bad}");
        }
        assert!(strict("").expect("nothing").is_empty());
        assert!(strict("\n \n").expect("nothing").is_empty());
    }

    #[test]
    fn damaged_pem_or_der_is_an_error_never_a_panic() {
        let ca = issue::new_ca(1).expect("CA");
        let c = issue::issue(&ca.cert_pem, &ca.key_pem, &Identity::Node(1), &[], 1).unwrap();
        let pem = c.cert_pem;
        for bad in [
            pem[..pem.len() / 2].to_string(),
            pem.replacen("MII", "MI!", 1),
            // A BEGIN line left open: its base64 would be read into the next section.
            format!("-----BEGIN CERTIFICATE-----\nAAAA\n{pem}"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_string(),
        ] {
            assert!(certificates(bad.as_bytes()).is_err(), "{bad}");
        }
        let der = der_of(&pem).to_vec();
        for cut in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
            assert!(issue::describe_der(&der[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..der.len() {
            let mut flipped = der.clone();
            flipped[i] ^= 0xff;
            let _ = issue::describe_der(&flipped);
        }
    }
}

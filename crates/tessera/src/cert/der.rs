//! Reading the certificate files of a certificates directory as far as `tessera cert`
//! needs to and tessera-net does not say: the PEM sections of a file (their text, kept
//! verbatim when a file is rewritten, and their DER), and of a certificate its extra host
//! names, whether it is a CA, and its key identifiers (which CA signed it).
//!
//! Owns no policy: callers decide what a value means. Must never panic on a malformed
//! file: every length is checked against what is left, and anything unexpected reads as
//! "not there" (`None`) or, for PEM, an error naming what was wrong.

use std::net::IpAddr;

/// One PEM section.
pub struct Section<'a> {
    /// As written, from `-----BEGIN` to the end of its `-----END ...-----` line.
    pub text: &'a str,
    /// Its contents.
    pub der: Vec<u8>,
}

/// The sections labelled `label` (`CERTIFICATE`, `X509 CRL`) of PEM `text`, in order.
/// Other text between them is an error when `strict` (a file that should hold nothing
/// else), skipped otherwise (bundles often carry comments).
pub fn sections<'a>(text: &'a str, label: &str, strict: bool) -> Result<Vec<Section<'a>>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        let Some(at) = rest.find(&begin) else {
            if strict && !rest.trim().is_empty() {
                return Err(format!("text after its last {label}"));
            }
            return Ok(out);
        };
        if strict && !rest[..at].trim().is_empty() {
            return Err(format!(
                "text that is not a {label} before section {}",
                out.len() + 1
            ));
        }
        let body_at = at + begin.len();
        let Some(len) = rest[body_at..].find(&end) else {
            return Err(format!(
                "section {} of {label} has no end line",
                out.len() + 1
            ));
        };
        let stop = body_at + len + end.len();
        let der = base64(&rest[body_at..body_at + len])
            .ok_or_else(|| format!("section {} of {label} is not base64", out.len() + 1))?;
        out.push(Section {
            text: &rest[at..stop],
            der,
        });
        rest = &rest[stop..];
    }
}

/// Standard base64 (whitespace ignored, padding optional); `None` if anything else.
fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    let mut padded = false;
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'=' => {
                padded = true;
                continue;
            }
            _ if padded => return None,
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6 | u32::from(v)) & 0xff_ffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// One DER element of `b`: its tag, its contents and what follows it.
fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // tag numbers above 30: none in what is read here
    }
    let (&first, b) = b.split_first()?;
    let (len, b) = if first < 0x80 {
        (usize::from(first), b)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let (digits, b) = b.split_at(n);
        (digits.iter().fold(0, |l, &d| l << 8 | usize::from(d)), b)
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

/// The elements of the contents of a constructed element, in order; `None` if one does
/// not parse.
fn elements(mut b: &[u8]) -> Option<Vec<(u8, &[u8])>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let (tag, value, rest) = element(b)?;
        out.push((tag, value));
        b = rest;
    }
    Some(out)
}

const SEQUENCE: u8 = 0x30;

/// The value (the OCTET STRING's contents) of extension `oid` (DER contents of the OID) of
/// certificate `der`.
fn extension<'a>(der: &'a [u8], oid: &[u8]) -> Option<&'a [u8]> {
    let (SEQUENCE, cert, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = element(cert)? else {
        return None;
    };
    // Extensions are the tbsCertificate's [3], a SEQUENCE of Extension.
    let (_, wrapped) = elements(tbs)?.into_iter().find(|(t, _)| *t == 0xa3)?;
    let (SEQUENCE, list, _) = element(wrapped)? else {
        return None;
    };
    for (tag, ext) in elements(list)? {
        if tag != SEQUENCE {
            return None;
        }
        let parts = elements(ext)?;
        if parts.first() == Some(&(0x06, oid)) {
            // extnID, critical (optional BOOLEAN), extnValue (OCTET STRING).
            return parts.iter().skip(1).find(|(t, _)| *t == 0x04).map(|p| p.1);
        }
    }
    None
}

const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];
const AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23];

/// The DNS names and IP addresses certificate `der` serves under (its identity's URIs
/// aside), as `tessera cert issue --host` takes them.
pub fn hosts(der: &[u8]) -> Vec<String> {
    let Some(value) = extension(der, SUBJECT_ALT_NAME) else {
        return Vec::new();
    };
    let Some((SEQUENCE, names, _)) = element(value) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (tag, v) in elements(names).unwrap_or_default() {
        match tag {
            // [2] dNSName
            0x82 => out.extend(std::str::from_utf8(v).ok().map(str::to_string)),
            // [7] iPAddress
            0x87 => out.extend(ip(v).map(|a| a.to_string())),
            _ => {}
        }
    }
    out
}

fn ip(b: &[u8]) -> Option<IpAddr> {
    Some(match b.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(b).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(b).ok()?),
        _ => return None,
    })
}

/// Whether certificate `der` is a CA's (basic constraints say so).
pub fn is_ca(der: &[u8]) -> bool {
    let Some((SEQUENCE, c, _)) = extension(der, BASIC_CONSTRAINTS).and_then(element) else {
        return false;
    };
    // cA BOOLEAN DEFAULT FALSE: present and not zero.
    matches!(elements(c).as_deref(), Some([(0x01, [v]), ..]) if *v != 0)
}

/// The identifier of certificate `der`'s own key (subject key identifier), if it names one.
pub fn key_id(der: &[u8]) -> Option<&[u8]> {
    let (0x04, id, _) = element(extension(der, SUBJECT_KEY_ID)?)? else {
        return None;
    };
    Some(id)
}

/// The identifier of the key that signed certificate `der` (authority key identifier), if
/// it names one.
pub fn signer_key_id(der: &[u8]) -> Option<&[u8]> {
    let (SEQUENCE, aki, _) = element(extension(der, AUTHORITY_KEY_ID)?)? else {
        return None;
    };
    // keyIdentifier [0] IMPLICIT OCTET STRING
    elements(aki)?
        .into_iter()
        .find(|(t, _)| *t == 0x80)
        .map(|p| p.1)
}

#[cfg(test)]
mod tests {
    use tessera_net::tls::issue;
    use tessera_net::{Identity, Role};

    use super::*;

    fn one(pem: &str) -> Vec<u8> {
        let mut s = sections(pem, "CERTIFICATE", true).expect("PEM");
        assert_eq!(s.len(), 1);
        s.remove(0).der
    }

    #[test]
    fn a_certificate_reads_back_its_identity_hosts_and_signer() {
        let ca = issue::new_ca(1).expect("CA");
        let who = Identity::Client {
            name: "gw".into(),
            role: Role::Volumes(vec!["a".into(), "b".into()]),
        };
        let hosts_in = ["nbd.example".to_string(), "10.0.0.5".into(), "::1".into()];
        let c = issue::issue(&ca.cert_pem, &ca.key_pem, &who, &hosts_in, 1).expect("issue");
        let der = one(&c.cert_pem);
        assert_eq!(Identity::from_der(&der), Some(who));
        assert_eq!(hosts(&der), hosts_in);
        assert!(!is_ca(&der));
        let ca_der = one(&ca.cert_pem);
        assert!(is_ca(&ca_der));
        assert!(key_id(&ca_der).is_some());
        assert_eq!(signer_key_id(&der), key_id(&ca_der));
        let node = issue::issue(&ca.cert_pem, &ca.key_pem, &Identity::Node(3), &[], 1).unwrap();
        assert_eq!(hosts(&one(&node.cert_pem)), [issue::SERVER_NAME]);
    }

    #[test]
    fn pem_sections_keep_their_text_and_strictness_refuses_anything_else() {
        let a = issue::new_ca(1).expect("CA").cert_pem;
        let b = issue::new_ca(1).expect("CA").cert_pem;
        let both = format!("{a}\n{b}");
        let s = sections(&both, "CERTIFICATE", true).expect("two");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].text.trim(), a.trim());
        assert_eq!(s[1].text.trim(), b.trim());
        assert_ne!(s[0].der, s[1].der);
        let noted = format!("# the new CA\n{a}");
        assert!(sections(&noted, "CERTIFICATE", true).is_err());
        assert_eq!(sections(&noted, "CERTIFICATE", false).unwrap().len(), 1);
        let cut = &a[..a.len() / 2];
        assert!(sections(cut, "CERTIFICATE", false).is_err());
        let bad = a.replacen("MII", "MI!", 1);
        assert!(sections(&bad, "CERTIFICATE", false).is_err());
        assert_eq!(sections("", "X509 CRL", true).unwrap().len(), 0);
    }

    #[test]
    fn base64_decodes_padding_and_refuses_other_characters() {
        assert_eq!(base64("TWFu").as_deref(), Some(&b"Man"[..]));
        assert_eq!(base64("TWE=").as_deref(), Some(&b"Ma"[..]));
        assert_eq!(base64("TQ==\n").as_deref(), Some(&b"M"[..]));
        assert_eq!(base64("TQ=x"), None);
        assert_eq!(base64("T-Q="), None);
    }

    #[test]
    fn truncated_or_garbled_der_reads_as_nothing() {
        let ca = issue::new_ca(1).expect("CA");
        let c = issue::issue(&ca.cert_pem, &ca.key_pem, &Identity::Node(1), &[], 1).unwrap();
        let der = one(&c.cert_pem);
        for cut in [0, 1, 2, 10, der.len() / 2, der.len() - 1] {
            assert!(hosts(&der[..cut]).is_empty(), "{cut}");
            assert!(!is_ca(&der[..cut]));
            assert_eq!(signer_key_id(&der[..cut]), None);
        }
        assert_eq!(element(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(element(&[0x30, 0x82, 0xff]), None);
    }
}

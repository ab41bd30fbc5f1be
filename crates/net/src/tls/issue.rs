//! Making certificates: a cluster's certificate authority ([`new_ca`]) and the certificate
//! of one process signed by it ([`issue`]), as `tessera cert init|issue|renew` and
//! `tessera dev` write them into a certificates directory ([`write_pair`], [`replace`]);
//! and what one certificate says ([`describe_der`]: whom it names, the hosts it was issued
//! for, whether it is a CA), so that a renewal asks for what the old one had. Reading the
//! files of a directory is [`super::describe`]'s.
//!
//! Every key is ECDSA P-256. Node and manager certificates serve and dial (server and
//! client authentication) and name `tessera`, the name every Tessera process checks a
//! server against (addresses change; the CA and the identity are what matter); client
//! certificates dial, and serve too when given hosts (the NBD gateway's TLS). Must never
//! write a private key readable by anyone but its owner, nor let a process polling a
//! directory read a file half replaced.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber,
};

use super::{Identity, TlsError};

/// The DNS name every node and manager certificate carries and every Tessera process
/// checks the server it dials against.
pub const SERVER_NAME: &str = "tessera";

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    /// Its serial number, in hex: what `tessera cert revoke` names.
    pub serial: String,
}

/// A new cluster certificate authority, valid for `days` from now.
pub fn new_ca(days: u32) -> Result<Issued, TlsError> {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let serial = validity(&mut params, days);
    // A subject of its own: during a CA rotation two CAs are trusted at once, and a
    // revocation list (like a certificate) names its CA by subject.
    params.distinguished_name.push(
        DnType::CommonName,
        format!("Tessera cluster CA {}", &serial[..8]),
    );
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial,
    })
}

/// A certificate for `who`, signed by the CA (`ca_cert_pem`, `ca_key_pem`), valid for
/// `days` from now; `hosts` (DNS names or IP addresses) are added to the names it serves
/// under, for clients other than Tessera's own (qemu checks an NBD server's host name).
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    who: &Identity,
    hosts: &[String],
    days: u32,
) -> Result<Issued, TlsError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, who.to_string());
    let mut names = Vec::new();
    for uri in who.to_uris() {
        names.push(SanType::URI(uri.try_into()?));
    }
    let serves = !matches!(who, Identity::Client { .. });
    if !serves && hosts.iter().any(|h| h == SERVER_NAME) {
        // Tessera's processes take any server of the cluster CA named SERVER_NAME: a
        // client holding that name could answer as a manager or a node.
        return Err(TlsError::Invalid(format!(
            "a client's certificate may not name the host {SERVER_NAME:?}, which Tessera's \
             own servers answer to"
        )));
    }
    if serves {
        names.push(SanType::DnsName(SERVER_NAME.try_into()?));
    }
    for h in hosts {
        names.push(match h.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(h.as_str().try_into()?),
        });
    }
    params.subject_alt_names = names;
    // Key encipherment means nothing to an ECDSA key under TLS 1.3, but qemu's x509
    // credentials refuse a certificate whose (critical) key usage lacks it.
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if serves || !hosts.is_empty() {
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.use_authority_key_identifier_extension = true;
    let serial = validity(&mut params, days);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        serial,
    })
}

/// Sets `params` valid from an hour ago (clocks differ) for `days`, with a random serial,
/// which it returns in hex.
fn validity(params: &mut CertificateParams, days: u32) -> String {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    let mut serial = [0u8; 16];
    fill_random(&mut serial);
    // Positive, as DER integers of serials must be.
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    tessera_proto::hex::encode(&serial)
}

fn fill_random(buf: &mut [u8]) {
    // The ring provider's random source; it fails only when the OS has no entropy source.
    if rustls::crypto::ring::default_provider()
        .secure_random
        .fill(buf)
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ (i as u8);
        }
    }
}

/// The certificate and key files of `stem` in the certificates directory `dir`.
pub fn pair_paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    )
}

/// Writes `issued` as `dir/STEM.crt` and `dir/STEM.key` (mode 0600), creating `dir`
/// (mode 0700); refuses to overwrite either file.
pub fn write_pair(dir: &Path, stem: &str, issued: &Issued) -> Result<(), TlsError> {
    let (crt, key) = pair_paths(dir, stem);
    write_new(&key, &issued.key_pem, 0o600)?;
    write_new(&crt, &issued.cert_pem, 0o644)
}

/// Writes a new file `path` with `mode` (its directory created, mode 0700, if missing),
/// synced; refuses to overwrite one.
pub fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| TlsError::File {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    create_synced(path, contents, mode).map_err(|source| TlsError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Replaces `path` with `contents` (mode `mode`) as a whole: written to a temporary file
/// beside it (`.NAME.tmp`), synced, renamed over it, and the directory synced, so that a
/// reader sees the old file or the new, never part of one, and the new survives a crash
/// once this returns. `path`'s directory must exist.
pub fn replace(path: &Path, contents: &str, mode: u32) -> Result<(), TlsError> {
    let fail = |source| TlsError::File {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        fail(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "names no file",
        ))
    })?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        // One left by a run that died: ours to remove (created new below, so never
        // another's file followed through a link).
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        create_synced(&tmp, contents, mode)?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

/// Creates `path` (never an existing file) with `mode`, holding `contents`, synced.
fn create_synced(path: &Path, contents: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// What a certificate says, for `tessera cert list|renew|revoke`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Described {
    /// Who it names (its Tessera identity, or its subject if it names none).
    pub names: String,
    /// Its serial, in hex.
    pub serial: String,
    /// Its serial as the DER integer's bytes: what a revocation list names.
    pub raw_serial: Vec<u8>,
    /// When it expires (RFC 2822).
    pub not_after: String,
    /// Whether it is a CA's (its basic constraints say so).
    pub is_ca: bool,
    /// The DNS names and IP addresses it serves under beyond those [`issue`] gives every
    /// certificate of its identity (a node's or manager's [`SERVER_NAME`]): the `hosts`
    /// it was issued with, in order.
    pub hosts: Vec<String>,
    /// The identifier of its own key (subject key identifier), if it carries one.
    pub key_id: Option<Vec<u8>>,
    /// The identifier of the key that signed it (authority key identifier), if it carries
    /// one: its CA's `key_id`.
    pub signer_key_id: Option<Vec<u8>>,
}

/// Reads the first certificate of a PEM file.
pub fn describe(pem: &[u8]) -> Result<Described, TlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem)
        .map_err(|e| TlsError::Invalid(format!("not a PEM certificate: {e}")))?;
    describe_der(&der)
}

/// What a certificate says. An extension that does not parse reads as absent (no hosts,
/// no key identifier, not a CA); one whose certificate does not parse is an error.
pub fn describe_der(der: &[u8]) -> Result<Described, TlsError> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Invalid(format!("not an X.509 certificate: {e}")))?;
    let who = Identity::from_der(der);
    let names = match &who {
        Some(who) => who.to_string(),
        None => cert.subject().to_string(),
    };
    let serves = matches!(who, Some(Identity::Node(_) | Identity::Manager(_)));
    let san = cert.subject_alternative_name().ok().flatten();
    let hosts = san
        .iter()
        .flat_map(|s| &s.value.general_names)
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            GeneralName::IPAddress(b) => ip(b).map(|a| a.to_string()),
            _ => None,
        })
        .filter(|h| !(serves && h == SERVER_NAME))
        .collect();
    let (mut key_id, mut signer_key_id) = (None, None);
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => key_id = Some(k.0.to_vec()),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                signer_key_id = a.key_identifier.as_ref().map(|k| k.0.to_vec());
            }
            _ => {}
        }
    }
    Ok(Described {
        names,
        serial: cert.raw_serial_as_string().replace(':', ""),
        raw_serial: cert.raw_serial().to_vec(),
        not_after: cert.validity().not_after.to_string(),
        is_ca: cert.is_ca(),
        hosts,
        key_id,
        signer_key_id,
    })
}

/// The address an `iPAddress` name holds (4 or 16 bytes; a subnet is none).
fn ip(b: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        return Some(IpAddr::from(v4));
    }
    <[u8; 16]>::try_from(b).ok().map(IpAddr::from)
}

/// The file name stem `tessera cert issue` gives `who`'s files: `node-3`, `manager-1`,
/// `client-alice`.
pub fn stem(who: &Identity) -> String {
    match who {
        Identity::Node(id) => format!("node-{id}"),
        Identity::Manager(id) => format!("manager-{id}"),
        Identity::Client { name, .. } => format!("client-{name}"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn replace_leaves_the_new_contents_with_their_mode_and_no_temporary_file() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("client-a.key");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(d.path().join(".client-a.key.tmp"), "left by a crash").unwrap();
        replace(&p, "new", 0o600).expect("replaced");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["client-a.key"]);
    }

    #[test]
    fn write_new_never_overwrites() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("sub").join("ca.key");
        write_new(&p, "first", 0o600).expect("written, its directory made");
        assert!(write_new(&p, "second", 0o600).is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "first");
    }
}

//! Making certificates: a cluster's certificate authority ([`new_ca`]) and the certificate
//! of one process signed by it ([`issue`]), as `tessera cert init|issue` and `tessera dev`
//! write them into a certificates directory ([`write_pair`]).
//!
//! Every key is ECDSA P-256. Node and manager certificates serve and dial (server and
//! client authentication) and name `tessera`, the name every Tessera process checks a
//! server against (addresses change; the CA and the identity are what matter); client
//! certificates dial, and serve too when given hosts (the NBD gateway's TLS). Must never
//! write a private key readable by anyone but its owner.

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
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::File { path, source }
    };
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(contents.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// What a certificate file says, for `tessera cert list`.
#[derive(Debug, Clone)]
pub struct Described {
    /// Who it names (its Tessera identity, or its subject if it names none).
    pub names: String,
    /// Its serial, in hex.
    pub serial: String,
    /// When it expires (RFC 2822).
    pub not_after: String,
}

/// Reads the first certificate of a PEM file.
pub fn describe(pem: &[u8]) -> Result<Described, TlsError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem)
        .map_err(|e| TlsError::Invalid(format!("not a PEM certificate: {e}")))?;
    describe_der(&der)
}

/// What a certificate says.
pub fn describe_der(der: &[u8]) -> Result<Described, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::Invalid(format!("not an X.509 certificate: {e}")))?;
    let names = match Identity::from_der(der) {
        Some(who) => who.to_string(),
        None => cert.subject().to_string(),
    };
    Ok(Described {
        names,
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_after: cert.validity().not_after.to_string(),
    })
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

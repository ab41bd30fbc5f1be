//! The files of a certificates directory that `tessera cert` reads and replaces: the CA
//! bundle `ca.crt` (several CAs during a rotation) and which of its CAs a key signs as
//! ([`signer`]), a certificate file, the revocation list `ca.crl` ([`read_crl`]), and
//! replacing a file in place ([`replace`]).
//!
//! Must never: let a running process read a file half written (processes poll the
//! directory every 2 s: a file is replaced by renaming a complete, synced one over it),
//! take a `ca.crl` that a CA of `ca.crt` did not sign (a damaged or foreign list is an
//! error, never silently replaced), or sign with a CA the key given is not the key of.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tessera_net::tls::crl::{self, Crl};
use tessera_net::tls::{CRL_FILE, issue};

use super::der;

/// The CA bundle of every certificates directory.
pub const CA_FILE: &str = "ca.crt";

/// One certificate, as its file holds it.
pub struct Cert {
    /// Its PEM section.
    pub pem: String,
    pub der: Vec<u8>,
    /// Who it names and its serial, as `tessera cert list` shows them.
    pub info: issue::Described,
}

impl Cert {
    fn new(pem: &str, der: Vec<u8>) -> Result<Cert> {
        let info = issue::describe_der(&der)?;
        Ok(Cert {
            pem: pem.to_string(),
            der,
            info,
        })
    }

    /// Its serial (DER integer contents).
    pub fn serial(&self) -> Vec<u8> {
        tessera_proto::hex::decode(&self.info.serial).unwrap_or_default()
    }
}

pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The certificate of the file `path` (its first, if a chain).
pub fn cert(path: &Path) -> Result<Cert> {
    let text = read(path)?;
    let first = der::sections(&text, "CERTIFICATE", false)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{} holds no certificate", path.display()))?;
    Cert::new(first.text, first.der).with_context(|| format!("reading {}", path.display()))
}

/// The CAs of `dir/ca.crt`, the one certificates are signed with first.
pub fn cas(dir: &Path) -> Result<Vec<Cert>> {
    let path = dir.join(CA_FILE);
    let text = read(&path)?;
    let cas = der::sections(&text, "CERTIFICATE", false)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?
        .into_iter()
        .map(|s| Cert::new(s.text, s.der))
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("reading {}", path.display()))?;
    if cas.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(cas)
}

/// The CA of `cas` whose key `key_pem` (read from `key_path`) is: a list signed with the key
/// verifies against its certificate.
pub fn signer<'a>(cas: &'a [Cert], key_pem: &str, key_path: &Path) -> Result<&'a Cert> {
    for ca in cas {
        let Ok(probe) = crl::make(&ca.pem, key_pem, 1, &[]) else {
            continue;
        };
        if crl::parse(probe.as_bytes(), &[ca.der.clone().into()]).is_ok() {
            return Ok(ca);
        }
    }
    bail!(
        "{} is not the key of {} CA in {CA_FILE} (serial{} {}): pass the CA's key with --ca-key",
        key_path.display(),
        if cas.len() == 1 { "the" } else { "any" },
        if cas.len() == 1 { "" } else { "s" },
        cas.iter()
            .map(|c| c.info.serial.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// One revocation list of `ca.crl`, checked.
pub struct Listed {
    /// Its PEM section, as written (kept verbatim when the file is rewritten).
    pub pem: String,
    pub crl: Crl,
}

/// The revocation lists of `dir/ca.crl`, each checked against the CAs `cas`; none if there
/// is no such file. A file that holds anything else, or a list no CA of `cas` signed, is
/// an error: whatever is in force stays, and the file is left for a person to look at.
pub fn read_crl(dir: &Path, cas: &[Cert]) -> Result<Vec<Listed>> {
    let path = dir.join(CRL_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let damaged = |why: String| {
        anyhow!(
            "{} is damaged or not this cluster's ({why}); it was left as it is: restore it \
             from a copy, or move it away to start a new list",
            path.display()
        )
    };
    let sections = der::sections(&text, "X509 CRL", true).map_err(damaged)?;
    if sections.is_empty() {
        return Err(damaged("it holds no revocation list".into()));
    }
    let ders: Vec<_> = cas.iter().map(|c| c.der.clone().into()).collect();
    let mut out = Vec::new();
    for s in sections {
        let mut crl = crl::parse(s.text.as_bytes(), &ders).map_err(|e| damaged(e.to_string()))?;
        let crl = crl
            .pop()
            .ok_or_else(|| damaged("a list that does not parse".into()))?;
        out.push(Listed {
            pem: s.text.to_string(),
            crl,
        });
    }
    Ok(out)
}

/// Whether two serials (DER integer contents) are the same number.
pub fn same_serial(a: &[u8], b: &[u8]) -> bool {
    let trim = |s: &[u8]| {
        let zeros = s.iter().take_while(|&&x| x == 0).count();
        s[zeros..].to_vec()
    };
    trim(a) == trim(b)
}

/// Whether a list of `lists` revokes `serial`.
pub fn revokes(lists: &[Listed], serial: &[u8]) -> bool {
    lists
        .iter()
        .flat_map(|l| &l.crl.revoked)
        .any(|r| same_serial(&r.serial, serial))
}

/// Replaces `path` with `contents` (mode `mode`) as a whole: written to a temporary file
/// beside it, synced, renamed over it, and the directory synced, so that a reader sees the
/// old file or the new, never part of one, and the new survives a crash once this returns.
pub fn replace(path: &Path, contents: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{} names no file", path.display()))?;
    let tmp: PathBuf = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        // One left by a run that died: ours to remove (created with create_new below, so
        // never another's file followed through a link).
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("writing {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn ca_dir() -> (tempfile::TempDir, issue::Issued) {
        let d = tempfile::tempdir().expect("tempdir");
        let ca = issue::new_ca(1).expect("CA");
        std::fs::write(d.path().join(CA_FILE), &ca.cert_pem).expect("ca.crt");
        (d, ca)
    }

    #[test]
    fn the_signer_is_the_ca_whose_key_is_given_wherever_it_is_in_the_bundle() {
        let (d, old) = ca_dir();
        let new = issue::new_ca(1).expect("CA");
        std::fs::write(
            d.path().join(CA_FILE),
            format!("{}{}", new.cert_pem, old.cert_pem),
        )
        .unwrap();
        let cas = cas(d.path()).expect("two CAs");
        assert_eq!(cas.len(), 2);
        let key = Path::new("k");
        let s = signer(&cas, &old.key_pem, key).expect("the old CA");
        assert_eq!(s.pem.trim(), old.cert_pem.trim());
        let s = signer(&cas, &new.key_pem, key).expect("the new CA");
        assert_eq!(s.pem.trim(), new.cert_pem.trim());
        let stranger = issue::new_ca(1).expect("CA");
        let e = signer(&cas, &stranger.key_pem, key).err().expect("refused");
        assert!(e.to_string().contains("is not the key of any CA"), "{e}");
    }

    #[test]
    fn a_crl_file_of_anything_but_this_cas_lists_is_refused() {
        let (d, ca) = ca_dir();
        let cas = cas(d.path()).expect("CA");
        assert!(
            read_crl(d.path(), &cas)
                .expect("no file: no lists")
                .is_empty()
        );
        let path = d.path().join(CRL_FILE);
        let mine = crl::make(&ca.cert_pem, &ca.key_pem, 4, &[]).unwrap();
        std::fs::write(&path, &mine).unwrap();
        let lists = read_crl(d.path(), &cas).expect("its own list");
        assert_eq!(lists.len(), 1);
        assert_eq!(lists[0].crl.number, 4);
        let other = issue::new_ca(1).expect("CA");
        let foreign = crl::make(&other.cert_pem, &other.key_pem, 9, &[]).unwrap();
        for bad in [
            foreign.clone(),
            format!("{mine}{foreign}"),
            format!("junk\n{mine}"),
            mine[..mine.len() / 2].to_string(),
            String::new(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            let e = read_crl(d.path(), &cas).err().expect("refused");
            assert!(
                e.to_string().contains("damaged or not this cluster's"),
                "{e}"
            );
        }
    }

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
    fn serials_compare_as_numbers() {
        assert!(same_serial(&[0, 0x12, 0x34], &[0x12, 0x34]));
        assert!(!same_serial(&[0x12, 0x34], &[0x12, 0x35]));
        assert!(!same_serial(&[0x12], &[0x12, 0x00]));
    }
}

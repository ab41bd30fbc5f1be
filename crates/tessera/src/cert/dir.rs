//! The files of a certificates directory that `tessera cert` reads: the CA bundle `ca.crt`
//! (several CAs during a rotation) and which of its CAs a key signs as ([`signer`]), a
//! certificate file, the revocation list `ca.crl` ([`read_crl`]). Decoding and describing
//! what the files hold is tessera-net's (`tls::describe`), and so is replacing one
//! (`issue::replace`): this module knows the directory's layout and what the CLI refuses.
//!
//! Must never: let a running process read a file half written (processes poll the
//! directory every 2 s: a file is replaced whole, with `issue::replace`), take a `ca.crl`
//! that a CA of `ca.crt` did not sign (a damaged or foreign list is an error, never
//! silently replaced), or sign with a CA the key given is not the key of.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tessera_net::tls::CRL_FILE;
use tessera_net::tls::crl::{self, Crl};
use tessera_net::tls::describe::{self, Cert, SectionKind};

/// The CA bundle of every certificates directory.
pub const CA_FILE: &str = "ca.crt";

pub fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// The certificate of the file `path` (its first, if a chain).
pub fn cert(path: &Path) -> Result<Cert> {
    let text = read(path)?;
    describe::certificates(text.as_bytes())
        .with_context(|| format!("reading {}", path.display()))?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("{} holds no certificate", path.display()))
}

/// The CAs of `dir/ca.crt`, the one certificates are signed with first.
pub fn cas(dir: &Path) -> Result<Vec<Cert>> {
    let path = dir.join(CA_FILE);
    let text = read(&path)?;
    let cas = describe::certificates(text.as_bytes())
        .with_context(|| format!("reading {}", path.display()))?;
    if cas.is_empty() {
        bail!("{} holds no certificate", path.display());
    }
    Ok(cas)
}

/// The certificate files (`*.crt`) of `dir`, sorted.
pub fn crt_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    files.sort();
    Ok(files)
}

/// The CA of `cas` whose key `key_pem` (read from `key_path`) is: what it signs verifies
/// against its certificate.
pub fn signer<'a>(cas: &'a [Cert], key_pem: &str, key_path: &Path) -> Result<&'a Cert> {
    match describe::ca_of_key(cas, key_pem) {
        Ok(Some(ca)) => return Ok(ca),
        Ok(None) => {}
        Err(e) => bail!(
            "{}: {e}: pass the CA's key with --ca-key",
            key_path.display()
        ),
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
    let sections = describe::sections(text.as_bytes(), SectionKind::Crl, true)
        .map_err(|e| damaged(e.to_string()))?;
    if sections.is_empty() {
        return Err(damaged("it holds no revocation list".into()));
    }
    let ders: Vec<_> = cas.iter().map(|c| c.der.clone()).collect();
    sections
        .into_iter()
        .map(|s| {
            let crl = crl::parse_der(s.der.into(), &ders).map_err(|e| damaged(e.to_string()))?;
            Ok(Listed { pem: s.text, crl })
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use tessera_net::tls::issue;

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
        let e = signer(&cas, &stranger.key_pem, key).expect_err("refused");
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
    fn serials_compare_as_numbers() {
        assert!(same_serial(&[0, 0x12, 0x34], &[0x12, 0x34]));
        assert!(!same_serial(&[0x12, 0x34], &[0x12, 0x35]));
        assert!(!same_serial(&[0x12], &[0x12, 0x00]));
    }
}

//! `tessera cert renew`: a new key and certificate for the identity an existing
//! certificate names, put in place of the old files while the process using them runs
//! (it re-reads its certificates directory every 2 s).
//!
//! Must never: change who a certificate names (role and volumes included: a process
//! refuses a renewed certificate naming another identity), or leave a key readable by
//! anyone but its owner. The key is replaced before the certificate: in between, a
//! process reading the pair finds they do not match and keeps what it had.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tessera_net::Identity;
use tessera_net::tls::issue;

use super::dir;

/// What `renew` replaced.
pub struct Renewed {
    pub who: Identity,
    /// The certificate file.
    pub crt: PathBuf,
    pub old_serial: String,
    pub new_serial: String,
}

/// Renews certificate `stem` of `dir` (`stem` may end in `.crt`) with the CA whose key is
/// `ca_key`, for `days`; served under `hosts`, or the old certificate's if empty.
pub fn renew(
    dir: &Path,
    stem: &str,
    ca_key: &Path,
    days: u32,
    hosts: &[String],
) -> Result<Renewed> {
    let stem = stem.strip_suffix(".crt").unwrap_or(stem);
    if stem.is_empty() || stem.contains('/') {
        bail!("{stem:?}: name a certificate of the directory (client-alice, node-3)");
    }
    if stem == "ca" {
        bail!("a CA is not renewed: make a new one with `tessera cert init`");
    }
    let (crt, key_path) = issue::pair_paths(dir, stem);
    let old = dir::cert(&crt)?;
    let who = Identity::from_der(&old.der)
        .ok_or_else(|| anyhow!("{} names no Tessera identity", crt.display()))?;
    // The hosts the old certificate was issued with (those `issue` adds itself aside).
    let hosts = if hosts.is_empty() {
        &old.info.hosts
    } else {
        hosts
    };
    let cas = dir::cas(dir)?;
    let ca_key_pem = dir::read(ca_key)?;
    let signer = dir::signer(&cas, &ca_key_pem, ca_key)?;
    let issued = issue::issue(&signer.pem, &ca_key_pem, &who, hosts, days)
        .with_context(|| format!("renewing {}", crt.display()))?;
    let new_serial = issue::describe(issued.cert_pem.as_bytes())?.serial;
    issue::replace(&key_path, &issued.key_pem, 0o600)?;
    issue::replace(&crt, &issued.cert_pem, 0o644).with_context(|| {
        format!(
            "{} was replaced but {} was not: a process reading them keeps its old pair \
             until both match; run `tessera cert renew {stem}` again",
            key_path.display(),
            crt.display()
        )
    })?;
    Ok(Renewed {
        who,
        crt,
        old_serial: old.info.serial,
        new_serial,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewing_keeps_the_hosts_unless_others_are_given() {
        let d = tempfile::tempdir().expect("tempdir");
        let (dir, key) = (d.path(), d.path().join("ca.key"));
        super::super::init(dir, &key, 1).expect("CA");
        let hosts = ["nbd.example".to_string(), "10.0.0.5".into()];
        let stem = super::super::issue_into(dir, &key, &Identity::Node(3), &hosts, 1).unwrap();
        let crt = issue::pair_paths(dir, &stem).0;
        let r = renew(dir, &stem, &key, 1, &[]).expect("renewed");
        assert_eq!(r.who, Identity::Node(3));
        assert_ne!(r.old_serial, r.new_serial);
        assert_eq!(dir::cert(&crt).unwrap().info.hosts, hosts);
        let other = ["gw.example".to_string()];
        renew(dir, &format!("{stem}.crt"), &key, 1, &other).expect("renewed");
        assert_eq!(dir::cert(&crt).unwrap().info.hosts, other);
        assert!(
            renew(dir, "ca", &key, 1, &[]).is_err(),
            "a CA is not renewed"
        );
    }
}

//! `tessera cert revoke` and `tessera cert publish`: adding a certificate to the cluster
//! CA's revocation list `ca.crl`, and handing the list to the managers, which put it in
//! force cluster-wide (themselves at once, storage nodes at their next heartbeat).
//!
//! A list is cumulative: a new one keeps every serial the last revoked, is numbered one
//! higher (processes and managers take a list only over a lower-numbered one of its CA)
//! and replaces `ca.crl` as a whole. Must never: revoke a CA's own certificate (that is
//! removing it from `ca.crt`), drop a revocation, or replace a `ca.crl` it could not read
//! and check (see [`super::dir`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tessera_net::tls::crl::{self, Revoked};
use tessera_net::tls::{CRL_FILE, issue};
use tessera_proto::control::{ManagerReply, ManagerRequest};

use tessera_net::tls::describe::Cert;

use super::dir::{self, Listed};
use crate::access::Access;

/// What `TARGET` of `tessera cert revoke` names.
struct Target {
    serial: Vec<u8>,
    /// The certificate, if a file in the directory holds it.
    cert: Option<(PathBuf, Cert)>,
}

impl Target {
    fn describe(&self) -> String {
        let serial = tessera_proto::hex::encode(&self.serial);
        match &self.cert {
            Some((_, c)) => format!("{} (serial {serial})", c.info.names),
            None => format!("serial {serial} (no certificate of the directory has it)"),
        }
    }
}

/// Revokes `target` (a file stem of `dir`, or a serial in hex) with the CA whose key is
/// `ca_key`, writes `dir/ca.crl`, and unless `offline` publishes it to the managers.
pub async fn revoke(
    access: &Access,
    dir: &Path,
    target: &str,
    ca_key: &Path,
    offline: bool,
) -> Result<()> {
    let cas = dir::cas(dir)?;
    let t = find(dir, target)?;
    let what = t.describe();
    if let Some(ca) = cas
        .iter()
        .find(|c| dir::same_serial(&c.info.raw_serial, &t.serial))
    {
        bail!(
            "{target} is the certificate of a CA of {} ({}, serial {}): a CA is not revoked; \
             it is removed from {0} once every certificate it signed was renewed",
            dir::CA_FILE,
            ca.info.names,
            ca.info.serial
        );
    }
    if let Some((path, c)) = &t.cert
        && c.info.is_ca
    {
        bail!(
            "{} is a CA's certificate: a CA is not revoked but removed from {}",
            path.display(),
            dir::CA_FILE
        );
    }
    let lists = dir::read_crl(dir, &cas)?;
    if dir::revokes(&lists, &t.serial) {
        println!("{what}: already revoked by {CRL_FILE}; nothing changed");
        if !offline {
            println!("(`tessera cert publish` sends {CRL_FILE} to managers that lack it)");
        }
        return Ok(());
    }
    let key = dir::read(ca_key)?;
    let signer = dir::signer(&cas, &key, ca_key)?;
    if let Some((path, c)) = &t.cert
        && let (Some(signed_by), Some(key_id)) = (&c.info.signer_key_id, &signer.info.key_id)
        && signed_by != key_id
    {
        bail!(
            "{} was signed by another CA than {}'s: a list of this CA would not revoke it; \
             pass the key of the CA that signed it with --ca-key",
            path.display(),
            ca_key.display()
        );
    }
    let (pem, number) = next_list(&cas, signer, &key, &lists, &t.serial)?;
    let path = dir.join(CRL_FILE);
    issue::replace(&path, &pem, 0o644)?;
    println!("revoked {what}: {} (list {number})", path.display());
    if offline {
        println!("not published (--offline): `tessera cert publish` sends it to the managers");
        return Ok(());
    }
    let version = send(access, &pem).await.with_context(|| {
        format!(
            "{} was written, but not published to the managers (`tessera cert publish` \
             sends it again)",
            path.display()
        )
    })?;
    println!("published to the managers: revocation lists version {version}");
    Ok(())
}

/// Sends `dir/ca.crl`, as it is, to the managers (after checking it as revoke would).
pub async fn publish(access: &Access, dir: &Path) -> Result<()> {
    let cas = dir::cas(dir)?;
    let lists = dir::read_crl(dir, &cas)?;
    if lists.is_empty() {
        bail!("no {} in {}: nothing to publish", CRL_FILE, dir.display());
    }
    let pem: String = lists
        .iter()
        .map(|l| format!("{}\n", l.pem.trim_end()))
        .collect();
    let version = send(access, &pem).await?;
    let numbers: Vec<String> = lists.iter().map(|l| l.crl.number.to_string()).collect();
    println!(
        "published {} (list {}): revocation lists version {version}",
        dir.join(CRL_FILE).display(),
        numbers.join(", ")
    );
    Ok(())
}

async fn send(access: &Access, pem: &str) -> Result<u64> {
    let client = access.client("tessera cert").await?;
    let req = ManagerRequest::PublishCrl {
        pem: pem.to_string(),
    };
    match client.call(&req).await? {
        ManagerReply::Crl { version, .. } => Ok(version),
        other => bail!("the manager answered PublishCrl with {other:?}"),
    }
}

/// What `target` names: the certificate `dir/TARGET.crt` (`TARGET` may end in `.crt`),
/// else the serial it spells in hex (colons allowed).
fn find(dir: &Path, target: &str) -> Result<Target> {
    let stem = target.strip_suffix(".crt").unwrap_or(target);
    if stem.is_empty() || stem.contains('/') {
        bail!("{target:?}: name a certificate of the directory (client-alice, node-3) or a serial");
    }
    let path = dir.join(format!("{stem}.crt"));
    if path.is_file() {
        let c = dir::cert(&path)?;
        return Ok(Target {
            serial: c.info.raw_serial.clone(),
            cert: Some((path, c)),
        });
    }
    let Some(serial) =
        tessera_proto::hex::decode(&target.replace(':', "")).filter(|s| !s.is_empty())
    else {
        bail!(
            "{target:?}: no {} in {}, and not a serial in hex (as `tessera cert list` shows it)",
            path.file_name()
                .map_or_else(String::new, |f| f.to_string_lossy().into_owned()),
            dir.display()
        );
    };
    Ok(Target {
        cert: holder(dir, &serial),
        serial,
    })
}

/// The certificate file of `dir` with `serial`, if one has it (unreadable files skipped:
/// this only names who a serial was).
fn holder(dir: &Path, serial: &[u8]) -> Option<(PathBuf, Cert)> {
    dir::crt_files(dir)
        .ok()?
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|f| f != dir::CA_FILE))
        .find_map(|p| {
            let c = dir::cert(&p).ok()?;
            dir::same_serial(&c.info.raw_serial, serial).then_some((p, c))
        })
}

/// The new `ca.crl`: the list of `signer` revoking what its last did and `serial`,
/// numbered above every list of the file, then the other CAs' lists as they were; and its
/// number. Checked as processes will check it before anything is written.
fn next_list(
    cas: &[Cert],
    signer: &Cert,
    key: &str,
    lists: &[Listed],
    serial: &[u8],
) -> Result<(String, u64)> {
    let signer_der = [signer.der.clone()];
    let (mine, others): (Vec<&Listed>, Vec<&Listed>) = lists
        .iter()
        .partition(|l| crl::parse_der(l.crl.der.clone(), &signer_der).is_ok());
    let mut revoked: Vec<Revoked> = Vec::new();
    for r in mine.iter().flat_map(|l| &l.crl.revoked) {
        if !revoked
            .iter()
            .any(|k| dir::same_serial(&k.serial, &r.serial))
        {
            revoked.push(r.clone());
        }
    }
    revoked.push(Revoked {
        serial: serial.to_vec(),
        at: now(),
    });
    let number = lists.iter().map(|l| l.crl.number).max().unwrap_or(0) + 1;
    let mut pem = crl::make(&signer.pem, key, number, &revoked)?;
    for o in others {
        pem.push_str(o.pem.trim_end());
        pem.push('\n');
    }
    let ders: Vec<_> = cas.iter().map(|c| c.der.clone()).collect();
    let check = crl::parse(pem.as_bytes(), &ders).map_err(|e| {
        anyhow!(
            "the new list does not verify against {} ({e}): nothing written",
            dir::CA_FILE
        )
    })?;
    if !check.iter().any(|l| {
        l.number == number
            && l.revoked
                .iter()
                .any(|r| dir::same_serial(&r.serial, serial))
    }) {
        bail!("the new list lost the revocation it was made for: nothing written");
    }
    Ok((pem, number))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_list_keeps_every_revocation_and_counts_up() {
        let d = tempfile::tempdir().expect("tempdir");
        let ca = issue::new_ca(1).expect("CA");
        std::fs::write(d.path().join(dir::CA_FILE), &ca.cert_pem).unwrap();
        let cas = dir::cas(d.path()).unwrap();
        let signer = &cas[0];
        let (first, n) = next_list(&cas, signer, &ca.key_pem, &[], &[1, 2]).expect("list 1");
        assert_eq!(n, 1);
        std::fs::write(d.path().join(CRL_FILE), &first).unwrap();
        let lists = dir::read_crl(d.path(), &cas).unwrap();
        let (second, n) = next_list(&cas, signer, &ca.key_pem, &lists, &[3]).expect("list 2");
        assert_eq!(n, 2);
        std::fs::write(d.path().join(CRL_FILE), &second).unwrap();
        let lists = dir::read_crl(d.path(), &cas).unwrap();
        assert_eq!(lists.len(), 1);
        assert_eq!(lists[0].crl.number, 2);
        let serials: Vec<_> = lists[0]
            .crl
            .revoked
            .iter()
            .map(|r| r.serial.clone())
            .collect();
        assert_eq!(serials, [vec![1, 2], vec![3]]);
        assert!(dir::revokes(&lists, &[0, 1, 2]));
        assert!(!dir::revokes(&lists, &[4]));
    }
}
